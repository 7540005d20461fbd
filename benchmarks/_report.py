"""Markdown rendering of the benchmark reports.

`markdown_table` and `replace_section` serve every benchmark. The rest renders the
"## Quantizers" section of the quantizer benchmark.
"""

from __future__ import annotations

import re

from vqkit.evals.report import markdown_table
from vqkit.quantizers import VectorQuantizer

SECTION_HEADING = "## Quantizers"

LEARNING_NAMES = {"vqkit": "vqkit VectorQuantizer", "faiss_kmeans": "faiss.Kmeans", "vqp": "vqp VectorQuantize"}


def format_number(value: float | None, digits: int = 3) -> str:
    """Format `value` with `digits` significant digits, or as a whole number from 10**(digits - 1) up.

    None becomes "n/a".
    """
    if value is None:
        return "n/a"
    if abs(value) >= 10 ** (digits - 1):
        return f"{value:.0f}"
    # The "#" flag keeps trailing zeros ("1.00"), but also a bare trailing point where rounding
    # reaches the next power of ten (99.96 -> "100.").
    return f"{value:#.{digits}g}".removesuffix(".")


def format_mean_std(summary: dict[str, float | None], scale: float = 1.0, digits: int = 3) -> str:
    """Format a {"mean", "std"} summary as "mean ± std", or as the mean alone when std is None (one seed)."""
    mean = format_number(summary["mean"] * scale, digits)
    if summary["std"] is None:
        return mean
    return f"{mean} ± {format_number(summary['std'] * scale, 2)}"


def describe_load(machine: dict[str, object]) -> str:
    if machine["load_average_before"] is None:
        return "The load average is not available on this system."
    return (
        f"1-minute load average: {machine['load_average_before']:.2f} before the run and "
        f"{machine['load_average_after']:.2f} at its end. The second value includes this run's own threads."
    )


def describe_thread_pools(machine: dict[str, object]) -> str:
    order = "faiss was imported before torch" if machine["faiss_imported_before_torch"] else "torch was imported first"
    if machine["faiss_shares_torch_thread_pool"]:
        return f"FAISS and torch share one OpenMP thread pool ({order})."
    return f"FAISS and torch use separate OpenMP thread pools ({order})."


def render_header(machine: dict[str, object], command: str, wall_seconds: float) -> str:
    runtimes = ", ".join(f"`{name}`" for name in machine["openmp_runtimes"]) or "none found in /proc/self/maps"
    blas = ", ".join(f"`{name}`" for name in machine["blas_libraries"]) or "none"
    vqp_version = machine["vector_quantize_pytorch"] or "not installed"
    return "\n".join(
        [
            f"Command: `{command}`",
            "",
            f"- Machine: {machine['cpu_model']}, {machine['logical_cpus']} logical CPUs. "
            f"Thread count of torch and FAISS: {machine['threads']}.",
            f"- Versions: vqkit {machine['vqkit']}, torch {machine['torch']} "
            f"(MKL: {'yes' if machine['torch_mkl'] else 'no'}), faiss {machine['faiss']} "
            f"(compile options: {machine['faiss_compile_options']}), "
            f"vector-quantize-pytorch {vqp_version}, numpy {machine['numpy']}, Python {machine['python']}.",
            f"- OpenMP runtimes loaded: {runtimes}. {describe_thread_pools(machine)} "
            f"BLAS libraries loaded as separate files: {blas}.",
            f"- Date: {machine['date']}. The run took {wall_seconds:.0f} s. {describe_load(machine)}",
        ]
    )


def render_targets(targets: list[dict[str, object]]) -> str:
    rows = [[target["target"], target["measured"], target["status"]] for target in targets]
    return markdown_table(["Target", "Measured", "Status"], rows)


# Cell formatters for one contender's result in a search row. None means the contender was skipped.


def _million_per_second(result: dict | None) -> str:
    return format_number(result["vectors_per_second"] / 1e6) if result else "skipped"


def _speedup(ours: dict | None, theirs: dict | None) -> str:
    if not ours or not theirs:
        return "n/a"
    return f"{format_number(ours['vectors_per_second'] / theirs['vectors_per_second'])}x"


def _value(result: dict | None, key: str) -> str:
    return format_number(result[key]) if result else "n/a"


def _fraction(result: dict | None, key: str) -> str:
    return f"{result[key]:.4f}" if result else "n/a"


SEARCH_COLUMNS = [
    "D", "K", "vqkit Mvec/s", "FAISS Mvec/s", "vqp Mvec/s", "vqkit / FAISS", "vqkit / vqp",
    "vqkit % sgemm", "FAISS % sgemm", "vqp % sgemm",
    "vqkit same index", "vqkit same distance", "vqp same index", "vqp same distance",
]  # fmt: skip
REFERENCE_COLUMNS = ["D", "K", "sgemm GFLOP/s", "sgemm % peak", "vqkit % peak", "FAISS % peak", "vqp % peak", "vqp chunks"]
LEARNING_COLUMNS = ["K", "Contender", "held-out MSE / variance", "codes used (%)", "perplexity", "wall time (s)"]


def describe_search_setup(search: dict[str, object]) -> str:
    config = search["config"]
    peak = search["peak_sgemm"]
    return (
        f"{config['num_queries']} Gaussian queries against a frozen Gaussian codebook, the same for "
        "every contender: vqkit `VectorQuantizer` eval-mode forward under `torch.no_grad()` "
        "(indices, quantized output, losses, perplexity), FAISS `IndexFlatL2.search(x, 1)`, and "
        "vector-quantize-pytorch (vqp) `VectorQuantize` eval-mode forward under `torch.no_grad()`. "
        f"vqp runs on row chunks of at most {search['vqp_max_pairs_per_chunk']:,} (query, code) pairs to bound "
        "its memory, and its time is the sum over the chunks. "
        f"Each time is the median of {config['repeats']} interleaved measurements after a warm-up call, "
        f"each repeating the call for at least {config['min_seconds']} s. "
        "\"% sgemm\" compares a contender's 2·N·D·K / time with a `torch.mm` of (N, D) x (D, K) at the "
        f"same shape. The peak reference is a {peak['size']}^3 sgemm at {format_number(peak['gflops'])} GFLOP/s. "
        "The sgemm writes its whole (N, K) output while a search keeps one index per query, so at small D, "
        "where writing that output dominates, a search can exceed 100% of it. "
        "Agreement is the fraction of queries with the same index as FAISS, and the fraction with a squared "
        f"distance to the chosen code equal to FAISS's within a relative {search['distance_rtol']:g}, "
        "because near-ties can pick different codes."
    )


def search_table_row(row: dict[str, object]) -> list[str]:
    vqkit = row["contenders"].get("vqkit")
    faiss_result = row["contenders"].get("faiss")
    vqp = row["contenders"].get("vqp")
    return [
        str(row["dim"]),
        str(row["codebook_size"]),
        _million_per_second(vqkit),
        _million_per_second(faiss_result),
        _million_per_second(vqp),
        _speedup(vqkit, faiss_result),
        _speedup(vqkit, vqp),
        _value(vqkit, "percent_of_sgemm"),
        _value(faiss_result, "percent_of_sgemm"),
        _value(vqp, "percent_of_sgemm"),
        _fraction(vqkit, "index_agreement"),
        _fraction(vqkit, "distance_agreement"),
        _fraction(vqp, "index_agreement"),
        _fraction(vqp, "distance_agreement"),
    ]


def reference_table_row(row: dict[str, object], peak_gflops: float) -> list[str]:
    vqp = row["contenders"].get("vqp")
    return [
        str(row["dim"]),
        str(row["codebook_size"]),
        format_number(row["sgemm"]["gflops"]),
        format_number(100 * row["sgemm"]["gflops"] / peak_gflops),
        _value(row["contenders"].get("vqkit"), "percent_of_peak"),
        _value(row["contenders"].get("faiss"), "percent_of_peak"),
        _value(vqp, "percent_of_peak"),
        str(vqp["chunks"]) if vqp else "n/a",
    ]


def render_search(search: dict[str, object]) -> str:
    """Render part (a): the setup, the throughput and agreement table, and the sgemm reference table."""
    rows = search["rows"]
    main_table = markdown_table(SEARCH_COLUMNS, [search_table_row(row) for row in rows])
    peak_gflops = search["peak_sgemm"]["gflops"]
    reference_table = markdown_table(REFERENCE_COLUMNS, [reference_table_row(row, peak_gflops) for row in rows])

    parts = [
        "### Nearest-code search",
        describe_search_setup(search),
        main_table,
        "Same-shape sgemm and the peak reference:",
        reference_table,
    ]
    skipped = sorted({f"{name}: {reason}" for row in rows for name, reason in row["skipped"].items()})
    if skipped:
        parts.append("Skipped: " + "; ".join(skipped) + ".")
    return "\n\n".join(parts)


def describe_learning_setup(config: dict[str, object]) -> str:
    sizes = config["codebook_sizes"]
    thresholds = ", ".join(f"{config['vqp_dead_code_thresholds'][size]:g} at K={size}" for size in sizes)
    # vqkit's default number of vectors collected for its k-means fit, per K.
    vqkit_points = ", ".join(
        f"{VectorQuantizer(config['dim'], size).codebook.kmeans_init_points} at K={size}" for size in sizes
    )
    kmeans_data = (
        f"the first batch of {config['batch_size']} vectors (vqp) and on the first batches that hold "
        f"its default number of vectors (vqkit: {vqkit_points})"
    )
    seeds = len(config["seeds"])

    return (
        f"A mixture of {config['components']} anisotropic Gaussians in D={config['dim']}: "
        f"{config['train_size']} training points and {config['heldout_size']} held-out points, "
        f"{seeds} {'seed' if seeds == 1 else 'seeds'}. vqkit `VectorQuantizer` (EMA decay {config['ema_decay']}, "
        f"restart after {config['vqkit_dead_code_steps']} unused steps) and vqp `VectorQuantize` "
        f"(EMA decay {config['ema_decay']}, `threshold_ema_dead_code` {thresholds}) run {config['steps']} "
        f"train-mode forward passes on batches of {config['batch_size']}, reshuffled each epoch. They fit a "
        f"k-means init ({config['kmeans_iters']} iterations) on {kmeans_data}. "
        f"faiss.Kmeans runs {config['faiss_iters']} iterations on the whole training set. "
        "Every codebook is scored by the exact nearest code of each held-out point. MSE / variance is the "
        "mean squared distance to the code divided by the summed per-dimension variance, the fraction of "
        "variance left unexplained. Values are mean ± sample standard deviation over seeds. Wall time covers "
        "the whole fit, k-means init included."
    )


def learning_table_row(row: dict[str, object]) -> list[str]:
    return [
        str(row["codebook_size"]),
        LEARNING_NAMES[row["contender"]],
        format_mean_std(row["mse_over_variance"], digits=4),
        format_mean_std(row["code_usage"], scale=100),
        format_mean_std(row["perplexity"], digits=4),
        format_mean_std(row["seconds"]),
    ]


def render_learning(learning: dict[str, object]) -> str:
    """Render part (b): the setup, the per-contender table and vqkit's MSE ratio to faiss.Kmeans."""
    table = markdown_table(LEARNING_COLUMNS, [learning_table_row(row) for row in learning["rows"]])
    ratio_rows = [
        [str(size), format_mean_std(ratio, digits=4)] for size, ratio in learning["vqkit_over_faiss_mse"].items()
    ]
    ratio_table = markdown_table(["K", "vqkit MSE / faiss.Kmeans MSE"], ratio_rows)

    parts = ["### Codebook learning", describe_learning_setup(learning["config"]), table, ratio_table]
    if learning["skipped"]:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in learning["skipped"].items())
        parts.append(f"Skipped: {reasons}.")
    return "\n\n".join(parts)


def render_section(
    machine: dict[str, object],
    command: str,
    wall_seconds: float,
    targets: list[dict[str, object]],
    search: dict[str, object] | None,
    learning: dict[str, object] | None,
) -> str:
    """Return the whole "## Quantizers" section, ending with a newline."""
    parts = [SECTION_HEADING, render_header(machine, command, wall_seconds), "### Targets", render_targets(targets)]
    if search is not None:
        parts.append(render_search(search))
    if learning is not None:
        parts.append(render_learning(learning))
    return "\n\n".join(parts) + "\n"


def replace_section(document: str, section: str, heading: str) -> str:
    """Return `document` with the section under `heading` replaced by `section`, or with `section` appended.

    The old section runs from its heading to the next level-2 heading or the end of the file.
    """
    lines = document.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        if not document:
            return section
        separator = "\n" if document.endswith("\n") else "\n\n"
        return document + separator + section
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"## ", lines[i])), len(lines))
    tail = "".join(lines[end:])
    return "".join(lines[:start]) + section + ("\n" + tail if tail else "")
