"""The model card next to the exports: `MODEL_CARD.md` for people, `model_card.json` for machines.

It gathers what earlier stages wrote into the run folder (data card, members, merged models,
metrics with their confidence intervals where the evaluate stage recorded them, the config
hash) and what the export stage measured. Missing pieces are reported as missing, so a card
can be written from a partial run folder (a notebook opened in JupyterLab, for example).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kernelib import evaluate, io, runtimes
from kernelib.report import markdown_cell, render_template

CARD_MD, CARD_JSON = "MODEL_CARD.md", "model_card.json"
PACKAGES = ("kernelib", "tensorflow", "keras", "numpy", "scikit-learn", "onnx", "onnxruntime",
            "tf2onnx", "ai-edge-litert")


def versions() -> dict[str, str]:
    """Python and the versions of the packages an exported model depends on."""
    return io.package_versions(PACKAGES)


def metric_rows(summary: Mapping[str, Any] | None,
                selected_row: Mapping[str, Any] | None = None,
                interval_row: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """`{metric, value, lo, hi}` rows for the selected model; an interval where one is recorded.

    Metrics are the float values (integers are counts and seeds, not metrics).
    Intervals are read from the `<metric>_lo`/`_hi` keys the evaluate stage writes next to
    the metric in the same mapping.
    """
    sources = [s for s in (interval_row, summary, selected_row) if s]
    rows: dict[str, dict[str, Any]] = {}
    for src in sources:
        for key, value in src.items():
            if not isinstance(value, float) or key.endswith(("_lo", "_hi")) or key == "ci_level":
                continue
            row = rows.setdefault(key, {"metric": key, "value": value, "lo": None, "hi": None})
            if row["lo"] is None and key + "_lo" in src and key + "_hi" in src:
                row["lo"], row["hi"] = src[key + "_lo"], src[key + "_hi"]
    return list(rows.values())


def build(run, manifest, *, variants: Sequence[Any] = (), intended_use: str | None = None,
          compression: Mapping[str, Any] | None = None) -> dict:
    """The card as a dict, from the run folder `run` (a RunDir) and an `ExportManifest`.

    `variants` are further manifests exported next to it (a pruned variant, for example);
    `compression` holds extra tables by title, as DataFrames or lists of records (the
    sparsity sweep, the quantization comparison). None of them is required.
    """
    data = io.read_json_if_exists(run.data_card) or {}
    summary = io.read_json_if_exists(run.metrics / "summary.json") or {}
    selected = summary.get("selected")
    comparison = io.read_json_if_exists(run.metrics / "comparison.json") or []
    intervals = io.read_json_if_exists(run.metrics / "intervals.json") or []
    run_manifest = io.read_json_if_exists(run.manifest) or {}
    labels = io.read_json_if_exists(manifest.out_dir / runtimes.LABELS_FILE) or {}
    classes = labels.get("class_names") or data.get("class_names") or []
    return {
        "model": {"name": manifest.name, "version": manifest.version, "selected": selected,
                  "kind": summary.get("selected_kind"), "selected_by": summary.get("selected_by"),
                  "input_shape": labels.get("input_shape"), "input_range": labels.get("input_range"),
                  "class_names": classes, "export_changes": manifest.changes},
        "intended_use": intended_use or _default_use(data, classes),
        "data": data or None,
        "members": io.read_json_if_exists(run.members_spec),
        "merged_models": io.read_json_if_exists(run.merged / "models.json"),
        "metrics": {
            "split": "test",
            "ci_level": summary.get("ci_level"),
            "selected": metric_rows(summary, _row(comparison, selected),
                                    _row(intervals, selected)),
            "summary": summary or None,
        },
        "exports": [r for m in (manifest, *variants) for r in m.records()],
        "compression": {k: _records(v) for k, v in (compression or {}).items() if v is not None},
        "environment": versions(),
        "run_id": run_manifest.get("run_id", run.root.name),
        "config_hash": run_manifest.get("config_hash"),
    }


def _records(table: Any) -> list[dict[str, Any]]:
    """A DataFrame as JSON-ready records (`evaluate.records`); a list of records as it is."""
    return table if isinstance(table, list) else evaluate.records(table)


def _row(rows: Sequence[Mapping[str, Any]], model: str | None) -> dict[str, Any] | None:
    for r in rows if isinstance(rows, list) else []:
        if r.get("model") == model:
            return dict(r)
    return None


def _default_use(data: Mapping[str, Any], classes: Sequence[str]) -> str:
    name = data.get("name", "the training data")
    shape = "x".join(str(d) for d in data.get("input_shape", [])) or "fixed-size"
    return (f"Classifies {shape} inputs like those of the '{name}' dataset into "
            f"{len(classes) or 'its'} classes ({', '.join(map(str, classes))}). Intended for "
            "inputs from the same source and value range as the training data; not evaluated on "
            "other sources, and not for decisions about people without further validation.")


def write(out_dir: str | Path, card: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write `MODEL_CARD.md` and `model_card.json` into `out_dir` atomically."""
    out_dir = Path(out_dir)
    return (io.write_text(out_dir / CARD_MD, to_markdown(card)),
            io.write_json(out_dir / CARD_JSON, dict(card)))


def _tables(card: Mapping[str, Any]) -> dict[str, Any]:
    """The card's tables as records for the template: metric intervals as '[lo, hi]' under
    the interval level's name, export sizes in KiB, digests shortened to 12 characters."""
    met, data = card["metrics"], card.get("data") or {}
    level = f"{round(100 * met['ci_level'])}% CI" if met.get("ci_level") else "CI"
    return {
        "level": level,
        "data": [{"field": k, "value": data.get(k)}
                 for k in ("name", "rows", "input_shape", "min", "max", "sha256")],
        "class_counts": [f"{k}: {v}" for k, v in (data.get("class_counts") or {}).items()],
        "merged": [{"model": k, **v} for k, v in (card.get("merged_models") or {}).items()],
        "metrics": [{"metric": r["metric"], "value": r["value"],
                     level: (f"[{markdown_cell(r['lo'])}, {markdown_cell(r['hi'])}]"
                             if r["lo"] is not None else "not recorded")}
                    for r in met["selected"]],
        "exports": [{**e, "KiB": round(e["bytes"] / 1024, 1), "sha256": e["sha256"][:12],
                     "latency_ms": e.get("latency_ms"), "rows/s": e.get("throughput_per_s")}
                    for e in card["exports"]],
        "compression": [(title, rows, list(dict.fromkeys(k for r in rows for k in r)))
                        for title, rows in card.get("compression", {}).items()],
        "environment": [{"package": k, "version": v} for k, v in card["environment"].items()],
    }


def to_markdown(card: Mapping[str, Any]) -> str:
    """The card as Markdown (`kernelib/templates/model_card.md.j2`)."""
    return render_template("model_card.md.j2", card=card, t=_tables(card))
