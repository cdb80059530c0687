"""HTML reports: each executed notebook through nbconvert, plus a run index page and a runs list.

Every page is one self-contained file: images are embedded, and the `lab` template's scripts
that load MathJax, require.js and mermaid from a CDN are left out, so a page mailed to
someone and opened offline shows no console errors. The index pages and the runs list are
jinja2 templates (`kernelib/templates/*.html.j2`, also used for the model card's Markdown) with
autoescape: text that comes from users (run ids, model and class names, errors,
configuration) is HTML-escaped everywhere.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
from pathlib import Path
from typing import Any

from kernelib import headline, io
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
    runs script; JavaScript outputs are dropped. The index pages escape everything (jinja2
    autoescape).
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

def _points(v: float) -> str:
    return f"{100 * v:+.2f}"


def markdown_cell(v: Any) -> str:
    """One Markdown table cell: floats to 4 significant digits, no '|' or line break inside."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


@functools.cache
def _templates():
    from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

    env = Environment(loader=PackageLoader("kernelib", "templates"),
                      autoescape=select_autoescape(["html.j2"], default_for_string=False),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                      keep_trailing_newline=True, finalize=lambda v: "" if v is None else v)
    env.filters |= {"fmt": format, "points": _points, "md": markdown_cell}
    return env


def render_template(name: str, /, **context: Any) -> str:
    """Render `kernelib/templates/<name>` with `context`.

    HTML templates (`*.html.j2`) escape every value (autoescape), so user text (run ids, model
    and class names, errors, configuration) shows as text; None renders as nothing. A missing
    name is an error (StrictUndefined), not an empty string."""
    return _templates().get_template(name).render(**context)


def _headline(manifest: dict[str, Any], s: dict[str, Any] | None) -> dict[str, Any]:
    """What the headline template shows: the summary and the sentences made from it."""
    failed = [st for st in manifest.get("stages", []) if st.get("status") == "failed"]
    h: dict[str, Any] = {"summary": s, "failed": failed[0] if failed else None,
                         "status": manifest.get("status")}
    if s is None:
        return h
    losers = headline.below_best_sentence(s)
    return h | {
        "level": round(100 * s.get("ci_level", 0.95)),
        # runs from before the fair reference name only the best member
        "picked": s.get("picked_member", s["best_member"]),
        "picked_accuracy": s.get("picked_member_test_accuracy", s["best_member_test_accuracy"]),
        "best_merged": headline.best_merged_sentence(s) if s.get("best_merged") else None,
        "losers": losers[0].upper() + losers[1:] if losers else None,
    }


def provenance(stage: dict[str, Any]) -> str:
    """'ran', 'cached (from run X)', or nothing for a stage that did not run (yet)."""
    if stage.get("cached_from"):
        return f"cached (from run {stage['cached_from']})"
    return "ran" if stage.get("status") in ("succeeded", "failed", "interrupted") else ""


def _stages(manifest: dict[str, Any], run_root: Path, report_dir: Path,
            rel: str) -> list[dict[str, Any]]:
    """The stage table's rows; links only to reports and notebooks that exist."""
    rows = []
    for st in manifest.get("stages", []):
        report, nb = st.get("report"), st.get("notebook")
        share = share_path(report).name if report else None
        rows.append({
            "label": st.get("label"), "status": st.get("status"), "provenance": provenance(st),
            "duration_s": st.get("duration_s"), "error": st.get("error"),
            "report": report if report and (report_dir / report).exists() else None,
            "share": share if share and (report_dir / share).exists() else None,
            "notebook_href": f"{rel}/{nb}" if nb and (run_root / nb).exists() else None,
            "notebook_name": Path(nb).name if nb else None,
        })
    return rows


def _models(rd: RunDir) -> dict[str, Any]:
    """The members-vs-merged table's inputs: metrics, intervals and (when measured) costs."""
    comparison = io.read_json_if_exists(rd.metrics / "comparison.json") or []
    intervals = {r["model"]: r for r in io.read_json_if_exists(rd.metrics / "intervals.json") or []}
    cost = {r["model"]: r for r in io.read_json_if_exists(rd.timings / "cost.json") or []}
    top = next((c for c in comparison[0] if c.startswith("test_top")), None) if comparison else None
    device = next(iter(cost.values())).get("device") if cost else None
    return {"comparison": comparison, "intervals": intervals, "cost": cost, "top": top,
            "device": device}


def _versions_table(versions: dict[str, str]) -> str:
    """The package versions as an HTML table (pandas escapes every cell)."""
    import pandas as pd

    frame = pd.DataFrame(list(versions.items()), columns=["package", "version"], dtype=object)
    return frame.to_html(index=False, escape=True, border=0, justify="left")


def write_index(run_root: str | Path, report_dir: str | Path) -> Path:
    """`report_dir/index.html`: headline, stage table with links, model tables, artifacts, config."""
    import yaml
    from markupsafe import Markup

    run_root, report_dir = Path(run_root), Path(report_dir)
    rd = RunDir(run_root)
    if not run_root.is_dir():
        raise PipelineError(f"run folder '{run_root}' not found; expected a folder written by "
                            "`kernelib run CONFIG` or by the notebooks.")
    manifest = io.read_json(rd.manifest) if rd.manifest.exists() else folder_manifest(rd)
    run_id, summary = manifest["run_id"], io.read_json_if_exists(rd.metrics / "summary.json")
    rel = Path(os.path.relpath(run_root, report_dir)).as_posix()
    selected = summary["selected"] if summary else None
    per_class = io.read_json_if_exists(rd.metrics / "per_class.json") if summary else None
    exports = io.read_json_if_exists(rd.export / "exports.json")
    export_columns = [c for c in ("format", "path", "bytes", "max_abs_diff", "tolerance",
                                  "accuracy") if exports and c in exports[0]]
    config = manifest.get("config", {})
    ordered = {k: config[k] for k in ("run", *STAGES) if k in config} | config
    page = render_template(
        "run_index.html.j2", title=f"kernelib · {run_id}", run_id=run_id,
        run_status=manifest.get("status", "?"), started=manifest.get("started"),
        duration=manifest.get("duration_s"), h=_headline(manifest, summary),
        stages=_stages(manifest, run_root, report_dir, rel), models=_models(rd),
        gains=io.read_json_if_exists(rd.metrics / "gains.json"), selected=selected,
        per_class=[r for r in per_class if r["model"] == selected] if per_class else None,
        exports=exports, export_columns=export_columns,
        artifacts=[a for a in manifest.get("artifacts", []) if (run_root / a).exists()], rel=rel,
        config_yaml=yaml.safe_dump(ordered, sort_keys=False),
        environment=Markup(_versions_table(manifest.get("versions", {}))))
    index = _write(report_dir / "index.html", page)
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
    return _write(reports_root / "index.html",
                  render_template("runs_index.html.j2", title="kernelib runs", runs=runs))
