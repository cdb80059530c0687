"""Parameters: pydantic models are the source of truth; notebooks and configs must agree."""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import nbformat
import pytest
import yaml

from kernelib import params
from kernelib.errors import ConfigError
from kernelib.resources import NOTEBOOKS

ROOT = Path(__file__).resolve().parent.parent


def notebook_parameters(stage: str) -> dict:
    nb = nbformat.read(ROOT / "notebooks" / NOTEBOOKS[stage], as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{stage}: expected one cell tagged 'parameters'"
    values = {}
    for node in ast.parse(cells[0].source).body:
        assert isinstance(node, ast.Assign), f"{stage}: parameters cell holds only assignments"
        values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


@pytest.mark.parametrize("stage", params.STAGES)
def test_notebook_parameters_equal_pydantic_defaults(stage):
    nb = notebook_parameters(stage)
    common = {k: nb.pop(k) for k in list(params.CommonParams.model_fields) if k in nb}
    assert common == params.CommonParams().model_dump()
    model = params.STAGE_MODELS[stage]
    assert set(nb) == set(model.model_fields), f"{stage}: notebook and model disagree on names"
    assert model.model_validate(nb).model_dump() == model().model_dump()


def test_start_stage_reads_only_declared_names_from_a_notebook_namespace(tmp_path):
    from kernelib.rundir import stage_values, start_stage

    namespace = {"run_dir": str(tmp_path), "seed": 3, "top_k": 2, "stage": "x", "np": object(),
                 "formats": ["onnx"]}  # formats belongs to export, not evaluate
    assert stage_values("evaluate", namespace) == {"run_dir": str(tmp_path), "seed": 3, "top_k": 2}
    with pytest.raises(ConfigError, match="top_k"):
        start_stage("evaluate", {**namespace, "top_k": "two"})
    with pytest.raises(ConfigError, match="top_k"):  # a keyword overrides the namespace
        start_stage("evaluate", namespace, top_k=0)
    with pytest.raises(ConfigError, match="unknown stage 'deploy'"):
        stage_values("deploy", namespace)


@pytest.mark.parametrize("stage", params.STAGES)
def test_papermill_reads_every_parameter(stage):
    # papermill skips a line it cannot parse (an '=' inside the comment does it) and then calls
    # the injected value an unknown parameter; the notebook still runs, so only this sees it
    import papermill

    found = papermill.inspect_notebook(str(ROOT / "notebooks" / NOTEBOOKS[stage]))
    assert set(found) == set(notebook_parameters(stage))


@pytest.mark.parametrize("stage", params.STAGES)
def test_notebooks_have_no_outputs_and_start_with_markdown(stage):
    nb = nbformat.read(ROOT / "notebooks" / NOTEBOOKS[stage], as_version=4)
    assert nb.cells[0].cell_type == "markdown"
    for c in nb.cells:
        if c.cell_type == "code":
            assert not c.outputs and c.execution_count is None


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_shipped_configs_validate(name):
    cfg = params.load_config(ROOT / "configs" / name)
    assert len(cfg.load.members) >= 2


def _smoke() -> dict:
    return yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())


def _with(path: str, value) -> dict:
    cfg = copy.deepcopy(_smoke())
    *parents, last = path.split(".")
    node = cfg
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return cfg


@pytest.mark.parametrize("cfg, match", [
    (_with("train.epohcs", 3), r"train\.epohcs: unknown key"),
    (_with("train.epochs", "many"), r"train\.epochs: .*integer"),
    (_with("train.epochs", 0), r"train\.epochs: .*greater than or equal to 1"),
    (_with("merge.strategies", ["average", "mystery"]), r"merge\.strategies\.1: .*'average'"),
    (_with("preprocess.val_fraction", 0.9), r"preprocess\.val_fraction"),
    (_with("export.formats", ["pickle"]), r"export\.formats\.0"),
    (_with("shiny", {}), r"shiny: unknown key"),
    (_with("load.members", [{"name": "a", "recipe": "mlp"}, {"name": "a", "recipe": "cnn"}]),
     r"member names must be unique"),
    (_with("load.members", [{"name": "a"}]), r"exactly one of 'recipe' or 'path'"),
    (_with("merge.average.weights", [1.0]), r"one weight per member \(2\); received 1"),
    (_with("load.members", [{"name": "a", "path": "a.keras", "bag": 0.5}]),
     r"member 'a': 'bag' chooses the rows a recipe member trains on"),
    (_with("load.members", [{"name": "a", "recipe": "mlp", "bag": 1.5}]), r"bag: .*less than"),
    (_with("merge.weighted.shrinkage", 2.0), r"merge\.weighted\.shrinkage: .*\[0, 1\]"),
    (_with("merge.select.init_size", 30), r"merge\.select: .*init_size \(30\) must be at most "
                                          r"size \(5\)"),
    (_with("merge.select.sizee", 3), r"merge\.select\.sizee: unknown key"),
    (_with("merge.select_size", 3), r"merge\.select_size: unknown key"),
    (_with("merge.concat.include", ["mlp_0", "ghost"]),
     r"merge\.concat\.include names \['ghost'\], which are not members"),
])
def test_bad_configs_name_the_key(cfg, match):
    with pytest.raises(ConfigError, match=match):
        params.validate_config(cfg)


def test_validate_stage_refuses_unknown_notebook_parameter():
    with pytest.raises(ConfigError, match="epochz: unknown key"):
        params.validate_stage("train", {"epochz": 3})


def test_describe_lists_every_parameter_with_help():
    rows = params.describe()
    names = {(r["stage"], r["name"]) for r in rows}
    assert ("train", "epochs") in names and ("export", "formats") in names
    assert {("merge", "select.size"), ("merge", "concat.include"), ("merge", "distill.alpha"),
            ("merge", "strategies")} <= names
    assert all(r["help"] for r in rows)
