"""Registry of the demo app's tabs, one per capability, stored as "module:function" strings.

A tab builder is a function with no arguments that creates gradio components and events.
`vqkit.demos.app.build_app` calls it inside a `gradio.Tab` context. Storing builders as
strings keeps gradio and the capability's code unimported until the app is built.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vqkit._imports import import_object, validate_import_spec

TabBuilder = Callable[[], None]

# The app always adds this tab itself, so no capability may register it.
ABOUT_TAB_TITLE = "About"


@dataclass(frozen=True)
class TabEntry:
    """A registered demo tab."""

    title: str
    builder: str | TabBuilder
    """A "module:function" string, imported when the app is built, or the function itself."""

    def load_builder(self) -> TabBuilder:
        """Import and return the builder function."""
        if callable(self.builder):
            return self.builder
        return import_object(self.builder)


# Built-in tabs, in display order. Add one TabEntry per capability.
_SHIPPED_TABS: tuple[TabEntry, ...] = (
    TabEntry("Image tokenizer", "vqkit.demos.image_tokenizer:build_tab"),
    TabEntry("Codebook features", "vqkit.demos.codebook_features:build_tab"),
    TabEntry("Speech codec", "vqkit.demos.speech_codec:build_tab"),
)

_tabs: dict[str, TabEntry] = {entry.title: entry for entry in _SHIPPED_TABS}


def register_tab(title: str, builder: str | TabBuilder, *, replace: bool = False) -> TabEntry:
    """Register a demo tab titled `title` and return its entry. Tabs appear in registration order.

    `builder` is a "module:function" string or a callable. Registering a title again with
    the same builder does nothing, and with another one raises ValueError unless `replace` is true.
    """
    if not isinstance(title, str) or not title.strip():
        raise ValueError(f"invalid tab title {title!r}: give a non-empty string")
    if title == ABOUT_TAB_TITLE:
        raise ValueError(f"tab title {title!r} is reserved for the app's own tab. Pick another title.")
    if isinstance(builder, str):
        validate_import_spec(builder, f"builder for tab {title!r}")
    elif not callable(builder):
        raise ValueError(
            f"invalid builder for tab {title!r}: {builder!r}. Pass a 'module:function' string or a callable."
        )

    entry = TabEntry(title, builder)
    existing = _tabs.get(title)
    if existing is not None and existing != entry and not replace:
        raise ValueError(
            f"tab {title!r} is already registered with builder {existing.builder!r}. "
            "Pick another title, or pass replace=True to overwrite it."
        )
    _tabs[title] = entry
    return entry


def unregister_tab(title: str) -> None:
    """Remove a registered tab. Raises ValueError when no tab has that title."""
    if title not in _tabs:
        known = ", ".join(_tabs) or "none are registered yet"
        raise ValueError(f"unknown tab title {title!r}. Registered tabs: {known}.")
    del _tabs[title]


def list_tabs() -> list[TabEntry]:
    """Return the registered tabs in display order, without the About tab."""
    return list(_tabs.values())
