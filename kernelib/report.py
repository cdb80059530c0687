"""HTML reports: each executed notebook through nbconvert, plus a run index page and a runs list.

Every page is one self-contained file: images are embedded, and the `lab` template's scripts
that load MathJax, require.js and mermaid from a CDN are left out, so a page mailed to
someone and opened offline shows no console errors. Text that comes from users (run ids,
model and class names, errors, configuration) is HTML-escaped everywhere.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
from pathlib import Path
from typing import Any

from kernelib import evaluate, io
from kernelib.errors import PipelineError
from kernelib.params import STAGES
from kernelib.rundir import RunDir

# The lab template without the three <script> blocks that fetch code from a CDN.
_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{% block extra_css %}<link rel="icon" href="data:,">{% endblock extra_css %}
"""
# Cell tags nbconvert honours in both variants (JupyterLab: Property Inspector > Cell Tags).
TAGS = {"remove_input_tags": ["remove_input"], "remove_cell_tags": ["remove_cell"],
        "remove_all_outputs_tags": ["remove_output"]}

_EXPORTERS: dict[bool, Any] = {}


def _exporter(*, share: bool):
    """One nbconvert HTMLExporter per variant and process (its start-up is the slow part).

    The one HTML-safety rule of rendered notebooks: with `sanitize_html`, every Markdown cell
    and every HTML or Markdown output passes `clean_html`, so text a user put into an output
    (a model card's intended use, a class name) shows as text or harmless markup and never
    runs script; JavaScript outputs are dropped. The index pages escape everything (`_esc`).
    """
    if share not in _EXPORTERS:
        from jinja2 import DictLoader
        from nbconvert import HTMLExporter
        from traitlets.config import Config

        config = Config({"TagRemovePreprocessor": {"enabled": True, **TAGS}})
        if share:
            config.TemplateExporter.exclude_input = True
            config.TemplateExporter.exclude_input_prompt = True
            config.TemplateExporter.exclude_output_prompt = True
        _EXPORTERS[share] = HTMLExporter(
            config=config, template_name="lab", embed_images=True, sanitize_html=True,
            filters={"clean_html": clean_html},
            extra_loaders=[DictLoader({"kernelib.html.j2": _TEMPLATE})],
            template_file="kernelib.html.j2",
        )
    return _EXPORTERS[share]


_SAFE_TAGS = ["a", "abbr", "b", "blockquote", "br", "caption", "code", "dd", "del", "details",
              "div", "dl", "dt", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img",
              "kbd", "li", "ol", "p", "pre", "s", "small", "span", "strong", "style", "sub",
              "summary", "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "ul"]
_SAFE_ATTRIBUTES = {"*": ["class", "id", "title", "style", "align"], "a": ["href"],
                    "img": ["src", "alt", "width", "height"], "table": ["border"],
                    "td": ["colspan", "rowspan"], "th": ["colspan", "rowspan"]}


def clean_html(fragment: str | bytes) -> str:
    """HTML from a notebook's Markdown or outputs with script removed: tags outside a list that
    tables, headings, code and images need show as text, `on*` attributes and `javascript:`
    links are dropped (bleach, with its CSS sanitiser for `style`)."""
    import bleach
    from bleach.css_sanitizer import CSSSanitizer

    text = fragment.decode() if isinstance(fragment, bytes) else str(fragment)
    return bleach.clean(text, tags=_SAFE_TAGS, attributes=_SAFE_ATTRIBUTES,
                        protocols=["http", "https", "mailto", "data"],
                        css_sanitizer=CSSSanitizer())


def share_path(html_path: str | Path) -> Path:
    """Where the share variant (no code) of a stage report goes: `<stage>.share.html`."""
    html_path = Path(html_path)
    return html_path.with_name(f"{html_path.stem}.share.html")


def _write(path: Path, text: str) -> Path:
    try:
        return io.write_text(path, text)
    except OSError as err:
        raise PipelineError(f"cannot write report '{path}': {err.strerror or err}; expected a "
                            "writable reports folder: choose another one (--reports-dir) or "
                            "fix its permissions.") from None


def render_notebook(nb_path: str | Path, html_path: str | Path) -> Path:
    """Render an executed notebook to `html_path` and its code-free share variant next to it.

    Both are single self-contained files (images embedded, no external scripts); cells
    tagged `remove_input` show only their output in both. Returns `html_path`.
    """
    import nbformat

    nb_path, html_path = Path(nb_path), Path(html_path)
    nb = nbformat.read(str(nb_path), as_version=4)
    resources = {"metadata": {"name": nb_path.stem}}
    for share, dest in ((False, html_path), (True, share_path(html_path))):
        body, _ = _exporter(share=share).from_notebook_node(nb, resources=dict(resources))
        _write(dest, body)
    return html_path


# --------------------------------------------------------------------------- index pages

_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.2rem auto;
max-width:72rem;color:#1a1a1a;padding:0 1rem;line-height:1.4}
h1{margin:.2rem 0;font-size:1.6rem}h2{margin-top:1.8rem;font-size:1.2rem}
.sub{color:#555;margin:.2rem 0 .6rem}
table{border-collapse:collapse;margin:.6rem 0}.wide{overflow-x:auto}th,td{border:1px solid #ccc;padding:.25rem .55rem;
text-align:left;vertical-align:top}th{background:#f2f2f2}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.headline{background:#eef5fb;border-left:5px solid #0072B2;padding:.7rem 1rem;margin:.6rem 0}
.headline .big{font-size:1.35rem;margin-bottom:.3rem}.headline div{margin:.15rem 0}
.headline.failed{background:#fdf0f0;border-left-color:#D55E00}
.ok{color:#00704a}.failed,.bad{color:#b00020;font-weight:bold}.muted{color:#666}
pre{background:#f7f7f7;padding:.6rem;overflow:auto;max-height:30rem}
nav a{margin-right:.8rem}ul.files{columns:2;font-size:.9rem}
"""


def _esc(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _num(v: Any, fmt: str = ".4f") -> str:
    if v is None or (isinstance(v, float) and v != v):
        return '<td class="num muted">n/a</td>'
    if isinstance(v, bool) or not isinstance(v, int | float):
        return f"<td>{_esc(v)}</td>"
    return f'<td class="num">{format(v, fmt if isinstance(v, float) else "d")}</td>'


def _cell(v: Any) -> str:
    return _num(v) if isinstance(v, int | float) and not isinstance(v, bool) else f"<td>{_esc(v)}</td>"


def _table(rows: list[dict[str, Any]], columns: list[str],
           headers: list[str] | None = None) -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in (headers or columns))
    body = "".join("<tr>" + "".join(_cell(r.get(c)) for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _link(href: str, text: str) -> str:
    return f'<a href="{_esc(href)}">{_esc(text)}</a>'


def _page(title: str, body: str) -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="icon" href="data:,"><title>{_esc(title)}</title>'
            f"<style>{_STYLE}</style></head><body>{body}</body></html>")



def _points(v: float) -> str:
    return f"{100 * v:+.2f}"


def _headline(manifest: dict[str, Any], s: dict[str, Any] | None) -> str:
    if s is None:
        failed = [st for st in manifest.get("stages", []) if st.get("status") == "failed"]
        why = (f"stage {_esc(failed[0]['label'])} failed: {_esc(failed[0].get('error'))}"
               if failed else f"run status: {_esc(manifest.get('status'))}")
        return f'<div class="headline failed" id="headline"><div class="big">No evaluation ' \
               f"results yet</div><div>{why}</div></div>"
    level = round(100 * s.get("ci_level", 0.95))
    parts = [f'<div class="big">Selected model: <b>{_esc(s["selected"])}</b> '
             f'<span class="muted">({_esc(s.get("selected_kind", "?"))}, chosen by '
             f'{_esc(s.get("selected_by", "validation"))})</span></div>']
    acc = f'test accuracy <b>{s["test_accuracy"]:.4f}</b>'
    if "test_accuracy_lo" in s:
        acc += f' <span class="muted">({level}% CI {s["test_accuracy_lo"]:.4f} – ' \
               f'{s["test_accuracy_hi"]:.4f})</span>'
    parts.append(f"<div>{acc}</div>")
    picked = s.get("picked_member", s["best_member"])  # runs from before the fair reference
    picked_acc = s.get("picked_member_test_accuracy", s["best_member_test_accuracy"])
    if s["selected"] == picked:
        parts.append(f"<div>gain over the member validation picks: none, the selected model is "
                     f"that member ({_esc(picked)})</div>")
    else:
        gain = f"<b>{_points(s['accuracy_gain'])} points</b>"
        if "accuracy_gain_lo" in s:
            gain += (f' <span class="muted">(paired {level}% CI '
                     f'{_points(s["accuracy_gain_lo"])} to {_points(s["accuracy_gain_hi"])}; '
                     f'{_esc(s.get("verdict", ""))})</span>')
        parts.append(f"<div>gain over the member validation picks, {_esc(picked)} "
                     f"({picked_acc:.4f}): {gain}</div>")
    parts.append(f'<div class="muted">best member on test (optimistic): '
                 f"{_esc(s['best_member'])} ({s['best_member_test_accuracy']:.4f})</div>")
    if s.get("benchmarks"):
        rows = "; ".join(f"{_esc(r['model'])} {_esc(r['test_accuracy'])}"
                         for r in s["benchmarks"]["rows"])
        parts.append(f'<div id="benchmarks" class="muted">published results on this test set '
                     f"({_esc(s['benchmarks']['source'])}): {rows}</div>")
    if s.get("best_merged"):
        parts.append(f"<div>best merged model: {_esc(evaluate.best_merged_sentence(s))}</div>")
    sentence = evaluate.below_best_sentence(s)
    if sentence:
        parts.append(f'<div id="losers">{_esc(sentence[0].upper() + sentence[1:])}</div>')
    if s.get("note"):
        parts.append(f'<div class="muted">note: {_esc(s["note"])}</div>')
    return f'<div class="headline" id="headline">{"".join(parts)}</div>'


def provenance(stage: dict[str, Any]) -> str:
    """'ran', 'cached (from run X)', or nothing for a stage that did not run (yet)."""
    if stage.get("cached_from"):
        return f"cached (from run {stage['cached_from']})"
    return "ran" if stage.get("status") in ("succeeded", "failed", "interrupted") else ""


def _stage_table(manifest: dict[str, Any], run_root: Path, report_dir: Path, rel: str) -> str:
    stages = manifest.get("stages", [])
    cols = ["#", "stage", "status", "ran or cached", "duration (s)", "report",
            "share (no code)", "executed notebook", "error"]
    body = []
    for i, st in enumerate(stages, 1):
        report, nb = st.get("report"), st.get("notebook")
        share = share_path(report).name if report else None
        cells = [f'<td class="num">{i}</td>', f"<td>{_esc(st.get('label'))}</td>",
                 f'<td class="{"ok" if st.get("status") == "succeeded" else "failed"}">'
                 f"{_esc(st.get('status'))}</td>", f"<td>{_esc(provenance(st))}</td>",
                 _num(st.get("duration_s"), ".1f")]
        cells += [
            f"<td>{_link(report, report) if report and (report_dir / report).exists() else ''}</td>",
            f"<td>{_link(share, share) if share and (report_dir / share).exists() else ''}</td>",
            f"<td>{_link(rel + '/' + nb, Path(nb).name) if nb and (run_root / nb).exists() else ''}</td>",
            f"<td>{_esc(st.get('error') or '')}</td>",
        ]
        body.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f"<th>{_esc(c)}</th>" for c in cols)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _ci(row: dict[str, Any], metric: str) -> str:
    lo, hi = row.get(f"{metric}_lo"), row.get(f"{metric}_hi")
    if lo is None or hi is None:
        return '<td class="num muted">n/a</td>'
    return f'<td class="num">{lo:.4f} – {hi:.4f}</td>'


def _model_table(rd: RunDir) -> str:
    comparison = io.read_json_if_exists(rd.metrics / "comparison.json")
    if not comparison:
        return ""
    intervals = {r["model"]: r for r in io.read_json_if_exists(rd.metrics / "intervals.json") or []}
    cost = {r["model"]: r for r in io.read_json_if_exists(rd.timings / "cost.json") or []}
    top = next((c for c in comparison[0] if c.startswith("test_top")), None)
    cols = ["model", "kind", "test accuracy", "95% CI", "test NLL (nats)", "95% CI ",
            *([top.replace("_", " ")] if top else []), "Brier", "ECE", "MCE", "macro-F1"]
    if cost:
        cols += ["params", "file (KB)", "latency b1 (ms)", "throughput b256 (rows/s)"]
    body = []
    for r in comparison:
        i, c = intervals.get(r["model"], {}), cost.get(r["model"])
        cells = [f"<td>{_esc(r['model'])}</td>", f"<td>{_esc(r.get('kind'))}</td>",
                 _num(r.get("test_accuracy")), _ci(i, "test_accuracy"),
                 _num(r.get("test_nll")), _ci(i, "test_nll"),
                 *([_num(r.get(top))] if top else []),
                 _num(r.get("test_brier")), _num(r.get("test_ece")), _num(r.get("test_mce")),
                 _num(r.get("test_macro_f1"))]
        if cost:
            c = c or {}
            cells += [_num(c.get("params")), _num(c.get("file_kb"), ".1f"),
                      _num(c.get("latency_ms_b1"), ".3f"), _num(c.get("throughput_b256"), ",.0f")]
        body.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f"<th>{_esc(h)}</th>" for h in cols)
    device = next(iter(cost.values())).get("device") if cost else None
    note = (f'<p class="muted">Timings: compiled forward pass on {_esc(device)}; they vary between '
            "runs and live in timings/cost.json.</p>" if device else "")
    return (f'<h2>Members vs merged models (test split)</h2><div class="wide"><table><thead>'
            f"<tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div>{note}")


def write_index(run_root: str | Path, report_dir: str | Path) -> Path:
    """`report_dir/index.html`: headline, stage table with links, model tables, artifacts, config."""
    import yaml

    run_root, report_dir = Path(run_root), Path(report_dir)
    rd = RunDir(run_root)
    if not run_root.is_dir():
        raise PipelineError(f"run folder '{run_root}' not found; expected a folder written by "
                            "`kernelib run CONFIG` or by the notebooks.")
    manifest = io.read_json(rd.manifest) if rd.manifest.exists() else folder_manifest(rd)
    run_id, metrics = manifest["run_id"], rd.metrics
    summary = io.read_json_if_exists(metrics / "summary.json")
    rel = Path(os.path.relpath(run_root, report_dir)).as_posix()
    status = manifest.get("status", "?")
    duration = manifest.get("duration_s")
    parts = [
        f"<h1>kernelib run {_esc(run_id)}</h1>",
        f'<p class="sub">status <span class="{"ok" if status == "succeeded" else "failed"}">'
        f"{_esc(status)}</span> · started {_esc(manifest.get('started'))}"
        + (f" · {duration:.0f} s" if isinstance(duration, int | float) else "") + "</p>",
        _headline(manifest, summary),
        '<nav><a href="#stages">stages</a><a href="#models">models</a>'
        '<a href="#artifacts">artifacts</a><a href="#config">configuration</a>'
        '<a href="../index.html">all runs</a></nav>',
        f'<h2 id="stages">Stages</h2>{_stage_table(manifest, run_root, report_dir, rel)}',
        f'<div id="models">{_model_table(rd)}</div>',
    ]
    gains = io.read_json_if_exists(metrics / "gains.json")
    if gains:
        parts.append("<h2>Difference to the member validation picks (paired bootstrap, test "
                     "split)</h2>" + _table(
            gains, ["model", "kind", "versus", "test_accuracy_diff", "test_accuracy_diff_lo",
                    "test_accuracy_diff_hi", "test_nll_diff", "test_nll_diff_lo",
                    "test_nll_diff_hi", "verdict"],
            ["model", "kind", "versus", "accuracy diff", "low", "high", "NLL diff (nats)", "low",
             "high", "accuracy verdict"]))
    per_class = io.read_json_if_exists(metrics / "per_class.json")
    if per_class and summary:
        rows = [r for r in per_class if r["model"] == summary["selected"]]
        parts.append(f"<details><summary>Per-class results of {_esc(summary['selected'])} "
                     f"(test split)</summary>" + _table(
                         rows, ["class", "support", "predicted", "precision", "recall", "f1",
                                "note"]) + "</details>")
    exports = io.read_json_if_exists(rd.export / "exports.json")
    if exports:
        cols = [c for c in ["format", "path", "bytes", "max_abs_diff", "tolerance", "accuracy"]
                if c in exports[0]]
        parts.append("<h2>Exports (verified in a fresh process)</h2>" + _table(exports, cols))
    artifacts = [a for a in manifest.get("artifacts", []) if (run_root / a).exists()]
    parts.append('<h2 id="artifacts">Artifacts</h2><ul class="files">' + "".join(
        f"<li>{_link(f'{rel}/{a}', a)}</li>" for a in artifacts) + "</ul>")
    config = manifest.get("config", {})
    ordered = {k: config[k] for k in ("run", *STAGES) if k in config} | config
    parts.append('<h2 id="config">Configuration</h2><pre>' + _esc(
        yaml.safe_dump(ordered, sort_keys=False)) + "</pre>")
    parts.append("<h2>Environment</h2>" + _table(
        [{"package": k, "version": v} for k, v in manifest.get("versions", {}).items()],
        ["package", "version"]))
    index = _write(report_dir / "index.html", _page(f"kernelib · {run_id}", "".join(parts)))
    _write(report_dir / "run.json", json.dumps(_run_record(manifest, summary), indent=2,
                                                sort_keys=True) + "\n")
    return index


# what each stage writes first: present means the stage ran in a folder without a manifest
_STAGE_MARKS = {"load": "data/raw.npz", "preprocess": "data/splits.npz",
                "train": "members/*/model.keras", "merge": "merged/predictions.npz",
                "evaluate": "metrics/summary.json", "export": "export/labels.json"}


def folder_manifest(rd: RunDir) -> dict[str, Any]:
    """A stand-in manifest for a folder filled by running the notebooks by hand (`runs/lab`):
    which stages left their artifacts, and every file it holds."""
    files = sorted(str(p.relative_to(rd.root)) for p in rd.root.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(rd.root).parts))
    stages = [{"stage": st, "label": st, "notebook": f"notebooks/{st}.ipynb",
               "status": "artifacts found" if list(rd.root.glob(mark)) else "no artifacts"}
              for st, mark in _STAGE_MARKS.items()]
    return {"run_id": rd.root.name, "status": "no manifest (notebooks run by hand)",
            "stages": stages, "artifacts": files}


def _run_record(manifest: dict[str, Any], summary: dict[str, Any] | None) -> dict[str, Any]:
    """What the runs list shows of one run (`reports/<run_id>/run.json`)."""
    s = summary or {}
    return {"run_id": manifest["run_id"], "status": manifest.get("status"),
            "started": manifest.get("started"), "duration_s": manifest.get("duration_s"),
            "selected": s.get("selected"), "test_accuracy": s.get("test_accuracy"),
            "accuracy_gain": s.get("accuracy_gain")}


def write_runs_index(reports_root: str | Path) -> Path:
    """`reports/index.html`: every run with a report, newest first."""
    reports_root = Path(reports_root)
    runs = []
    for page in reports_root.glob("*/index.html"):
        record = io.read_json_if_exists(page.parent / "run.json") or {}
        started = record.get("started") or dt.datetime.fromtimestamp(
            page.stat().st_mtime, dt.UTC).isoformat(timespec="seconds")
        runs.append({**record, "run_id": page.parent.name, "started": started})
    runs.sort(key=lambda r: (r["started"], r["run_id"]), reverse=True)
    head = "".join(f"<th>{h}</th>" for h in ("run", "started", "status", "duration (s)",
                                             "selected model", "test accuracy",
                                             "gain over the member validation picks (points)"))
    body = []
    for r in runs:
        gain = r.get("accuracy_gain")
        body.append(
            f"<tr><td>{_link(r['run_id'] + '/index.html', r['run_id'])}</td>"
            f"<td>{_esc(r['started'])}</td>"
            f'<td class="{"ok" if r.get("status") == "succeeded" else "failed"}">'
            f"{_esc(r.get('status') or '?')}</td>{_num(r.get('duration_s'), '.0f')}"
            f"<td>{_esc(r.get('selected') or '')}</td>{_num(r.get('test_accuracy'))}"
            f"{_num(None if gain is None else 100 * gain, '+.2f')}</tr>")
    table = (f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
             if runs else "<p>No runs yet: `kernelib run CONFIG` writes the first one.</p>")
    return _write(reports_root / "index.html",
                  _page("kernelib runs", f"<h1>kernelib runs</h1><p class=sub>newest first</p>"
                        f"{table}"))
