"""Load test of `kernelib serve` on loopback with `hey`: concurrency 1, 8, 64, batching off and on.

    make hey && .venv/bin/python bench/serve.py [--work DIR] [--seconds S]

Serves the benches' five-member 28x28 model (bench/_pool.py), then a wide MLP that gains from
batching, and sends one-row TF Serving REST requests. Each load is bounded in time (`hey -z`, 5 s per level), hence in requests, and killed
past 65 s. Next to it, the same row through the same runtime in this process: the server's
overhead per request at concurrency 1, and its throughput as a fraction of the runtime's (one
row per call unbatched, 64 rows per call batched).
Not a test: the numbers depend on the machine (the client runs on the same cores).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import _pool  # noqa: E402


def start(export: Path, *args: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "kernelib.cli", "serve", str(export),
                             "--port", str(port), *args], stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    import urllib.request

    for _ in range(600):
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=1) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not start")


def hey(url: str, body: Path, concurrency: int, seconds: float) -> dict:
    """Requests/s and p50/p99 latency (ms) of POSTs at `concurrency` for `seconds`, all 200."""
    out = subprocess.run(["hey", "-z", f"{seconds}s", "-c", str(concurrency), "-m", "POST",
                          "-t", "30", "-T", "application/json", "-D", str(body), url],
                         capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    codes = dict(re.findall(r"\[(\d+)\]\s+(\d+) responses", out))
    if set(codes) != {"200"}:
        raise SystemExit(f"non-200 answers: {codes}\n{out}")
    pct = dict(re.findall(r"(\d+)%+ in ([\d.]+) secs", out))
    return {"n": sum(int(v) for v in codes.values()),
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50": 1e3 * float(pct["50"]), "p99": 1e3 * float(pct["99"])}


def in_process(export: Path, name: str, x: np.ndarray, repeats: int = 100) -> tuple:
    """(runtime name, median seconds of one batch-1 call, of one 64-row call)."""
    from kernelib.repository import Repository

    repo = Repository(export)
    repo.scan(first=True)
    v = repo.served[name]
    out = []
    for rows in (x, np.repeat(x, 64, axis=0)):
        for _ in range(5):
            v.runner(rows)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            v.runner(rows)
            times.append(time.perf_counter() - t)
        out.append(float(np.median(times)))
    return (v.fmt, *out)


def load_test(name: str, export: Path, work: Path, seconds: float) -> None:
    """The six loads on one model, and the in-process reference, printed as a table."""
    if not (work / "row.npy").is_file():
        np.save(work / "row.npy", _pool.data()[2][:1])
    x = np.load(work / "row.npy")
    body = work / "row.json"
    body.write_text(json.dumps({"instances": x.tolist()}))
    fmt, one_s, batch_s = in_process(export, name, x)
    print(f"\n== model '{name}', in-process {fmt}: 1 row {1e3 * one_s:.2f} ms ({1 / one_s:,.0f} "
          f"rows/s), 64 rows {64 / batch_s:,.0f} rows/s: batching can gain at most "
          f"{one_s * 64 / batch_s:.1f}× in runtime time")
    print(f"{'batching':<20}{'c':>4}{'requests':>10}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'req/s vs runtime':>18}")
    results = {}
    for label, flags in (("off", ["--max-batch-size", "0"]),
                         ("on (64 rows, 0 µs)", ["--max-batch-size", "64"])):
        proc, url = start(export, *flags)
        try:
            for c in (1, 8, 64):
                r = results[label, c] = hey(f"{url}/v1/models/{name}:predict", body, c, seconds)
                ref = 1 / one_s if label == "off" or c == 1 else 64 / batch_s
                print(f"{label:<20}{c:>4}{r['n']:>10,}{r['rps']:>9,.0f}{r['p50']:>9.2f}"
                      f"{r['p99']:>9.2f}{r['rps'] / ref:>17.0%}", flush=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    p50 = results["off", 1]["p50"]
    print(f"server overhead at c=1: p50 {p50:.2f} ms - in-process {1e3 * one_s:.2f} ms = "
          f"{p50 - 1e3 * one_s:.2f} ms per request (target < 1 ms)")
    on, off = results["on (64 rows, 0 µs)", 64]["rps"], results["off", 64]["rps"]
    print(f"batching at c=64: {on:,.0f} vs {off:,.0f} req/s = {on / off:.1f}× (target ≥ 5×)")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/kernelib-bench", help="model cache folder")
    ap.add_argument("--seconds", type=float, default=5, help="length of each load (hey -z)")
    args = ap.parse_args()
    if shutil.which("hey") is None:
        raise SystemExit("hey not found: `make hey` installs Debian's package")
    work = Path(args.work)
    for name, export in (("pool", _pool.export_dir(work)), ("wide", _pool.wide_export_dir(work))):
        load_test(name, export, work, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
