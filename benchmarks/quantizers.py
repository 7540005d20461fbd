"""Benchmark vqkit's VectorQuantizer against FAISS and vector-quantize-pytorch on the CPU.

Part a times nearest-code search with one frozen codebook (see _search_bench.py). Part b
compares learned codebooks on a Gaussian mixture with a held-out set (see
_learning_bench.py). The run prints a markdown report with the targets and whether each is
met, replaces the "## Quantizers" section of docs/benchmarks.md with it, and writes the raw
numbers to results/bench_quantizers.json. Both paths are relative to the working directory.

    vqkit bench quantizers [--quick] [--part a|b|all] [--threads N]
                           [--out-md FILE] [--out-json FILE] [--no-write]
    python benchmarks/quantizers.py [same options]
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

# _common comes first: it records whether faiss was imported before torch, then imports torch.
if __package__:
    from . import _common, _learning_bench, _report, _search_bench
else:  # `python benchmarks/quantizers.py` puts benchmarks/ on sys.path instead of importing a package
    import _common
    import _learning_bench
    import _report
    import _search_bench

logger = logging.getLogger(__name__)

CLI_COMMAND = "vqkit bench quantizers"
SCRIPT_COMMAND = "python benchmarks/quantizers.py"
DEFAULT_MARKDOWN = Path("docs/benchmarks.md")
DEFAULT_JSON = Path("results/bench_quantizers.json")

# Targets. Search throughput must reach these multiples of the other libraries at every (D, K).
MIN_SPEEDUP_OVER_FAISS = 1.0
MIN_SPEEDUP_OVER_VQP = 10.0
# A learned vqkit codebook's held-out MSE may exceed faiss.Kmeans's by at most 2%, with 95% of codes used.
MAX_MSE_RATIO_TO_FAISS = 1.02
MIN_CODE_USAGE = 0.95

FULL_SEARCH = _search_bench.SearchConfig(
    num_queries=32768,
    dims=(8, 64, 256),
    codebook_sizes=(1024, 4096, 16384),
    repeats=5,
    min_seconds=0.2,
    peak_size=4096,
)
QUICK_SEARCH = _search_bench.SearchConfig(
    num_queries=4096, dims=(8, 64), codebook_sizes=(1024,), repeats=3, min_seconds=0.02, peak_size=1024
)

# threshold_ema_dead_code for vector-quantize-pytorch at each K: the value with the lowest
# held-out MSE among 2, 0.5 and 0.1, on seed 0 of this benchmark with 640 steps. At K=1024 a
# code's mean EMA count is batch_size / K = 1, so a threshold of 2 flagged about 750 of the
# 1024 codes for replacement at every step, and 15% of the codes ended up unused on the
# held-out set.
VQP_DEAD_CODE_THRESHOLDS = {256: 2.0, 1024: 0.1}

FULL_LEARNING = _learning_bench.LearningConfig(
    dim=32,
    components=256,
    train_size=65536,
    heldout_size=16384,
    batch_size=1024,
    steps=1000,
    codebook_sizes=(256, 1024),
    seeds=(0, 1, 2),
    faiss_iters=25,
    vqp_dead_code_thresholds=VQP_DEAD_CODE_THRESHOLDS,
)
QUICK_LEARNING = _learning_bench.LearningConfig(
    dim=32,
    components=256,
    train_size=16384,
    heldout_size=4096,
    batch_size=1024,
    steps=48,
    codebook_sizes=(256,),
    seeds=(0,),
    faiss_iters=10,
    vqp_dead_code_thresholds=VQP_DEAD_CODE_THRESHOLDS,
)


def _format_set(values: Sequence[int]) -> str:
    return "{" + ", ".join(map(str, values)) + "}"


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Benchmark vqkit's VectorQuantizer against FAISS and vector-quantize-pytorch: "
        "(a) nearest-code search with a frozen codebook, (b) codebook learning on a Gaussian mixture.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"run a small subset in seconds, for smoke tests: search with N={QUICK_SEARCH.num_queries}, "
        f"D in {_format_set(QUICK_SEARCH.dims)} and K in {_format_set(QUICK_SEARCH.codebook_sizes)}, learning "
        f"with {len(QUICK_LEARNING.seeds)} seed at K in {_format_set(QUICK_LEARNING.codebook_sizes)}",
    )
    parser.add_argument(
        "--part",
        choices=("a", "b", "all"),
        default="all",
        help="which part to run: a (search), b (learning) or all (default). The written section then "
        "contains only the parts that ran.",
    )
    _common.add_common_arguments(parser, _report.SECTION_HEADING, DEFAULT_MARKDOWN, DEFAULT_JSON)
    return parser


def make_target(description: str, measured: str, met: bool | None) -> dict[str, object]:
    """Return one row of the targets table. `met` is None when the run did not measure the target."""
    if met is None:
        status = "not measured"
    else:
        status = "met" if met else "not met"
    return {"target": description, "measured": measured, "status": status, "met": met}


def speedup_target(search: dict[str, object] | None, other: str, other_name: str, minimum: float) -> dict[str, object]:
    """Check that vqkit's search throughput is at least `minimum` times the contender `other`'s at every (D, K)."""
    description = f"search >= {minimum:.1f}x {other_name} at every (D, K)"
    if search is None:
        return make_target(description, "part a not run", None)
    rows = search["rows"]
    missing = [row for row in rows if other not in row["contenders"]]
    if missing:
        return make_target(description, f"{other_name} skipped at {len(missing)} of {len(rows)} shapes", None)

    def speedup(row: dict[str, object]) -> float:
        return row["contenders"]["vqkit"]["vectors_per_second"] / row["contenders"][other]["vectors_per_second"]

    worst_row = min(rows, key=speedup)
    measured = f"min {speedup(worst_row):.2f}x at D={worst_row['dim']}, K={worst_row['codebook_size']}"
    return make_target(description, measured, speedup(worst_row) >= minimum)


def learning_targets(learning: dict[str, object] | None) -> list[dict[str, object]]:
    """Check, for each K, vqkit's mean held-out MSE against faiss.Kmeans and its mean code usage."""
    description = (
        f"learned codebook: held-out MSE <= {MAX_MSE_RATIO_TO_FAISS:g}x faiss.Kmeans, "
        f">= {100 * MIN_CODE_USAGE:g}% of codes used"
    )
    if learning is None:
        return [make_target(description, "part b not run", None)]

    targets = []
    for codebook_size, ratio in learning["vqkit_over_faiss_mse"].items():
        vqkit_row = next(
            row for row in learning["rows"] if row["contender"] == "vqkit" and row["codebook_size"] == codebook_size
        )
        usage = vqkit_row["code_usage"]["mean"]
        met = ratio["mean"] <= MAX_MSE_RATIO_TO_FAISS and usage >= MIN_CODE_USAGE
        measured = f"MSE ratio {ratio['mean']:.4f}, {100 * usage:.1f}% used"
        targets.append(make_target(f"{description} (K={codebook_size}, means over seeds)", measured, met))
    return targets


def evaluate_targets(search: dict[str, object] | None, learning: dict[str, object] | None) -> list[dict[str, object]]:
    return [
        speedup_target(search, "faiss", "FAISS", MIN_SPEEDUP_OVER_FAISS),
        speedup_target(search, "vqp", "vector-quantize-pytorch", MIN_SPEEDUP_OVER_VQP),
        *learning_targets(learning),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the report and write it unless --no-write; return the exit status.

    The status is 0 also when targets are not met, and 2 for invalid arguments. With `argv`
    None the arguments come from sys.argv, as in `python benchmarks/quantizers.py`, while
    `vqkit bench quantizers` passes them explicitly.
    """
    parsed = _common.parse_arguments(build_parser, argv, CLI_COMMAND, SCRIPT_COMMAND)
    if isinstance(parsed, int):  # the exit status after --help or an invalid argument
        return parsed
    args, command = parsed

    search_config = QUICK_SEARCH if args.quick else FULL_SEARCH
    learning_config = QUICK_LEARNING if args.quick else FULL_LEARNING
    with _common.timed_run(args.threads) as run:
        search = _search_bench.run_search_benchmark(search_config) if args.part in ("a", "all") else None
        learning = _learning_bench.run_learning_benchmark(learning_config) if args.part in ("b", "all") else None
    wall_seconds, machine = run.wall_seconds, run.machine

    targets = evaluate_targets(search, learning)
    section = _report.render_section(machine, command, wall_seconds, targets, search, learning)
    print(section)
    results = {
        "command": command,
        "wall_seconds": wall_seconds,
        "machine": machine,
        "targets": targets,
        "search": search,
        "learning": learning,
    }
    if not args.no_write:
        _common.write_markdown(args.out_md, section, _report.SECTION_HEADING)
        _common.write_json(args.out_json, results)
    logger.info("Quantizer benchmark finished in %.0f s", wall_seconds)
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
