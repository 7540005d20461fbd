"""Targets of the `vqkit encode|decode|train|eval|bench TARGET` commands, registered lazily.

A target maps a name to a handler, `handler(argv: list[str]) -> int | None`, that receives
the command-line arguments after the target name and returns an exit status (None means 0).
Built-in targets are listed in `_SHIPPED_TARGETS` as "module:function" strings, so that
`vqkit --help` imports no handler code. A handler module named "benchmarks.NAME" is the file
NAME.py in the benchmarks folder (see `benchmarks_root`), not an importable package.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import logging
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from vqkit._imports import import_object, resolve_attribute, validate_import_spec
from vqkit._paths import data_folder

logger = logging.getLogger(__name__)

Handler = Callable[[list[str]], "int | None"]

# Commands that take a target, with their help text.
TARGET_COMMANDS: dict[str, str] = {
    "encode": "Encode data into token ids with a tokenizer.",
    "decode": "Decode token ids back into data.",
    "train": "Train a model.",
    "eval": "Evaluate a model.",
    "bench": "Run a benchmark and print its results.",
}

# `vqkit bench all` runs every bench target, so no target of any command may use this name.
ALL_TARGETS = "all"

BENCHMARK_MODULE_PREFIX = "benchmarks."
# Package name under which benchmark files are imported, so that they can import each other
# with `from . import helper` or `from vqkit_benchmarks import helper`.
BENCHMARK_PACKAGE = "vqkit_benchmarks"

_TARGET_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@dataclass(frozen=True)
class CommandTarget:
    """A registered target of one command."""

    command: str
    name: str
    handler: str | Handler
    """A "module:function" string, imported when the target runs, or the function itself."""
    help: str


# Built-in targets. Add one CommandTarget per capability, with a "module:function" handler.
_SHIPPED_TARGETS: tuple[CommandTarget, ...] = (
    CommandTarget(
        "bench",
        "quantizers",
        "benchmarks.quantizers:main",
        "Quantizer benchmarks from benchmarks/quantizers.py.",
    ),
    CommandTarget(
        "train",
        "image-tokenizer",
        "vqkit.tokenizers.image_train:main",
        "Train the RQ-VAE image tokenizer (image-rqvae-64) on crops of the bundled photos.",
    ),
    CommandTarget(
        "train",
        "codebook-lm",
        "vqkit.models.lm_train:main",
        "Train a language model on TokFSM or Python's documentation, then fine-tune it with codebooks.",
    ),
    CommandTarget(
        "train",
        "speech-codec",
        "vqkit.tokenizers.speech_train:main",
        "Train the LSCodec speech codec (VAE stage, then VQ stage), the RVQ baseline or the shared vocoder.",
    ),
    CommandTarget(
        "eval",
        "image-tokenizer",
        "vqkit.evals.image_tokenizer:main",
        "Evaluate the image tokenizer on the held-out photos; writes results/image_tokenizer.*.",
    ),
    CommandTarget(
        "eval",
        "codebook-lm",
        "vqkit.evals.codebook_lm:main",
        "Evaluate the codebook-feature LMs on TokFSM and text; writes results/codebook_lm.*.",
    ),
    CommandTarget(
        "eval",
        "speech-codec",
        "vqkit.evals.speech_codec:main",
        "Evaluate the speech codecs (WER, STOI, PESQ, speaker probes, voice conversion, RTF); writes results/speech_codec.*.",
    ),
    CommandTarget(
        "encode",
        "image",
        "vqkit.tokenizers.image_codes:encode_main",
        "Encode an image file into a safetensors codes file with the image tokenizer.",
    ),
    CommandTarget(
        "decode",
        "image",
        "vqkit.tokenizers.image_codes:decode_main",
        "Decode a codes file written by `vqkit encode image` into an image file.",
    ),
    CommandTarget(
        "bench",
        "image-tokenizer",
        "benchmarks.image_tokenizer:main",
        "Image tokenizer vs diffusers VQModel encode+decode speed, from benchmarks/image_tokenizer.py.",
    ),
    CommandTarget(
        "bench",
        "speech-codec",
        "benchmarks.speech_codec:main",
        "Speech codec vs transformers EnCodec and Mimi encode and decode speed, from benchmarks/speech_codec.py.",
    ),
)

_targets: dict[str, dict[str, CommandTarget]] = {command: {} for command in TARGET_COMMANDS}
for _target in _SHIPPED_TARGETS:
    _targets[_target.command][_target.name] = _target


def register_command(
    command: str,
    target: str,
    handler: str | Handler,
    *,
    help: str = "",
    replace: bool = False,
) -> CommandTarget:
    """Register `handler` as `vqkit COMMAND TARGET` and return the new entry.

    `command` is one of encode, decode, train, eval and bench. `handler` is a
    "module:function" string, imported only when the target runs, or a callable. Registering
    the same target again with the same values does nothing, and with other values raises
    ValueError unless `replace` is true.
    """
    if command not in TARGET_COMMANDS:
        raise ValueError(f"unknown command {command!r}: targets can be registered for {', '.join(TARGET_COMMANDS)}")
    if not isinstance(target, str) or not _TARGET_PATTERN.match(target) or target == ALL_TARGETS:
        raise ValueError(
            f"invalid target name {target!r} for {command}: use lowercase letters, digits, '_' "
            f"and '-', starting with a letter or digit, and not {ALL_TARGETS!r}"
        )
    if isinstance(handler, str):
        validate_import_spec(handler, f"handler for {command} {target}")
    elif not callable(handler):
        raise ValueError(
            f"invalid handler for {command} {target}: {handler!r}. Pass a 'module:function' string or a callable."
        )

    entry = CommandTarget(command, target, handler, help)
    existing = _targets[command].get(target)
    if existing is not None and existing != entry and not replace:
        raise ValueError(
            f"{command} target {target!r} is already registered with handler {existing.handler!r}. "
            "Pick another name, or pass replace=True to overwrite it."
        )
    _targets[command][target] = entry
    return entry


def unregister_command(command: str, target: str) -> None:
    """Remove a registered target. Raises ValueError when it is not registered."""
    get_command_target(command, target)
    del _targets[command][target]


def command_targets(command: str) -> list[CommandTarget]:
    """Return the targets registered for `command`, sorted by name."""
    if command not in TARGET_COMMANDS:
        raise ValueError(f"unknown command {command!r}: choose one of {', '.join(TARGET_COMMANDS)}")
    return [_targets[command][name] for name in sorted(_targets[command])]


def get_command_target(command: str, target: str) -> CommandTarget:
    """Return the entry for `vqkit COMMAND TARGET`. Raises ValueError listing the known targets when there is none."""
    targets = {entry.name: entry for entry in command_targets(command)}
    if target not in targets:
        raise ValueError(f"unknown {command} target {target!r}. {describe_known_targets(command)}")
    return targets[target]


def describe_known_targets(command: str) -> str:
    """Return a sentence listing the targets of `command`, for error and help messages."""
    names = [entry.name for entry in command_targets(command)]
    if not names:
        return f"No {command} targets are registered yet."
    if command == "bench":
        names.append(ALL_TARGETS)
    return f"Known {command} targets: {', '.join(names)}."


def load_handler(entry: CommandTarget) -> Handler:
    """Import and return the handler of `entry`."""
    if callable(entry.handler):
        return entry.handler
    if entry.handler.startswith(BENCHMARK_MODULE_PREFIX):
        module_path, _, attribute_path = entry.handler.partition(":")
        module = load_benchmark_module(module_path.removeprefix(BENCHMARK_MODULE_PREFIX))
        return resolve_attribute(module, attribute_path, entry.handler)
    return import_object(entry.handler)


def run_target(command: str, target: str, argv: list[str]) -> int:
    """Run `vqkit COMMAND TARGET ARGV...` and return its exit status."""
    entry = get_command_target(command, target)
    return call_handler(entry, load_handler(entry), argv)


def call_handler(entry: CommandTarget, handler: Handler, argv: list[str]) -> int:
    """Call `handler` with a copy of `argv` and return its exit status, 0 when it returns None."""
    logger.debug("Running %s %s with arguments %s", entry.command, entry.name, argv)
    status = handler(list(argv))
    if status is None:
        return 0
    if not isinstance(status, int):
        raise TypeError(
            f"handler {entry.handler!r} for {entry.command} {entry.name} returned {status!r}, not an int or None"
        )
    return status


def benchmarks_root() -> Path:
    """Return the folder of benchmark files: the installed vqkit/benchmarks, else the repository's benchmarks/."""
    return data_folder("benchmarks")


def load_benchmark_module(name: str) -> ModuleType:
    """Import benchmarks/NAME.py as the module `vqkit_benchmarks.NAME` and return it.

    Raises FileNotFoundError when the file does not exist.
    """
    root = benchmarks_root()
    path = root.joinpath(*name.split(".")).with_suffix(".py")
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file not found: {path}. Benchmarks are read from {root}.")
    _ensure_benchmark_package(root)
    return importlib.import_module(f"{BENCHMARK_PACKAGE}.{name}")


def _ensure_benchmark_package(root: Path) -> None:
    """Register a package named `BENCHMARK_PACKAGE` whose submodules are the files in `root`."""
    package = sys.modules.get(BENCHMARK_PACKAGE)
    if package is not None and list(getattr(package, "__path__", [])) == [str(root)]:
        return
    # The benchmarks folder changed since the last import (tests point it elsewhere), so
    # drop the modules imported from the old one.
    for module_name in [name for name in sys.modules if name.partition(".")[0] == BENCHMARK_PACKAGE]:
        del sys.modules[module_name]

    init_file = root / "__init__.py"
    if init_file.is_file():
        spec = importlib.util.spec_from_file_location(
            BENCHMARK_PACKAGE, init_file, submodule_search_locations=[str(root)]
        )
    else:
        spec = importlib.machinery.ModuleSpec(BENCHMARK_PACKAGE, None, is_package=True)
        spec.submodule_search_locations = [str(root)]
    assert spec is not None
    package = importlib.util.module_from_spec(spec)
    sys.modules[BENCHMARK_PACKAGE] = package
    if spec.loader is not None:
        try:
            spec.loader.exec_module(package)
        except BaseException:
            del sys.modules[BENCHMARK_PACKAGE]
            raise
