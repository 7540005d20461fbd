"""Report of `vqkit eval codebook-lm`: the JSON results, the Markdown tables and the steering plot."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from vqkit.evals.report import markdown_table, write_json_and_markdown

logger = logging.getLogger(__name__)

JSON_FILE = "codebook_lm.json"
MARKDOWN_FILE = "codebook_lm.md"
PLOT_FILE = "codebook_lm_steering.png"


def write_results(out_dir: Path, results: dict[str, Any]) -> str:
    """Write the JSON, Markdown and plot files into `out_dir`; return the Markdown."""
    markdown = render_markdown(results)
    write_json_and_markdown(out_dir, JSON_FILE, results, MARKDOWN_FILE, markdown)
    written = [JSON_FILE, MARKDOWN_FILE]
    if "tokfsm" in results:
        save_steering_plot(out_dir / PLOT_FILE, results["tokfsm"])
        written.append(PLOT_FILE)
    logger.info("Wrote %s to %s", ", ".join(written), out_dir)
    return markdown


def render_markdown(results: dict[str, Any]) -> str:
    """Return the Markdown report: set-up, then the TokFSM and text sections that were run."""
    machine = results["machine"]
    parts = [
        f"Command: `{results['command']}`. Machine: {machine['cpu_model']}, torch threads: {machine['threads']}, "
        f"device {machine['device']}, torch {machine['torch']}, vqkit {machine['vqkit']}, {machine['date']}.",
        "Models: " + ", ".join(f"{role} `{name}`" for role, name in results["models"].items()) + ".",
    ]
    if "tokfsm" in results:
        parts += _tokfsm_sections(results["tokfsm"])
    if "text" in results:
        parts += _text_sections(results["text"])
    return "\n\n".join(parts) + "\n"


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def _tokfsm_sections(tokfsm: dict[str, Any]) -> list[str]:
    fsm = tokfsm["fsm"]
    accuracy_rows = [
        [name, _percent(row["first_transition_accuracy"]), _percent(row["transition_accuracy"])]
        for name, row in tokfsm["accuracy"].items()
    ]
    purity_rows = [
        [site, f"{row['mean_purity']:.3f}", f"{row['weighted_purity']:.3f}", str(row["codes"])]
        for site, row in tokfsm["purity"].items()
    ]
    steering_rows = [
        [row["sites"], _percent(row["success"]), _percent(row["unpatched_success"]), f"{row['js_to_b']:.3f}"]
        for row in tokfsm["steering"]
    ]
    return [
        f"## TokFSM\n\nMachine of {fsm['num_states']} states with {fsm['num_edges']} out-edges each (seed {fsm['seed']}). "
        "First-transition accuracy: the share of the model's 10 most likely next states after `BOS s` that are "
        f"true successors of s, averaged over all states. Transition accuracy: valid transitions in {tokfsm['generations']} "
        "sampled 128-token generations.",
        markdown_table(["Model", "First-transition accuracy", "Transition accuracy"], accuracy_rows),
        "### State purity of the codes\n\nAt the last digit of each state in 64 fresh walks, the share of a code's "
        "activations on its most frequent state; mean over codes with at least 10 activations, and weighted by activations.",
        markdown_table(["Site", "Mean purity", "Weighted purity", "Codes"], purity_rows),
        f"### Steering by codes\n\nFor {tokfsm['pairs']} random state pairs (a, b): the model reads a walk ending in a "
        "with the codes that a walk ending in b produced forced at the last two positions, at the listed sites. "
        "Success is the predicted probability mass on b's successors, which equals the expected share of sampled next "
        "states that are valid successors of b; JS is the Jensen-Shannon divergence (bits) from b's true next-state "
        "distribution.",
        markdown_table(["Sites patched", "Success", "Without patch", "JS to b"], steering_rows),
    ]


def _text_sections(text: dict[str, Any]) -> list[str]:
    perplexity = text["perplexity"]
    rows = []
    for set_name, search in text["code_search"].items():
        for row in search["codes"]:
            rows.append(
                [
                    set_name,
                    "next token" if row.get("offset") else "token",
                    f"{row['site']} g{row['group']} #{row['code']}",
                    _percent(row["precision"]),
                    _percent(row["recall"]),
                    str(row["count"]),
                    _percent(row["unsteered_rate"]),
                    _percent(row["steered_rate"]),
                ]
            )
    combined_rows = [
        [
            set_name,
            ", ".join(f"{site} g{group} #{code}" for site, group, code in search["combined"]["codes"]),
            _percent(search["combined"]["unsteered_rate"]),
            _percent(search["combined"]["steered_rate"]),
        ]
        for set_name, search in text["code_search"].items()
        if search["codes"]
    ]
    return [
        f"## Text\n\nTest-split perplexity over {perplexity['windows']} windows of {perplexity['tokens_per_window']} tokens.",
        markdown_table(
            ["Model", "Perplexity"],
            [["base", f"{perplexity['base']:.2f}"], ["codebook", f"{perplexity['codebook']:.2f}"]],
        ),
        "### Code search and steering\n\nCodes found on validation text whose activations concentrate on a token set, "
        "counted on the token the code fires on, or on the next token (codes that predict the set). Precision is the "
        "share of the code's activations on the set; recall is the share of the set's tokens where it is active. "
        f"Steering makes the code the only active one of its head at every position while sampling "
        f"{text['new_tokens']} tokens after each of {text['prompts']} test prompts, and reports the share of generated "
        "tokens in the set, with and without it.",
        markdown_table(
            ["Token set", "Counted on", "Code", "Precision", "Recall", "Activations", "In set unsteered", "In set steered"],
            rows,
        ),
        "Forcing the codes of a set together, at most one per head (a later code in the list above takes the head):",
        markdown_table(["Token set", "Codes forced", "In set unsteered", "In set steered"], combined_rows),
    ]


def save_steering_plot(path: Path, tokfsm: dict[str, Any]) -> None:
    """Save a bar chart of steering success per patched site set, next to the unpatched rate."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = tokfsm["steering"]
    labels = [row["sites"] for row in rows]
    positions = range(len(rows))
    figure = Figure(figsize=(max(6, 0.7 * len(rows)), 4))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.bar([p - 0.2 for p in positions], [row["success"] for row in rows], width=0.4, label="codes of b patched in")
    axes.bar([p + 0.2 for p in positions], [row["unpatched_success"] for row in rows], width=0.4, label="no patch")
    axes.set_xticks(list(positions), labels, rotation=45, ha="right")
    axes.set_ylabel("probability mass on successors of b")
    axes.set_ylim(0, 1)
    axes.set_title("TokFSM: steering the next state by codes")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
