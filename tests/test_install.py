"""`pip install .` (not editable) into a fresh virtual environment, then the smoke run from a
folder outside the checkout: the wheel carries the stage notebooks and the report templates.

No network: the wheel is built with the dev environment's setuptools (no build isolation) and
installed without dependencies; the fresh environment sees the dev environment's packages
through a `.pth` file. Python does not process `.pth` files inside a folder added that way, so
the dev environment's editable kernelib (its finder is started by a `.pth` file) stays off.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

BUILD_INPUTS = ("pyproject.toml", "README.md", "kernelib", "notebooks")


def _run(cmd: list[str | Path], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _json(path: Path):
    return json.loads(path.read_text())


def _wheel(tmp: Path) -> Path:
    """A wheel of the checkout, built from a copy of its build inputs (an in-tree build would
    leave build/ in the checkout, and a stale build/lib can leak deleted modules into wheels)."""
    assert importlib.util.find_spec("setuptools"), \
        "building the wheel needs setuptools in this environment: pip install -e '.[dev]'"
    src = tmp / "src"
    src.mkdir()
    for name in BUILD_INPUTS:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
        else:
            shutil.copy2(ROOT / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--no-index", "-q", "-w", tmp / "dist", src], timeout=300)
    (wheel,) = (tmp / "dist").glob("kernelib-*.whl")
    return wheel


def _fresh_venv(tmp: Path, wheel: Path) -> tuple[Path, Path, dict[str, str]]:
    """A new venv with the wheel installed; returns its python, its site-packages, its env."""
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], timeout=120)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
          "-q", wheel], timeout=300)
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
                .stdout.strip())
    dev = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (site / "zz_dev_environment.pth").write_text("".join(f"{p}\n" for p in dev))
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env |= {"PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
            "TF_CPP_MIN_LOG_LEVEL": "3"}
    return python, site, env


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel, and a fresh venv holding it: `(wheel, python, site-packages, env)`."""
    tmp = tmp_path_factory.mktemp("install")
    wheel = _wheel(tmp)
    return (wheel, *_fresh_venv(tmp, wheel))


def test_the_wheel_holds_every_module_the_notebooks_and_the_templates(installed):
    names = set(zipfile.ZipFile(installed[0]).namelist())
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "kernelib").rglob("*.py")}
    assert sources - names == set(), "add the subpackage to pyproject's [tool.setuptools] packages"
    shipped = {f"kernelib/notebooks/{p.name}" for p in (ROOT / "notebooks").glob("*.ipynb")}
    templates = {p.relative_to(ROOT).as_posix() for p in (ROOT / "kernelib" / "templates").glob("*.j2")}
    assert len(shipped) == 6 and templates and shipped | templates <= names


def test_the_python3_kernel_is_the_fresh_environment(installed, tmp_path):
    """papermill's default kernel `python3` is jupyter_client's native kernel: the interpreter
    that asks for it (sys.executable), here the fresh venv's, importing the installed kernelib."""
    _, python, site, env = installed
    code = ("import nbformat, papermill, sys; nb = nbformat.v4.new_notebook(); nb.cells = "
            "[nbformat.v4.new_code_cell('import sys, kernelib; print(sys.executable); "
            "print(kernelib.__file__)')]; nbformat.write(nb, sys.argv[1]); "
            "papermill.execute_notebook(sys.argv[1], sys.argv[2], kernel_name='python3', "
            "progress_bar=False)")
    _run([python, "-c", code, tmp_path / "in.ipynb", tmp_path / "out.ipynb"], env=env,
         cwd=tmp_path, timeout=300)
    printed = _json(tmp_path / "out.ipynb")["cells"][0]["outputs"][0]["text"]
    lines = "".join(printed).split()
    assert lines == [str(python), str(site / "kernelib" / "__init__.py")]


def test_installed_package_runs_the_smoke_chain_from_any_folder(installed, tmp_path):
    """`kernelib run smoke.yaml` in a folder of the user's: the notebooks come from the wheel."""
    _, python, site, env = installed
    pkg = site / "kernelib"
    where = json.loads(_run([python, "-c", (
        "import json, sys, kernelib, kernelib.resources as r; print(json.dumps("
        "[kernelib.__file__, str(r.notebooks_dir())]))")], env=env, cwd=tmp_path).stdout)
    assert where == [str(pkg / "__init__.py"), str(pkg / "notebooks")]
    before = {p for p in pkg.rglob("*") if "__pycache__" not in p.parts}

    work = tmp_path / "work"  # the user's folder: a copy of the config, runs/ and reports/ here
    work.mkdir()
    shutil.copy2(ROOT / "configs" / "smoke.yaml", work / "smoke.yaml")
    _run([python.parent / "kernelib", "run", "smoke.yaml", "--run-id", "installed"],
         env=env, cwd=work, timeout=1500)

    run = work / "runs" / "installed"
    assert _json(run / "manifest.json")["status"] == "succeeded"
    assert (run / "metrics" / "summary.json").is_file()
    index = (work / "reports" / "installed" / "index.html").read_text()
    assert "Selected model:" in index and "Members vs merged models" in index  # the templates
    executed = sorted((run / "notebooks").glob("*.ipynb"))
    assert len(executed) >= 6
    for nb in executed:
        source = Path(_json(nb)["metadata"]["papermill"]["input_path"])
        assert source.parent == pkg / "notebooks", nb.name
    grown = {p for p in pkg.rglob("*") if "__pycache__" not in p.parts} - before
    assert grown == set(), "the run wrote into the installed package"
