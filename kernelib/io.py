"""Atomic artifact writing and hashing: a crash leaves the old artifact or the new one."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_path(dest: str | Path, *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to `dest`; rename it onto `dest` only if the block succeeds.

    Works for files and folders. The temporary name keeps `dest`'s suffix (Keras checks it).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    tmp = tmp_dir / (dest.stem + (suffix if suffix is not None else dest.suffix))
    try:
        yield tmp
        if dest.is_dir() and not dest.is_symlink():
            old = dest.with_name(f".{dest.name}.old")
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def write_json(path: str | Path, data: Any) -> Path:
    """Write `data` as indented, key-sorted JSON atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=_jsonable) + "\n")
    return path


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def read_json_if_exists(path: str | Path) -> Any:
    """The JSON at `path`, or None where there is no such file (a partial run folder)."""
    path = Path(path)
    return read_json(path) if path.is_file() else None


def write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def save_npz(path: str | Path, **arrays: np.ndarray) -> Path:
    """Arrays to one `.npz` file, atomically. Uncompressed: for Fashion-MNIST's 30,000 rows
    zlib took 14 s to write and 1.5 s to read back in every stage, against 0.7 s and 0.5 s."""
    path = Path(path)
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)
    return path


def sha256(path: str | Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and contents, sorted)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def size_bytes(path: str | Path) -> int:
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def package_versions(packages: tuple[str, ...]) -> dict[str, str]:
    """Python's version and each installed package's (without importing the packages)."""
    import platform
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
