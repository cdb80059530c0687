"""`kernelib serve`: the real server in a subprocess on loopback, called by real clients.

TF Serving's REST form through `requests`, the Open Inference Protocol through `tritonclient.http`.
Predictions are compared with onnxruntime and the LiteRT interpreter called here directly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from kernelib import export, io

BODY_LIMIT = 200_000


@pytest.fixture(scope="module")
def exported(tiny_members, splits, tmp_path_factory):
    """The CNN member as version 1 (SavedModel, LiteRT, ONNX; exports.json as the export stage
    writes it) and, exported elsewhere, the MLP member as version 2 for the pick-up test."""
    tmp = tmp_path_factory.mktemp("serve")
    classes = [f"digit-{c}" for c in splits.class_names]
    out = tmp / "export"
    m1 = export.export(tiny_members[1].model, out, ["saved_model", "tflite", "onnx"],
                       name="digits", test=splits.test, repeats=3, class_names=classes)
    io.write_json(out / "exports.json", m1.records())
    m2 = export.export(tiny_members[0].model, tmp / "v2", ["saved_model"], name="digits",
                       version=2, test=splits.test, repeats=3, class_names=classes)
    return {"out": out, "v1": m1, "v2": m2, "v2_model": tiny_members[0].model,
            "x": splits.x_test[:7].astype("float32"), "classes": classes}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(path: Path, log: Path, *args: str) -> tuple[subprocess.Popen, str]:
    """`kernelib serve` in a fresh process; returns once /v2/health/ready answers 200."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kernelib.cli", "serve", str(path), "--port", str(port), *args],
        stdout=log.open("w"), stderr=subprocess.STDOUT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if requests.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return proc, url
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    proc.kill()
    pytest.fail("server did not become ready in 60 s:\n" + log.read_text()[-3000:])


def stop(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=60)


@pytest.fixture(scope="module")
def server(exported):
    """One server for the module, scanning every 0.2 s, with dynamic batching on."""
    proc, url = start_server(exported["out"], exported["out"].parent / "server.log",
                             "--max-batch-size", "32", "--batch-timeout-us", "500",
                             "--poll-seconds", "0.2", "--max-body-bytes", str(BODY_LIMIT))
    yield url
    assert stop(proc) == 0


def onnx_direct(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def litert_direct(path: Path, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    it.resize_tensor_input(inp["index"], list(x.shape))
    it.allocate_tensors()
    it.set_tensor(inp["index"], x)
    it.invoke()
    return it.get_tensor(out["index"])


def fastest(exported) -> str:
    """What `--runtime auto` must pick: the lowest verified batch-1 latency (NumPy here)."""
    records = json.loads((exported["out"] / "exports.json").read_text())
    return records[int(np.argmin([r["latency_ms"] for r in records]))]["format"]


# ---------------------------------------------------------------------------- TF Serving REST


def test_tfs_row_and_columnar_predictions_equal_the_runtimes(server, exported):
    x, m = exported["x"], exported["v1"]
    onnx, litert = onnx_direct(m.path("onnx"), x), litert_direct(m.path("tflite"), x)
    rows = requests.post(f"{server}/v1/models/digits:predict",
                         json={"instances": x.tolist()}, timeout=30)
    cols = requests.post(f"{server}/v1/models/digits/versions/1:predict",
                         json={"inputs": {"input": x.tolist()}}, timeout=30)
    named = requests.post(f"{server}/v1/models/digits:predict",
                          json={"instances": [{"input": r} for r in x.tolist()]}, timeout=30)
    assert rows.status_code == cols.status_code == named.status_code == 200, rows.text
    got = np.asarray(rows.json()["predictions"], "float32")
    assert got.shape == (7, 10)
    np.testing.assert_array_equal(np.asarray(cols.json()["outputs"], "float32"), got)
    np.testing.assert_array_equal(np.asarray(named.json()["predictions"], "float32"), got)
    np.testing.assert_allclose(got, onnx, atol=1e-5)
    np.testing.assert_allclose(got, litert, atol=1e-4)


def test_tfs_status_and_metadata(server, exported):
    status = requests.get(f"{server}/v1/models/digits", timeout=10).json()
    assert status == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    meta = requests.get(f"{server}/v1/models/digits/metadata", timeout=10).json()
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    dims = [int(d["size"]) for d in sig["inputs"]["input"]["tensor_shape"]["dim"]]
    assert dims == [-1, *exported["x"].shape[1:]]
    assert sig["inputs"]["input"]["dtype"] == "DT_FLOAT"
    assert meta["metadata"]["class_names"] == exported["classes"]
    assert meta["model_spec"] == {"name": "digits", "signature_name": "", "version": "1"}
    platforms = {"onnx": "onnxruntime_onnx", "tflite": "tensorflow_lite",
                 "saved_model": "tensorflow_savedmodel"}
    assert meta["metadata"]["runtime"] == platforms[fastest(exported)]


# ---------------------------------------------------------------------------- Open Inference Protocol


@pytest.mark.parametrize("binary", [True, False])
def test_v2_with_tritonclient(server, exported, binary):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits")
    meta = client.get_model_metadata("digits")
    (inp,), (out,) = meta["inputs"], meta["outputs"]
    assert inp["datatype"] == "FP32" and inp["shape"] == [-1, *exported["x"].shape[1:]]
    assert out["shape"] == [-1, 10] and meta["versions"] == ["1"]
    x = exported["x"]
    tensor = httpclient.InferInput(inp["name"], list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    wanted = [httpclient.InferRequestedOutput(out["name"], binary_data=binary)]
    result = client.infer("digits", [tensor], outputs=wanted, request_id="r1")
    got = result.as_numpy(out["name"])
    assert result.get_response()["id"] == "r1"
    np.testing.assert_allclose(got, onnx_direct(exported["v1"].path("onnx"), x), atol=1e-5)
    np.testing.assert_allclose(got, litert_direct(exported["v1"].path("tflite"), x), atol=1e-4)


# ---------------------------------------------------------------------------- bad requests


def _v2(x, **change) -> dict:
    t = {"name": "input", "datatype": "FP32", "shape": list(np.shape(x)),
         "data": np.ravel(x).tolist()} | change
    return {"inputs": [t]}


ROW = np.zeros((1, 8, 8, 1)).tolist()
BAD = [  # (path, body (bytes or JSON), status, words in the error)
    ("/v1/models/digits:predict", b"{not json", 400, "malformed JSON"),
    ("/v1/models/digits:predict", [1, 2], 400, "JSON object"),
    ("/v1/models/digits:predict", {"rows": ROW}, 400, "'instances'"),
    ("/v1/models/digits:predict", {"instances": [[1.0, 2.0, 3.0]]}, 400, "shape"),
    ("/v1/models/digits:predict", {"instances": [[[1.0], [2.0, 3.0]]]}, 400, "rectangular"),
    ("/v1/models/digits:predict", {"instances": [[["a"] * 1] * 8] * 8}, 400, "numbers"),
    ("/v1/models/digits:predict", {"instances": []}, 400, "non-empty"),
    ("/v1/models/digits:predict", {"inputs": {"image": ROW}}, 400, "'input'"),
    ("/v1/models/nope:predict", {"instances": ROW}, 404, "not served"),
    ("/v1/models/digits/versions/9:predict", {"instances": ROW}, 404, "version '9'"),
    ("/v1/models/nope", None, 404, "not known"),
    ("/v1/models/digits:predict", {"instances": np.zeros((800, 8, 8, 1)).tolist()}, 413,
     "limit"),
    ("/v2/models/digits/infer", _v2(ROW, datatype="INT64"), 400, "datatype"),
    ("/v2/models/digits/infer", _v2(ROW, name="x"), 400, "unknown input"),
    ("/v2/models/digits/infer", _v2(ROW, shape=[2, 8, 8, 1]), 400, "declares shape"),
    ("/v2/models/digits/infer", _v2(ROW, shape=[1, 64]), 400, "shape"),
    ("/v2/models/digits/infer", _v2(ROW, data=["x"] * 64), 400, "numbers"),
    ("/v2/models/nope/infer", _v2(ROW), 404, "not served"),
    ("/v2/models/digits/versions/2/infer", _v2(ROW), 404, "not served"),
    ("/v2/no/such/route", None, 404, "Not Found"),
]


@pytest.mark.parametrize(("path", "body", "status", "words"), BAD,
                         ids=[f"{i}-{b[1] if isinstance(b[1], bytes) else b[3]}"
                              for i, b in enumerate(BAD)])
def test_bad_requests_answered_with_an_error_and_the_server_still_serves(
        server, exported, path, body, status, words):
    if body is None:
        r = requests.get(server + path, timeout=10)
    else:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = requests.post(server + path, data=data, timeout=30,
                          headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert words in r.json()["error"]
    ok = requests.post(f"{server}/v1/models/digits:predict",
                       json={"instances": exported["x"][:1].tolist()}, timeout=30)
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 1


# ---------------------------------------------------------------------------- the row fast path

FAST = [  # bodies the fast path reads: the answer is the json module's, through NumPy
    b'{"instances": [[1, 2.5], [-3e2, 4E-1]]}',
    b' {\n "instances" :\t[ [ 0.0 , 1 ] ,[2,3]]\r\n} ',
    b'{"instances": [[1.5, -0.0]]}',
]
GENERAL = [  # bodies it leaves to the general path (which answers them or gives the error)
    b'{"instances": [[1, 2], [3]]}', b'{"instances": [[1, 2, 3]]}', b'{"instances": [1, 2]}',
    b'{"instances": [["1", 2]]}', b'{"instances": [[true, 2]]}', b'{"instances": [[null, 2]]}',
    b'{"instances": [[NaN, 2]]}', b'{"instances": [[01, 2]]}', b'{"instances": [[1., 2]]}',
    b'{"instances": [[1, 2,]]}', b'{"instances": [[1,, 2]]}', b'{"instances": [[1e, 2]]}',
    b'{"instances": []}', b'{"instances": [[1, 2]], "x": [3]}', b'{"inputs": [[1, 2]]}',
    b'{"instances": [{"input": [1, 2]}]}', b'{"instances": [[1, 2]]', b'[[1, 2]]',
]


@pytest.mark.parametrize("body", FAST)
def test_fast_rows_equal_the_json_module(body):
    from kernelib.serve import fast_rows

    got = fast_rows(body, (2,))
    expected = np.asarray(json.loads(body)["instances"], "float64").astype("float32")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("body", GENERAL)
def test_fast_rows_leave_other_bodies_to_the_general_path(body):
    from kernelib.serve import fast_rows

    assert fast_rows(body, (2,)) is None


@pytest.mark.parametrize("max_batch", ["0", "16"])
def test_lone_and_concurrent_requests_get_their_own_rows_and_are_counted(
        exported, tmp_path, max_batch):
    """No batch timeout: a lone request runs on the loop's thread, concurrent ones go to the
    inference thread (batched or not); every answer is its own row's. Triton's statistics
    count the rows and the runtime calls."""
    import tritonclient.http as httpclient

    proc, url = start_server(exported["out"], tmp_path / "log", "--max-batch-size", max_batch)
    x = exported["x"]
    expected = onnx_direct(exported["v1"].path("onnx"), x)
    try:
        lone = [requests.post(f"{url}/v1/models/digits:predict",
                              json={"instances": x[i:i + 1].tolist()}, timeout=30)
                for i in range(len(x))]
        got = {}

        def call(i):
            got[i] = requests.post(f"{url}/v1/models/digits:predict",
                                   json={"instances": x[i % len(x):][:1].tolist()}, timeout=30)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(28)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        client = httpclient.InferenceServerClient(url.removeprefix("http://"))
        stats = client.get_inference_statistics("digits")["model_stats"][0]
    finally:
        assert stop(proc) == 0
    for i, r in [*enumerate(lone), *got.items()]:
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["predictions"], expected[i % len(x)][None],
                                   atol=1e-4)
    assert len(got) == 28 and stats["inference_count"] == len(x) + 28
    calls = {s["batch_size"]: s["compute_infer"]["count"] for s in stats["batch_stats"]}
    assert sum(size * n for size, n in calls.items()) == len(x) + 28
    assert stats["execution_count"] == sum(calls.values()) <= len(x) + 28
    if max_batch == "0":
        assert calls == {1: len(x) + 28}


# ---------------------------------------------------------------------------- versions


def _served(server: str, name: str) -> list[str]:
    r = requests.get(f"{server}/v1/models/{name}", timeout=10)
    if r.status_code == 404:
        return []
    return [s["version"] for s in r.json()["model_version_status"] if s["state"] == "AVAILABLE"]


def _wait_for(server: str, name: str, version: str, seconds: float = 60) -> None:
    for _ in range(int(seconds / 0.1)):
        if _served(server, name) == [version]:
            return
        time.sleep(0.1)
    pytest.fail(f"{name} version {version} not served after {seconds} s: "
                f"{requests.get(f'{server}/v1/models/{name}', timeout=10).text}")


def test_new_version_picked_up_without_restart_and_half_copy_never_served(server, exported):
    """A second model, `other`, appears with version 1 (the CNN); version 2 (the MLP) is copied
    in without its variables shard, then completed. Its answers must be the MLP's (Keras)."""
    out = exported["out"]
    shutil.copytree(out / "digits" / "1", out / "other" / "1")
    try:
        _pick_up(server, exported, out / "other" / "2")
    finally:  # a server started later would have to load it before it is ready
        shutil.rmtree(out / "other")


def _pick_up(server: str, exported: dict, half: Path) -> None:
    x = exported["x"]
    _wait_for(server, "other", "1")
    shutil.copytree(exported["v2"].path("saved_model"), half,
                    ignore=shutil.ignore_patterns("variables.data-*"))
    time.sleep(1.5)  # seven scans
    assert _served(server, "other") == ["1"]
    r = requests.post(f"{server}/v1/models/other/versions/2:predict",
                      json={"instances": x.tolist()}, timeout=30)
    assert r.status_code == 404
    for shard in (exported["v2"].path("saved_model") / "variables").glob("variables.data-*"):
        shutil.copy(shard, half / "variables" / shard.name)
    _wait_for(server, "other", "2")
    got = requests.post(f"{server}/v1/models/other:predict", json={"instances": x.tolist()},
                        timeout=30).json()["predictions"]
    reference = exported["v2_model"].predict(x, verbose=0)
    np.testing.assert_allclose(np.asarray(got), reference, atol=1e-5)


# ---------------------------------------------------------------------------- shutdown


def test_sigterm_lets_an_in_flight_request_finish(exported, tmp_path):
    """A 3 s batch timeout holds the request in the server while SIGTERM arrives."""
    proc, url = start_server(exported["out"], tmp_path / "log", "--max-batch-size", "64",
                             "--batch-timeout-us", "3000000")
    x, answer = exported["x"], {}

    def call():
        answer["r"] = requests.post(f"{url}/v1/models/digits:predict",
                                    json={"instances": x.tolist()}, timeout=60)

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(1.0)
    assert stop(proc) == 0
    caller.join(timeout=60)
    assert answer["r"].status_code == 200
    np.testing.assert_allclose(np.asarray(answer["r"].json()["predictions"]),
                               onnx_direct(exported["v1"].path("onnx"), x), atol=1e-5)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/v2/health/live", timeout=5)
