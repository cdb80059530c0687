"""Faults: signals and kills at stages of the smoke chain, a read-only reports folder, a full
disk, a crashed re-export, and the runner's cache keys of fine-tunes. Every run must end
`succeeded`, `failed` or `interrupted` with its lock gone, a resume must complete, and every
file that `manifest.json` or `exports.json` lists must have the sha256 recorded there.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import yaml

from conftest import ROOT
from kernelib import io, params, pipeline

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


# ---------------------------------------------------------------------------- fine-tune keys

_STAGE_CELL = """
import os, pathlib
root = pathlib.Path(run_dir)
out = root / "members" / name / "model.keras" if STAGE == "train" else root / STAGE / "out.bin"
out.parent.mkdir(parents=True, exist_ok=True)
out.write_bytes(os.urandom(64))  # a non-deterministic result, as with deterministic: false
"""


def _stand_in_notebooks(folder: Path) -> Path:
    """Six tiny notebooks in place of the stage notebooks: each writes random bytes where its
    stage writes (no TensorFlow), so a re-executed step always produces a different file."""
    folder.mkdir()
    for stage, nb_name in pipeline.NOTEBOOKS.items():
        params_cell = nbformat.v4.new_code_cell("run_dir = ''\nname = None")
        params_cell.metadata["tags"] = ["parameters"]
        nb = nbformat.v4.new_notebook(cells=[
            nbformat.v4.new_code_cell(f"STAGE = {stage!r}"), params_cell,
            nbformat.v4.new_code_cell(_STAGE_CELL)])
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                     "language": "python"}
        nbformat.write(nb, folder / nb_name)
    return folder


def test_a_fine_tune_is_not_reused_when_its_base_trained_differently(tmp_path):
    """A fine-tune's key includes its base's trained file, in the runner as in `plan_keys`:
    after the base member is trained again (a different file, deterministic: false), the
    fine-tune starting from it must run again, not come from the cache."""
    cfg = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    cfg["run"]["deterministic"] = False
    cfg["load"]["members"] = [{"name": "base", "recipe": "mlp", "seed": 0},
                              {"name": "ft", "recipe": "mlp", "seed": 1, "finetune_from": "base"}]
    config = tmp_path / "ft.yaml"
    config.write_text(yaml.safe_dump(cfg))
    nb_dir = _stand_in_notebooks(tmp_path / "nbs")
    kw = dict(runs_dir=tmp_path / "runs", reports_dir=tmp_path / "reports", run_id="r",
              nb_dir=nb_dir, progress=False)
    root = pipeline.run(config, **kw)
    (root / "members" / "base" / "model.keras").unlink()  # the base must train again
    pipeline.run(config, **kw)
    m = io.read_json(root / "manifest.json")
    by = {s["label"]: s for s in m["stages"]}
    assert by["load"].get("cached_from") == "r" and by["preprocess"].get("cached_from") == "r"
    assert "cached_from" not in by["train:base"]
    assert "cached_from" not in by["train:ft"], "the fine-tune was reused although its base changed"
    outputs = {label: rec["outputs"] for label, rec in by.items()}
    expected = pipeline.plan_keys(params.load_config(config), root, nb_dir=nb_dir,
                                  outputs=outputs)
    assert {label: rec["key"] for label, rec in by.items()} == expected
