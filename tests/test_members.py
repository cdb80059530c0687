"""Members: loading, compatibility checks and the member table."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kernelib import members
from kernelib.errors import IncompatibleMembersError, MemberError


def _dense(input_shape, n_classes, activation="softmax", name="m"):
    inp = keras.Input(input_shape)
    out = keras.layers.Dense(n_classes, activation=activation)(keras.layers.Flatten()(inp))
    return keras.Model(inp, out, name=name)


def test_save_load_round_trip(tiny_members, splits, tmp_path):
    m = tiny_members[0]
    path = members.save_model(m.model, tmp_path / "m.keras")
    back = members.load_member(path, name="again")
    assert back.name == "again" and back.source == "file"
    np.testing.assert_allclose(back.model.predict(splits.x_val, verbose=0),
                               m.model.predict(splits.x_val, verbose=0), atol=1e-6)


def test_missing_file(tmp_path):
    with pytest.raises(MemberError, match="member file not found.*nope.keras"):
        members.load_member(tmp_path / "nope.keras")


def test_corrupted_file(tmp_path):
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(MemberError, match="not a valid .keras archive"):
        members.load_member(bad, name="bad")


def test_wrong_extension(tmp_path):
    f = tmp_path / "model.pt"
    f.write_bytes(b"x")
    with pytest.raises(MemberError, match="expected a .keras file, a legacy .h5 file or a Saved"):
        members.load_member(f)


@pytest.mark.parametrize("other, match", [
    (_dense((8, 8, 3), 10, name="rgb"), r"member 'rgb' takes \(8, 8, 3\).*needs \(8, 8, 1\)"),
    (_dense((8, 8, 1), 12, name="twelve"), r"member 'twelve' predicts 12 classes.*has 10"),
])
def test_incompatible_members_are_named(other, match):
    ok = _dense((8, 8, 1), 10, name="ok")
    with pytest.raises(IncompatibleMembersError, match=match):
        members.check_compatible([ok, other], input_shape=(8, 8, 1), n_classes=10)


def test_logit_outputs_are_refused(splits):
    logits = _dense((8, 8, 1), 10, activation=None, name="logits")
    with pytest.raises(IncompatibleMembersError, match="member 'logits' must output class prob"):
        members.check_compatible([logits], probe=splits.x_val)


def test_duplicate_names_are_renamed_as_keras_does():
    a, b = _dense((4,), 3, name="same"), _dense((4,), 3, name="same")
    with pytest.warns(UserWarning, match="renamed 'same' -> 'same_1'"):
        models = members.as_models([a, b])
    assert [m.name for m in models] == ["same", "same_1"]
    with pytest.raises(IncompatibleMembersError, match="same model object is given more"):
        members.as_models([a, a])


def test_member_table_counts_parameters(tiny_members):
    table = members.member_table(tiny_members)
    for m in tiny_members:
        expected = sum(int(np.prod(w.shape)) for w in m.model.get_weights())
        assert table.loc[m.name, "params"] == expected
        assert table.loc[m.name, "classes"] == 10
