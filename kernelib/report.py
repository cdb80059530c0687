"""HTML reports: each executed notebook through nbconvert, plus a run index page."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from kernelib import io
from kernelib.errors import PipelineError

_EXPORTER = None


def _exporter():
    """One nbconvert HTMLExporter per process (its start-up is the slow part)."""
    global _EXPORTER
    if _EXPORTER is None:
        from nbconvert import HTMLExporter

        _EXPORTER = HTMLExporter(template_name="lab", embed_images=True)
    return _EXPORTER


def render_notebook(nb_path: str | Path, html_path: str | Path) -> Path:
    """Render an executed notebook to one self-contained HTML file (images embedded)."""
    import nbformat

    nb = nbformat.read(str(nb_path), as_version=4)
    body, _ = _exporter().from_notebook_node(
        nb, resources={"metadata": {"name": Path(nb_path).stem}}
    )
    html_path = Path(html_path)
    try:
        return io.write_text(html_path, body)
    except OSError as err:
        raise PipelineError(f"cannot write report '{html_path}': {err.strerror}; choose a "
                            "writable reports folder (--reports-dir).") from None


_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:70rem;
color:#1a1a1a;padding:0 1rem}
h1{margin-bottom:.2rem}.sub{color:#555;margin-top:0}
table{border-collapse:collapse;margin:1rem 0}th,td{border:1px solid #ccc;padding:.3rem .6rem;
text-align:left}th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}
.headline{background:#eef5fb;border-left:4px solid #0072B2;padding:.8rem 1rem;margin:1rem 0}
.ok{color:#007a4d}.failed{color:#b00020;font-weight:bold}pre{background:#f7f7f7;padding:.6rem;
overflow:auto}
"""


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f'<td class="num">{v:.4f}</td>'
    if isinstance(v, int) and not isinstance(v, bool):
        return f'<td class="num">{v}</td>'
    return f"<td>{html.escape('' if v is None else str(v))}</td>"


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(r.get(c)) for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _link(href: str, text: str) -> str:
    return f'<a href="{html.escape(href, quote=True)}">{html.escape(text)}</a>'


def write_index(run_root: str | Path, report_dir: str | Path) -> Path:
    """`report_dir/index.html`: headline, stage table with links, member-vs-merged table, config."""
    run_root, report_dir = Path(run_root), Path(report_dir)
    manifest = io.read_json(run_root / "manifest.json")
    run_id = manifest["run_id"]
    parts = [f"<h1>kernelib run {html.escape(run_id)}</h1>",
             f'<p class="sub">status: <span class="{"ok" if manifest["status"] == "succeeded" else "failed"}">'
             f'{html.escape(manifest["status"])}</span> · started {html.escape(manifest["started"])}'
             f' · {manifest.get("duration_s", 0):.0f} s</p>']
    summary_path = run_root / "metrics" / "summary.json"
    if summary_path.exists():
        s = io.read_json(summary_path)
        gain = s["accuracy_gain"] * 100
        parts.append(
            '<div class="headline"><b>Selected model: '
            f'{html.escape(s["selected"])}</b> (by {html.escape(s.get("selected_by", "val"))}) · '
            f'test accuracy {s["test_accuracy"]:.4f} · best member {html.escape(s["best_member"])} '
            f'{s["best_member_test_accuracy"]:.4f} · gain {gain:+.2f} points</div>'
        )
    rel = os.path.relpath(run_root, report_dir)
    stage_rows = []
    for st in manifest["stages"]:
        row = dict(st)
        row["report"] = st.get("report")
        stage_rows.append(row)
    parts.append("<h2>Stages</h2>")
    head = "".join(f"<th>{c}</th>" for c in ("#", "stage", "status", "duration (s)", "report",
                                            "executed notebook", "error"))
    body = []
    for i, st in enumerate(stage_rows, 1):
        report_link = _link(st["report"], st["report"]) if st.get("report") else ""
        nb_link = _link(f"{rel}/{st['notebook']}", Path(st["notebook"]).name)
        status_cls = "ok" if st["status"] == "succeeded" else "failed"
        body.append(
            f"<tr><td class=num>{i}</td><td>{html.escape(st['label'])}</td>"
            f'<td class="{status_cls}">{html.escape(st["status"])}</td>'
            f"{_cell(st.get('duration_s'))}<td>{report_link}</td><td>{nb_link}</td>"
            f"<td>{html.escape(st.get('error') or '')}</td></tr>"
        )
    parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")
    comparison = run_root / "metrics" / "comparison.json"
    if comparison.exists():
        rows = io.read_json(comparison)
        cols = ["model", "kind"] + [c for c in rows[0] if c not in ("model", "kind")]
        parts.append("<h2>Members vs merged models</h2>" + _table(rows, cols))
    exports = run_root / "export" / "exports.json"
    if exports.exists():
        rows = io.read_json(exports)
        parts.append("<h2>Exports (verified in a fresh process)</h2>" + _table(
            rows, ["format", "path", "bytes", "max_abs_diff", "tolerance", "accuracy"]))
    parts.append("<h2>Artifacts</h2><ul>" + "".join(
        f"<li>{_link(f'{rel}/{a}', a)}</li>" for a in manifest.get("artifacts", [])) + "</ul>")
    parts.append("<h2>Environment</h2>" + _table(
        [{"package": k, "version": v} for k, v in manifest["versions"].items()],
        ["package", "version"]))
    parts.append("<h2>Configuration</h2><pre>"
                 + html.escape(json.dumps(manifest["config"], indent=2)) + "</pre>")
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8>"
            f"<title>kernelib · {html.escape(run_id)}</title><style>{_STYLE}</style></head>"
            f"<body>{''.join(parts)}</body></html>")
    return io.write_text(report_dir / "index.html", page)


def write_runs_index(reports_root: str | Path) -> Path:
    """`reports/index.html`: every run with a report, newest first."""
    reports_root = Path(reports_root)
    pages = sorted(reports_root.glob("*/index.html"), key=lambda p: p.stat().st_mtime,
                   reverse=True)
    items = "".join(f"<li>{_link(f'{p.parent.name}/index.html', p.parent.name)}</li>"
                    for p in pages)
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>kernelib runs</title>"
            f"<style>{_STYLE}</style></head><body><h1>kernelib runs</h1><ul>{items}</ul>"
            "</body></html>")
    return io.write_text(reports_root / "index.html", page)
