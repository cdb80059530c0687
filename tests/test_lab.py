"""JupyterLab as a user meets it: `make lab`'s launcher on a free loopback port, the six notebooks
opened in Chromium and run with Run ▸ Run All Cells, in order, on one lab run folder.

The lab opens copies of the notebooks with a quick config's parameters injected
(`LAB_CONFIG=... make lab`, configs/smoke.yaml with fewer export formats) and `LAB_RUN=browser`,
so the run lands in `runs/browser/` of a temporary folder. Needs Debian's `chromium`
(`make browser`) and the `playwright` package; never `playwright install`.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import yaml

from conftest import ROOT, epoch_scalars
from kernelib import lab, params, rundir
from kernelib.errors import ConfigError

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
RUN = "browser"


def quick_config() -> dict:
    """configs/smoke.yaml with fewer strategies (concat and distill kept: they log to
    TensorBoard), one export format, no pruning sweep and short evaluate loops."""
    cfg = yaml.safe_load((ROOT / "configs" / "smoke.yaml").read_text())
    cfg["merge"] |= {"strategies": ["average", "weighted", "concat", "distill"], "calibrate": []}
    cfg["evaluate"] |= {"bootstrap_resamples": 100, "timing_repeats": 3}
    cfg["export"] |= {"formats": ["keras"], "name": "digits-lab", "timing_repeats": 3,
                      "prune_sparsities": [], "export_pruned": None, "quantize_keras": False}
    return cfg


def expected_artifacts(cfg: params.Config) -> dict[str, list[str]]:
    """What each notebook writes into the run folder (its 'Writes:' line), for this config."""
    members = [m.name for m in cfg.load.members]
    trained = [s for s in ("concat", "distill") if s in cfg.merge.strategies]
    name = cfg.export.name
    return {
        "01_load.ipynb": ["data/raw.npz", "data/card.json", "members/members.json"],
        "02_preprocess.ipynb": ["data/splits.npz", "data/preprocess.keras"],
        "03_train.ipynb": [f"members/{m}/{f}" for m in members
                           for f in ("model.keras", "history.csv")]
                          + [f"tensorboard/{m}" for m in members],
        "04_merge.ipynb": [f"merged/{s}.keras" for s in cfg.merge.strategies]
                          + ["merged/models.json", "merged/predictions.npz", "metrics/merge.json"]
                          + [f"tensorboard/{s}" for s in trained],
        "05_evaluate.ipynb": ["metrics/comparison.json", "metrics/summary.json",
                              "timings/cost.json"],
        "06_export.ipynb": [f"export/{name}.keras", "export/labels.json",
                            "export/MODEL_CARD.md", "export/model_card.json",
                            "export/exports.json"],
    }


# figures each notebook shows at least (plots.* calls returning a Figure)
MIN_FIGURES = {"01_load.ipynb": 1, "02_preprocess.ipynb": 0, "03_train.ipynb": 1,
               "04_merge.ipynb": 1, "05_evaluate.ipynb": 6, "06_export.ipynb": 0}


# ------------------------------------------------------------------ the lab's run folder


@pytest.mark.parametrize("env, expected", [
    ({}, "../runs/lab"),
    ({rundir.LAB_RUN_ENV: "alice"}, "../runs/alice"),
    ({rundir.LAB_RUN_ENV: "bob", rundir.LAB_RUNS_ENV: "/srv/runs"}, "/srv/runs/bob"),
])
def test_run_folder_follows_lab_run(env, expected):
    assert rundir.run_folder(env) == Path(expected).resolve()


@pytest.mark.parametrize("name", ["../etc", "a/b", ".hidden", "x" * 65, "two words"])
def test_run_name_that_is_not_one_folder_is_refused(name):
    with pytest.raises(ConfigError, match="LAB_RUN must be a folder name"):
        rundir.run_folder({rundir.LAB_RUN_ENV: name})


@pytest.mark.parametrize("as_root, flag", [(True, True), (False, False)])
def test_allow_root_only_for_root(as_root, flag):
    cmd = lab.command(Path("/nb"), host="127.0.0.1", port=8888, open_browser=False,
                      as_root=as_root)
    assert ("--allow-root" in cmd) is flag
    assert "--ServerApp.ip=127.0.0.1" in cmd and "--ServerApp.root_dir=/nb" in cmd


def test_prepared_notebooks_carry_the_config(tmp_path):
    cfg = params.validate_config(quick_config())
    paths = lab.prepare(cfg, tmp_path, nb_dir=ROOT / "notebooks")
    assert [p.name for p in paths] == list(expected_artifacts(cfg))
    for path, stage in zip(paths, params.STAGES, strict=True):
        nb = nbformat.read(path, as_version=4)
        assert nb.metadata.kernelspec.name == "kernelib"
        [cell] = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        ns: dict = {}
        exec(cell.source, ns)  # noqa: S102 - papermill's own generated assignments
        injected = {k: v for k, v in ns.items() if not k.startswith("__")}
        assert "run_dir" not in injected  # the lab's run folder decides
        section = getattr(cfg, stage).model_dump(mode="json")
        assert injected == {"seed": 0, "deterministic": True, **section,
                            **({"name": None} if stage == "train" else {})}


def test_every_notebook_names_the_kernelib_kernel():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert nbformat.read(path, as_version=4).metadata.kernelspec.name == "kernelib", path


# ------------------------------------------------------------------ the browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory):
    """`python -m kernelib.lab` (what `make lab` runs) with a quick config, isolated settings."""
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed: run `make browser`")
    pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    tmp = tmp_path_factory.mktemp("lab")
    config = tmp / "quick.yaml"
    config.write_text(yaml.safe_dump(quick_config()))
    settings = tmp / "settings"
    for plugin, values in {
        "notebook-extension/tracker": {"windowingMode": "none"},  # every cell in the DOM
        "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    }.items():
        path = settings / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(settings),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"),
           "JUPYTER_CONFIG_DIR": str(tmp / "config"), "JUPYTER_RUNTIME_DIR": str(tmp / "rt"),
           "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kernelib.lab", "--run", RUN, "--runs", str(tmp / "runs"),
         "--config", str(config), "--port", str(_free_port()), "--no-browser"],
        cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(proc.stdout), daemon=True).start()
    url = None
    deadline = time.monotonic() + 120
    while url is None and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
        found = [m for line in list(log)
                 for m in re.findall(r"http://127\.0\.0\.1:\d+/lab\?token=\w+", line)]
        url = found[0] if found else None
    try:
        assert url, "no token URL printed:\n" + "".join(log)[-3000:]
        yield {"url": url, "runs": tmp / "runs", "run": tmp / "runs" / RUN, "tmp": tmp,
               "config": params.validate_config(quick_config()), "log": log}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


# loopback never goes through a proxy, whatever the environment (or an earlier test) set
_LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _api(base: str, token: str, path: str, method: str = "GET"):
    req = urllib.request.Request(f"{base}{path}", method=method,
                                 headers={"Authorization": f"token {token}"})
    with _LOOPBACK.open(req, timeout=30) as r:
        body = r.read()
    return json.loads(body) if body else None


PROMPTS = """() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
  .map(e => e.textContent.trim())"""
STATUS = ".jp-Notebook-ExecutionIndicator"


def wait_until_run(page, *, timeout: float = 600, settle: int = 10) -> None:
    """Until every code cell has its execution number, or (a cell failed, so Run All stopped)
    the kernel has been idle with nothing queued for `settle` seconds."""
    deadline, quiet = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        prompts = page.evaluate(PROMPTS)
        if prompts and all(re.fullmatch(r"\[\d+\]:", p) for p in prompts):
            return
        idle = page.locator(STATUS).get_attribute("data-status") == "idle"
        quiet = quiet + 1 if idle and not any("*" in p for p in prompts) else 0
        if quiet >= settle:
            return
        time.sleep(1)
    raise AssertionError(f"Run All did not finish in {timeout} s: {page.evaluate(PROMPTS)}")


def menu(page, top: str, command: str) -> None:
    """Click a main-menu command; a dialog in the way (which the user would see) fails the test."""
    dialog = page.locator(".jp-Dialog")
    assert dialog.count() == 0, f"dialog before {command}: {dialog.first.inner_text()}"
    page.locator(".lm-MenuBar-item", has_text=top).click()
    page.locator(f".lm-Menu-item[data-command='{command}']").click()


def run_all_in_browser(context, base: str, token: str, name: str, shot: Path | None) -> dict:
    """Open one notebook, Run All Cells from the menu, wait until done, save it; what was seen."""
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    # ?reset: a fresh workspace, so the notebooks opened before are not reopened with it
    page.goto(f"{base}/lab/tree/{name}?reset&token={token}", wait_until="load")
    # generous waits: a fresh venv's first JupyterLab start on a busy 2-core machine is slow
    page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=300_000)
    t0 = time.monotonic()
    deadline = time.monotonic() + 300  # the indicator reads idle before any kernel exists
    while not any(s["path"] == name and s["kernel"]["execution_state"] == "idle"
                  for s in _api(base, token, "/api/sessions")):
        assert time.monotonic() < deadline, f"{name}: no idle kernel after 300 s"
        time.sleep(0.5)
    page.wait_for_selector(f"{STATUS}[data-status='idle']", timeout=300_000)
    t1 = time.monotonic()
    menu(page, "Run", "runmenu:run-all")
    wait_until_run(page)
    t2 = time.monotonic()
    print(f"{name}: kernel ready {t1 - t0:.0f} s, Run All {t2 - t1:.0f} s")
    menu(page, "File", "docmanager:save")
    page.wait_for_selector(".jp-mod-dirty", state="detached", timeout=60_000)
    images = page.eval_on_selector_all(".jp-OutputArea-output img",
                                       "els => els.map(e => e.complete ? e.naturalWidth : 0)")
    if shot is not None:
        page.screenshot(path=str(shot), full_page=True)
    page.close()
    for kernel in _api(base, token, "/api/kernels"):  # free the CPU for the next notebook
        _api(base, token, f"/api/kernels/{kernel['id']}", method="DELETE")
    return {"problems": problems, "images": images}


@pytest.mark.e2e
def test_six_notebooks_run_all_from_the_browser(jupyterlab):
    from playwright.sync_api import sync_playwright

    url, run, cfg = jupyterlab["url"], jupyterlab["run"], jupyterlab["config"]
    base, token = url.split("/lab?token=")
    shot = jupyterlab["tmp"] / "04_merge.png"
    artifacts = expected_artifacts(cfg)
    started = time.monotonic()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=FLAGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        for name, paths in artifacts.items():
            assert not [p for p in paths if (run / p).exists()], f"{name}: artifacts before run"
            try:
                seen = run_all_in_browser(context, base, token, name,
                                          shot if name == "04_merge.ipynb" else None)
            except AssertionError:
                print("".join(jupyterlab["log"])[-6000:])
                raise
            assert seen["problems"] == [], f"{name}: {seen['problems']}"
            nb = nbformat.read(run / "lab" / name, as_version=4)
            code = [c for c in nb.cells if c.cell_type == "code"]
            errors = [o for c in code for o in c.outputs if o.output_type == "error"]
            assert errors == [], f"{name}: {[(e.ename, e.evalue) for e in errors]}"
            assert all(c.execution_count for c in code), \
                f"{name}: a cell did not run: {[c.execution_count for c in code]}"
            figures = sum("image/png" in o.get("data", {}) for c in code for o in c.outputs)
            assert figures >= MIN_FIGURES[name], f"{name}: {figures} figures"
            assert len(seen["images"]) == figures and all(w > 0 for w in seen["images"]), \
                f"{name}: images shown {seen['images']}, figures saved {figures}"
            missing = [p for p in paths if not (run / p).exists()]
            assert missing == [], f"{name}: missing in the run folder: {missing}"
            print(f"{name}: {figures} figures, {time.monotonic() - started:.0f} s so far")
        browser.close()
    assert shot.stat().st_size > 20_000
    print(f"merge notebook screenshot: {shot}")
    # the lab wrote only into its own run folder
    assert sorted(p.name for p in jupyterlab["runs"].iterdir()) == [RUN]
    for member in [m.name for m in cfg.load.members]:
        epochs = list(pd.read_csv(run / "members" / member / "history.csv")["epoch"])
        logged = epoch_scalars(run / "tensorboard" / member / "train", "epoch_loss")
        assert sorted(logged) == epochs, f"{member}: TensorBoard epochs {sorted(logged)}"
