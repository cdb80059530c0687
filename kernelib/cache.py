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
                    self._ensure_report(step, rec, copied=True)
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

    def _ensure_report(self, step: Step, rec: dict[str, Any], *, copied: bool = False) -> None:
        html_name = Path(step.output).with_suffix(".html").name
        rec["report"] = html_name
        if (self.report_dir / html_name).exists() and not copied:
            return
        nb = self.rd.notebooks / step.output
        if nb.exists():
            report.render_notebook(nb, self.report_dir / html_name)
