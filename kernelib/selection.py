"""Which model the evaluate stage ships, and how it compares with the members, in numbers.

The model is chosen on validation (`select`); its gain is measured against the member the same
validation metric picks (`picked_member`: what a user without kernelib would ship), and the
member best on test is shown beside it as an optimistic reference (`best_member`).

Example::

    selected = select(table, by="val_nll")
    gain_summary(table, selected, by="val_nll")["accuracy_gain"]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kernelib.bootstrap import CI_LEVEL
from kernelib.errors import DataError

# Metrics where a smaller value is better (all others: larger is better).
LOWER_IS_BETTER = ("nll", "brier", "ece", "mce")


def select(table, *, by: str = "val_nll") -> str:
    """Name of the model with the best value of `by` (lowest for NLL/Brier/ECE/MCE, else highest)."""
    if by not in table.columns:
        valid = [c for c in table.columns if c.startswith("val_")]
        raise DataError(f"cannot select by '{by}'; valid columns: {valid}")
    col = table[by]
    return str(col.idxmin() if by.endswith(LOWER_IS_BETTER) else col.idxmax())


def _members(table):
    members = table[table["kind"] == "member"]
    if members.empty:
        raise DataError(f"no member in the table; models: {list(table.index)}")
    return members


def best_member(table, *, split: str = "test") -> str:
    """The member with the highest accuracy on `split`: on test, an optimistic reference (no
    user could have known it before seeing the test rows)."""
    return str(_members(table)[f"{split}_accuracy"].idxmax())


def picked_member(table, *, by: str = "val_nll") -> str:
    """The member the validation metric `by` picks: what a user without kernelib would ship,
    so the fair reference of every gain."""
    return select(_members(table), by=by)


def gain_summary(table, selected: str, *, by: str = "val_nll",
                 split: str = "test") -> dict[str, Any]:
    """How the selected model compares on one split with the member validation picks (the
    reference of the gain) and with the member best on that split (shown, optimistic)."""
    best, picked = best_member(table, split=split), picked_member(table, by=by)
    acc_sel = float(table.loc[selected, f"{split}_accuracy"])
    acc_ref = float(table.loc[picked, f"{split}_accuracy"])
    return {
        "selected": selected,
        "picked_member": picked,
        "best_member": best,
        f"{split}_accuracy": acc_sel,
        f"picked_member_{split}_accuracy": acc_ref,
        f"picked_member_{split}_nll": float(table.loc[picked, f"{split}_nll"]),
        f"best_member_{split}_accuracy": float(table.loc[best, f"{split}_accuracy"]),
        "accuracy_gain": acc_sel - acc_ref,
        f"{split}_error_ratio": (1 - acc_sel) / (1 - acc_ref) if acc_ref < 1 else None,
    }


def summary(table, intervals, gains, selected: str, best: str, *, select_by: str,
             kinds: Mapping[str, str], resamples: int, seed: int) -> dict[str, Any]:
    """`metrics/summary.json`: the selected model, its interval and paired gain over the member
    validation picks, the bootstrap settings and every merged model against the best member."""
    s = {**gain_summary(table, selected, by=select_by), "selected_by": select_by,
         "selected_kind": kinds[selected], "ci_level": CI_LEVEL,
         "bootstrap_resamples": resamples, "bootstrap_seed": seed,
         "test_accuracy_lo": float(intervals.loc[selected, "test_accuracy_lo"]),
         "test_accuracy_hi": float(intervals.loc[selected, "test_accuracy_hi"]),
         "test_nll": float(table.loc[selected, "test_nll"])}
    if selected == s["picked_member"]:
        s |= {"accuracy_gain_lo": 0.0, "accuracy_gain_hi": 0.0, "nll_diff": 0.0,
              "nll_diff_lo": 0.0, "nll_diff_hi": 0.0,
              "verdict": "is the member validation picks"}
    else:
        g = gains.loc[selected]
        s |= {"accuracy_gain_lo": float(g["test_accuracy_diff_lo"]),
              "accuracy_gain_hi": float(g["test_accuracy_diff_hi"]),
              "nll_diff": float(g["test_nll_diff"]), "nll_diff_lo": float(g["test_nll_diff_lo"]),
              "nll_diff_hi": float(g["test_nll_diff_hi"]), "verdict": str(g["verdict"])}
    s |= merged_versus_best(table, best)
    if "note" in table.columns:
        s["note"] = str(table["note"].iloc[0])
    return s


def merged_versus_best(table, best: str, *, split: str = "test") -> dict[str, Any]:
    """Every merged model against the best member on `split`, in plain terms.

    `best_merged` is the merged model with the highest accuracy (lowest NLL on ties) and
    `best_merged_error_ratio` its error over the best member's (None when the member makes no
    error); `merged_below_best` names each merged model with lower accuracy or higher NLL
    than the best member, with both differences.
    """
    merged = table[table["kind"] != "member"]
    if merged.empty:
        return {}
    acc, nll_ = f"{split}_accuracy", f"{split}_nll"
    ranked = merged.sort_values([acc, nll_], ascending=[False, True], kind="stable")
    top, b = ranked.index[0], table.loc[best]
    err_best = 1 - float(b[acc])
    below = [{"model": str(n), "accuracy_diff": float(r[acc] - b[acc]),
              "nll_diff": float(r[nll_] - b[nll_])}
             for n, r in merged.iterrows() if r[acc] < b[acc] or r[nll_] > b[nll_]]
    return {"best_member": best, "best_merged": str(top),
            f"best_merged_{split}_accuracy": float(ranked.iloc[0][acc]),
            f"best_merged_{split}_nll": float(ranked.iloc[0][nll_]),
            "best_merged_error_ratio": (1 - float(ranked.iloc[0][acc])) / err_best
            if err_best > 0 else None,
            f"best_member_{split}_nll": float(b[nll_]),
            "merged_below_best": below}
