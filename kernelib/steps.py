"""The plan of a run: its steps, what each declares it writes, and their cache keys.

A step's cache key hashes the notebook (code and markdown, not outputs), the step's parameters
(without the run folder), every source file of the installed `kernelib` package, the versions
of the libraries results depend on, member files given by path, and the hashes of everything
the steps it depends on produced. Any edit of a kernelib source file therefore re-runs every
stage: the notebooks import kernelib lazily inside functions, so a per-module import graph
would miss dependencies (the gap Ploomber's cache has); re-running all is the safe answer.

A step's outputs are the files under the `RunDir` paths it declares (`declared`), not a guess
from what changed in the run folder: the cache copies them, the manifest hashes them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kernelib import data, io, params
from kernelib.errors import ConfigError
from kernelib.resources import NOTEBOOKS
from kernelib.rundir import RunDir

# folders of the run folder that are never artifacts: TensorBoard logs hold timestamps (they
# must not enter downstream keys), workers' logs vary from run to run
NOT_ARTIFACTS = ("notebooks", "manifest.json", "tensorboard", "logs")


@dataclass(frozen=True)
class Step:
    """One notebook execution: a stage, its label, and its papermill parameters."""

    stage: str
    label: str
    notebook: str
    output: str
    parameters: dict[str, Any]
    needs: tuple[str, ...] = ()  # labels of steps that must finish first (parallel jobs)


@dataclass(frozen=True)
class Outputs:
    """What a step writes: files, and folders whose every artifact file (except `exclude`,
    written there by another step) is the step's."""

    paths: tuple[Path, ...]
    exclude: tuple[Path, ...] = ()


def declared(step: Step, rd: RunDir) -> Outputs:
    """The outputs a step declares, as paths of its run folder."""
    if step.stage == "load":
        given = tuple(rd.member_dir(m["name"]) for m in step.parameters["members"]
                      if m.get("path"))
        return Outputs((rd.raw, rd.data_card, rd.members_spec, *given))
    if step.stage == "preprocess":
        return Outputs((rd.splits, rd.preprocessor, rd.augment))
    if step.stage == "train":
        return Outputs((rd.member_dir(step.parameters["name"]),))
    if step.stage == "merge":
        return Outputs((rd.merged, rd.metrics / "merge.json"))
    if step.stage == "evaluate":
        return Outputs((rd.metrics, rd.timings), exclude=(rd.metrics / "merge.json",))
    return Outputs((rd.export,))


def artifact_files(root: Path, under: Path | None = None) -> list[str]:
    """Artifact files under `under` (default: the whole run folder), relative to `root`: hidden
    files, training backups and the `NOT_ARTIFACTS` folders left out."""
    base = under or root
    found = [base] if base.is_file() else base.rglob("*") if base.is_dir() else []
    out = []
    for p in found:
        rel = p.relative_to(root)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts) \
                and rel.parts[0] not in NOT_ARTIFACTS and "backup" not in rel.parts:
            out.append(str(rel))
    return sorted(out)


def output_files(step: Step, rd: RunDir) -> list[str]:
    """The files a step's declaration covers now, relative to the run folder."""
    decl = declared(step, rd)
    skip = {str(p.relative_to(rd.root)) for p in decl.exclude}
    return sorted({rel for p in decl.paths for rel in artifact_files(rd.root, p)} - skip)


def missing_outputs(step: Step, rd: RunDir) -> list[str]:
    """Declared paths a step left unwritten (a declared folder must hold a file)."""
    return [str(p.relative_to(rd.root)) for p in declared(step, rd).paths
            if not artifact_files(rd.root, p)]


def hash_outputs(step: Step, rd: RunDir) -> dict[str, str]:
    return {rel: io.sha256(rd.root / rel) for rel in output_files(step, rd)}


# ---------------------------------------------------------------------------- the plan


def plan(config: params.Config, run_root: Path) -> list[Step]:
    """The ordered notebook executions for a config (the train notebook once per recipe member)."""
    common = {"run_dir": str(run_root), "seed": config.run.seed,
              "deterministic": config.run.deterministic}
    section = {s: getattr(config, s).model_dump(mode="json") for s in params.STAGES}
    steps = []
    for i, stage in enumerate(params.STAGES, 1):
        nb = NOTEBOOKS[stage]
        if stage == "train":
            for m in config.load.members:
                if m.recipe:
                    needs = (f"train:{m.finetune_from}",) if m.finetune_from else ()
                    steps.append(Step(stage, f"train:{m.name}", nb,
                                      f"{i:02d}_train_{m.name}.ipynb",
                                      {**common, **section["train"], "name": m.name}, needs))
            continue
        # concat heads and distill students train under the members' distribution strategy
        extra = {"distribution": config.train.distribution} if stage == "merge" else {}
        steps.append(Step(stage, stage, nb, nb, {**common, **section[stage], **extra}))
    return steps


def depends_on(step: Step, steps: list[Step]) -> list[str]:
    """Labels of the steps a step waits for and whose outputs its key hashes: every step of an
    earlier stage, and the steps it starts from (a fine-tune's base member)."""
    rank = params.STAGES.index(step.stage)
    return [s.label for s in steps
            if params.STAGES.index(s.stage) < rank or s.label in step.needs]


def select_steps(steps: list[Step], *, from_stage: str | None, only: str | None) -> set[str]:
    """Labels of the steps that must execute regardless of the cache (`--from`, `--only`)."""
    def matching(name: str, option: str) -> list[int]:
        idx = [i for i, s in enumerate(steps) if name in (s.stage, s.label)]
        if not idx:
            valid = sorted({s.stage for s in steps} | {s.label for s in steps})
            raise ConfigError(f"{option} '{name}' is not a step of this run; valid: {valid}")
        return idx

    if from_stage and only:
        raise ConfigError("use either --from or --only, not both")
    if from_stage:
        first = matching(from_stage, "--from")[0]
        return {s.label for s in steps[first:]}
    if only:
        return {steps[i].label for i in matching(only, "--only")}
    return set()


# ---------------------------------------------------------------------------- hashing


def versions() -> dict[str, str]:
    """Versions of the pieces a result depends on (without importing TensorFlow)."""
    return io.package_versions(("kernelib", "tensorflow", "keras", "numpy", "scikit-learn",
                                "papermill", "nbconvert"))


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def config_hash(config: params.Config) -> str:
    return _digest(config.model_dump(mode="json"))


def notebook_hash(path: Path) -> str:
    """Hash of a notebook's code and markdown (cell types and sources), not its outputs."""
    nb = json.loads(path.read_text())
    return _digest([(c["cell_type"], "".join(c["source"]) if isinstance(c["source"], list)
                     else c["source"]) for c in nb["cells"]])


def sources_hash(package_dir: Path | None = None) -> str:
    """Hash of every source file of the installed kernelib package."""
    package_dir = package_dir or Path(__file__).resolve().parent
    h = hashlib.sha256()
    for f in sorted(package_dir.rglob("*.py")):
        h.update(str(f.relative_to(package_dir)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def step_key(step: Step, *, notebook: str, sources: str, upstream: dict[str, str],
             env: dict[str, str]) -> str:
    """The cache key of one step (see the module docstring for what goes in)."""
    p = {k: v for k, v in step.parameters.items() if k != "run_dir"}
    given = {}
    if step.stage == "load":
        for m in p.get("members", []):
            if m.get("path") and Path(m["path"]).exists():  # a SavedModel folder too
                given[m["name"]] = io.sha256(m["path"])
        if isinstance(p.get("dataset"), dict):
            given["dataset"] = data.source_hash(p["dataset"]["path"])
    return _digest({"label": step.label, "notebook": notebook, "params": p, "sources": sources,
                    "versions": env, "given_files": given, "upstream": upstream})


def step_upstream(step: Step, steps: list[Step],
                  outputs: dict[str, dict[str, str]]) -> dict[str, str]:
    """The earlier results a step's key hashes: the outputs of every step it depends on."""
    upstream: dict[str, str] = {}
    for label in depends_on(step, steps):
        upstream |= outputs.get(label, {})
    return upstream


class Keys:
    """Cache keys of a plan's steps, given the outputs of the steps they depend on: the one
    key function of the runner and of `plan_keys`."""

    def __init__(self, steps: list[Step], *, nb_dir: Path, package_dir: Path | None = None):
        self.steps, self.nb_dir = steps, nb_dir
        self.sources, self.env = sources_hash(package_dir), versions()

    def __call__(self, step: Step, outputs: dict[str, dict[str, str]]) -> str:
        return step_key(step, notebook=notebook_hash(self.nb_dir / step.notebook),
                        sources=self.sources, env=self.env,
                        upstream=step_upstream(step, self.steps, outputs))


def plan_keys(config: params.Config, run_root: Path, *, nb_dir: Path,
              package_dir: Path | None = None,
              outputs: dict[str, dict[str, str]] | None = None) -> dict[str, str]:
    """Cache keys of every step, given the outputs each step produced: the keys the runner
    computes (both use `Keys`)."""
    steps = plan(config, run_root)
    keys = Keys(steps, nb_dir=nb_dir, package_dir=package_dir)
    return {step.label: keys(step, outputs or {}) for step in steps}
