"""Files kernelib ships besides its code: the six stage notebooks."""

from __future__ import annotations

from pathlib import Path

from kernelib.errors import PipelineError

NOTEBOOKS = {
    "load": "01_load.ipynb",
    "preprocess": "02_preprocess.ipynb",
    "train": "03_train.ipynb",
    "merge": "04_merge.ipynb",
    "evaluate": "05_evaluate.ipynb",
    "export": "06_export.ipynb",
}


def notebooks_dir() -> Path:
    """The stage notebooks: `notebooks/` next to the package (a source checkout)."""
    here = Path(__file__).resolve().parent.parent / "notebooks"
    if (here / NOTEBOOKS["load"]).exists():
        return here
    cwd = Path.cwd() / "notebooks"
    if (cwd / NOTEBOOKS["load"]).exists():
        return cwd
    raise PipelineError(f"stage notebooks not found in '{here}' or '{cwd}'; run kernelib from "
                        "a checkout of the repository (or pass nb_dir).")
