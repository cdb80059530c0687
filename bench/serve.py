"""Load test of `kernelib serve` on loopback with `hey`: concurrency 1, 8, 64, batching off and on.

    make hey && .venv/bin/python bench/serve.py [--work DIR] [--seconds S]

Serves the benches' five-member 28x28 model (bench/_pool.py), then a wide MLP that gains from
batching, and sends one-row TF Serving REST requests. Each load is bounded in time (`hey -z`,
5 s per level), hence in requests, and killed past 65 s. Next to it, the same row through the
same runtime in this process: the server's overhead per request at concurrency 1, and its
throughput as a fraction of the runtime's (one row per call unbatched, 64 rows per call
batched). From the server's `/v2/models/<name>/stats`: `rows/call`, what its runtime calls
held, and `ms/req: runtime`, their time per request; `server` and `hey` are the CPU time the
server process and the client each spent per request (they share the machine's cores).
Two bounds are printed with the targets: the HTTP floor (hey against `/v2/health/live`, where
the server does no model work) and what 64-row runtime calls can gain at most.
Not a test: the numbers depend on the machine (the client runs on the same cores).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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


def hey(url: str, concurrency: int, seconds: float, body: Path | None = None,
        headers: tuple[str, ...] = ()) -> dict:
    """Requests/s and p50/p99 latency (ms) at `concurrency` for `seconds` (POST of `body`, or
    GET), all answered 200. Latencies come from hey's CSV (0.1 ms steps); p50 and p99 are
    interpolated within their step, so they resolve well under 0.1 ms."""
    cmd = ["hey", "-z", f"{seconds}s", "-c", str(concurrency), "-t", "30", "-o", "csv"]
    if body is not None:
        cmd += ["-m", "POST", "-T", "application/json", "-D", str(body)]
    for h in headers:
        cmd += ["-H", h]
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=seconds + 60,
                         check=True).stdout.splitlines()[1:]
    now = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_s = now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime
    rows = np.array([[float(v) for v in line.split(",")] for line in out])
    if not len(rows) or set(rows[:, 6]) != {200}:
        raise SystemExit(f"answers other than 200 from {url}: {sorted(set(rows[:, 6]))}")
    ms = 1e3 * rows[:, 0]
    return {"n": len(rows), "rps": len(rows) / (rows[:, 7] + rows[:, 0]).max(),
            "p50": quantile(ms, 0.5), "p99": quantile(ms, 0.99), "mean": float(ms.mean()),
            "client_ms": 1e3 * client_s / len(rows)}


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def quantile(ms: np.ndarray, q: float, step: float = 0.1) -> float:
    """The q-quantile of latencies rounded to `step`, spread evenly within the step it falls in
    (the grouped-data quantile)."""
    bins = np.round(ms / step).astype(int)
    values, counts = np.unique(bins, return_counts=True)
    below = np.cumsum(counts) - counts
    i = int(np.searchsorted(np.cumsum(counts), q * len(ms)))
    return step * (values[i] - 0.5 + (q * len(ms) - below[i]) / counts[i])


def runtime_calls(url: str, name: str) -> tuple[int, int, int]:
    """(rows, runtime calls, runtime ns) the server has run for `name` (Triton's statistics)."""
    import urllib.request

    with urllib.request.urlopen(f"{url}/v2/models/{name}/stats", timeout=10) as r:
        stats = json.load(r)["model_stats"][0]
    ns = sum(b["compute_infer"]["ns"] for b in stats["batch_stats"])
    return stats["inference_count"], stats["execution_count"], ns


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


def bodies(work: Path, x: np.ndarray) -> dict:
    """The one-row request bodies: TF Serving's row form, and V2 with a binary tensor."""
    rest = work / "row.json"
    rest.write_text(json.dumps({"instances": x.tolist()}))
    head = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                   "parameters": {"binary_data_size": 4 * x.size}}]}).encode()
    v2 = work / "row.v2"
    v2.write_bytes(head + np.ascontiguousarray(x, "<f4").tobytes())
    return {"rest": rest, "v2": v2, "v2_header": f"Inference-Header-Content-Length: {len(head)}"}


def load_test(name: str, export: Path, work: Path, seconds: float) -> None:
    """The six loads on one model, the HTTP floor and the in-process reference, as a table."""
    if not (work / "row.npy").is_file():
        np.save(work / "row.npy", _pool.data()[2][:1])
    x = np.load(work / "row.npy")
    body = bodies(work, x)
    fmt, one_s, batch_s = in_process(export, name, x)
    print(f"\n== model '{name}', in-process {fmt}: 1 row {1e3 * one_s:.2f} ms ({1 / one_s:,.0f} "
          f"rows/s), 64 rows {64 / batch_s:,.0f} rows/s: batching can gain at most "
          f"{one_s * 64 / batch_s:.1f}× in runtime time")
    print(f"{'batching':<20}{'c':>4}{'requests':>10}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
          f"{'rows/call':>11}{'req/s vs runtime':>18}{'ms/req: runtime':>17}"
          f"{'server':>8}{'hey':>6}")
    results = {}
    for label, flags in (("off", ["--max-batch-size", "0"]),
                         ("on (64 rows, 0 µs)", ["--max-batch-size", "64"])):
        proc, url = start(export, *flags)
        try:
            for c in (1, 8, 64):
                before, cpu = runtime_calls(url, name), cpu_s(proc.pid)
                r = results[label, c] = hey(f"{url}/v1/models/{name}:predict", c, seconds,
                                            body["rest"])
                server_ms = r["server_ms"] = 1e3 * (cpu_s(proc.pid) - cpu) / r["n"]
                rows, calls, ns = np.subtract(runtime_calls(url, name), before)
                r["runtime_ms"] = 1e-6 * ns / r["n"]
                ref = 1 / one_s if label == "off" or c == 1 else 64 / batch_s
                print(f"{label:<20}{c:>4}{r['n']:>10,}{r['rps']:>9,.0f}{r['p50']:>9.2f}"
                      f"{r['p99']:>9.2f}{rows / calls:>11.1f}{r['rps'] / ref:>17.0%}"
                      f"{r['runtime_ms']:>9.2f}{server_ms:>8.2f}{r['client_ms']:>6.2f}",
                      flush=True)
            if label == "off":
                results["v2"] = hey(f"{url}/v2/models/{name}/infer", 1, seconds, body["v2"],
                                    (body["v2_header"],))
                results["live", 1] = hey(f"{url}/v2/health/live", 1, seconds)
                results["live", 64] = hey(f"{url}/v2/health/live", 64, seconds)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    summary(results, one_s, batch_s)


def summary(results: dict, one_s: float, batch_s: float) -> None:
    """The two targets, each with what bounds it on this machine."""
    floor, v2 = results["live", 1]["p50"], results["v2"]["p50"]
    print(f"HTTP floor (GET /v2/health/live, no model work: client, loopback, uvicorn, "
          f"starlette): c=1 p50 {floor:.2f} ms; c=64 {results['live', 64]['rps']:,.0f} req/s")
    r = results["off", 1]
    print(f"server overhead at c=1 (target < 1 ms): p50 {r['p50']:.2f} ms - in-process "
          f"{1e3 * one_s:.2f} ms = {r['p50'] - 1e3 * one_s:.2f} ms; over the same requests, mean "
          f"latency {r['mean']:.2f} ms - mean runtime call in the server {r['runtime_ms']:.2f} ms "
          f"= {r['mean'] - r['runtime_ms']:.2f} ms. Of it {floor:.2f} ms is the HTTP floor. "
          f"V2 binary tensor: p50 {v2:.2f} ms, {v2 - 1e3 * one_s:.2f} ms over in-process")
    print(f"  CPU per request at c=1 outside the runtime (little inflated by other processes' "
          f"load): server CPU - runtime call time {r['server_ms'] - r['runtime_ms']:.2f} ms + hey "
          f"{r['client_ms']:.2f} ms = {r['server_ms'] - r['runtime_ms'] + r['client_ms']:.2f} ms")
    on, off = results["on (64 rows, 0 µs)", 64]["rps"], results["off", 64]["rps"]
    ceiling = min(one_s * 64 / batch_s, results["live", 64]["rps"] / off)
    print(f"batching at c=64: {on:,.0f} vs {off:,.0f} req/s = {on / off:.1f}× (target ≥ 5×); "
          f"at most {ceiling:.1f}× here: the runtime gains {one_s * 64 / batch_s:.1f}× from "
          f"64-row calls, and no request is answered faster than the HTTP floor "
          f"({results['live', 64]['rps'] / off:.1f}× the unbatched rate)")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/kernelib-bench", help="model cache folder")
    ap.add_argument("--seconds", type=float, default=5, help="length of each load (hey -z)")
    ap.add_argument("--models", default="pool,wide", help="which of pool,wide to load-test")
    args = ap.parse_args()
    if shutil.which("hey") is None:
        raise SystemExit("hey not found: `make hey` installs Debian's package")
    work = Path(args.work)
    exports = {"pool": _pool.export_dir, "wide": _pool.wide_export_dir}
    for name in args.models.split(","):
        load_test(name, exports[name](work), work, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
