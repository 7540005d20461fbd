"""Parse and import "module:attribute" strings, the lazy references that vqkit's registries store."""

from __future__ import annotations

import importlib
import re
from typing import Any

_SPEC_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def validate_import_spec(spec: str, setting: str) -> str:
    """Raise ValueError unless `spec` has the form "package.module:attribute"; return it unchanged.

    `setting` names the value in the error message, for example "handler for bench quantizers".
    """
    if not isinstance(spec, str) or not _SPEC_PATTERN.match(spec):
        raise ValueError(
            f"invalid {setting}: {spec!r}. Expected a string of the form 'package.module:attribute', "
            "for example 'vqkit.models.rqvae:RQVAE'."
        )
    return spec


def import_object(spec: str) -> Any:
    """Import the module named before the colon in `spec` and return the attribute named after it.

    Raises ImportError when the module or the attribute does not exist.
    """
    module_name, _, attribute_path = spec.partition(":")
    module = importlib.import_module(module_name)
    return resolve_attribute(module, attribute_path, spec)


def resolve_attribute(module: Any, attribute_path: str, spec: str) -> Any:
    """Follow a dotted attribute path ("Class.method") from `module`; raise ImportError naming `spec`."""
    value = module
    for part in attribute_path.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise ImportError(
                f"cannot import {spec!r}: {module.__name__} has no attribute {attribute_path!r}"
            ) from None
    return value
