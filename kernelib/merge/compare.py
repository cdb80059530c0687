"""The merge stage's comparison: quality on val against size (parameters), one table.

Timings are the evaluate stage's (`timings/cost.json`): each model is timed there once, so
the merge stage compiles no model for timing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def comparison_table(run, members: Sequence[Any], merged: Mapping[str, Any], val_table):
    """One row per member and merged model: kind, val accuracy, val NLL, parameters.

    `val_table` is the validation table of `evaluate.cache_predictions` (index: model name).
    Parameters stand for inference cost here (a merged model runs every member it holds);
    the evaluate stage times every model. Writes `merged/comparison.json`.
    """
    import pandas as pd

    from kernelib import io
    from kernelib.members import count_params

    models = {m.name: m.model for m in members} | dict(merged)
    extra = pd.DataFrame(
        [{"model": name, "params": count_params(model)}
         for name, model in models.items()]).set_index("model")
    table = val_table[["kind", "val_accuracy", "val_nll"]].join(extra)
    io.write_json(run.merged / "comparison.json", table.reset_index().to_dict(orient="records"))
    return table


def tradeoff_figure(table):
    """Val accuracy and val NLL against parameters, members and merged models marked."""
    from matplotlib.lines import Line2D

    from kernelib import plots

    fig = plots._figure(figsize=(11, 4.2))  # shows as a PNG in Jupyter without pyplot
    axes = fig.subplots(1, 2)
    for ax, metric, label in ((axes[0], "val_accuracy", "val accuracy (fraction, higher is "
                               "better)"), (axes[1], "val_nll", "val NLL (nats, lower is better)")):
        for name, row in table.iterrows():
            colour = plots._kind_colour(row["kind"])
            marker = "o" if row["kind"] == "member" else "s"
            ax.scatter(row["params"], row[metric], color=colour, marker=marker, s=40)
            ax.annotate(str(name), (row["params"], row[metric]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set(xlabel="parameters (count, log scale)", ylabel=label)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=plots._kind_colour(k), marker="o" if k == "member" else "s",
                      linestyle="", label=k) for k in ("member", "merged")]
    axes[1].legend(handles=handles, loc="upper right")
    fig.suptitle("Members and merged models: validation quality against size")
    return fig
