"""The merge stage's prediction cache: every member and merged model predicts val and test once.

A merged model that is the members followed by a few layers (`average`, `vote`, `weighted`,
`select`, `stacking` without passthrough, and their temperature) is not run whole: its saved
file's layers after the members run on the members' cached probabilities, and the whole model
is checked against that on the first rows. The others (`concat`, `soup`, `distill`) run whole.

Example::

    val_table = cache_predictions(run, members, merged, splits, val_out_of_fold=oof)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from kernelib.inference import predict_all, predict_proba, save_predictions
from kernelib.metrics import check_proba

CHECK_ROWS = 256  # rows the whole merged model predicts to check its layers after the members
CHECK_TOLERANCE = 1e-5  # max |difference| of probabilities (float32 round-off is ~1e-7)


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
    from kernelib.members import load_keras

    kinds = {m.name: "member" for m in members} | {s: "merged" for s in merged}
    inputs = {"val": splits.x_val, "test": splits.x_test}
    preds = predict_all({m.name: m.model for m in members}, inputs)
    for strategy, model in merged.items():
        path = run.merged_model(strategy)  # saved by `save_all`, when it ran
        head = after_members(load_keras(path), preds["val"]) if path.is_file() else (None, [])
        for split, x in inputs.items():
            preds[split][strategy] = merged_predictions(model, x, preds[split], head=head)
    oof = dict(val_out_of_fold or {})
    preds["val"] |= {n: check_proba(p, name=n, n_rows=len(splits.y_val)) for n, p in oof.items()}
    save_predictions(run.predictions, preds, kinds)
    write_models_json(run, members, merged, out_of_fold=oof)
    table = comparison_table({"val": preds["val"]}, {"val": splits.y_val}, kinds)
    io.write_json(run.metrics / "merge.json", records(table))
    return table


def merged_predictions(model, x, member_probs: Mapping[str, np.ndarray], *,
                       head: tuple[Any, list[str]] = (None, [])) -> np.ndarray:
    """`model`'s probabilities on `x`, given the members' (`{member name: probabilities}`).

    `head` is `after_members` of the model's saved file (a graph of its own: in memory, the
    members' layers are shared by every merged model). When there is one, it runs on
    `member_probs`, and `model` itself predicts the first `CHECK_ROWS` rows; if any
    probability differs by more than `CHECK_TOLERANCE` (a stale file, say), or without a
    head, `model` predicts all of `x`.
    """
    layers, names = head
    if layers is None:
        return predict_proba(model, x)
    probs = np.asarray(layers([np.asarray(member_probs[n], dtype="float32") for n in names],
                              training=False), dtype="float64")
    whole = predict_proba(model, x[:CHECK_ROWS])
    if np.max(np.abs(whole - probs[:CHECK_ROWS])) > CHECK_TOLERANCE:
        return predict_proba(model, x)
    return probs


def after_members(model, member_probs: Mapping[str, Any]):
    """The layers of `model` after its member layers, as a `keras.Model` of the members'
    outputs, and those members' names in its input order; `(None, [])` when the output
    depends on more than those outputs (a raw-input passthrough, features from inside a
    member, a member called twice)."""
    import keras

    names = [layer.name for layer in model.layers if layer.name in member_probs]
    if not names:
        return None, []
    # `Operation.output` is the tensor of a layer's first call in the graph around it (a
    # nested model's own `output` would be the one inside it); a member called twice leaves
    # its second call unconnected
    outputs = [keras.Operation.output.fget(model.get_layer(n)) for n in names]
    try:
        head = keras.Model(outputs, model.outputs)
    except ValueError:  # "not connected": the output needs more than the members' outputs
        return None, []
    return head, names


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
