"""TensorBoard logs of member training and of the concat head, read back with TensorBoard's own
event reader and compared with the CSV history Keras' CSVLogger wrote for the same fit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import epoch_scalars
from kernelib import params


@pytest.fixture(scope="module")
def logged_fit(splits, tmp_path_factory):
    """A tiny MLP fitted 3 epochs (patience high enough that all 3 run) with TensorBoard on."""
    from kernelib import data, train, zoo

    train.setup(seed=0)
    tmp = tmp_path_factory.mktemp("tb")
    model = zoo.build("mlp", preprocessor=data.build_preprocessor(splits.x_train),
                      n_classes=splits.n_classes, name="mlp_tb", seed=0)
    history = train.fit(model, splits.train, splits.val, out_dir=tmp / "member", epochs=3,
                        batch_size=128, learning_rate=3e-3, patience=5, seed=0,
                        log_dir=tmp / "tensorboard" / "mlp_tb")
    return {"dir": tmp, "history": history}


@pytest.mark.parametrize("split, column", [("train", "loss"), ("validation", "val_loss")])
def test_epoch_loss_logged_for_every_history_epoch(logged_fit, split, column):
    csv = pd.read_csv(logged_fit["dir"] / "member" / "history.csv")
    assert list(csv["epoch"]) == [0, 1, 2]
    logged = epoch_scalars(logged_fit["dir"] / "tensorboard" / "mlp_tb" / split, "epoch_loss")
    assert sorted(logged) == list(csv["epoch"])
    np.testing.assert_allclose([logged[e] for e in csv["epoch"]], csv[column], rtol=1e-5)


def test_no_log_dir_writes_no_events(splits, tmp_path):
    from kernelib import data, train, zoo

    model = zoo.build("mlp", preprocessor=data.build_preprocessor(splits.x_train),
                      n_classes=splits.n_classes, name="mlp_quiet", seed=0)
    train.fit(model, splits.train, splits.val, out_dir=tmp_path, epochs=1, batch_size=256,
              learning_rate=3e-3, patience=1)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["history.csv"]


def test_concat_head_logs_its_epochs(tiny_members, splits, tmp_path):
    from kernelib.merge import merge

    merge(tiny_members, "concat", train=splits.train, val=splits.val, seed=0, epochs=2,
          log_dir=str(tmp_path / "concat"))
    assert sorted(epoch_scalars(tmp_path / "concat" / "train", "epoch_loss")) == [0, 1]
    assert sorted(epoch_scalars(tmp_path / "concat" / "validation", "epoch_loss")) == [0, 1]


@pytest.mark.parametrize("on, expected", [
    (True, {"concat": "tensorboard/concat", "distill": "tensorboard/distill"}),
    (False, {}),
])
def test_merge_options_log_where_the_switch_says(tmp_path, on, expected):
    from kernelib.merge import options_from_params
    from kernelib.rundir import RunDir

    p = params.MergeParams(tensorboard=on)
    options = options_from_params(p, run=RunDir(tmp_path))
    got = {s: o["log_dir"] for s, o in options.items() if "log_dir" in o}
    assert got == {s: str(tmp_path / d) for s, d in expected.items()}
    assert all("log_dir" not in o for o in options_from_params(p).values())


def test_tensorboard_is_a_train_setting():
    assert params.TrainSettings().tensorboard is True
    cfg = params.validate_config({"train": {"tensorboard": False}})
    assert cfg.train.tensorboard is False


def test_tensorboard_logs_stay_out_of_stage_outputs(tmp_path):
    """Event files hold wall-clock times: recorded as outputs they would change downstream
    cache keys on every rerun."""
    from kernelib import steps

    for rel in ["merged/concat.keras", "tensorboard/concat/train/events.out.tfevents.1.v2"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert sorted(steps.artifact_files(tmp_path)) == ["merged/concat.keras"]
