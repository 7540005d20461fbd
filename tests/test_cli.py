"""The `vqkit` command line (vqkit.cli) and its target registry (vqkit.commands)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import vqkit
from vqkit import cli, commands, registry

VQKIT_SCRIPT = Path(sys.executable).with_name("vqkit")


def run_vqkit(*args: str) -> subprocess.CompletedProcess[str]:
    assert VQKIT_SCRIPT.is_file(), f"{VQKIT_SCRIPT} not found; install vqkit with pip install -e '.[test]'"
    return subprocess.run([str(VQKIT_SCRIPT), *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def isolated_targets(monkeypatch):
    """Give each test a copy of the target table, so registrations do not leak into other tests."""
    copied = {command: dict(targets) for command, targets in commands._targets.items()}
    monkeypatch.setattr(commands, "_targets", copied)
    return copied


@pytest.fixture
def fake_benchmarks(tmp_path, monkeypatch):
    """A benchmarks folder with one benchmark that imports a sibling helper and a dataclass."""
    root = tmp_path / "benchmarks"
    root.mkdir()
    (root / "helper.py").write_text("SCALE = 3\n")
    (root / "quantizers.py").write_text(
        "from dataclasses import dataclass\n"
        "from . import helper\n"
        "\n"
        "@dataclass\n"
        "class Row:\n"
        "    name: str\n"
        "\n"
        "def main(argv=None):\n"
        "    print('quantizers ran with', argv, helper.SCALE, Row('rvq'))\n"
        "    return 0\n"
    )
    # Other shipped bench targets get a stub file each, so that `bench all` can load them.
    for entry in commands.command_targets("bench"):
        if not isinstance(entry.handler, str) or not entry.handler.startswith(commands.BENCHMARK_MODULE_PREFIX):
            continue
        stub = root / (entry.handler.partition(":")[0].removeprefix(commands.BENCHMARK_MODULE_PREFIX) + ".py")
        if not stub.exists():
            stub.write_text("def main(argv=None):\n    return 0\n")
    monkeypatch.setattr(commands, "benchmarks_root", lambda: root)
    yield root
    for name in [name for name in sys.modules if name.partition(".")[0] == commands.BENCHMARK_PACKAGE]:
        del sys.modules[name]


def test_help_lists_every_command():
    result = run_vqkit("--help")

    assert result.returncode == 0, result.stderr
    for command in ["list", "encode", "decode", "train", "eval", "demo", "bench"]:
        assert command in result.stdout


def test_version_matches_package():
    result = run_vqkit("--version")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"vqkit {vqkit.__version__}"


def test_list_prints_registered_models():
    result = run_vqkit("list")

    assert result.returncode == 0, result.stderr
    names = registry.list_models()
    if names:
        for name in names:
            assert name in result.stdout
    else:
        assert result.stdout.strip() == "No models are registered."


def test_list_commands_shows_quantizer_benchmark():
    result = run_vqkit("list", "commands")

    assert result.returncode == 0, result.stderr
    assert "bench quantizers" in result.stdout


def test_unknown_bench_target_exits_2():
    result = run_vqkit("bench", "no-such-benchmark")

    assert result.returncode == 2
    assert "'no-such-benchmark'" in result.stderr
    assert "quantizers" in result.stderr
    assert "all" in result.stderr


def test_missing_target_exits_2():
    result = run_vqkit("encode")

    assert result.returncode == 2
    assert "missing target" in result.stderr


def test_invalid_port_exits_2():
    result = run_vqkit("demo", "--port", "70000")

    assert result.returncode == 2
    assert "invalid port '70000'" in result.stderr


def test_cli_import_skips_heavy_packages():
    code = "import sys, vqkit.cli; print(sorted({'torch', 'gradio', 'diffusers'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_registered_handler_receives_remaining_arguments(isolated_targets):
    received = []
    commands.register_command("encode", "echo", lambda argv: received.append(argv), help="Record arguments.")

    status = cli.main(["encode", "echo", "--size", "64", "input.png"])

    assert status == 0
    assert received == [["--size", "64", "input.png"]]


def test_handler_exit_status_is_returned(isolated_targets):
    commands.register_command("eval", "failing", lambda argv: 3)

    assert cli.main(["eval", "failing"]) == 3


def test_string_handler_is_imported_when_run(isolated_targets, capsys):
    commands.register_command("train", "nested-cli", "vqkit.cli:main")

    status = cli.main(["train", "nested-cli", "list", "commands"])

    assert status == 0
    assert "train nested-cli" in capsys.readouterr().out


def test_bench_runs_benchmark_file_with_arguments(isolated_targets, fake_benchmarks, capsys):
    status = cli.main(["bench", "quantizers", "--quick"])

    assert status == 0
    assert "quantizers ran with ['--quick'] 3 Row(name='rvq')" in capsys.readouterr().out


def test_bench_all_runs_every_benchmark_and_reports_failure(isolated_targets, fake_benchmarks, capsys):
    calls = []
    commands.register_command("bench", "broken", lambda argv: 1 / 0)
    commands.register_command("bench", "counting", lambda argv: calls.append(argv) or 0)

    status = cli.main(["bench", "all", "--quick"])

    assert status == 1
    assert calls == [["--quick"]]
    assert "quantizers ran with ['--quick']" in capsys.readouterr().out


def test_bench_all_succeeds_when_every_benchmark_passes(isolated_targets, fake_benchmarks):
    assert cli.main(["bench", "all"]) == 0


def test_missing_benchmark_file_exits_1(isolated_targets, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(commands, "benchmarks_root", lambda: tmp_path)

    status = cli.main(["bench", "quantizers"])

    assert status == 1
    assert "benchmark file not found" in capsys.readouterr().err


def test_register_command_rejects_conflicting_handler(isolated_targets):
    commands.register_command("decode", "codes", "vqkit.cli:main")

    with pytest.raises(ValueError, match="already registered"):
        commands.register_command("decode", "codes", "vqkit.cli:build_parser")
    commands.register_command("decode", "codes", "vqkit.cli:build_parser", replace=True)
    assert commands.get_command_target("decode", "codes").handler == "vqkit.cli:build_parser"


@pytest.mark.parametrize(
    ("command", "target", "handler", "expected_message"),
    [
        ("serve", "x", "vqkit.cli:main", "unknown command 'serve'"),
        ("bench", "all", "vqkit.cli:main", "invalid target name 'all'"),
        ("bench", "Big Name", "vqkit.cli:main", "invalid target name 'Big Name'"),
        ("bench", "x", "vqkit.cli.main", "invalid handler for bench x: 'vqkit.cli.main'"),
        ("bench", "x", 42, "invalid handler for bench x: 42"),
    ],
)
def test_register_command_rejects_invalid_values(isolated_targets, command, target, handler, expected_message):
    with pytest.raises(ValueError, match=expected_message.replace(".", r"\.")):
        commands.register_command(command, target, handler)


def test_unregister_command_removes_target(isolated_targets):
    commands.register_command("decode", "codes", "vqkit.cli:main")

    commands.unregister_command("decode", "codes")

    assert "codes" not in [entry.name for entry in commands.command_targets("decode")]
    with pytest.raises(ValueError, match="unknown decode target 'codes'"):
        commands.unregister_command("decode", "codes")
