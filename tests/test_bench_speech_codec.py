"""The speech codec benchmark, benchmarks/speech_codec.py, run in its --quick form.

The module is loaded the way `vqkit bench speech-codec` loads it, as vqkit_benchmarks.speech_codec.
"""

from __future__ import annotations

import pytest

from vqkit import commands

OTHER_SECTIONS = "# Benchmarks\n\n## Image tokenizer\n\nkept as is\n\n## Speech codec\n\nstale numbers\n"
CODECS = ("lscodec-50hz", "lscodec-25hz", "encodec", "mimi")


@pytest.fixture(scope="module")
def benchmark():
    return commands.load_benchmark_module("speech_codec")


@pytest.fixture(scope="module")
def written_run(benchmark, tmp_path_factory, run_benchmark_with_outputs):
    """Run `--quick --threads 1` once with both outputs in a temporary folder; return (status, stdout, markdown, results)."""
    folder = tmp_path_factory.mktemp("bench")
    return run_benchmark_with_outputs(benchmark, folder, OTHER_SECTIONS, ["--quick", "--threads", "1"])


def test_json_times_every_codec(written_run, benchmark):
    status, _, _, results = written_run

    assert status == 0
    assert tuple(results["rows"]) == CODECS
    for name, row in results["rows"].items():
        for step in ("encode", "decode"):
            assert row[step]["seconds"] > 0, (name, step)
            assert len(row[step]["all_seconds"]) == benchmark.QUICK.repeats, (name, step)
            expected = benchmark.QUICK.clip_seconds / row[step]["seconds"]
            assert row[step]["times_real_time"] == pytest.approx(expected), (name, step)
            reference = results["rows"]["encodec"][step]["seconds"]
            assert row[step]["ratio_to_reference"] == pytest.approx(reference / row[step]["seconds"]), (name, step)


def test_codec_descriptions(written_run):
    _, _, _, results = written_run
    rows = results["rows"]

    assert [rows[name]["bitrate"] for name in CODECS] == [450, 250, 1500, 1100]
    assert [rows[name]["sample_rate"] for name in CODECS] == [16_000, 16_000, 24_000, 24_000]
    assert rows["encodec"]["label"] == "transformers EnCodec 24 kHz, 2 codebooks"
    # The vqkit rows count the codec and the vocoder that decode runs.
    assert rows["lscodec-50hz"]["parameters"] == 3_694_456 + 1_575_234
    assert results["machine"]["threads"] == 1
    assert results["machine"]["transformers"]


def test_markdown_section_replaced_and_rest_kept(written_run):
    _, printed, markdown, _ = written_run

    assert markdown.startswith("# Benchmarks\n\n## Image tokenizer\n\nkept as is\n\n## Speech codec\n")
    assert markdown.count("## Speech codec") == 1
    assert "stale numbers" not in markdown
    assert printed.strip() == markdown[markdown.index("## Speech codec") :].strip()
    assert "Command: `vqkit bench speech-codec --quick --threads 1" in markdown
    assert "| vqkit speech-lscodec-50hz | 450 | 50 | 16 kHz | 5.3M |" in markdown
    assert "| transformers EnCodec 24 kHz, 2 codebooks | 1500 | 75 | 24 kHz | 14.9M | " in markdown


def test_invalid_thread_count_rejected(benchmark, capsys):
    assert benchmark.main(["--threads", "0", "--no-write"]) == 2
    assert "thread count" in capsys.readouterr().err


def test_bench_target_is_registered(capsys):
    assert commands.run_target("bench", "speech-codec", ["--help"]) == 0
    assert "--quick" in capsys.readouterr().out
