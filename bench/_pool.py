"""The benches' model: five small members on 28x28 input, merged by `average`, exported.

Fashion-MNIST from Debian's `dataset-fashion-mnist` when installed (the first 6,000 training
rows, 1 epoch each), else scikit-learn's digits upscaled to 28x28. Built once into `work/`
and reused: members as `.keras` files, the merged model, and its export folder (SavedModel,
LiteRT, ONNX, `labels.json`, `exports.json` as the export stage writes them).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

FASHION = Path("/usr/share/datasets/fashion-mnist")
RECIPES = ["mlp", "cnn", "mlp", "cnn", "mlp"]


def data(n: int = 6000) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) as float32 (rows, 28, 28, 1) pixels 0..255."""
    if (FASHION / "train-images-idx3-ubyte.gz").is_file():
        def idx(name: str, offset: int) -> np.ndarray:
            return np.frombuffer(gzip.decompress((FASHION / name).read_bytes()), np.uint8,
                                 offset=offset)

        x = idx("train-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28, 1)[:n]
        y = idx("train-labels-idx1-ubyte.gz", 8)[:n]
        xt = idx("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28, 1)[:2000]
        yt = idx("t10k-labels-idx1-ubyte.gz", 8)[:2000]
        return x.astype("float32"), y.astype("int64"), xt.astype("float32"), yt.astype("int64")
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.kron(d.images, np.ones((4, 4)))[:, 2:30, 2:30, None] * 255 / 16  # 32 -> 28 px
    cut = int(0.8 * len(x))
    return (x[:cut].astype("float32"), d.target[:cut], x[cut:].astype("float32"),
            d.target[cut:])


def build(work: Path) -> dict:
    """Members, merged model and export folder under `work` (built on the first call)."""
    import keras

    from kernelib import data as kdata
    from kernelib import export, io, train, zoo
    from kernelib.merge import merge

    x, y, xt, yt = data()
    paths = [work / "members" / f"{r}_{i}.keras" for i, r in enumerate(RECIPES)]
    train.setup(seed=0, deterministic=False)
    if not all(p.is_file() for p in paths):
        pre = kdata.build_preprocessor(x)
        val = (xt[:500], yt[:500])
        for i, (recipe, path) in enumerate(zip(RECIPES, paths, strict=True)):
            model = zoo.build(recipe, preprocessor=pre, n_classes=10, name=path.stem, seed=i)
            train.fit(model, (x, y), val, out_dir=work / "fit" / path.stem, epochs=1,
                      batch_size=128, learning_rate=2e-3, patience=1, seed=i)
            path.parent.mkdir(parents=True, exist_ok=True)
            model.save(path)
    members = [keras.saving.load_model(p, compile=False) for p in paths]
    merged_path = work / "merged.keras"
    if not merged_path.is_file():
        merge(members, "average", name="pool").save(merged_path)
    import kernelib.merge  # noqa: F401  registers the merge layers for loading

    merged = keras.saving.load_model(merged_path, compile=False)
    out = work / "export"
    if not (out / "exports.json").is_file():
        manifest = export.export(merged, out, ["saved_model", "tflite", "onnx"], name="pool",
                                 test=(xt[:500], yt[:500]), repeats=10, overwrite=True,
                                 class_names=[str(c) for c in range(10)])
        io.write_json(out / "exports.json", manifest.records())  # as 06_export.ipynb does
    return {"members": members, "merged": merged, "export": out, "x": xt}


def export_dir(work: Path) -> Path:
    """The export folder, built first if `work` does not hold it yet (no TensorFlow import
    when it does)."""
    out = work / "export"
    return out if (out / "exports.json").is_file() else build(work)["export"]


def wide_export_dir(work: Path) -> Path:
    """A wide MLP (784-2048-2048-10, 8.4M weights, 1 epoch) exported as `wide`: at batch 1 it
    streams all its weights per row, so unlike the pool it gains from batching."""
    out = work / "wide"
    if (out / "exports.json").is_file():
        return out
    import keras

    from kernelib import export, io, train

    x, y, xt, yt = data()
    train.setup(seed=0, deterministic=False)
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Rescaling(1 / 255),
                              keras.layers.Flatten(),
                              keras.layers.Dense(2048, activation="relu"),
                              keras.layers.Dense(2048, activation="relu"),
                              keras.layers.Dense(10, activation="softmax")], name="wide")
    train.fit(model, (x, y), (xt[:500], yt[:500]), out_dir=work / "fit" / "wide", epochs=1,
              batch_size=128, learning_rate=1e-3, patience=1)
    manifest = export.export(model, out, ["saved_model", "tflite", "onnx"], name="wide",
                             test=(xt[:500], yt[:500]), repeats=10, overwrite=True)
    io.write_json(out / "exports.json", manifest.records())
    return out
