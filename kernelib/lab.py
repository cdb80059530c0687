"""JupyterLab for the six notebooks: `make lab` (this module's `main`) and the lab's run folder.

A notebook whose `run_dir` parameter is None (the default) works in `runs/<LAB_RUN>/`:
`start_stage` asks `run_folder`, which reads the two variables `make lab` sets for the
kernels it starts (`KERNELIB_LAB_RUN`, the run's name, and `KERNELIB_LAB_RUNS`, the runs
folder). Without them (JupyterLab started by hand) the folder is `../runs/lab` from the
notebook. `LAB_CONFIG=configs/smoke.yaml make lab` opens copies of the notebooks whose
parameters come from that config instead (papermill's injected-parameters cell), for a
quick exploration.

Example::

    LAB_RUN=alice make lab                           # notebooks/ on runs/alice/
    LAB_RUN=quick LAB_CONFIG=configs/smoke.yaml make lab   # runs/quick/lab/*.ipynb, smoke settings
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from kernelib import params
from kernelib.errors import ConfigError, PipelineError

# the lab's run folder moved to kernelib.rundir (start_stage needs it; rundir imports no lab)
from kernelib.rundir import DEFAULT_LAB_RUN as DEFAULT_RUN
from kernelib.rundir import LAB_RUN_ENV as RUN_ENV
from kernelib.rundir import LAB_RUNS_ENV as RUNS_ENV
from kernelib.rundir import check_run_name

KERNEL = "kernelib"


def prepare(config: params.Config, out_dir: Path, *, nb_dir: Path) -> list[Path]:
    """Copies of the six notebooks with `config`'s parameters injected, as papermill does.

    The run folder is left to `run_folder` (the copies take `run_dir=None`), and the train
    notebook trains every recipe member in turn (`name=None`), as in the lab.
    """
    import papermill

    from kernelib.resources import NOTEBOOKS

    out_dir.mkdir(parents=True, exist_ok=True)
    common = {"seed": config.run.seed, "deterministic": config.run.deterministic}
    paths = []
    for stage in params.STAGES:
        values = {**common, **getattr(config, stage).model_dump(mode="json")}
        if stage == "train":
            values["name"] = None
        path = out_dir / NOTEBOOKS[stage]
        papermill.execute_notebook(nb_dir / NOTEBOOKS[stage], path, parameters=values,
                                   prepare_only=True, kernel_name=KERNEL, progress_bar=False)
        paths.append(path)
    return paths


def check_kernel() -> None:
    """The notebooks name the `kernelib` kernel; refuse to start a lab without it."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        raise PipelineError(f"the Jupyter kernel '{KERNEL}' the notebooks use is not "
                            f"registered for {sys.executable}; run `make setup` (or `python -m "
                            f"ipykernel install --sys-prefix --name {KERNEL}`)") from None


def command(root: Path, *, host: str, port: int, open_browser: bool,
            as_root: bool) -> list[str]:
    """The `jupyter lab` command line: `--allow-root` only for root, which JupyterLab refuses
    otherwise (containers, cloud notebook VMs)."""
    cmd = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={root}",
           f"--ServerApp.ip={host}", f"--ServerApp.port={port}"]
    if not open_browser:
        cmd.append("--no-browser")
    if as_root:
        cmd.append("--allow-root")
    return cmd


def main(argv: Sequence[str] | None = None) -> None:
    """`make lab`: JupyterLab on the notebooks (or configured copies), its run folder chosen."""
    from kernelib.pipeline import resolve_member_paths
    from kernelib.resources import notebooks_dir

    ap = argparse.ArgumentParser(prog="python -m kernelib.lab", description=main.__doc__)
    ap.add_argument("--run", default=os.environ.get("LAB_RUN") or DEFAULT_RUN,
                    help="run folder name under --runs (default: $LAB_RUN, else 'lab')")
    ap.add_argument("--runs", default="runs", help="the runs folder (default: runs)")
    ap.add_argument("--config", default=os.environ.get("LAB_CONFIG") or None,
                    help="open copies of the notebooks with this config's parameters")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    ap.add_argument("--port", type=int, default=8888, help="port (default 8888; the next free "
                    "one if taken)")
    ap.add_argument("--no-browser", action="store_true", help="do not open a browser (never "
                    "opened without a display)")
    args = ap.parse_args(argv)
    try:
        name = check_run_name(args.run)
        runs = Path(args.runs).expanduser().resolve()
        check_kernel()
        root = notebooks_dir()
        if args.config:
            root = runs / name / "lab"
            config = resolve_member_paths(params.load_config(args.config),
                                          Path(args.config).parent)  # as `kernelib run` does
            prepare(config, root, nb_dir=notebooks_dir())
    except (ConfigError, PipelineError) as err:
        sys.exit(f"{type(err).__name__}: {err}")
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    env = {**os.environ, RUN_ENV: name, RUNS_ENV: str(runs)}
    print(f"kernelib lab: notebooks in {root}, run folder {runs / name}"
          f"{' (running as root: --allow-root)' if as_root else ''}; open the URL with the "
          f"token printed below", flush=True)
    # no display (a container, a VM over ssh): print the URL rather than start a browser there
    has_display = (sys.platform in ("darwin", "win32") or bool(os.environ.get("DISPLAY"))
                   or bool(os.environ.get("WAYLAND_DISPLAY")))
    cmd = command(root, host=args.host, port=args.port,
                  open_browser=has_display and not args.no_browser, as_root=as_root)
    os.execve(cmd[0], cmd, env)


if __name__ == "__main__":
    main()
