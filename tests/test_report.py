"""HTML reports: self-contained stage pages, the share variant, the run index and the runs list."""

from __future__ import annotations

import html
import json
import os
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from conftest import HOSTILE, hostile_reports, synthetic_run
from kernelib import io, report
from kernelib.errors import PipelineError

EVIL = HOSTILE


class Page(HTMLParser):
    """The pieces of a page the tests look at: links, images, scripts, visible text."""

    def __init__(self, text: str):
        super().__init__()
        self.links, self.images, self.scripts, self.ids, self.text = [], [], [], set(), []
        self._in_script = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and "href" in a:
            self.links.append(a["href"])
        elif tag == "img":
            self.images.append(a.get("src", ""))
        elif tag == "script":
            self.scripts.append(a)
            self._in_script = True

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if not self._in_script:
            self.text.append(data)


def broken_links(page_path: Path) -> list[str]:
    """Relative links of a page whose target file (or #anchor) does not exist."""
    page = Page(page_path.read_text())
    broken = []
    for href in page.links:
        url = urlparse(href)
        if url.scheme:
            broken.append(href)  # a report links only to files next to it
        elif not url.path:
            if url.fragment not in page.ids:
                broken.append(href)
        elif not (page_path.parent / unquote(url.path)).exists():
            broken.append(href)
    return broken


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """A synthetic run with hostile class names, evaluated, one stage rendered, index written."""
    return hostile_reports(tmp_path_factory.mktemp("report"))


def test_stage_report_is_self_contained(rendered):
    text = (rendered["dir"] / "05_evaluate.html").read_text()
    page = Page(text)
    assert page.scripts == [] or all("src" not in s for s in page.scripts)
    assert "cdnjs" not in text and "require.js" not in text.lower().replace("-", ".")
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
    assert "VISIBLE_INPUT" in text
    assert "SECRET_INPUT" not in text  # tagged remove_input: output only


def test_share_variant_has_no_code(rendered):
    share = rendered["dir"] / "05_evaluate.share.html"
    text = share.read_text()
    assert "VISIBLE_INPUT" not in text and "SECRET_INPUT" not in text
    assert Page(text).images and "done" in text  # outputs stay
    assert report.share_path(rendered["dir"] / "05_evaluate.html") == share


def test_user_text_is_escaped_everywhere(rendered):
    for name in ["05_evaluate.html", "05_evaluate.share.html", "index.html"]:
        text = (rendered["dir"] / name).read_text()
        assert EVIL not in text, name
        assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in text, name
        assert EVIL in "".join(Page(text).text), name  # shown as text
        assert "a &amp; b" in text and "a & b" not in text, name


def test_index_headline_stages_and_links(rendered):
    index = rendered["dir"] / "index.html"
    text = index.read_text()
    page = Page(text)
    s = rendered["ev"].summary
    visible = " ".join("".join(page.text).split())
    assert f"Selected model: {s['selected']}" in visible
    assert f"test accuracy {s['test_accuracy']:.4f} (95% CI {s['test_accuracy_lo']:.4f} – " \
           f"{s['test_accuracy_hi']:.4f})" in visible
    if s["selected"] != s["picked_member"]:
        assert f"gain over the member validation picks, {s['picked_member']}" in visible
    assert f"best member on test (optimistic): {s['best_member']}" in visible
    assert f"best merged model: {s['best_merged']} (test accuracy " in visible
    # the synthetic run's average: test accuracy 0.9083 vs member_a's 0.8833, NLL 0.5957 vs 0.4966
    losers = html.unescape(text.split('id="losers">')[1].split("</div>")[0])
    assert losers == ("Below the best member member_a on test accuracy or NLL: average "
                      "(+2.50 points, NLL +0.0991)")
    assert text.index('id="headline"') < text.index('id="stages"')
    assert "cached (from run an-earlier-run)" in visible and "ran or cached" in visible
    assert "05_evaluate.share.html" in page.links and "05_evaluate.html" in page.links
    assert broken_links(index) == []
    assert "Members vs merged models" in visible and "Difference to the member validation picks" in visible


def test_runs_index_lists_newest_first(tmp_path):
    root = tmp_path / "reports"
    for run_id, started in [("old", "2026-01-01T00:00:00+00:00"),
                            ("new", "2026-03-01T00:00:00+00:00"),
                            ("mid", "2026-02-01T00:00:00+00:00")]:
        run, _ = synthetic_run(tmp_path / "runs", class_names=["a", "b"], run_id=run_id)
        m = io.read_json(run.manifest) | {"started": started}
        io.write_json(run.manifest, m)
        report.write_index(run.root, root / run_id)
    (root / "legacy").mkdir()
    (root / "legacy" / "index.html").write_text("<html></html>")  # no run.json: file time
    os.utime(root / "legacy" / "index.html", (0, 0))
    page = report.write_runs_index(root)
    links = Page(page.read_text()).links
    assert links == ["new/index.html", "mid/index.html", "old/index.html", "legacy/index.html"]
    assert broken_links(page) == []


def test_index_of_a_failed_run_explains_why(tmp_path):
    run, _ = synthetic_run(tmp_path, class_names=["a", "b"], run_id="failed")
    m = io.read_json(run.manifest)
    m["status"] = "failed"
    m["stages"][1].update(status="failed", error="cell 3: ValueError: <b>bad</b> input")
    io.write_json(run.manifest, m)
    text = report.write_index(run.root, tmp_path / "rep").read_text()
    assert "No evaluation results yet" in text
    assert "stage evaluate failed: cell 3: ValueError: &lt;b&gt;bad&lt;/b&gt; input" in text
    assert json.loads((tmp_path / "rep" / "run.json").read_text())["status"] == "failed"


def test_a_folder_without_manifest_gets_an_index_of_what_it_holds(tmp_path):
    """`kernelib report runs/lab`: the folder JupyterLab users fill by running the notebooks."""
    lab = tmp_path / "lab"
    (lab / "data").mkdir(parents=True)
    (lab / "data" / "raw.npz").write_bytes(b"x")
    (lab / "data" / "splits.npz").write_bytes(b"y")
    text = report.write_index(lab, tmp_path / "rep").read_text()
    assert "no manifest (notebooks run by hand)" in text
    assert text.count("artifacts found") == 2 and text.count("no artifacts") == 4
    assert "data/raw.npz" in text and "data/splits.npz" in text
    with pytest.raises(PipelineError, match=r"run folder '.*missing' not found"):
        report.write_index(tmp_path / "missing", tmp_path / "rep")


def _blocked(tmp_path: Path, how: str) -> Path:
    if how == "parent is a file":
        (tmp_path / "file").write_text("x")
        return tmp_path / "file" / "reports"
    if os.geteuid() == 0:
        pytest.skip("root can write into read-only folders")
    d = tmp_path / "readonly"
    d.mkdir()
    d.chmod(0o500)
    return d / "reports"


@pytest.mark.parametrize("how", ["parent is a file", "read-only folder"])
@pytest.mark.parametrize("what", ["render_notebook", "write_index", "write_runs_index"])
def test_unwritable_report_folder_is_a_clear_error(tmp_path, rendered, how, what):
    dest = _blocked(tmp_path, how)
    call = {
        "render_notebook": lambda: report.render_notebook(
            rendered["run"].notebooks / "05_evaluate.ipynb", dest / "05_evaluate.html"),
        "write_index": lambda: report.write_index(rendered["run"].root, dest),
        "write_runs_index": lambda: report.write_runs_index(dest),
    }[what]
    with pytest.raises(PipelineError, match=r"cannot write report '.*'.*writable reports folder"):
        call()


def test_html_in_model_names_and_errors_shows_as_text(tmp_path):
    """Every table of the index (stages, models, gains, exports) and the headline escape what a
    user named: a member called `<script>...` and an export path holding markup show as text."""
    run, _ = synthetic_run(tmp_path / "runs", class_names=["a", "b"], run_id="names")
    evil, img = "<script>alert(1)</script>", '<img src=x onerror="alert(2)">'
    io.write_json(run.metrics / "summary.json", {
        "selected": evil, "selected_kind": "member", "test_accuracy": 0.5, "best_member": evil,
        "best_member_test_accuracy": 0.5, "note": img})
    io.write_json(run.metrics / "comparison.json", [{"model": evil, "kind": img, "test_accuracy": 0.5}])
    io.write_json(run.metrics / "gains.json", [{"model": evil, "verdict": img}])
    io.write_json(run.export / "exports.json", [{"format": img, "path": evil, "bytes": 10}])
    m = io.read_json(run.manifest)
    m["stages"][1].update(error=evil)
    io.write_json(run.manifest, m)
    text = report.write_index(run.root, tmp_path / "rep").read_text()
    page = Page(text)
    assert evil not in text and img not in text and page.scripts == [] and page.images == []
    visible = "".join(page.text)
    assert visible.count(evil) >= 6 and visible.count(img) >= 3
