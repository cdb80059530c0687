"""Holding a run folder: its lock, the signals that stop a run, and a space reserve."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path

from kernelib.errors import PipelineError

LOCK = ".lock"


class RunLock:
    """An exclusive lock on a run folder: a second run with the same run id is refused.

    `fcntl.flock` on `.lock`: the kernel holds the lock, so there is no window between taking
    it and writing the PID, and a process killed with -9 releases it. The file is removed on
    release; a holder checks that the file it locked is still the one at the path (another
    process may have removed it in between) and otherwise tries again.
    """

    def __init__(self, root: Path):
        self.path = root / LOCK
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        import fcntl

        for _ in range(20):
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                pid = self._holder()
                raise PipelineError(
                    f"run folder '{self.path.parent}' is in use by process "
                    f"{pid or '(starting)'}; wait for that run to finish or choose another "
                    "--run-id.") from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:  # removed by the holder that released it just now
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            self._fd = fd
            return self
        raise PipelineError(f"could not lock run folder '{self.path.parent}'")

    def _holder(self) -> int | None:
        try:
            return int(self.path.read_text().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)  # while still holding it: nobody locks a removed file
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@contextlib.contextmanager
def space_reserve(run_root: Path, size: int = 1 << 20):
    """A hidden 1 MiB file in the run folder, released just before the final manifest is
    written, so a run that filled its disk can still record how it ended."""
    path = run_root / ".space-reserve"
    try:
        with open(path, "wb") as fh:
            fh.truncate(0)
            os.posix_fallocate(fh.fileno(), 0, size)
    except OSError:
        path.unlink(missing_ok=True)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGINT (Ctrl-C) or SIGTERM (a scheduler, `kill`, a container stop)."""

    def __init__(self, name: str, signum: int = signal.SIGINT):
        super().__init__(name)
        self.signum = int(signum)


@contextlib.contextmanager
def interrupts():
    """One handler for SIGINT and SIGTERM while a run holds its folder: the first signal raises
    `Interrupted` (so the manifest records `interrupted`, the lock is released and the index
    updated); further ones are noted and ignored until the run has written its records.
    Yields the list of signal numbers received."""
    received: list[int] = []

    def handler(signum, frame):
        received.append(signum)
        if len(received) == 1:
            raise Interrupted(signal.Signals(signum).name, signum)

    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
