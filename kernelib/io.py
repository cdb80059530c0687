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
    """Yield a temporary path next to `dest`; put it in `dest`'s place only if the block succeeds.

    Works for files and folders. The temporary name keeps `dest`'s suffix (Keras checks it).
    A folder replaces a folder in one atomic exchange (`replace_folder`), so `dest` is never
    missing. Leftovers of a crashed earlier attempt at `dest` are removed first (`leftovers`).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(dest.parent, name=dest.name)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{os.getpid()}.{_TMP}", dir=dest.parent))
    tmp = tmp_dir / (dest.stem + (suffix if suffix is not None else dest.suffix))
    try:
        yield tmp
        if dest.is_dir() and not dest.is_symlink() and tmp.is_dir():
            replace_folder(tmp, dest)
        else:
            os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


_TMP = "tmp"  # marks kernelib's temporary names: .<dest>.<pid>.tmp<random>
_RENAME_EXCHANGE = 2  # linux/fs.h


def replace_folder(src: Path, dest: Path) -> None:
    """Put folder `src` in the place of folder `dest` atomically: `dest` always exists, holding
    the old content or the new. `src` ends up holding the old content (the caller removes it).

    Linux `renameat2(RENAME_EXCHANGE)` swaps the two in one step. Where the file system cannot
    (EINVAL/ENOSYS), two renames through `.<dest>.old`; a crash between them leaves that folder,
    which `clean_leftovers` puts back in place.
    """
    if _exchange(src, dest):
        return
    old = dest.with_name(f".{dest.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(dest, old)
    os.replace(src, dest)
    os.replace(old, src)


def _exchange(a: Path, b: Path) -> bool:
    import ctypes
    import errno

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def clean_leftovers(folder: str | Path, *, name: str | None = None,
                    recursive: bool = False) -> list[str]:
    """Remove what a crashed `atomic_path` left in `folder`; return what was done, one line each.

    Temporary folders `.<name>.<pid>.tmp*` of processes that are gone are removed; a
    `.<name>.old` folder is put back as `<name>` when `<name>` is missing (a crash between the
    two renames of `replace_folder`), otherwise removed. `name` limits it to one destination;
    `recursive` walks every sub-folder too (the start of a run).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    done = []
    candidates = folder.rglob(".*") if recursive else folder.glob(f".{name}.*" if name else ".*")
    for p in sorted(candidates):
        parts = p.name[1:].rsplit(".", 2)
        if p.name.endswith(".old") and p.is_dir():
            target = p.with_name(p.name[1:-len(".old")])
            if not target.exists():
                os.replace(p, target)
                done.append(f"restored '{target}' from '{p.name}' (a replacement crashed)")
            else:
                shutil.rmtree(p, ignore_errors=True)
                done.append(f"removed '{p}' (left by a crashed replacement)")
        elif len(parts) == 3 and parts[2].startswith(_TMP) and parts[1].isdigit() \
                and p.is_dir() and not _alive(int(parts[1])):
            shutil.rmtree(p, ignore_errors=True)
            done.append(f"removed '{p}' (temporary folder of a crashed write)")
    return done


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
