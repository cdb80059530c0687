"""Training-time augmentation: the spec the preprocess stage records, and its Keras `Random*`
layers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from kernelib import io
from kernelib.data.dataset import Images

AUGMENT_FILE = "augment.json"


def augment_spec(augment: Any, x_train) -> dict[str, Any] | None:
    """What the preprocess stage records in `data/augment.json` for the training stages: the
    non-default settings of `params.AugmentParams` and the pixel range of the training rows
    (brightness, contrast and erasing act on it). None where nothing is augmented."""
    settings = augment.model_dump(exclude_defaults=True) if hasattr(augment, "model_dump") \
        else dict(augment or {})
    if not settings:
        return None
    if isinstance(x_train, Images):
        value_range = [0.0, 255.0]
    else:
        value_range = [float(np.min(x_train)), float(np.max(x_train))]
    return {"settings": settings, "value_range": value_range}


def save_augment(spec: dict[str, Any] | None, data_dir: str | Path) -> Path:
    return io.write_json(Path(data_dir) / AUGMENT_FILE, spec)


def read_augment(data_dir: str | Path) -> dict[str, Any] | None:
    """The augmentation the preprocess stage recorded (None: none, or an older run folder)."""
    return io.read_json_if_exists(Path(data_dir) / AUGMENT_FILE)


def augmenter(spec: dict[str, Any] | None, *, seed: int):
    """The Keras 3 `Random*` layers for an augmentation spec, each seeded (None for no spec).

    ImageDataGenerator's names map onto: rotation_range (degrees) -> RandomRotation,
    width/height_shift_range -> RandomTranslation, shear_range (degrees) -> RandomShear,
    zoom_range -> RandomZoom, horizontal/vertical_flip -> RandomFlip, brightness_range ->
    RandomBrightness, contrast -> RandomContrast, erasing -> RandomErasing.
    """
    if not spec or not spec.get("settings"):
        return None
    import math

    import keras

    a, lo_hi = spec["settings"], tuple(spec["value_range"])
    L, fill = keras.layers, {"fill_mode": "constant", "fill_value": lo_hi[0]}
    made = []  # (layer class, its arguments), in ImageDataGenerator's order
    if a.get("rotation_range"):
        made.append((L.RandomRotation, {"factor": a["rotation_range"] / 360.0, **fill}))
    if a.get("width_shift_range") or a.get("height_shift_range"):
        made.append((L.RandomTranslation, {"height_factor": a.get("height_shift_range", 0.0),
                                           "width_factor": a.get("width_shift_range", 0.0),
                                           **fill}))
    if a.get("shear_range"):  # RandomShear draws the sign itself
        made.append((L.RandomShear, {"x_factor": min(math.tan(math.radians(a["shear_range"])),
                                                     1.0), **fill}))
    if a.get("zoom_range"):
        made.append((L.RandomZoom, {"height_factor": a["zoom_range"], **fill}))
    flips = [m for m in ("horizontal", "vertical") if a.get(f"{m}_flip")]
    if flips:
        made.append((L.RandomFlip, {"mode": "_and_".join(flips)}))
    if a.get("brightness_range"):
        low, high = a["brightness_range"]
        made.append((L.RandomBrightness, {"factor": (low - 1.0, high - 1.0),
                                          "value_range": lo_hi}))
    if a.get("contrast"):
        made.append((L.RandomContrast, {"factor": a["contrast"], "value_range": lo_hi}))
    if a.get("erasing"):
        made.append((L.RandomErasing, {"factor": a["erasing"], "value_range": lo_hi}))
    # a seed each, so switching one setting on does not change the draws of the others
    order = ["RandomRotation", "RandomTranslation", "RandomShear", "RandomZoom", "RandomFlip",
             "RandomBrightness", "RandomContrast", "RandomErasing"]
    layers = [cls(**kw, seed=seed + 1000 * (1 + order.index(cls.__name__))) for cls, kw in made]
    return keras.Sequential(layers, name="augment")


def augment_draws(x, spec: dict[str, Any] | None, *, draws: int = 4, seed: int = 0) -> np.ndarray:
    """`draws` augmented copies of the rows `x` as (draws + 1, rows, H, W, C): the originals
    first, then one fresh draw per copy (the preview grid of the preprocess notebook)."""
    x = np.asarray(x, dtype="float32")
    layer = augmenter(spec, seed=seed)
    out = [x] + [np.asarray(layer(x, training=True)) if layer is not None else x
                 for _ in range(draws)]
    return np.stack(out)
