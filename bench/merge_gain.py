"""Where merging pays: the demo's pool on re-splits of the training rows, test rows untouched.

The demo (configs/default.yaml) reports its gain on Fashion-MNIST's official test split once.
Whether that gain is the pool's or the split's luck is a question for the training rows only:
this script drops the official test rows before anything else, and for each seed draws from
the 60,000 training rows an inner training set of the config's `load.train_rows` (val carved
from it as the config says) and a disjoint inner test set of `--test-rows`. It then runs the
stages' own functions in a scratch run folder (members trained as the train stage does, every
strategy of `merge.strategies` built as the merge stage does, selection on out-of-fold
validation as the evaluate stage does) and prints, per strategy, the gain over the member
validation picks on the inner test rows: accuracy points and NLL difference, the median over
the splits and its spread (min to max). It also scores the plain and the new forms of the
fitted strategies on the same member probabilities: `weighted` with shrinkage 0 vs "auto",
`select` plain vs sorted initialisation vs bagged.

    .venv/bin/python bench/merge_gain.py [--config configs/default.yaml] [--seeds 1 2 3]
                                         [--test-rows 10000]

Prints as it goes; one split of the demo's pool takes about as long as the demo's train and
merge stages.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def inner_dataset(cfg, seed: int, test_rows: int):
    """The training rows of the config's dataset re-split: train_rows + test_rows, disjoint."""
    from sklearn.model_selection import train_test_split

    from kernelib import data

    ds = data.load_dataset(cfg.load.dataset)
    dev = np.flatnonzero(ds.part == "train")  # the official test rows are dropped here
    n_train = cfg.load.train_rows or len(dev) - test_rows
    keep, _ = train_test_split(dev, train_size=n_train + test_rows, stratify=ds.y[dev],
                               random_state=seed)
    tr, te = train_test_split(keep, test_size=test_rows, stratify=ds.y[keep],
                              random_state=seed + 1)
    rows = np.concatenate([tr, te])
    part = np.array(["train"] * len(tr) + ["test"] * len(te))
    return data.Dataset(name=f"{ds.name}-dev{seed}", x=ds.x[rows], y=ds.y[rows],
                        class_names=ds.class_names, part=part)


def run_split(cfg, ds, root: Path):
    """The chain's stage functions on one dataset in the scratch run folder `root`."""
    from kernelib import data, evaluate, merge, train
    from kernelib import members as km
    from kernelib.rundir import RunDir

    run = RunDir(root)
    seed = cfg.run.seed
    km.register(cfg.load.members, run, input_shape=ds.input_shape, n_classes=ds.n_classes,
                probe=ds.x[:8])
    splits = data.split(ds, val_fraction=cfg.preprocess.val_fraction,
                        test_fraction=cfg.preprocess.test_fraction, seed=seed)
    data.save_splits(splits, run.splits)
    km.save_model(data.build_preprocessor(splits.x_train), run.preprocessor)
    t = cfg.train
    train.train_members(run, km.to_train(run), splits, epochs=t.epochs, batch_size=t.batch_size,
                        learning_rate=t.learning_rate, patience=t.patience)
    members = km.load_run_members(run)
    m = cfg.merge
    options = merge.options_from_params(m)
    merged = merge.merge_many(members, m.strategies, train=splits.train, val=splits.val,
                              seed=seed, options=options, calibrate=m.calibrate)
    oof = merge.out_of_fold(members, m.strategies, val=splits.val, seed=seed, options=options,
                            calibrate=m.calibrate, folds=m.stacking.folds)
    merge.cache_predictions(run, members, merged, splits, val_out_of_fold=oof)
    ev = evaluate.run_evaluation(run, splits, select_by=cfg.evaluate.select_by, seed=seed,
                                 bootstrap_resamples=cfg.evaluate.bootstrap_resamples)
    return run, splits, ev


def variants(run, splits, members: list[str], seed: int) -> dict[str, tuple[float, float]]:
    """Test (accuracy, NLL) of the plain and new forms of `weighted` and `select`."""
    from kernelib.inference import read_predictions
    from kernelib.merge.base import accuracy, nll
    from kernelib.merge.select import fit_select_weights
    from kernelib.merge.weighted import fit_weights

    preds, _ = read_predictions(run.predictions)
    pv = np.stack([preds["val"][n] for n in members])  # members' own val predictions
    pt = np.stack([preds["test"][n] for n in members])
    y = splits.y_val
    forms = {
        "weighted plain": fit_weights(pv, y, shrinkage=0.0),
        "weighted auto": fit_weights(pv, y, shrinkage="auto", seed=seed),
        "select plain": fit_select_weights(pv, y, size=25),
        "select init 3": fit_select_weights(pv, y, size=25, init_size=min(3, len(members))),
        "select bagged 20": fit_select_weights(pv, y, size=25, bags=20, seed=seed),
        "average": np.full(len(members), 1 / len(members)),
    }
    return {k: (accuracy(np.tensordot(w, pt, 1), splits.y_test),
                nll(np.tensordot(w, pt, 1), splits.y_test)) for k, w in forms.items()}


def spread(values: list[float], scale: float = 1.0, fmt: str = "+.2f") -> str:
    v = [scale * x for x in values]
    return f"{statistics.median(v):{fmt}} [{min(v):{fmt}}, {max(v):{fmt}}]"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--test-rows", type=int, default=10_000)
    args = ap.parse_args()

    from kernelib import params, train

    cfg = params.load_config(args.config)
    train.setup(seed=cfg.run.seed, deterministic=cfg.run.deterministic)
    gains: dict[str, list[tuple[float, float]]] = {}
    forms: dict[str, list[tuple[float, float]]] = {}
    chosen = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        ds = inner_dataset(cfg, seed, args.test_rows)
        with tempfile.TemporaryDirectory() as tmp:
            run, splits, ev = run_split(cfg, ds, Path(tmp))
            table, s = ev.comparison, ev.summary
            ref = s["picked_member"]
            members = list(table.index[table["kind"] == "member"])
            for name in table.index:
                if name == ref:
                    continue
                gains.setdefault(name, []).append(
                    (table.loc[name, "test_accuracy"] - table.loc[ref, "test_accuracy"],
                     table.loc[name, "test_nll"] - table.loc[ref, "test_nll"]))
            base = (table.loc[ref, "test_accuracy"], table.loc[ref, "test_nll"])
            for k, (acc, nll_) in variants(run, splits, members, cfg.run.seed).items():
                forms.setdefault(k, []).append((acc - base[0], nll_ - base[1]))
        chosen.append((s["selected"], s["accuracy_gain"], s["accuracy_gain_lo"],
                       s["accuracy_gain_hi"], s["nll_diff"]))
        print(f"split {seed}: {len(splits.y_train)}/{len(splits.y_val)}/{len(splits.y_test)} "
              f"rows, {time.perf_counter() - t0:.0f} s; member validation picks {ref} "
              f"(test {base[0]:.4f}, NLL {base[1]:.4f}); selected {s['selected']}: "
              f"{100 * s['accuracy_gain']:+.2f} points (paired 95% CI "
              f"{100 * s['accuracy_gain_lo']:+.2f} to {100 * s['accuracy_gain_hi']:+.2f}), "
              f"NLL {s['nll_diff']:+.4f}", flush=True)
    print(f"\ngain over the member validation picks on the inner test rows, median [min, max] "
          f"over {len(args.seeds)} splits")
    print(f"  {'model':22s} {'accuracy (points)':>24s} {'NLL difference':>28s}")
    for name, g in sorted(gains.items(), key=lambda kv: -statistics.median(a for a, _ in kv[1])):
        print(f"  {name:22s} {spread([a for a, _ in g], 100):>24s} "
              f"{spread([n for _, n in g], 1, '+.4f'):>28s}")
    print("\nplain and new forms of the fitted strategies (same member probabilities)")
    for name, g in forms.items():
        print(f"  {name:22s} {spread([a for a, _ in g], 100):>24s} "
              f"{spread([n for _, n in g], 1, '+.4f'):>28s}")
    print("\nselected on validation: " + "; ".join(
        f"{n} {100 * g:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}] NLL {d:+.4f}"
        for n, g, lo, hi, d in chosen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
