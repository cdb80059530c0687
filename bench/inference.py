"""Inference paths of a five-member merged model side by side in one process, against the roofline.

    .venv/bin/python bench/inference.py [--work DIR] [--repeats R]

Paths: a Python loop over the members' `predict` (what users write first), the merged model's
`predict`, its eager calls on 256-row batches against kernelib's traced `predict_proba` (what
the merge stage's prediction cache runs), the merged model in `tf.function(jit_compile=True)`, and each exported runtime
(onnxruntime and LiteRT at several thread counts and graph optimisation levels, SavedModel;
the fastest also with a large batch fed in cache-sized slices).
Batch 1: median microseconds per call; batch 1024: rows per second. FLOPs per row are counted
from the merged model's frozen graph (TensorFlow's profiler); the peak is the fastest
2048x2048 fp32 matrix product in NumPy or TensorFlow, before or after the paths ran. Not a test: quote the printed table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import _pool  # noqa: E402


def median_s(fn: Callable, x: np.ndarray, repeats: int) -> float:
    for _ in range(2):
        fn(x)
    return float(np.median([_time(fn, x) for _ in range(repeats)]))


def best_s(fn: Callable, x: np.ndarray, repeats: int) -> float:
    fn(x)
    return min(_time(fn, x) for _ in range(repeats))


def _time(fn: Callable, x: np.ndarray) -> float:
    t = time.perf_counter()
    fn(x)
    return time.perf_counter() - t


def matmul_peak(repeats: int = 10) -> tuple[float, float]:
    """FLOP/s of a 2048^2 fp32 matrix product, the fastest of `repeats`: (NumPy, TensorFlow)."""
    import tensorflow as tf

    a, b = (np.random.default_rng(i).random((2048, 2048), dtype="float32") for i in (0, 1))
    ta, tb = tf.constant(a), tf.constant(b)
    flops = 2 * 2048 ** 3
    return (flops / best_s(lambda _: a @ b, a, repeats),
            flops / best_s(lambda _: tf.linalg.matmul(ta, tb).numpy(), a, repeats))


def flops_per_row(model) -> int:
    """Float operations of one row through the model's frozen inference graph."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    spec = tf.TensorSpec((1, *model.input_shape[1:]), tf.float32)
    fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    opts["output"] = "none"
    graph = convert_variables_to_constants_v2(fn).graph
    return tf.compat.v1.profiler.profile(graph=graph, options=opts).total_float_ops


def xla(model) -> Callable:
    import tensorflow as tf

    fn = tf.function(lambda x: model(x, training=False), jit_compile=True)
    return lambda x: fn(tf.constant(x)).numpy()


def onnx(path: Path, threads: int, level: str) -> Callable:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


def litert(path: Path, threads: int) -> Callable:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=threads)
    inp, out = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    shape = {"now": None}

    def run(x):
        if shape["now"] != x.shape:
            it.resize_tensor_input(inp, list(x.shape))
            it.allocate_tensors()
            shape["now"] = x.shape
        it.set_tensor(inp, x)
        it.invoke()
        return it.get_tensor(out)

    return run


def eager_batches(model, rows: int = 256) -> Callable:
    """What kernelib's `predict_proba` did before it traced: one eager call per batch."""
    return lambda x: np.concatenate([np.asarray(model(x[i:i + rows], training=False))
                                     for i in range(0, len(x), rows)])


def chunked(fn: Callable, rows: int) -> Callable:
    """`fn` over a large batch in slices of `rows`, so each layer's activations stay in cache."""
    return lambda x: np.concatenate([fn(x[i:i + rows]) for i in range(0, len(x), rows)])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/kernelib-bench", help="model cache folder")
    ap.add_argument("--repeats", type=int, default=50, help="batch-1 repeats (fast paths)")
    args = ap.parse_args()
    from kernelib import runtimes
    from kernelib.inference import predict_proba

    pool = _pool.build(Path(args.work))
    members, merged, out = pool["members"], pool["merged"], pool["export"]
    one = pool["x"][:1]
    big = np.resize(pool["x"], (1024, *one.shape[1:])).astype("float32")
    paths: dict[str, tuple[Callable, int, int]] = {  # name: (fn, batch-1 and batch-1024 repeats)
        "members' predict loop": (
            lambda x: np.mean([m.predict(x, verbose=0) for m in members], 0), 5, 3),
        "merged predict": (lambda x: merged.predict(x, verbose=0), 5, 3),
        "merged eager calls, 256-row batches": (eager_batches(merged), 5, 3),
        "kernelib predict_proba (traced, 256 rows)": (lambda x: predict_proba(merged, x), 5, 3),
        "merged tf.function(jit_compile)": (xla(merged), args.repeats, 5),
        "SavedModel serving_default": (runtimes.load(out / "pool" / "1"), args.repeats, 5),
    }
    for threads in (1, 2):
        for level in ("ORT_ENABLE_EXTENDED", "ORT_ENABLE_ALL"):
            paths[f"onnxruntime {threads} thr {level[4:].lower()}"] = (
                onnx(out / "pool.onnx", threads, level), args.repeats, 5)
        paths[f"LiteRT {threads} thr"] = (litert(out / "pool.tflite", threads), args.repeats, 5)
    for rows in (16, 64):  # the same sessions, a batch of 1024 given as slices
        for name in ("onnxruntime 1 thr enable_all", "onnxruntime 2 thr enable_all",
                     "LiteRT 2 thr"):
            paths[f"{name}, {rows}-row slices"] = (chunked(paths[name][0], rows), args.repeats, 5)
    before = matmul_peak()  # the machine is shared: the peak is taken before and after
    reference = paths["merged tf.function(jit_compile)"][0](big)
    rows = {}
    for name, (fn, r1, r2) in paths.items():
        diff = float(np.max(np.abs(fn(big) - reference)))
        rows[name] = (1e6 * median_s(fn, one, r1), 1024 / median_s(fn, big, r2), diff)
        print(f"  measured {name}", file=sys.stderr, flush=True)

    flops = flops_per_row(merged)
    peak_np, peak_tf = (max(p) for p in zip(before, matmul_peak(), strict=True))
    peak = max(peak_np, peak_tf)
    member_rates = [1024 / median_s(xla(m), big, 5) for m in members]
    summed = 1 / sum(1 / r for r in member_rates)  # the members one after another
    loop_us = rows["members' predict loop"][0]
    runtimes_only = {k: v for k, v in rows.items() if k.startswith(("onnx", "LiteRT", "Saved"))}
    best1 = min((k for k in runtimes_only if "slices" not in k),  # slices matter at 1024 only
                key=lambda k: runtimes_only[k][0])
    best_big = max(runtimes_only, key=lambda k: runtimes_only[k][1])
    floor_us, roofline = 1e6 * flops / peak, peak / flops

    print(f"\n{'path':<48}{'batch 1 (µs)':>14}{'batch 1024 (rows/s)':>22}{'vs loop':>10}"
          f"{'roofline':>10}{'max|Δ|':>10}")
    for name, (us, rate, diff) in rows.items():
        print(f"{name:<48}{us:>14,.0f}{rate:>22,.0f}{loop_us / us:>9,.0f}×"
              f"{rate / roofline:>10.0%}{diff:>10.1e}")
    merged_rate = rows["merged tf.function(jit_compile)"][1]
    print(f"\nFLOPs per row (frozen graph, TF profiler): {flops / 1e6:.2f} M")
    print(f"2048² fp32 matmul peak: NumPy {peak_np / 1e9:.0f}, TensorFlow {peak_tf / 1e9:.0f} "
          f"GFLOP/s -> roofline {roofline:,.0f} rows/s, batch-1 compute floor {floor_us:.0f} µs")
    print(f"merged XLA rate {merged_rate:,.0f} rows/s vs the 5 members' XLA rates summed "
          f"{summed:,.0f} rows/s: {merged_rate / summed:.2f}× (target ≥ 0.9×)")
    print(f"best batch 1: {best1}, {rows[best1][0]:,.0f} µs = {rows[best1][0] / floor_us:.1f}× "
          f"the compute floor (target ≤ 2×), {loop_us / rows[best1][0]:,.0f}× faster than the "
          f"member loop (target ≥ 1000×)")
    print(f"best batch 1024: {best_big}, {rows[best_big][1]:,.0f} rows/s = "
          f"{rows[best_big][1] / roofline:.0%} of the roofline (target ≥ 80%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
