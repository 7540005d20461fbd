"""Locate the data folders that ship with vqkit: checkpoints/ and benchmarks/."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent

# With an editable install the package is imported from src/vqkit, two levels below the
# repository root, which contains checkpoints/ and benchmarks/.
REPOSITORY_ROOT = PACKAGE_DIR.parent.parent


def data_folder(name: str) -> Path:
    """Return the folder `name` inside the installed package, or else the one at the repository root.

    A wheel carries checkpoints/ and benchmarks/ inside the package (see pyproject.toml),
    while an editable install reads them from the repository root. The returned folder may
    not exist, for example in a source tree without that folder.
    """
    installed = PACKAGE_DIR / name
    if installed.is_dir():
        return installed
    return REPOSITORY_ROOT / name
