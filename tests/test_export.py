"""Export: each format written atomically and verified by its own runtime in a fresh process."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import predict_in_fresh_process
from kernelib import export, merge
from kernelib.errors import ExportError


@pytest.fixture(scope="module")
def merged(tiny_members):
    return merge.merge(tiny_members, "average")


def test_export_every_format_and_verify(merged, splits, tmp_path):
    entries = export.export(merged, tmp_path, ["keras", "saved_model"], name="digits", version=3,
                            verify_x=splits.x_test, verify_y=splits.y_test)
    by = {e["format"]: e for e in entries}
    assert (tmp_path / "digits.keras").is_file()
    assert (tmp_path / "digits" / "3" / "saved_model.pb").is_file()  # TF Serving layout
    assert by["keras"]["max_abs_diff"] <= 1e-6 and by["saved_model"]["max_abs_diff"] <= 1e-5
    acc = float(np.mean(merged.predict(splits.x_test, verbose=0).argmax(1) == splits.y_test))
    assert by["saved_model"]["accuracy"] == pytest.approx(acc)
    assert len(by["keras"]["sha256"]) == 64 and by["keras"]["bytes"] > 1000
    # an independent check of the served signature, outside kernelib's verifier
    got = predict_in_fresh_process(tmp_path / "digits" / "3", splits.x_test[:16], tmp_path,
                                   "saved_model")
    np.testing.assert_allclose(got, merged.predict(splits.x_test[:16], verbose=0), atol=1e-5)
    assert not [p for p in tmp_path.rglob(".*")], "no temporary files left behind"


def test_existing_version_is_not_replaced(merged, splits, tmp_path):
    export.export(merged, tmp_path, ["saved_model"], name="m", version=1, verify_x=splits.x_val)
    before = (tmp_path / "m" / "1" / "saved_model.pb").stat().st_mtime_ns
    with pytest.raises(ExportError, match=r"already exists.*Raise export.version"):
        export.export(merged, tmp_path, ["saved_model"], name="m", version=1,
                      verify_x=splits.x_val)
    assert (tmp_path / "m" / "1" / "saved_model.pb").stat().st_mtime_ns == before


def test_unknown_format_lists_valid_ones(merged, splits, tmp_path):
    with pytest.raises(ExportError, match=r"unknown export format\(s\) \['pickle'\]; valid"):
        export.export(merged, tmp_path, ["pickle"], name="m", verify_x=splits.x_val)


def test_corrupted_artifact_fails_verification_naming_the_format(merged, splits, tmp_path):
    path = tmp_path / "m.keras"
    export.write(merged, "keras", path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ExportError, match=r"keras export at .* could not be loaded"):
        export.verify(path, "keras", splits.x_val)
