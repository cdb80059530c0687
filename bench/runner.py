"""Runner timings for a config: cold run (and where its time goes, stage by stage), warm (fully
cached) re-run, and member training with --jobs 1 vs --jobs N, measured side by side in one
process. Prints a ratio table.

    .venv/bin/python bench/runner.py [CONFIG] [--jobs N] [--repeats R]

Not a test: wall-clock numbers depend on the machine. Quote the medians.
"""

from __future__ import annotations

import argparse
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


def stage_table(manifest: Path, total: float) -> None:
    """Each step's duration in the cold run and its share of the command's wall time."""
    stages = json.loads(manifest.read_text())["stages"]
    print(f"{'step':<28}{'seconds':>10}{'share':>8}")
    for s in stages:
        d = s.get("duration_s") or 0.0
        print(f"{s['label']:<28}{d:>10.1f}{d / total:>8.1%}")
    rest = total - sum(s.get("duration_s") or 0.0 for s in stages)
    print(f"{'runner (plan, cache, render)':<28}{rest:>10.1f}{rest / total:>8.1%}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("config", nargs="?", default=str(ROOT / "configs" / "default.yaml"))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    config = str(Path(args.config).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        cold = timed(config, "--run-id", "cold", cwd=cwd)
        print(f"cold run: {cold:.1f} s", flush=True)
        stage_table(cwd / "runs" / "cold" / "manifest.json", cold)
        warm = timed(config, "--run-id", "warm", cwd=cwd)
        print(f"warm re-run: {warm:.1f} s", flush=True)
        serial, parallel = [], []
        for r in range(args.repeats):  # alternate so drift hits both sides alike
            serial.append(timed(config, "--run-id", f"j1-{r}", "--only", "train",
                                "--jobs", "1", cwd=cwd))
            parallel.append(timed(config, "--run-id", f"jN-{r}", "--only", "train",
                                  "--jobs", str(args.jobs), cwd=cwd))
    s, p = statistics.median(serial), statistics.median(parallel)
    print(f"config: {config}")
    print(f"{'measure':<34}{'seconds':>10}{'ratio':>10}")
    print(f"{'cold run':<34}{cold:>10.1f}{1.0:>10.2f}")
    print(f"{'warm re-run (all cached)':<34}{warm:>10.1f}{warm / cold:>10.3f}")
    print(f"{'train stage, --jobs 1 (median)':<34}{s:>10.1f}{1.0:>10.2f}")
    print(f"{f'train stage, --jobs {args.jobs} (median)':<34}{p:>10.1f}{p / s:>10.2f}")
    print(f"speed-up of --jobs {args.jobs} over --jobs 1: {s / p:.2f}x "
          f"(runs: {[round(x, 1) for x in serial]} vs {[round(x, 1) for x in parallel]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
