"""Atomic writes: a folder replacement never leaves the destination missing, and what a
crashed attempt left behind is put right by the next write."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from kernelib import io

_WATCHER = """
import sys, time
from pathlib import Path
dest, until = Path(sys.argv[1]), float(sys.argv[2])
missing = 0
while time.time() < until:
    missing += not (dest / "f").exists()
print(missing)
"""


def _replace(dest: Path, text: str) -> None:
    with io.atomic_path(dest) as tmp:
        tmp.mkdir()
        (tmp / "f").write_text(text)


def test_a_folder_being_replaced_is_never_missing(tmp_path):
    """A second process looks for `1/f` while `1/` is replaced 300 times: never absent."""
    dest = tmp_path / "1"
    _replace(dest, "0")
    until = time.time() + 3.0
    watcher = subprocess.Popen([sys.executable, "-c", _WATCHER, str(dest), str(until + 0.5)],
                               stdout=subprocess.PIPE, text=True)
    i = 0
    while time.time() < until:
        i += 1
        _replace(dest, str(i))
    assert watcher.communicate(timeout=30)[0].strip() == "0"
    assert (dest / "f").read_text() == str(i)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1"]


def test_a_leftover_old_folder_does_not_block_the_next_replacement(tmp_path):
    dest = tmp_path / "1"
    _replace(dest, "a")
    (tmp_path / ".1.old").mkdir()
    (tmp_path / ".1.old" / "stale").write_text("x")  # a crash after the first rename's cleanup
    _replace(dest, "b")
    assert (dest / "f").read_text() == "b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1"]


def test_a_crash_between_two_renames_is_put_back(tmp_path):
    """Where only `.1.old` is left (the destination moved away, the new one not yet in), the
    next look at the folder restores it and says so."""
    old = tmp_path / ".1.old"
    old.mkdir()
    (old / "f").write_text("served")
    done = io.clean_leftovers(tmp_path, recursive=True)
    assert (tmp_path / "1" / "f").read_text() == "served"
    assert len(done) == 1 and "restored" in done[0]


def test_temporary_folders_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    left = tmp_path / f".model.keras.{dead}.tmpabc123"
    left.mkdir()
    (left / "model.keras").write_bytes(b"half")
    io.write_text(tmp_path / "model.keras", "whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]
