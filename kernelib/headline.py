"""The evaluate stage's headline in words, from `metrics/summary.json` (one renderer).

`headline_rows` gives each line of the headline as (label, sentence); the notebook shows them
as a table (`Evaluation.headline`), and an HTML page can show the same lines.

Example::

    headline_rows(ev.summary)["test accuracy"]   # '0.9120 (95% CI 0.9050 to 0.9190)'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def headline_rows(s: Mapping[str, Any]) -> dict[str, str]:
    """Label -> sentence for every line of the headline of summary `s`."""
    level = f"{round(100 * s['ci_level'])}%"
    rows = {
        "selected model": f"{s['selected']} ({s['selected_kind']}, chosen by "
                          f"{s['selected_by']})",
        "test accuracy": f"{s['test_accuracy']:.4f} ({level} CI {s['test_accuracy_lo']:.4f}"
                         f" to {s['test_accuracy_hi']:.4f})",
        "member validation picks": f"{s['picked_member']} "
                                  f"({s['picked_member_test_accuracy']:.4f})",
        "accuracy gain over it": f"{100 * s['accuracy_gain']:+.2f} points (paired {level} CI "
                                 f"{100 * s['accuracy_gain_lo']:+.2f} to "
                                 f"{100 * s['accuracy_gain_hi']:+.2f}): {s['verdict']}",
        "NLL difference to it": f"{s['nll_diff']:+.4f} nats ({level} CI "
                                f"{s['nll_diff_lo']:+.4f} to {s['nll_diff_hi']:+.4f})",
        "best member on test (optimistic)": f"{s['best_member']} "
                                            f"({s['best_member_test_accuracy']:.4f})",
    }
    if s.get("best_merged"):
        rows["best merged model"] = best_merged_sentence(s)
        rows["merged models that lose"] = below_best_sentence(s)
    if s.get("note"):
        rows["note"] = s["note"]
    return rows


def best_merged_sentence(s: Mapping[str, Any]) -> str:
    """'weighted (test accuracy 0.9972, NLL 0.0194; test error ratio to the best member 1.00)'."""
    ratio = s["best_merged_error_ratio"]
    return (f"{s['best_merged']} (test accuracy {s['best_merged_test_accuracy']:.4f}, NLL "
            f"{s['best_merged_test_nll']:.4f}; test error ratio to the best member "
            + ("n/a, the best member makes no error" if ratio is None else f"{ratio:.2f}") + ")")


def below_best_sentence(s: Mapping[str, Any]) -> str | None:
    """'below the best member X on test accuracy or NLL: weighted (-0.28 points, NLL +0.0012)',
    or None when `s` has no merged model."""
    below = s.get("merged_below_best")
    if below is None:
        return None
    if not below:
        return (f"every merged model is at or above the best member {s['best_member']} on "
                "test accuracy and NLL")
    parts = [f"{r['model']} ({100 * r['accuracy_diff']:+.2f} points, NLL "
             f"{r['nll_diff']:+.4f})" for r in below]
    return (f"below the best member {s['best_member']} on test accuracy or NLL: "
            + "; ".join(parts))
