"""Image folders are streamed: peak memory of load -> preprocess -> train -> merge on folders of
10k and 40k images, and tf.data's decode throughput.

Each size runs in its own process (peak RSS is per process): the folder is read into an index,
split (its test/ kept), the preprocessing model fitted, one small member trained for an epoch,
the member and an untrained copy merged ("average", "weighted") with the validation and test
predictions computed as the merge stage does. A folder held decoded in memory would grow with
the number of images (the last column says by how much); a streamed one should not. The goal
is a 40k / 10k peak RSS ratio of at most 1.3.

    python bench/data.py [--sizes 10000 40000] [--image-size 48]

The images are Fashion-MNIST's (Debian's dataset-fashion-mnist), written once as PNGs into a
temporary folder with train/ and test/ and resized on the fly to --image-size, RGB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import json, resource, sys, time
import numpy as np
from kernelib import data, inference, merge, params, train, zoo

folder, size = sys.argv[1], int(sys.argv[2])
train.setup(seed=0, deterministic=False)
t0 = time.perf_counter()
ds = data.load_dataset(params.dataset_spec({"kind": "folder", "path": folder,
                                           "image_size": [size, size]}))
t_load = time.perf_counter() - t0
s = data.split(ds, val_fraction=0.1, test_fraction=0.2, seed=0)
t0 = time.perf_counter()
n = sum(len(xb) for xb, _ in data.make_dataset(s.x_train, s.y_train, batch_size=256))
decode = n / (time.perf_counter() - t0)
pre = data.build_preprocessor(s.x_train)
model = zoo.build("mlp", preprocessor=pre, n_classes=s.n_classes, name="mlp_0", seed=0)
other = zoo.build("mlp", preprocessor=pre, n_classes=s.n_classes, name="mlp_1", seed=1)
train.fit(model, s.train, s.val, out_dir=sys.argv[3], epochs=1, batch_size=256,
          learning_rate=1e-3, patience=1, seed=0)
merged = merge.merge_many([model, other], ["average", "weighted"], train=s.train, val=s.val,
                          seed=0)
preds = inference.predict_all({"mlp_0": model, **merged}, {"val": s.x_val, "test": s.x_test})
acc = float((preds["test"]["weighted"].argmax(1) == s.y_test).mean())
print(json.dumps({"rows": len(ds.y), "train": len(s.y_train), "index_s": t_load,
                  "decode_per_s": decode, "test_accuracy": acc,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_folder(root: Path, rows: int) -> Path:
    """`rows` Fashion-MNIST images as PNGs: 1/5 in test/, the rest in train/, by class."""
    from PIL import Image

    from kernelib import data

    ds = data.load_dataset("fashion_mnist", train_rows=rows, seed=0)
    keep = np.flatnonzero(ds.part == "train")
    for i, row in enumerate(keep):
        part = "test" if i % 5 == 0 else "train"
        folder = root / part / f"{ds.y[row]}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(ds.x[row, ..., 0].astype("uint8"), "L").save(folder / f"{i:05d}.png")
    return root


def measure(folder: Path, size: int, tmp: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(size), str(tmp)],
                          capture_output=True, text=True, timeout=3600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 40_000])
    ap.add_argument("--image-size", type=int, default=48)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            t0 = time.perf_counter()
            folder = write_folder(Path(tmp) / f"f{n}", n)
            written = time.perf_counter() - t0
            r = measure(folder, args.image_size, Path(tmp) / f"m{n}")
            r["decoded_mb"] = r["rows"] * args.image_size ** 2 * 3 * 4 / 2 ** 20
            r["write_s"] = written
            rows.append(r)
    print(f"{'images':>7} {'train':>6} {'peak RSS MB':>11} {'decoded would be MB':>19} "
          f"{'decode img/s':>12} {'index s':>7} {'test acc':>8}")
    for r in rows:
        print(f"{r['rows']:>7} {r['train']:>6} {r['peak_rss_mb']:>11.0f} {r['decoded_mb']:>19.0f} "
              f"{r['decode_per_s']:>12.0f} {r['index_s']:>7.1f} {r['test_accuracy']:>8.3f}")
    if len(rows) > 1:
        print(f"peak RSS ratio {rows[-1]['rows']} / {rows[0]['rows']} images: "
              f"{rows[-1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.2f} (goal <= 1.3)")
    print(f"this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
