"""Report of `vqkit eval speech-codec`: the JSON results, the Markdown tables and a summary plot."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from vqkit.evals.report import markdown_table, write_json_and_markdown

logger = logging.getLogger(__name__)

JSON_FILE = "speech_codec.json"
MARKDOWN_FILE = "speech_codec.md"
PLOT_FILE = "speech_codec.png"


def write_results(out_dir: Path, results: dict[str, Any]) -> str:
    """Write the JSON, Markdown and plot files into `out_dir`; return the Markdown."""
    markdown = render_markdown(results)
    write_json_and_markdown(out_dir, JSON_FILE, results, MARKDOWN_FILE, markdown)
    save_plot(out_dir / PLOT_FILE, results)
    logger.info("Wrote %s, %s and %s to %s", JSON_FILE, MARKDOWN_FILE, PLOT_FILE, out_dir)
    return markdown


def _number(value: float | None, digits: int = 2, percent: bool = False) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f}" if percent else f"{value:.{digits}f}"


def render_markdown(results: dict[str, Any]) -> str:
    """Return the Markdown report: one table per split, the speaker probes, voice conversion and speed."""
    machine = results.get("machine", {})
    threads = machine.get("threads", "?")
    parts = [
        (
            f"Command: `{results.get('command', '')}`. Machine: {machine.get('cpu_model', '?')}, "
            f"{threads} {'thread' if threads == 1 else 'threads'}, torch {machine.get('torch', '?')}."
        )
    ]
    for split, rows in results["reconstruction"].items():
        table = []
        for name, row in rows.items():
            system = results["systems"][name]
            table.append(
                [
                    name,
                    _number(system.get("bitrate"), 0),
                    _number(row.get("entropy_bitrate"), 0),
                    _number(row["wer"], percent=True),
                    _number(row["stoi"], 3),
                    _number(row["pesq"], 2),
                ]
            )
        header = ["System", "Bitrate (bit/s)", "Entropy bitrate (bit/s)", "WER flite (%)", "STOI", "PESQ-WB"]
        count = next(iter(rows.values()))
        parts.append(
            f"### Reconstruction, {split} speakers ({count['utterances']} utterances, WER on {count['wer_utterances']})\n\n"
            + markdown_table(header, table)
        )

    probe_rows = []
    for split, rows in results["speaker_probe"].items():
        for name, row in rows.items():
            probe_rows.append([split, name, _number(row["linear"], percent=True), _number(row["gru"], percent=True)])
    parts.append(
        "### Speaker probe accuracy (%)\n\n"
        + markdown_table(
            ["Speakers", "System", "Bag of codes / frame statistics + logistic regression", "GRU"], probe_rows
        )
    )

    conversion_rows = []
    for split, rows in results["voice_conversion"].items():
        for name, row in rows.items():
            label = "unconverted source" if name == "unprocessed" else name
            conversion_rows.append(
                [split, label, _number(row["to_target"], 3), _number(row["to_source"], 3), str(row["pairs"])]
            )
    parts.append(
        "### Voice conversion: speaker similarity (cosine of MFCC-LDA speaker vectors)\n\n"
        + markdown_table(["Speakers", "System", "To target", "To source", "Pairs"], conversion_rows)
    )

    speed_rows = [
        [name, _number(row["encode"], 4), _number(row["decode"], 4)]
        for name, row in results["real_time_factor"].items()
    ]
    parts.append(
        "### Real-time factor, one thread\n\n"
        + markdown_table(["System", "Encode", "Decode (with vocoder)"], speed_rows)
    )
    if "input_level" in results:
        parts.append(_render_input_level(results["input_level"]))
    return "\n\n".join(parts) + "\n"


def _render_input_level(input_level: dict[str, Any]) -> str:
    """Return the input-level section: the training speech's level and the codes changed at another gain."""
    training = input_level["training"]
    rows = []
    for name, row in input_level["gain_sensitivity"].items():
        level = "none" if row["input_level_db"] is None else f"{row['input_level_db']:g} dB"
        rows.append([name, level, _number(row["unscaled"], percent=True), _number(row["scaled"], percent=True)])
    setup = ""
    first = next(iter(input_level["gain_sensitivity"].values()), None)
    if first is not None:
        setup = (
            f" Each codec encodes {first['clips']} held-out clips of training voices and the same clips at "
            f"gain {first['gain']:g}, without and with its input-level scaling."
        )
    return (
        "### Input level\n\n"
        f"Active speech level of the {training['utterances']} training utterances: median "
        f"{training['median_db']:.1f} dB, 5th to 95th percentile {training['p5_db']:.1f} to "
        f"{training['p95_db']:.1f} dB (relative to full scale).{setup}\n\n"
        + markdown_table(["System", "Input level", "Codes changed, unscaled (%)", "Codes changed, scaled (%)"], rows)
    )


def save_plot(path: Path, results: dict[str, Any]) -> None:
    """Bar charts of WER, STOI, PESQ and the GRU speaker probe per system, seen and unseen speakers side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("wer", "WER on flite voices (%)", 100.0), ("stoi", "STOI", 1.0), ("pesq", "PESQ-WB", 1.0)]
    figure, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    splits = list(results["reconstruction"])
    for axis, (key, title, scale) in zip(axes, panels):
        names = list(results["reconstruction"][splits[0]])
        for offset, split in enumerate(splits):
            values = [(results["reconstruction"][split][n][key] or 0.0) * scale for n in names]
            axis.bar([i + 0.4 * offset for i in range(len(names))], values, width=0.4, label=split)
        axis.set_xticks([i + 0.2 for i in range(len(names))], names, rotation=30, ha="right", fontsize=8)
        axis.set_title(title)
    probe = results["speaker_probe"]
    names = [n for n in probe[splits[0]] if n != "chance"]
    for offset, split in enumerate(splits):
        axes[3].bar(
            [i + 0.4 * offset for i in range(len(names))],
            [100 * probe[split][n]["gru"] for n in names],
            width=0.4,
            label=split,
        )
        axes[3].axhline(100 * probe[split]["chance"]["gru"], color=f"C{offset}", linestyle="--", linewidth=1)
    axes[3].set_xticks([i + 0.2 for i in range(len(names))], names, rotation=30, ha="right", fontsize=8)
    axes[3].set_title("Speaker probe, GRU (%); dashes: chance")
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
