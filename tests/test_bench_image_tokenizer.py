"""The image tokenizer benchmark, benchmarks/image_tokenizer.py, run in its --quick form.

The module is loaded the way `vqkit bench image-tokenizer` loads it, as vqkit_benchmarks.image_tokenizer.
"""

from __future__ import annotations

import contextlib
import io

import pytest

from vqkit import commands

OTHER_SECTIONS = "# Benchmarks\n\n## Quantizers\n\nkept as is\n\n## Image tokenizer\n\nstale numbers\n"


@pytest.fixture(scope="module")
def benchmark():
    return commands.load_benchmark_module("image_tokenizer")


@pytest.fixture(scope="module")
def written_run(benchmark, tmp_path_factory, run_benchmark_with_outputs):
    """Run `--quick --threads 1` once with both outputs in a temporary folder; return (status, stdout, markdown, results)."""
    folder = tmp_path_factory.mktemp("bench")
    return run_benchmark_with_outputs(benchmark, folder, OTHER_SECTIONS, ["--quick", "--threads", "1"])


def test_json_has_both_models_per_shape(written_run, benchmark):
    status, _, _, results = written_run

    assert status == 0
    shapes = [(row["image_size"], row["batch_size"]) for row in results["rows"]]
    assert shapes == [(32, 2), (32, 1)]
    for row in results["rows"]:
        for name in benchmark.CONTENDERS:
            contender = row["contenders"][name]
            assert contender["images_per_second"] > 0, name
            assert len(contender["all_seconds"]) == benchmark.QUICK.repeats, name
        expected = row["contenders"]["vqkit"]["images_per_second"] / row["contenders"]["diffusers"]["images_per_second"]
        assert row["ratio"] == pytest.approx(expected)


def test_models_share_configuration(written_run):
    _, _, _, results = written_run
    model = results["model"]

    assert model["vqkit_encoder_decoder_parameters"] == model["diffusers_encoder_decoder_parameters"]
    assert (model["codebook_size"], model["depth"], model["downsample_factor"]) == (512, 4, 4)
    assert results["machine"]["threads"] == 1
    assert results["machine"]["diffusers"]


def test_markdown_section_replaced_and_rest_kept(written_run):
    _, printed, markdown, _ = written_run

    assert markdown.startswith("# Benchmarks\n\n## Quantizers\n\nkept as is\n\n## Image tokenizer\n")
    assert markdown.count("## Image tokenizer") == 1
    assert "stale numbers" not in markdown
    assert printed.strip() == markdown[markdown.index("## Image tokenizer") :].strip()
    assert "Command: `vqkit bench image-tokenizer --quick --threads 1" in markdown
    assert "| 32x32 | 2 |" in markdown


def test_replace_section_appends_when_missing(benchmark):
    document = benchmark._report.replace_section(
        "# Benchmarks\n", "## Image tokenizer\n\nnew\n", benchmark.SECTION_HEADING
    )

    assert document == "# Benchmarks\n\n## Image tokenizer\n\nnew\n"


def test_no_write_leaves_folder_empty(benchmark, tmp_path, monkeypatch):
    monkeypatch.setattr(benchmark, "QUICK", benchmark.BenchConfig((16,), (1,), 1, 0.0))
    monkeypatch.chdir(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()) as output:
        status = benchmark.main(["--quick", "--threads", "1", "--no-write"])

    assert status == 0
    assert output.getvalue().startswith("## Image tokenizer\n")
    assert list(tmp_path.iterdir()) == []


def test_bench_target_is_registered(capsys):
    assert commands.run_target("bench", "image-tokenizer", ["--help"]) == 0
    assert "--quick" in capsys.readouterr().out
