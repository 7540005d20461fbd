"""Markdown helpers shared by the evaluation reports and the benchmark records."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Return a GitHub-flavoured Markdown table with `header` and one line per row of cell strings."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_json_and_markdown(out_dir: Path, json_name: str, results: dict[str, Any], markdown_name: str, markdown: str) -> None:
    """Create `out_dir` and write `results` as strict JSON (non-finite floats as null) and the Markdown report."""
    from vqkit.evals.metrics import json_safe

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / json_name).write_text(json.dumps(json_safe(results), indent=2, allow_nan=False) + "\n")
    (out_dir / markdown_name).write_text(markdown)
