"""The cache of step results: a step whose key matches a succeeded step of this run or of an
earlier run in the runs folder is reused (its declared outputs copied in when from another
run) instead of executed."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kernelib import io, report
from kernelib.rundir import RunDir
from kernelib.steps import Step


def intact(root: Path, outputs: dict[str, str]) -> bool:
    """Every recorded output is still there with the recorded sha256."""
    return all((root / rel).is_file() and io.sha256(root / rel) == sha
               for rel, sha in outputs.items())


@dataclass
class Cache:
    """Looks a step's key up in this run's earlier record and in the other runs' manifests."""

    rd: RunDir
    report_dir: Path
    runs_dir: Path
    run_id: str

    def reuse(self, step: Step, rec: dict[str, Any]) -> bool:
        """Fill `rec` from this run's earlier result or from another run with the same key
        (copying its outputs and notebook in); False when there is none."""
        prev = rec.pop("previous", None)
        if prev and prev.get("key") == rec["key"] and intact(self.rd.root, prev["outputs"]):
            rec.update(status="succeeded", outputs=prev["outputs"], report=prev.get("report"),
                       cached_from=prev.get("cached_from") or self.run_id,
                       duration_s=0.0, device=prev.get("device"))
            self._ensure_report(step, rec)
            return True
        for other in self.other_runs():
            for srec in other["manifest"].get("stages", []):
                if srec.get("key") == rec["key"] and srec.get("status") == "succeeded" \
                        and intact(other["root"], srec.get("outputs", {})):
                    self._copy(other["root"], srec, step)
                    rec.update(status="succeeded", outputs=srec["outputs"], duration_s=0.0,
                               cached_from=srec.get("cached_from") or other["manifest"]["run_id"],
                               device=srec.get("device"))
                    self._ensure_report(step, rec, copied=(other["manifest"].get("run_id"),
                                                           other["root"] / srec["notebook"]))
                    return True
        return False

    def other_runs(self) -> Iterable[dict[str, Any]]:
        """Earlier runs in the runs folder, newest first."""
        found = []
        for m in self.runs_dir.glob("*/manifest.json"):
            if m.parent == self.rd.root:
                continue
            try:
                found.append({"root": m.parent, "manifest": io.read_json(m)})
            except (OSError, ValueError):
                continue
        return sorted(found, key=lambda r: r["manifest"].get("started", ""), reverse=True)

    def _copy(self, src_root: Path, srec: dict[str, Any], step: Step) -> None:
        for rel in srec["outputs"]:
            with io.atomic_path(self.rd.root / rel) as tmp:
                shutil.copy2(src_root / rel, tmp)
        nb = src_root / srec["notebook"]
        if nb.exists():
            with io.atomic_path(self.rd.notebooks / step.output) as tmp:
                shutil.copy2(nb, tmp)

    def _ensure_report(self, step: Step, rec: dict[str, Any], *,
                       copied: tuple[Any, Path] | None = None) -> None:
        """The step's HTML reports in this run's reports folder. A step copied from another
        run (`copied`: its run id and notebook) takes that run's reports when they are there
        and not older than its notebook (they render the notebook just copied, and rendering
        is most of a warm run's time); else its notebook is rendered."""
        html_name = Path(step.output).with_suffix(".html").name
        rec["report"] = html_name
        html = self.report_dir / html_name
        if copied is None and html.exists():
            return
        nb = self.rd.notebooks / step.output
        if not nb.exists():
            return
        if copied is not None and _reports_of(self.report_dir.parent, *copied, html_name):
            src = self.report_dir.parent / copied[0] / html_name
            for a, b in ((src, html), (report.share_path(src), report.share_path(html))):
                with io.atomic_path(b) as tmp:
                    shutil.copy2(a, tmp)
            return
        report.render_notebook(nb, html)


def _reports_of(reports_root: Path, run_id: Any, notebook: Path, html_name: str) -> bool:
    """Whether run `run_id` has both reports of `notebook`, rendered after it was written."""
    if not isinstance(run_id, str) or Path(run_id).name != run_id or run_id.startswith("."):
        return False  # a run id from a manifest names one folder inside the reports folder
    html = reports_root / run_id / html_name
    try:
        written = notebook.stat().st_mtime
        return all(p.stat().st_mtime >= written for p in (html, report.share_path(html)))
    except OSError:  # either report (or the notebook) is not there
        return False
