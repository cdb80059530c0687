"""Where user strings become paths: one name rule, one containment check, one folder preflight.

Every name a user chooses that becomes part of a path (a run id, an export name, a member
name) goes through `safe_name`, and the path built from it through `inside`, so nothing a
user types can point outside the folder it belongs in. `output_folder` checks, before any
stage runs, that a folder kernelib will write into is a folder (or can become one) and is
writable.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from kernelib.errors import ConfigError, KernelibError, PipelineError

NAME_RULE = r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}"


def safe_name(value: object, *, what: str, error: type[KernelibError] = ConfigError) -> str:
    """`value` if it is one plain path component: letters, digits, '_', '-', '.', not starting
    with '.' or '-' (so never '.', '..' or a hidden file), at most 128 characters."""
    if not isinstance(value, str) or not re.fullmatch(NAME_RULE, value):
        raise error(f"{what} must be one plain name (letters, digits, '_', '-', '.'; starting with "
                    f"a letter or digit; no '/', no '..'); received {value!r}. Choose a name "
                    "like 'digits-1'.")
    return value


def inside(base: str | Path, *parts: str, what: str,
           error: type[KernelibError] = ConfigError) -> Path:
    """`base/parts...`, refused unless it resolves to a path inside `base` (links followed)."""
    base = Path(base).resolve()
    path = base.joinpath(*parts).resolve()
    if path == base or base not in path.parents:
        raise error(f"{what} must stay inside '{base}'; received {'/'.join(parts)!r}, which "
                    f"points to '{path}'. Choose a plain name.")
    return path


def output_folder(path: str | Path, *, what: str) -> Path:
    """Resolve a folder kernelib will write into and check it now: each existing part must be
    a folder, and the deepest existing one writable (probed by creating a file, since
    permission bits do not bind root). Creates nothing. Raises PipelineError naming `what`."""
    path = Path(path).expanduser().resolve()
    existing = path
    while not existing.exists():
        if existing.is_symlink():  # a dangling link
            break
        existing = existing.parent
    if not existing.is_dir():
        raise PipelineError(f"{what} '{path}' cannot be a folder: '{existing}' exists and is not "
                            f"a folder. Expected a folder path; choose another {what} or move "
                            "that file away.")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".kernelib-probe-"):
            pass
    except OSError as err:
        raise PipelineError(f"{what} '{path}' is not writable ({err.strerror or err} in "
                            f"'{existing}'); expected a folder kernelib can write to. Choose "
                            f"another {what} or fix its permissions.") from None
    if not os.access(existing, os.X_OK):
        raise PipelineError(f"{what} '{path}': cannot enter '{existing}'; fix its permissions.")
    return path
