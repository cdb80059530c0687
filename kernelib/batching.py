"""Dynamic batching for `kernelib serve`, as TF Serving's batching and Triton's dynamic batcher do.

Requests that arrive while the runtime is busy are run together as one batch when it is free,
so under load the server makes few large runtime calls instead of many small ones, and a lone
request waits for nothing (with the default timeout of 0).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import time

import numpy as np

from kernelib.repository import Version


class Batcher:
    """Dynamic batching: requests queued while the runtime is busy run as one batch.

    A batch holds up to `max_batch_size` rows of one version (fewer where the repository
    measured that the version's runtime runs faster per row in smaller batches); it waits at most `timeout_s` for
    more rows once the runtime is free. `max_batch_size=0` runs each request on its own. One
    inference thread runs the runtime (whose own thread pool uses the cores).

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
        self.executor = concurrent.futures.ThreadPoolExecutor(1, "kernelib-infer")
        self._pending: collections.deque = collections.deque()
        self._rows = 0
        self._wake: asyncio.Event | None = None
        self._full: asyncio.Event | None = None
        self._busy = 0  # runtime calls handed to the inference thread and not yet back
        self._quick: dict[int, int] = {}  # id(version) -> rows of its last call if < inline_s
        self._base_tasks: int | None = None  # tasks on the loop with no request in flight
        self._calls: dict[tuple[str, int, int], list[int]] = {}  # (name, version, rows) -> [n, ns]

    async def run(self, version: Version, x: np.ndarray) -> np.ndarray:
        if (not self._busy and not self._pending and self.timeout_s <= 0
                and len(x) <= self._quick.get(id(version), 0) and self._alone()):
            return self._call(version, x)
        if self.max_rows <= 0:
            return await self._hand_off(version, x)
        future = asyncio.get_running_loop().create_future()
        self._pending.append((version, x, future))
        self._rows += len(x)
        self._wake.set()
        if self._rows >= self._limit(self._pending[0][0]):
            self._full.set()
        return await future

    async def worker(self) -> None:
        self._wake, self._full = asyncio.Event(), asyncio.Event()
        self._base_tasks = len(asyncio.all_tasks())
        while True:
            await self._wake.wait()
            if self.timeout_s > 0 and self._rows < self._limit(self._pending[0][0]):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.timeout_s)
            batch = self._take()
            version = batch[0][0]
            x = batch[0][1] if len(batch) == 1 else np.concatenate([b[1] for b in batch])
            try:
                y = await self._hand_off(version, x)
            except Exception as err:  # noqa: BLE001 - handed to every request of the batch
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                continue
            start = 0
            for _, rows, future in batch:
                if not future.done():  # the client may have gone away
                    future.set_result(y[start:start + len(rows)])
                start += len(rows)

    def _limit(self, version: Version) -> int:
        """Rows per batch: `max_batch_size`, or less where the version runs best in less."""
        return min(self.max_rows, version.batch_rows or self.max_rows)

    def _alone(self) -> bool:
        """Whether the calling request's task is the only one besides the server's own."""
        return (self._base_tasks is not None
                and len(asyncio.all_tasks()) <= self._base_tasks + 1)

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

    async def _hand_off(self, version: Version, x: np.ndarray) -> np.ndarray:
        self._busy += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self.executor, self._call, version, x)
        finally:
            self._busy -= 1

    def _take(self) -> list:
        """The longest run of queued requests for one version that fits in a batch."""
        batch = [self._pending.popleft()]
        rows, limit = len(batch[0][1]), self._limit(batch[0][0])
        while (self._pending and self._pending[0][0] is batch[0][0]
               and rows + len(self._pending[0][1]) <= limit):
            batch.append(self._pending.popleft())
            rows += len(batch[-1][1])
        self._rows -= rows
        if not self._pending:
            self._wake.clear()
        if not self._pending or self._rows < self._limit(self._pending[0][0]):
            self._full.clear()
        return batch
