"""Scaffolding shared by the benchmark scripts: import order, command line, timed run and output files.

A script imports this module before any other benchmark module, because it records whether
faiss was imported before torch and then imports torch (see FAISS_IMPORTED_BEFORE_TORCH).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Import torch before faiss, as `import vqkit` does. The faiss-cpu wheel bundles its own libgomp.
# When torch is loaded first, FAISS's OpenMP calls bind to torch's libgomp, so both libraries
# share one thread pool. When faiss comes first, each keeps its own pool, and the idle threads
# of one pool spin while the other works. With faiss-cpu 1.15.1 and torch 2.14.1 on a 2-core
# AMD EPYC VM, vqkit's eval forward (N=4096, D=64, K=1024) then ran 2.4x slower and its training
# steps about 8x slower, because both alternate torch ops and FAISS calls. The report states
# which case the run measured.
FAISS_IMPORTED_BEFORE_TORCH = "faiss" in sys.modules and "torch" not in sys.modules
import torch  # noqa: E402, F401  (imported for its side effect on the OpenMP runtime, see above)

from vqkit.cli_types import positive_int  # noqa: E402

if __package__:
    from . import _machine, _report, _timing
else:  # imported by `python benchmarks/NAME.py`, which puts benchmarks/ on sys.path
    import _machine
    import _report
    import _timing

logger = logging.getLogger(__name__)


# ---- command line ------------------------------------------------------------------------------


parse_thread_count = positive_int("thread count")


def add_common_arguments(
    parser: argparse.ArgumentParser, section_heading: str, default_markdown: Path, default_json: Path
) -> None:
    """Add the options of every benchmark: --threads, --out-md, --out-json and --no-write."""
    parser.add_argument(
        "--threads",
        type=parse_thread_count,
        metavar="N",
        default=os.cpu_count() or 1,
        help="threads for both torch and FAISS (default: os.cpu_count(), here %(default)s)",
    )
    parser.add_argument(
        "--out-md",
        type=Path,
        default=default_markdown,
        metavar="FILE",
        help=f"markdown file whose '{section_heading}' section is replaced, relative to the current directory "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--out-json",
        type=Path,
        default=default_json,
        metavar="FILE",
        help="file for the raw results, relative to the current directory (default: %(default)s)",
    )
    parser.add_argument("--no-write", action="store_true", help="print the report only; write no files")


def parse_arguments(
    build_parser: Callable[[str], argparse.ArgumentParser],
    argv: Sequence[str] | None,
    cli_command: str,
    script_command: str,
) -> tuple[argparse.Namespace, str] | int:
    """Parse a benchmark's arguments and return them with the command line as run, or an exit status.

    With `argv` None the arguments come from sys.argv and the command is `script_command`, as
    in `python benchmarks/NAME.py`. `vqkit bench NAME` passes them explicitly, and the command
    is then `cli_command`. `build_parser(prog)` builds the parser. The exit status, returned
    instead of raising SystemExit, is 0 after --help and 2 for invalid arguments.
    """
    command_prefix = script_command if argv is None else cli_command
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(command_prefix)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --help or an invalid argument
        return exit_request.code if isinstance(exit_request.code, int) else 2
    return args, " ".join([command_prefix, *map(shlex.quote, argv)])


# ---- timed run ---------------------------------------------------------------------------------


@dataclass
class RunRecord:
    """Wall time and machine description of a `timed_run` block, set when the block ends."""

    wall_seconds: float = 0.0
    machine: dict[str, object] = field(default_factory=dict)


@contextlib.contextmanager
def timed_run(threads: int) -> Iterator[RunRecord]:
    """Run the block with torch and FAISS at `threads` threads, then record its wall time and the machine.

    The machine is described after the block, so that the libraries it reports are loaded and
    the load average at the end includes the run.
    """
    record = RunRecord()
    load_before = _machine.load_average()
    start = time.perf_counter()
    with _timing.thread_count(threads):
        yield record
    record.wall_seconds = time.perf_counter() - start
    record.machine = _machine.describe_machine(threads, FAISS_IMPORTED_BEFORE_TORCH, load_before)


# ---- output files ------------------------------------------------------------------------------


def write_markdown(path: Path, section: str, heading: str) -> None:
    """Replace the section under `heading` of the markdown file at `path`, creating the file if needed."""
    document = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_report.replace_section(document, section, heading), encoding="utf-8")
    logger.info("Wrote the report to %s", path)


def write_json(path: Path, results: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    logger.info("Wrote the raw results to %s", path)


# ---- a whole run -------------------------------------------------------------------------------


def run_section_benchmark(
    argv: Sequence[str] | None,
    build_parser: Callable[[str], argparse.ArgumentParser],
    commands: tuple[str, str],
    heading: str,
    run_benchmark: Callable[[bool], dict[str, object]],
    render_section: Callable[[dict[str, object], str, float, dict[str, object]], str],
    packages: Sequence[str] = (),
) -> int:
    """Run a benchmark that reports one markdown section; return the exit status.

    `commands` is (the `vqkit bench` command, the script command), as `parse_arguments` takes
    them. `run_benchmark(quick)` returns the results. `render_section(machine, command,
    wall_seconds, results)` returns the section under `heading`, which is printed and, unless
    --no-write, replaces that section of --out-md, while --out-json receives the raw results.
    The versions of `packages` are added to the machine description.
    """
    parsed = parse_arguments(build_parser, argv, *commands)
    if isinstance(parsed, int):  # the exit status after --help or an invalid argument
        return parsed
    args, command = parsed

    with timed_run(args.threads) as run:
        bench = run_benchmark(args.quick)
    wall_seconds, machine = run.wall_seconds, run.machine
    for package in packages:
        machine[package] = _machine.package_version(package)

    section = render_section(machine, command, wall_seconds, bench)
    print(section)
    if not args.no_write:
        write_markdown(args.out_md, section, heading)
        write_json(args.out_json, {"command": command, "wall_seconds": wall_seconds, "machine": machine, **bench})
    return 0

