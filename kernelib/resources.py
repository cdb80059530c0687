"""Files kernelib ships besides its code: the six stage notebooks.

An installed kernelib holds them as package data, `kernelib/notebooks/` (pyproject.toml maps the
repository's top-level `notebooks/` folder to the package `kernelib.notebooks`), found through
`importlib.resources`. A source checkout (PYTHONPATH, or an editable install) has no
`kernelib/notebooks/`, so there they are the `notebooks/` folder next to the package. The report
templates live inside the package (`kernelib/templates/`) and are loaded by jinja2's
PackageLoader, the same way in both cases.
"""

from __future__ import annotations

from importlib import resources
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
    """The folder of the stage notebooks: the installed package's, else the source checkout's."""
    # kernelib is a regular package on the file system (not a zip): its Traversable is a Path
    installed = Path(str(resources.files("kernelib").joinpath("notebooks")))
    checkout = installed.parent.parent / "notebooks"
    for folder in (installed, checkout):
        if (folder / NOTEBOOKS["load"]).is_file():
            return folder
    raise PipelineError(f"stage notebooks not found in '{installed}' (an installed kernelib) or "
                        f"'{checkout}' (a source checkout); reinstall kernelib (pip install .) "
                        "or pass nb_dir.")

