"""The merge stage's prediction cache: every member and merged model predicts val and test once.

Example::

    val_table = cache_predictions(run, members, merged, splits, val_out_of_fold=oof)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from kernelib.inference import predict_all, save_predictions
from kernelib.metrics import check_proba


def cache_predictions(run, members, merged: Mapping[str, Any], splits, *,
                      val_out_of_fold: Mapping[str, np.ndarray] | None = None):
    """Predict val and test once with every member and merged model; cache them; val table.

    `val_out_of_fold` replaces the val predictions of strategies fitted on val by their
    out-of-fold ones (`kernelib.merge.out_of_fold`), so val comparisons and the evaluate
    stage's selection are not flattered by in-sample fits.
    Writes `merged/predictions.npz`, `merged/models.json` (each model's kind, file and how
    its val predictions were made) and `metrics/merge.json`. Returns the val table.
    """
    from kernelib import io
    from kernelib.evaluate import comparison_table, records

    models = {m.name: m.model for m in members} | dict(merged)
    kinds = {m.name: "member" for m in members} | {s: "merged" for s in merged}
    preds = predict_all(models, {"val": splits.x_val, "test": splits.x_test})
    oof = dict(val_out_of_fold or {})
    preds["val"] |= {n: check_proba(p, name=n, n_rows=len(splits.y_val)) for n, p in oof.items()}
    save_predictions(run.predictions, preds, kinds)
    write_models_json(run, members, merged, out_of_fold=oof)
    table = comparison_table({"val": preds["val"]}, {"val": splits.y_val}, kinds)
    io.write_json(run.metrics / "merge.json", records(table))
    return table


def write_models_json(run, members, merged: Mapping[str, Any], *,
                      out_of_fold: Mapping[str, Any]) -> None:
    """`merged/models.json`: each model's kind, file (relative to the run) and val predictions."""
    from kernelib import io

    files = {m.name: ("member", run.member_model(m.name)) for m in members}
    files |= {s: ("merged", run.merged_model(s)) for s in merged}
    io.write_json(run.merged / "models.json",
                  {n: {"kind": kind, "path": str(path.relative_to(run.root)),
                       "val_predictions": "out-of-fold" if n in out_of_fold else "direct"}
                   for n, (kind, path) in files.items()})
