"""The quantizer benchmark, benchmarks/quantizers.py, run in its --quick form.

The module is loaded the way `vqkit bench quantizers` loads it, as vqkit_benchmarks.quantizers.
"""

from __future__ import annotations

import math

import pytest

from vqkit import commands

SEARCH_CONTENDERS = ("vqkit", "faiss", "vqp")
LEARNING_CONTENDERS = ("vqkit", "faiss_kmeans", "vqp")
OTHER_SECTIONS = "# Benchmarks\n\n## Quantizers\n\nstale numbers\n\n## Tokenizers\n\nkept as is\n"


def parse_markdown_tables(text: str) -> list[list[dict[str, str]]]:
    """Return every pipe table in `text` as a list of rows, each a dict from column header to cell."""
    tables = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        if not lines[index].startswith("|"):
            index += 1
            continue
        block = []
        while index < len(lines) and lines[index].startswith("|"):
            block.append([cell.strip() for cell in lines[index].strip("|").split("|")])
            index += 1
        header, body = block[0], block[2:]  # block[1] is the |---| separator
        tables.append([dict(zip(header, row)) for row in body])
    return tables


def find_table(tables: list[list[dict[str, str]]], column: str) -> list[dict[str, str]]:
    matches = [table for table in tables if table and column in table[0]]
    assert len(matches) == 1, f"expected one table with a {column!r} column, found {len(matches)}"
    return matches[0]


@pytest.fixture(scope="module")
def benchmark():
    return commands.load_benchmark_module("quantizers")


# The runs use one thread: with two, OpenMP threads that spin while idle made a run on a busy
# 2-core machine take 30 s instead of 4 s.


@pytest.fixture(scope="module")
def printed_run(benchmark, tmp_path_factory, run_benchmark):
    """Run `--quick --no-write` once, from an empty working directory; return (status, stdout, folder)."""
    folder = tmp_path_factory.mktemp("no-write")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        status, output = run_benchmark(benchmark, ["--quick", "--no-write", "--threads", "1"])
    return status, output, folder


@pytest.fixture(scope="module")
def written_run(benchmark, tmp_path_factory, run_benchmark_with_outputs):
    """Run `--quick` once with both outputs in a temporary folder; return (status, markdown, results)."""
    folder = tmp_path_factory.mktemp("written")
    status, _, markdown, results = run_benchmark_with_outputs(
        benchmark, folder, OTHER_SECTIONS, ["--quick", "--threads", "1"]
    )
    return status, markdown, results


def test_printed_run_succeeds_without_files(printed_run):
    status, output, folder = printed_run

    assert status == 0
    assert output.startswith("## Quantizers\n")
    assert list(folder.iterdir()) == []


def test_printed_search_table_has_every_contender(printed_run):
    _, output, _ = printed_run
    rows = find_table(parse_markdown_tables(output), "vqkit / FAISS")

    assert rows
    for row in rows:
        for column in ("vqkit Mvec/s", "FAISS Mvec/s", "vqp Mvec/s"):
            assert float(row[column]) > 0, f"{column} at D={row['D']}, K={row['K']}: {row[column]}"


def test_printed_vqkit_agrees_with_faiss(printed_run):
    _, output, _ = printed_run
    rows = find_table(parse_markdown_tables(output), "vqkit same index")

    for row in rows:
        assert float(row["vqkit same index"]) >= 0.99, f"D={row['D']}, K={row['K']}"
        assert float(row["vqkit same distance"]) >= 0.99, f"D={row['D']}, K={row['K']}"


def test_printed_learning_table_has_every_contender(printed_run):
    _, output, _ = printed_run
    rows = find_table(parse_markdown_tables(output), "held-out MSE / variance")

    names = {row["Contender"] for row in rows}
    assert names == {"vqkit VectorQuantizer", "faiss.Kmeans", "vqp VectorQuantize"}
    for row in rows:
        assert 0 < float(row["held-out MSE / variance"]) < 1, row
        assert 0 < float(row["codes used (%)"]) <= 100, row


def test_printed_mse_ratio_is_finite(printed_run):
    _, output, _ = printed_run
    rows = find_table(parse_markdown_tables(output), "vqkit MSE / faiss.Kmeans MSE")

    assert rows
    for row in rows:
        ratio = float(row["vqkit MSE / faiss.Kmeans MSE"])
        assert math.isfinite(ratio), row
        assert ratio > 0, row


def test_printed_targets_are_all_measured(printed_run):
    _, output, _ = printed_run
    rows = find_table(parse_markdown_tables(output), "Target")

    assert len(rows) == 3
    for row in rows:
        assert row["Status"] in ("met", "not met"), row


def test_json_search_rows_have_every_contender(written_run):
    status, _, results = written_run

    assert status == 0
    rows = results["search"]["rows"]
    assert [(row["dim"], row["codebook_size"]) for row in rows] == [(8, 1024), (64, 1024)]
    for row in rows:
        assert set(row["contenders"]) == set(SEARCH_CONTENDERS)
        assert row["sgemm"]["gflops"] > 0
        for name, result in row["contenders"].items():
            assert result["vectors_per_second"] > 0, name
            assert len(result["all_seconds"]) == results["search"]["config"]["repeats"], name


def test_json_vqkit_agrees_with_faiss(written_run):
    _, _, results = written_run

    for row in results["search"]["rows"]:
        vqkit = row["contenders"]["vqkit"]
        assert vqkit["index_agreement"] >= 0.99, row["dim"]
        assert vqkit["distance_agreement"] >= 0.99, row["dim"]


def test_json_learning_rows_have_every_contender(written_run):
    _, _, results = written_run
    learning = results["learning"]

    assert {row["contender"] for row in learning["rows"]} == set(LEARNING_CONTENDERS)
    for row in learning["rows"]:
        assert len(row["per_seed"]) == len(learning["config"]["seeds"])
        assert 0 < row["mse_over_variance"]["mean"] < 1, row["contender"]
        assert row["seconds"]["mean"] > 0, row["contender"]
    for ratio in learning["vqkit_over_faiss_mse"].values():
        assert math.isfinite(ratio["mean"])
        assert ratio["mean"] > 0


def test_json_records_machine_and_targets(written_run):
    _, _, results = written_run

    assert results["command"].startswith("vqkit bench quantizers --quick")
    assert results["machine"]["threads"] == 1
    assert results["machine"]["faiss_imported_before_torch"] in (True, False)
    assert [target["met"] in (True, False) for target in results["targets"]] == [True, True, True]


def test_markdown_section_replaced_and_rest_kept(written_run):
    _, markdown, _ = written_run

    assert markdown.startswith("# Benchmarks\n\n## Quantizers\n")
    assert markdown.count("## Quantizers") == 1
    assert "stale numbers" not in markdown
    assert markdown.endswith("\n## Tokenizers\n\nkept as is\n")
    assert "Command: `vqkit bench quantizers --quick --threads 1 --out-md" in markdown


def test_replace_section_appends_when_missing(benchmark):
    report = benchmark._report

    assert report.replace_section("# Benchmarks\n", "## Quantizers\n\nnew\n", report.SECTION_HEADING) == (
        "# Benchmarks\n\n## Quantizers\n\nnew\n"
    )
    assert report.replace_section("", "## Quantizers\n", report.SECTION_HEADING) == "## Quantizers\n"


def test_replace_section_keeps_subsections_inside(benchmark):
    report = benchmark._report
    document = "# B\n\n## Quantizers\n\nold\n\n### Old table\n\nold\n\n## Models\n\nx\n"

    assert report.replace_section(document, "## Quantizers\n\nnew\n", report.SECTION_HEADING) == (
        "# B\n\n## Quantizers\n\nnew\n\n## Models\n\nx\n"
    )


def test_invalid_thread_count_returns_usage_error(benchmark, capsys):
    assert benchmark.main(["--threads", "0", "--no-write"]) == 2
    assert "invalid thread count '0'" in capsys.readouterr().err


def test_bench_target_loads_benchmark(capsys):
    assert commands.run_target("bench", "quantizers", ["--help"]) == 0
    assert "--quick" in capsys.readouterr().out
