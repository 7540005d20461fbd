"""The vqkit demo: a gradio app with one tab per registered capability and an About tab.

Run it with `vqkit demo --host 127.0.0.1 --port 7860`.
"""

from __future__ import annotations

import logging
import os

# Gradio sends usage analytics to its servers unless GRADIO_ANALYTICS_ENABLED is "False".
# The demo sets that default, and an explicit GRADIO_ANALYTICS_ENABLED=True still turns it on.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

import vqkit  # noqa: E402
from vqkit import registry  # noqa: E402
from vqkit.demos.tabs import ABOUT_TAB_TITLE, list_tabs  # noqa: E402

logger = logging.getLogger(__name__)

ABOUT_API_NAME = "about"

_INTRODUCTION = (
    "**vqkit** is a PyTorch library of vector-quantized tokenizers and models, which map "
    "data to sequences of discrete codebook indices and back. Registered pretrained models "
    "load by name with `vqkit.load(name)`. The `vqkit` command-line tool runs the encode, "
    "decode, train, eval and bench targets that each capability registers, and `vqkit demo` "
    "serves this app."
)


def describe_about() -> str:
    """Return the About tab's Markdown: an introduction, then the registered models and tabs."""
    lines = [f"# vqkit {vqkit.__version__}", "", _INTRODUCTION, "", "## Models", ""]

    entries = registry.model_entries()
    if entries:
        lines += [f"- `{entry.name}`: {entry.description}" for entry in entries]
    else:
        lines.append("No pretrained models are registered yet.")

    lines += ["", "## Tabs", ""]
    tabs = list_tabs()
    if tabs:
        lines += [f"- {tab.title}" for tab in tabs]
    else:
        lines.append("No capability tabs are registered yet, so this is the only tab.")
    return "\n".join(lines)


def build_app() -> gr.Blocks:
    """Build the demo app: each registered tab in registration order, then the About tab.

    Raises ImportError naming the tab when a tab's builder cannot be imported.
    """
    with gr.Blocks(title="vqkit") as app:
        for tab in list_tabs():
            try:
                builder = tab.load_builder()
            except ImportError as error:
                raise ImportError(f"cannot build demo tab {tab.title!r} from {tab.builder!r}: {error}") from error
            with gr.Tab(tab.title):
                builder()

        with gr.Tab(ABOUT_TAB_TITLE):
            about = gr.Markdown(describe_about())
        # Refreshing on page load shows registrations made after the app was built, and
        # gives API clients an endpoint, "/about", that returns the same Markdown.
        app.load(describe_about, inputs=None, outputs=about, api_name=ABOUT_API_NAME)
    return app


def launch_app(host: str = "127.0.0.1", port: int = 7860) -> None:
    """Build the app and serve it on `host`:`port` until interrupted."""
    app = build_app()
    logger.info("Starting the vqkit demo on http://%s:%d", host, port)
    app.launch(server_name=host, server_port=port)
    logger.info("Stopped the vqkit demo")
