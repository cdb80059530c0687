"""The rendered reports in headless Chromium, offline: no console errors, images decode, links
resolve, the headline needs no scrolling, and HTML in class names stays text.

Needs Debian's `chromium` (`make browser` installs it; `make test` depends on it) and the
`playwright` Python package; never `playwright install`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from conftest import HOSTILE, hostile_reports

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1280, "height": 800}

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not CHROMIUM.exists() or shutil.which("chromium") is None,
                       reason="Chromium is not installed: run `make browser` (apt-get install "
                              "chromium chromium-driver)"),
]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One offline Chromium with a fresh profile (user data dir) for this module."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(CHROMIUM),
            headless=True, args=FLAGS, viewport=VIEWPORT, offline=True)
        yield context
        context.close()


def visit(context, path: Path) -> dict:
    """Open a page; wait for its images; return problems and what the checks need."""
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
            if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.goto(path.resolve().as_uri(), wait_until="load")
    page.wait_for_function("Array.from(document.images).every(i => i.complete)")
    info = {
        "problems": problems,
        "images": page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)"),
        "links": page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)"),
        "pwned": page.evaluate("window.__pwned === undefined ? null : window.__pwned"),
        "text": page.inner_text("body"),
        "page": page,
    }
    return info


def assert_clean(info: dict, name: str) -> None:
    assert info["problems"] == [], f"{name}: {info['problems']}"
    assert all(w > 0 for w in info["images"]), f"{name}: undecoded image {info['images']}"


def assert_links_resolve(info: dict, name: str) -> None:
    for href in info["links"]:
        url = urlparse(href)
        assert url.scheme == "file", f"{name}: link leaves the report folder: {href}"
        assert Path(unquote(url.path)).exists(), f"{name}: broken link {href}"


def test_smoke_reports_open_cleanly(browser, smoke, tmp_path_factory):
    reports = smoke["reports"]
    pages = sorted(reports.glob("*.html")) + [reports.parent / "index.html"]
    assert len(pages) >= 14  # 7 stages x (report + share) + index, + the runs list
    for path in pages:
        info = visit(browser, path)
        assert_clean(info, path.name)
        assert_links_resolve(info, path.name)
        if path.name in ("05_evaluate.html", "05_evaluate.share.html"):
            assert len(info["images"]) >= 6, "evaluate page: every figure embedded"
        info["page"].close()
    index = visit(browser, reports / "index.html")
    box = index["page"].locator("#headline").bounding_box()
    assert box and box["y"] + box["height"] <= VIEWPORT["height"], "headline needs scrolling"
    assert "Selected model:" in index["text"] and "test accuracy" in index["text"]
    shot = tmp_path_factory.mktemp("screenshots") / "smoke-index.png"
    index["page"].screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
    print(f"\nindex screenshot: {shot}")


def test_html_in_class_names_stays_text(browser, tmp_path_factory):
    rendered = hostile_reports(tmp_path_factory.mktemp("hostile"))
    for name in ["index.html", "05_evaluate.html", "05_evaluate.share.html"]:
        info = visit(browser, rendered["dir"] / name)
        assert_clean(info, name)
        assert_links_resolve(info, name)
        assert info["pwned"] is None, f"{name}: a class name ran as a script"
        assert HOSTILE in info["text"], f"{name}: the class name is not shown as text"
        info["page"].close()
    runs = visit(browser, rendered["dir"].parent / "index.html")
    assert_clean(runs, "runs index")
    assert_links_resolve(runs, "runs index")


def test_script_in_a_markdown_output_does_not_run(browser, tmp_path):
    """The model card cell of 06_export displays `Markdown(card)`; an intended use holding
    `<script>` and an `onerror` image must show as text in both variants, never run."""
    import nbformat

    from kernelib import report

    use = HOSTILE + '<img src="missing.png" onerror="window.__pwned=2">'
    cell = nbformat.v4.new_code_cell("Markdown(modelcard.to_markdown(card))", execution_count=1)
    cell.outputs = [nbformat.v4.new_output(
        "execute_result", {"text/markdown": f"# Model card\n\n## Intended use\n\n{use}\n",
                           "text/plain": "<IPython.core.display.Markdown object>"},
        execution_count=1)]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# 6 · Export {use}"),
                                         cell])
    nb_path = tmp_path / "06_export.ipynb"
    nbformat.write(nb, nb_path)
    html = report.render_notebook(nb_path, tmp_path / "06_export.html")
    for path in (html, report.share_path(html)):
        info = visit(browser, path)
        assert info["pwned"] is None, f"{path.name}: script from a Markdown output ran"
        assert HOSTILE in info["text"], f"{path.name}: the text is not shown"
        assert info["page"].locator("h1").count() >= 1, "Markdown headings still render"
        info["page"].close()
