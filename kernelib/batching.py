"""Dynamic batching for `kernelib serve`, as TF Serving's batching and Triton's dynamic batcher do.

Requests that arrive while the runtime is busy are run together as one batch when it is free,
so under load the server makes few large runtime calls instead of many small ones, and a lone
request waits for nothing (with the default timeout of 0).
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time

import numpy as np

from kernelib.repository import Version


class Batcher:
    """Dynamic batching: requests queued while the runtime is busy run as one batch.

    One inference thread runs the runtime (whose own thread pool uses the cores) and forms the
    batches itself: when free, it takes every queued request of the version at the head of the
    queue, up to `max_batch_size` rows (fewer where the repository measured that the version's
    runtime runs faster per row in smaller batches), waiting at most `timeout_s` for more.
    It hands each batch's answers to the event loop in one callback, so the runtime never waits
    for the loop to form its next batch. `max_batch_size=0` runs each request on its own.

    A request that is alone in the server (no other request task on the event loop, nothing
    queued or running, no batch timeout to wait out) runs its runtime call on the loop's thread
    when that version's last call took under `inline_s` with at least as many rows: handing a
    0.5 ms call to the inference thread and back costs 0.1 ms or more on a busy machine, and
    with nothing else in flight there is no work for the loop to overlap it with. Requests that
    arrive meanwhile become tasks as soon as the call returns, so the next one is not alone.
    """

    inline_s = 5e-3

    def __init__(self, max_batch_size: int = 0, timeout_s: float = 0.0):
        self.max_rows, self.timeout_s = max_batch_size, timeout_s
        self._queue: collections.deque = collections.deque()  # (version, rows, future)
        self._ready = threading.Condition()
        self._running = False  # the inference thread holds a batch
        self._stop = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._base_tasks = 0  # tasks on the loop with no request in flight
        self._quick: dict[int, int] = {}  # id(version) -> rows of its last call if < inline_s
        self._calls: dict[tuple[str, int, int], list[int]] = {}  # (name, version, rows) -> [n, ns]

    def start(self) -> None:
        """Start the inference thread; called on the event loop that will await `run`."""
        self._loop = asyncio.get_running_loop()
        self._base_tasks = len(asyncio.all_tasks())
        self._thread = threading.Thread(target=self._serve, name="kernelib-infer", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Run what is queued, then stop the inference thread."""
        with self._ready:
            self._stop = True
            self._ready.notify()
        if self._thread is not None:
            self._thread.join()

    async def run(self, version: Version, x: np.ndarray) -> np.ndarray:
        # the queue grows only on this thread, so an empty one with nothing running stays so
        # while the call below runs: it never overlaps the inference thread's
        if (not self._queue and not self._running and self.timeout_s <= 0
                and len(x) <= self._quick.get(id(version), 0)
                and len(asyncio.all_tasks()) <= self._base_tasks + 1):
            return self._call(version, x)
        future = self._loop.create_future()
        with self._ready:
            self._queue.append((version, x, future))
            self._ready.notify()
        return await future

    def _serve(self) -> None:
        """The inference thread: take a batch, run it, hand the answers to the loop."""
        while True:
            with self._ready:
                while not self._queue and not self._stop:
                    self._ready.wait()
                if not self._queue:
                    return
                self._running = True  # before taking, so `run` never sees neither
                batch = self._take()
            try:
                x = batch[0][1] if len(batch) == 1 else np.concatenate([b[1] for b in batch])
                y, err = self._call(batch[0][0], x), None
            except Exception as error:  # noqa: BLE001 - handed to every request of the batch
                y, err = None, error
            self._running = False
            self._loop.call_soon_threadsafe(_deliver, batch, y, err)

    def _take(self) -> list:
        """The longest run of queued requests for one version that fits in a batch, waiting
        up to `timeout_s` for more while it is not full (called holding `_ready`)."""
        batch = [self._queue.popleft()]
        if self.max_rows <= 0:
            return batch
        version, rows = batch[0][0], len(batch[0][1])
        limit = min(self.max_rows, version.batch_rows or self.max_rows)
        deadline = time.monotonic() + self.timeout_s
        while True:
            while (self._queue and self._queue[0][0] is version
                   and rows + len(self._queue[0][1]) <= limit):
                batch.append(self._queue.popleft())
                rows += len(batch[-1][1])
            left = deadline - time.monotonic()
            if rows >= limit or self._queue or self._stop or left <= 0:
                return batch
            self._ready.wait(left)

    def _call(self, version: Version, x: np.ndarray) -> np.ndarray:
        """The runtime call, timed to decide whether the next idle one may run inline."""
        start = time.perf_counter_ns()
        y = version.runner(x)
        ns = time.perf_counter_ns() - start
        self._quick[id(version)] = len(x) if ns < 1e9 * self.inline_s else 0
        calls = self._calls.setdefault((version.name, version.version, len(x)), [0, 0])
        calls[0] += 1
        calls[1] += ns
        return y

    def stats(self, version: Version) -> dict:
        """Triton's statistics of a version: rows run (`inference_count`), runtime calls
        (`execution_count`) and, per batch size, the calls and their runtime nanoseconds."""
        sizes = sorted((rows, n, ns) for (name, number, rows), (n, ns) in list(self._calls.items())
                       if (name, number) == (version.name, version.version))
        return {"name": version.name, "version": str(version.version),
                "inference_count": sum(rows * n for rows, n, _ in sizes),
                "execution_count": sum(n for _, n, _ in sizes),
                "batch_stats": [{"batch_size": rows, "compute_infer": {"count": n, "ns": ns}}
                                for rows, n, ns in sizes]}


def _deliver(batch: list, y: np.ndarray | None, err: Exception | None) -> None:
    """Each request's rows of the batch's answer (or its error), on the event loop."""
    start = 0
    for _, rows, future in batch:
        if not future.done():  # the client may have gone away
            if err is not None:
                future.set_exception(err)
            else:
                future.set_result(y[start:start + len(rows)])
        start += len(rows)
