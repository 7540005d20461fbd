"""The `vqkit` command-line tool.

    vqkit list [models|commands|tabs]
    vqkit encode|decode|train|eval TARGET [ARGS...]
    vqkit bench TARGET|all [ARGS...]
    vqkit demo [--host HOST] [--port PORT]

Capabilities add targets with `register_command` (see `vqkit.commands`). Each target's
handler receives the arguments after the target name. This module imports no handler code,
torch or gradio until a command needs them, so `vqkit --help` returns quickly.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import vqkit
from vqkit import commands, registry
from vqkit.commands import ALL_TARGETS, TARGET_COMMANDS, register_command, unregister_command
from vqkit.demos.tabs import list_tabs

__all__ = ["build_parser", "main", "register_command", "unregister_command"]

logger = logging.getLogger("vqkit.cli")

# Exit status for invalid command lines, as argparse uses.
USAGE_ERROR = 2
LIST_CHOICES = ("models", "commands", "tabs")


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser. Target lists in the help text come from the registered targets."""
    parser = argparse.ArgumentParser(
        prog="vqkit",
        description="Vector-quantized tokenizers and models: list, run and demo them.",
    )
    parser.add_argument("--version", action="version", version=f"vqkit {vqkit.__version__}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="minimum level of log messages written to stderr (default: INFO)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")

    list_parser = subparsers.add_parser("list", help="List registered models, command targets or demo tabs.")
    list_parser.add_argument(
        "kind",
        nargs="?",
        default="models",
        choices=LIST_CHOICES,
        help="what to list (default: models)",
    )

    for command, help_text in TARGET_COMMANDS.items():
        command_parser = subparsers.add_parser(
            command,
            help=help_text,
            description=help_text,
            epilog=_describe_targets_for_help(command),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command_parser.add_argument("target", nargs="?", help="target to run; see the list below")
        command_parser.add_argument(
            "args",
            nargs=argparse.REMAINDER,
            help="arguments for the target; run `vqkit %s TARGET --help` for them" % command,
        )

    demo_parser = subparsers.add_parser("demo", help="Serve the gradio demo app.")
    demo_parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    demo_parser.add_argument("--port", type=_parse_port, default=7860, help="TCP port to listen on (default: 7860)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `vqkit` command line and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    # FAISS logs at INFO which CPU-specific build it tried and failed to load, which reads like
    # an error; only its warnings are shown.
    logging.getLogger("faiss.loader").setLevel(max(logging.WARNING, logging.getLogger().level))

    if args.command is None:
        parser.print_help(sys.stderr)
        return USAGE_ERROR
    try:
        if args.command == "list":
            return _list(args.kind)
        if args.command == "demo":
            return _demo(args.host, args.port)
        return _run_command(args.command, args.target, args.args)
    except KeyboardInterrupt:
        logger.info("Interrupted")
        return 130


def _list(kind: str) -> int:
    if kind == "models":
        rows = [(entry.name, entry.description) for entry in registry.model_entries()]
        empty_message = "No models are registered."
    elif kind == "commands":
        rows = [
            (f"{command} {entry.name}", entry.help)
            for command in TARGET_COMMANDS
            for entry in commands.command_targets(command)
        ]
        empty_message = "No command targets are registered."
    else:
        rows = [(tab.title, "") for tab in list_tabs()]
        empty_message = "No demo tabs are registered."

    if not rows:
        print(empty_message)
        return 0
    width = max(len(name) for name, _ in rows)
    for name, description in rows:
        print(f"{name:<{width}}  {description}".rstrip())
    return 0


def _demo(host: str, port: int) -> int:
    from vqkit.demos.app import launch_app

    launch_app(host=host, port=port)
    return 0


def _run_command(command: str, target: str | None, argv: list[str]) -> int:
    if target is None:
        print(f"vqkit {command}: missing target. {commands.describe_known_targets(command)}", file=sys.stderr)
        return USAGE_ERROR
    if command == "bench" and target == ALL_TARGETS:
        return _run_all_benchmarks(argv)

    try:
        entry = commands.get_command_target(command, target)
    except ValueError as error:
        print(f"vqkit: {error}", file=sys.stderr)
        return USAGE_ERROR
    try:
        handler = commands.load_handler(entry)
    except (ImportError, FileNotFoundError) as error:
        print(f"vqkit {command} {target}: cannot load handler {entry.handler!r}: {error}", file=sys.stderr)
        return 1
    return commands.call_handler(entry, handler, argv)


def _run_all_benchmarks(argv: list[str]) -> int:
    """Run every bench target with the same arguments; return 1 when any of them failed, else 0."""
    entries = commands.command_targets("bench")
    if not entries:
        print(f"vqkit bench: {commands.describe_known_targets('bench')}", file=sys.stderr)
        return USAGE_ERROR

    failed = []
    for entry in entries:
        logger.info("Running benchmark %s", entry.name)
        try:
            status = commands.call_handler(entry, commands.load_handler(entry), argv)
        except Exception:
            logger.exception("Benchmark %s failed", entry.name)
            status = 1
        if status != 0:
            logger.error("Benchmark %s exited with status %d", entry.name, status)
            failed.append(entry.name)

    if failed:
        logger.error("%d of %d benchmarks failed: %s", len(failed), len(entries), ", ".join(failed))
        return 1
    logger.info("All %d benchmarks finished", len(entries))
    return 0


def _describe_targets_for_help(command: str) -> str:
    entries = commands.command_targets(command)
    if not entries:
        return f"No {command} targets are registered yet."
    rows = [(entry.name, entry.help) for entry in entries]
    if command == "bench":
        rows.append((ALL_TARGETS, "Run every benchmark above with the same arguments."))
    width = max(len(name) for name, _ in rows)
    return "\n".join(["targets:"] + [f"  {name:<{width}}  {help_text}".rstrip() for name, help_text in rows])


def _parse_port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {value!r}: give an integer from 1 to 65535")
    return port


if __name__ == "__main__":
    sys.exit(main())
