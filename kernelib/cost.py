"""What a model costs to ship and run: parameters, file size, latency, throughput.

Timings use the compiled forward pass (`tf.function(jit_compile=True)` around
`model(x, training=False)`), not `model.predict`, whose per-call overhead dominates small
batches. Every timing is the median of repeated calls after a warm-up.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from kernelib import io


def compiled_forward(model, *, jit_compile: bool = True):
    """The model's inference call as one compiled TensorFlow function."""
    import tensorflow as tf

    return tf.function(lambda x: model(x, training=False), jit_compile=jit_compile,
                       reduce_retracing=True)


def _median_seconds(fn, x, repeats: int) -> float:
    np.asarray(fn(x))  # warm-up: tracing and compilation
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.asarray(fn(x))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def latency_ms(model, *, batch: int = 1, repeats: int = 30, fn=None) -> float:
    """Median wall time of one compiled forward pass on `batch` rows, in milliseconds."""
    x = np.zeros((batch, *model.input_shape[1:]), dtype="float32")
    return 1000 * _median_seconds(fn or compiled_forward(model), x, repeats)


def throughput(model, *, batch: int = 256, repeats: int = 10, fn=None) -> float:
    """Rows per second of the compiled forward pass at `batch` rows per call (median call)."""
    x = np.zeros((batch, *model.input_shape[1:]), dtype="float32")
    return batch / _median_seconds(fn or compiled_forward(model), x, repeats)


def cost(model, path: str | Path | None = None, *, repeats: int = 30) -> dict[str, Any]:
    """Parameters, file size (when saved), batch-1 latency and batch-256 throughput.

    Times the XLA-compiled forward pass; a model XLA cannot compile is timed as a plain
    graph function instead, and `compiled` says which.
    """
    import tensorflow as tf

    fn, compiled = compiled_forward(model), "xla"
    try:
        latency = latency_ms(model, fn=fn, repeats=repeats)
    except (tf.errors.OpError, NotImplementedError):
        fn, compiled = compiled_forward(model, jit_compile=False), "graph"
        latency = latency_ms(model, fn=fn, repeats=repeats)
    return {
        "params": int(model.count_params()),
        "file_kb": round(io.size_bytes(path) / 1024, 1) if path else None,
        "latency_ms_b1": latency,
        "throughput_b256": throughput(model, fn=fn, repeats=max(3, repeats // 3)),
        "compiled": compiled,
        "device": device_name(),
    }


def device_name() -> str:
    """Where the timings ran: the first GPU's name, else "CPU"."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU"
    details = tf.config.experimental.get_device_details(gpus[0])
    return f"GPU ({details.get('device_name', gpus[0].name)})"


def cost_table(models: Iterable[tuple[str, str, Path, Any]], *, repeats: int = 30):
    """One `cost` row per `(name, kind, path, model)` of `models`, indexed by name.

    `models` may be a generator that loads each model when asked, so one is held at a time.
    """
    import pandas as pd

    rows = [{"model": name, "kind": kind, **cost(model, path, repeats=repeats)}
            for name, kind, path, model in models]
    return pd.DataFrame(rows).set_index("model")
