"""The run folder: where every stage reads and writes, and the first call of every notebook."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kernelib import io
from kernelib import params as P
from kernelib.errors import ConfigError, PipelineError

DEVICE_FILE = ".device-{label}.json"  # written by each stage, folded into the manifest
LAB_RUN_ENV = "KERNELIB_LAB_RUN"  # set by `make lab` (kernelib.lab) for the kernels it starts
LAB_RUNS_ENV = "KERNELIB_LAB_RUNS"
DEFAULT_LAB_RUN = "lab"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$")


def check_run_name(name: str) -> str:
    """A lab run name is one folder name under `runs/` (letters, digits, `_`, `-`)."""
    if not _NAME.match(name or ""):
        raise ConfigError(f"LAB_RUN must be a folder name of letters, digits, '_' and '-' (at "
                          f"most 64, starting with a letter or digit); received {name!r}. "
                          f"Example: LAB_RUN=alice make lab")
    return name


def run_folder(env: Mapping[str, str] | None = None) -> Path:
    """The lab's run folder: `$KERNELIB_LAB_RUNS/$KERNELIB_LAB_RUN`, by default `../runs/lab`."""
    env = os.environ if env is None else env
    name = check_run_name(env.get(LAB_RUN_ENV) or DEFAULT_LAB_RUN)
    return (Path(env.get(LAB_RUNS_ENV) or "../runs").expanduser() / name).resolve()


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run folder (`runs/<run_id>/`)."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def raw(self) -> Path:
        return self.data / "raw.npz"

    @property
    def splits(self) -> Path:
        return self.data / "splits.npz"

    @property
    def preprocessor(self) -> Path:
        return self.data / "preprocess.keras"

    @property
    def augment(self) -> Path:
        return self.data / "augment.json"

    @property
    def data_card(self) -> Path:
        return self.data / "card.json"

    @property
    def members_spec(self) -> Path:
        return self.root / "members" / "members.json"

    def member_dir(self, name: str) -> Path:
        return self.root / "members" / name

    def member_model(self, name: str) -> Path:
        return self.member_dir(name) / "model.keras"

    @property
    def merged(self) -> Path:
        return self.root / "merged"

    def merged_model(self, strategy: str) -> Path:
        return self.merged / f"{strategy}.keras"

    @property
    def predictions(self) -> Path:
        return self.merged / "predictions.npz"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics"

    @property
    def timings(self) -> Path:
        """Measurements that vary between runs (latency, throughput), kept out of metrics/."""
        return self.root / "timings"

    @property
    def export(self) -> Path:
        return self.root / "export"

    def tensorboard_dir(self, name: str) -> Path:
        """TensorBoard logs of one training (a member, a concat head, a distill student)."""
        return self.root / "tensorboard" / name

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def notebooks(self) -> Path:
        return self.root / "notebooks"

    def require(self, path: Path, stage: str) -> Path:
        """Fail clearly when an upstream artifact is missing."""
        if not path.exists():
            raise PipelineError(
                f"'{path.relative_to(self.root)}' is missing from run folder '{self.root}'; "
                f"it is written by the '{stage}' stage: run that stage first "
                f"(or `kernelib run CONFIG`)."
            )
        return path


@dataclass(frozen=True)
class Stage:
    """What a notebook gets back from `start_stage`: validated parameters and its run folder."""

    name: str
    params: Any
    run: RunDir
    seed: int
    device: dict[str, Any]


def stage_values(stage: str, namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The names a stage (and every stage) takes, picked out of a notebook's `globals()`.

    Only declared parameter names are read, so the notebook's other variables never reach the
    validation; a parameter the notebook lacks keeps its default.
    """
    if stage not in P.STAGE_MODELS:
        raise ConfigError(f"unknown stage '{stage}'; valid stages: {list(P.STAGE_MODELS)}")
    names = set(P.CommonParams.model_fields) | set(P.STAGE_MODELS[stage].model_fields)
    return {k: v for k, v in namespace.items() if k in names}


def start_stage(stage: str, namespace: Mapping[str, Any] | None = None, /,
                **values: Any) -> Stage:
    """Validate a notebook's parameters, seed everything, set up the device; first call of a notebook.

    `start_stage("merge", globals())` reads the stage's parameters from the notebook's
    parameters cell (as papermill or the user set them); keywords override. Runs the same
    validation `kernelib run` does, so a direct papermill call or a JupyterLab run with a wrong
    value fails here with the parameter named. `run_dir=None` is the lab's run folder
    (`run_folder`: `runs/<LAB_RUN>/` under `make lab`).
    """
    values = {**(stage_values(stage, namespace) if namespace is not None else {}), **values}
    common = P.validate_common({k: values.pop(k) for k in list(values)
                                if k in P.CommonParams.model_fields})
    stage_params = P.validate_stage(stage, values)
    root = (Path(common.run_dir).expanduser().resolve() if common.run_dir is not None
            else run_folder())
    root.mkdir(parents=True, exist_ok=True)
    from kernelib import train  # TensorFlow import: only once the parameters are known good

    device = train.setup(seed=common.seed, deterministic=common.deterministic,
                         distribution=getattr(stage_params, "distribution", "none"))
    label = f"{stage}_{values.get('name') or 'all'}" if stage == "train" else stage
    io.write_json(root / DEVICE_FILE.format(label=label), device)
    return Stage(name=stage, params=stage_params, run=RunDir(root), seed=common.seed,
                 device=device)


def kernel_env(threads: int | None = None) -> dict[str, str]:
    """Environment for kernel processes: TensorFlow's C++ logging limited to fatal errors;
    with `threads`, TensorFlow's and OpenMP's thread pools capped (parallel jobs)."""
    env = {"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")}
    if threads:
        env |= {"KERNELIB_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    return env
