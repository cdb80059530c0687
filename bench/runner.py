"""Runner timings for a config: cold run (and where its time goes, stage by stage), warm (fully
cached) re-run (wall time and the manifest's duration_s: the tests check that a warm run
executes no step, this shows how much faster it is), and member training with --jobs 1,
--jobs N and --executor ray (Ray started inside the command), measured side by side in one
process. Prints a ratio table, and where
each executor's train-stage time goes: the longest step's papermill time (measured inside the
step), Ray's own start and stop (measured alone), and the rest (processes, kernels, runner).

    .venv/bin/python bench/runner.py [CONFIG] [--jobs N] [--repeats R] [--no-ray] [--keep DIR]
                                     [--cold-only]

`--keep DIR` runs in DIR and keeps its runs and reports (the cold run's metrics and report
are a demo run like any other); without it, a temporary folder is removed at the end.

Not a test: wall-clock numbers depend on the machine. Quote the medians.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(*args: str, cwd: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kernelib.cli", "run", *args, "--quiet",
                    "--runs-dir", "runs", "--reports-dir", "reports"], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def ray_start_stop() -> float:
    """Seconds to start a local Ray instance as `--executor ray` does, run one task, stop it."""
    code = ("import time, ray; t = time.perf_counter(); "
            "ray.init(address='local', include_dashboard=False, log_to_driver=False, logging_level='warning'); "
            "ray.get(ray.remote(lambda: 1).remote()); ray.shutdown(); "
            "print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout.strip().splitlines()[-1])


def longest_train_step(manifest: Path) -> float:
    """The longest train step's duration as measured around its papermill call."""
    stages = json.loads(manifest.read_text())["stages"]
    return max((s.get("duration_s") or 0.0) for s in stages if s["stage"] == "train")


def stage_table(manifest: Path, total: float) -> None:
    """Each step's duration in the cold run and its share of the command's wall time; a stage
    of several steps (members, overlapping with --jobs) also as its wall time, first start to
    last end (the manifest's times are whole seconds)."""
    from datetime import datetime

    stages = json.loads(manifest.read_text())["stages"]
    row = lambda label, d: print(f"{label:<34}{d:>10.1f}{d / total:>8.1%}")  # noqa: E731
    print(f"{'step':<34}{'seconds':>10}{'share':>8}")
    for s in stages:
        row(s["label"], s.get("duration_s") or 0.0)
    counted = 0.0
    for stage in dict.fromkeys(s["stage"] for s in stages):
        steps = [s for s in stages if s["stage"] == stage]
        if len(steps) > 1 and all(s.get("started") and s.get("ended") for s in steps):
            wall = (max(datetime.fromisoformat(s["ended"]) for s in steps)
                    - min(datetime.fromisoformat(s["started"]) for s in steps)).total_seconds()
            row(f"{stage} ({len(steps)} steps), wall", wall)
            counted += wall
        else:
            counted += sum(s.get("duration_s") or 0.0 for s in steps)
    row("runner (plan, cache, render)", total - counted)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("config", nargs="?", default=str(ROOT / "configs" / "default.yaml"))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-ray", action="store_true", help="skip the --executor ray row")
    ap.add_argument("--keep", metavar="DIR", help="run in DIR (new or empty) and keep it")
    ap.add_argument("--cold-only", action="store_true",
                    help="only the cold and warm runs (as `make run`: --jobs N), no executors")
    args = ap.parse_args()
    config = str(Path(args.config).resolve())
    with (contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory()) as tmp:
        cwd = Path(tmp)
        cwd.mkdir(parents=True, exist_ok=True)
        # the cold and warm runs as `make run` runs them (JOBS=2: --jobs 2)
        cold = timed(config, "--run-id", "cold", "--jobs", str(args.jobs), cwd=cwd)
        print(f"cold run (--jobs {args.jobs}): {cold:.1f} s", flush=True)
        stage_table(cwd / "runs" / "cold" / "manifest.json", cold)
        warm = timed(config, "--run-id", "warm", "--jobs", str(args.jobs), cwd=cwd)
        print(f"warm re-run: {warm:.1f} s", flush=True)
        if args.cold_only:
            return 0
        # the runner's own measure (the manifest's duration_s: steps, cache, reports)
        inner = {k: json.loads((cwd / "runs" / k / "manifest.json").read_text())["duration_s"]
                 for k in ("cold", "warm")}
        runs = {"j1": ("--jobs", "1"), "jN": ("--jobs", str(args.jobs))}
        if not args.no_ray:
            runs["ray"] = ("--executor", "ray")
        walls = {k: [] for k in runs}
        inside = {k: [] for k in runs}
        for r in range(args.repeats):  # alternate so drift hits every side alike
            for k, opts in runs.items():
                walls[k].append(timed(config, "--run-id", f"{k}-{r}", "--only", "train",
                                      *opts, cwd=cwd))
                inside[k].append(longest_train_step(cwd / "runs" / f"{k}-{r}" / "manifest.json"))
        ray_alone = statistics.median(ray_start_stop() for _ in range(args.repeats)) \
            if "ray" in runs else None
    serial, parallel = walls["j1"], walls["jN"]
    s, p = statistics.median(serial), statistics.median(parallel)
    print(f"config: {config}")
    print(f"{'measure':<34}{'seconds':>10}{'ratio':>10}")
    print(f"{'cold run':<34}{cold:>10.1f}{1.0:>10.2f}")
    print(f"{'warm re-run (all cached)':<34}{warm:>10.1f}{warm / cold:>10.3f}")
    print(f"{'  manifest duration_s, cold':<34}{inner['cold']:>10.1f}{1.0:>10.2f}")
    print(f"{'  manifest duration_s, warm':<34}{inner['warm']:>10.1f}"
          f"{inner['warm'] / inner['cold']:>10.3f}")
    print(f"{'train stage, --jobs 1 (median)':<34}{s:>10.1f}{1.0:>10.2f}")
    print(f"{f'train stage, --jobs {args.jobs} (median)':<34}{p:>10.1f}{p / s:>10.2f}")
    if "ray" in walls:
        ray_wall = statistics.median(walls["ray"])
        print(f"{'train stage, Ray (median)':<34}{ray_wall:>10.1f}{ray_wall / s:>10.2f}")
    print(f"speed-up of --jobs {args.jobs} over --jobs 1: {s / p:.2f}x "
          f"(runs: {[round(x, 1) for x in serial]} vs {[round(x, 1) for x in parallel]})")
    if "ray" in walls:
        print(f"ray vs --jobs {args.jobs}: {ray_wall / p:.2f}x the wall time "
              f"(ray runs: {[round(x, 1) for x in walls['ray']]})")
    print("\nwhere the train-stage time goes (medians, seconds)")
    print(f"{'executor':<16}{'wall':>8}{'longest step':>14}{'Ray start+stop':>16}{'rest':>8}")
    for k, label in (("j1", "--jobs 1"), ("jN", f"--jobs {args.jobs}"), ("ray", "ray")):
        if k not in walls:
            continue
        wall, step = statistics.median(walls[k]), statistics.median(inside[k])
        start = ray_alone if k == "ray" else 0.0
        print(f"{label:<16}{wall:>8.1f}{step:>14.1f}{start:>16.1f}{wall - step - start:>8.1f}")
    print("longest step: duration of the slowest train step around its papermill call (kernel "
          "start, TensorFlow import, training); with --jobs 1 the steps run one after another, "
          "so 'rest' holds the others too. Ray start+stop: a local instance started, one task, "
          "shut down, measured alone.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
