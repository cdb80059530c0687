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

import numpy as np

from kernelib.repository import Version


class Batcher:
    """Dynamic batching: requests queued while the runtime is busy run as one batch.

    A batch holds up to `max_batch_size` rows of one version; it waits at most `timeout_s` for
    more rows once the runtime is free. `max_batch_size=0` runs each request on its own. One
    inference thread runs the runtime (whose own thread pool uses the cores).
    """

    def __init__(self, max_batch_size: int = 0, timeout_s: float = 0.0):
        self.max_rows, self.timeout_s = max_batch_size, timeout_s
        self.executor = concurrent.futures.ThreadPoolExecutor(1, "kernelib-infer")
        self._pending: collections.deque = collections.deque()
        self._rows = 0
        self._wake: asyncio.Event | None = None
        self._full: asyncio.Event | None = None

    async def run(self, version: Version, x: np.ndarray) -> np.ndarray:
        loop = asyncio.get_running_loop()
        if self.max_rows <= 0:
            return await loop.run_in_executor(self.executor, version.runner, x)
        future = loop.create_future()
        self._pending.append((version, x, future))
        self._rows += len(x)
        self._wake.set()
        if self._rows >= self.max_rows:
            self._full.set()
        return await future

    async def worker(self) -> None:
        self._wake, self._full = asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            if self.timeout_s > 0 and self._rows < self.max_rows:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.timeout_s)
            batch = self._take()
            version = batch[0][0]
            x = batch[0][1] if len(batch) == 1 else np.concatenate([b[1] for b in batch])
            try:
                y = await loop.run_in_executor(self.executor, version.runner, x)
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

    def _take(self) -> list:
        """The longest run of queued requests for one version that fits in a batch."""
        batch = [self._pending.popleft()]
        rows = len(batch[0][1])
        while (self._pending and self._pending[0][0] is batch[0][0]
               and rows + len(self._pending[0][1]) <= self.max_rows):
            batch.append(self._pending.popleft())
            rows += len(batch[-1][1])
        self._rows -= rows
        if not self._pending:
            self._wake.clear()
        if self._rows < self.max_rows:
            self._full.clear()
        return batch
