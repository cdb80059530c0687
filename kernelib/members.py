"""Members: load Keras files in every format, build each member's front, check, tabulate.

A member file may be a Keras 3 `.keras` archive, a legacy `.h5` file (both under Keras'
safe mode unless the member is trusted) or a SavedModel folder (wrapped with
`keras.layers.TFSMLayer`; such a member cannot be looked inside, so it joins only the
strategies that need its predictions). `adapt` puts a front in the graph (resize,
grey<->RGB, value scaling to the member's `preprocess` convention), a softmax for a
member that outputs logits, and a fixed reordering of its classes to the dataset's, so
every member takes the dataset's raw input and predicts the dataset's classes in order.
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kernelib import io
from kernelib.errors import IncompatibleMembersError, MemberError

# keras.applications' input conventions (keras/src/applications/imagenet_utils.py), each
# applied to images on the 0..255 scale: none = raw values as given.
PREPROCESS = ("none", "rescale", "tf", "caffe", "torch")
OUTPUTS = ("probabilities", "logits")
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
_GREY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as tf.image.rgb_to_grayscale
# Keras augmentation layers that are not named Random* (those all are).
_AUGMENTATION = ("AugMix", "CutMix", "MixUp", "RandAugment", "Solarization")
_ENDPOINTS = ("serve", "serving_default")
_CLASS_ORDER = "_class_order"  # the suffix of adapt's output reordering layer
_WHAT = "a .keras file, a legacy .h5 file or a SavedModel folder"


@dataclass
class Member:
    """A trained classifier mapping the shared raw input to class probabilities."""

    name: str
    model: Any  # keras.Model
    path: Path | None = None
    source: str = "trained"

    @property
    def opaque(self) -> bool:
        """True when it cannot be looked inside (a SavedModel): prediction-level strategies only."""
        return is_opaque(self.model)


# ---------------------------------------------------------------------------- files


def file_kind(path: str | Path, name: str | None = None) -> str:
    """'keras', 'h5' or 'saved_model' for a member file; MemberError for anything else."""
    path = Path(path)
    who = f"member '{name or path.stem}'"
    if not path.exists():
        raise MemberError(f"member file not found: expected {_WHAT}, received '{path}'. Check "
                          "the member's 'path' (relative paths are read from the config's folder).")
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "saved_model"
        raise MemberError(f"{who}: '{path}' is a folder without saved_model.pb; expected "
                          f"{_WHAT}. Export the model with model.export(path) or give its file.")
    if path.suffix == ".keras":
        if not zipfile.is_zipfile(path):
            raise MemberError(f"{who}: '{path}' is not a valid .keras archive (a .keras file is "
                              "a zip); the file may be truncated or corrupted.")
        return "keras"
    if path.suffix in (".h5", ".hdf5"):
        import h5py

        if not h5py.is_hdf5(path):
            raise MemberError(f"{who}: '{path}' is not a valid HDF5 file; the file may be "
                              "truncated or corrupted. Re-save it with model.save('name.keras').")
        return "h5"
    raise MemberError(f"{who}: expected {_WHAT}, received '{path.name}'. Save the model "
                      "with model.save('name.keras') (or give its .h5 file or SavedModel folder).")


def load_member(path: str | Path, *, name: str | None = None, trust: bool = False) -> Member:
    """Load a member from a `.keras`, `.h5` file or SavedModel folder.

    Keras' safe mode stays on unless `trust=True` (a file with Lambda layers needs it).
    """
    import keras

    path = Path(path)
    kind = file_kind(path, name)
    who = name or path.stem
    if kind == "saved_model":
        model = _wrap_saved_model(path, who)
    else:
        try:
            model = keras.saving.load_model(path, compile=False, safe_mode=not trust)
        except Exception as err:  # Keras raises many types here; the user needs one clear message
            raise _load_error(who, path, err, trust) from err
    model.name = name or model.name
    return Member(name=model.name, model=model, path=path, source="file")


def _load_error(who: str, path: Path, err: Exception, trust: bool) -> MemberError:
    text = " ".join(str(err).split())
    if not trust and ("safe_mode" in text or "unsafe" in text):
        return MemberError(
            f"member '{who}': '{path}' holds Python code (a Lambda layer or similar) that "
            f"Keras' safe mode refuses to run. Keras said: {type(err).__name__}: {text} "
            f"If you trust this file, set 'trust: true' on member '{who}' in load.members "
            "(Python API: load_member(path, trust=True)); otherwise rebuild the model "
            "without Lambda layers."
        )
    return MemberError(f"member '{who}': could not load '{path}' with Keras "
                       f"({type(err).__name__}: {text})")


def _wrap_saved_model(path: Path, name: str):
    """A functional model around the SavedModel's serving endpoint (`serve` or `serving_default`)."""
    import keras
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as err:  # a damaged folder
        raise _load_error(name, path, err, True) from err
    endpoint = next((e for e in _ENDPOINTS if e in loaded.signatures), None)
    if endpoint is None:
        raise MemberError(
            f"member '{name}': the SavedModel '{path}' has no serving signature; expected one "
            f"of {list(_ENDPOINTS)}, received {sorted(loaded.signatures)}. Export it with "
            "model.export(path) (Keras 3) or tf.saved_model.save(model, path, signatures=...)."
        )
    sig = loaded.signatures[endpoint]
    ins = tf.nest.flatten(sig.structured_input_signature)
    outs = tf.nest.flatten(sig.structured_outputs)
    if len(ins) != 1 or len(outs) != 1:
        raise IncompatibleMembersError(
            f"member '{name}' must have one input and one output; its SavedModel signature "
            f"'{endpoint}' takes {len(ins)} inputs and returns {len(outs)} outputs."
        )
    inputs = keras.Input(shape=tuple(ins[0].shape[1:]), name=f"{name}_input")
    out = keras.layers.TFSMLayer(str(path), call_endpoint=endpoint, name=f"{name}_saved_model")(
        inputs)
    out = next(iter(out.values())) if isinstance(out, dict) else out
    return keras.Model(inputs, out, name=name)


def load_keras(path: str | Path, *, trust: bool = False):
    """Load a `.keras` or `.h5` file kernelib wrote (a member, merged or exported model).

    Safe mode stays on, except that a file whose only unsafe layers are `TFSMLayer`s (the
    SavedModel members kernelib copied into the run) loads; `trust=True` loads anything.
    """
    import keras

    from kernelib.layers import CUSTOM_OBJECTS

    path = Path(path)
    if not trust:
        config = _stored_config(path)
        trust = '"TFSMLayer"' in config and '"Lambda"' not in config
    # the legacy .h5 loader knows only built-in layers by name: TFSMLayer is keras.layers'
    return keras.saving.load_model(path, compile=False, safe_mode=not trust,
                                   custom_objects={"TFSMLayer": keras.layers.TFSMLayer,
                                                   **CUSTOM_OBJECTS})


def _stored_config(path: Path) -> str:
    """The model config JSON inside a `.keras` (zip) or legacy `.h5` file."""
    if path.suffix in (".h5", ".hdf5"):
        import h5py

        with h5py.File(path, "r") as f:
            config = f.attrs.get("model_config", "")
        return config.decode() if isinstance(config, bytes) else str(config)
    with zipfile.ZipFile(path) as z:
        return z.read("config.json").decode()


def save_model(model, path: str | Path) -> Path:
    """Save a Keras model to a `.keras` file atomically."""
    path = Path(path)
    with io.atomic_path(path) as tmp:
        model.save(tmp)
    return path


def save_member(member: Member, path: str | Path) -> Path:
    """Save the member's model to a `.keras` file atomically."""
    member.path = save_model(member.model, path)
    return member.path


# ---------------------------------------------------------------------------- inside a model


def walk_layers(model):
    """Every layer inside `model`, nested models and their layers included (depth first)."""
    for layer in getattr(model, "layers", []):
        yield layer
        yield from walk_layers(layer)


def is_opaque(model) -> bool:
    """True when `model` holds a `TFSMLayer` (a SavedModel kernelib cannot look inside)."""
    return any(type(layer).__name__ == "TFSMLayer" for layer in walk_layers(model))


def is_augmentation(layer) -> bool:
    """A Keras augmentation layer (training-only: Random*, AugMix, CutMix, MixUp, ...)."""
    cls = type(layer)
    return cls.__module__.startswith("keras") and (
        cls.__name__.startswith("Random") or cls.__name__ in _AUGMENTATION)


def augmentation_layers(model) -> list[str]:
    """Names of the augmentation layers inside `model` (nested models included)."""
    return [layer.name for layer in walk_layers(model) if is_augmentation(layer)]


def without_augmentation(model):
    """`model` with its augmentation layers (nested ones too) replaced by identities.

    The other layers are shared, not copied (same weights). A model without augmentation
    comes back as it is.
    """
    import keras

    if not any(is_augmentation(layer) for layer in walk_layers(model)):
        return model

    def replace(layer):
        return keras.layers.Identity(name=layer.name) if is_augmentation(layer) else layer

    try:
        stripped = keras.models.clone_model(model, clone_function=replace, recursive=True)
    except Exception as err:  # subclassed models cannot be cloned layer by layer
        raise MemberError(
            f"member '{model.name}' holds augmentation layers, which are training-only, and "
            f"kernelib could not remove them ({type(err).__name__}: {str(err).splitlines()[0]}). "
            "Save the member without its augmentation layers (they belong to the data pipeline)."
        ) from err
    stripped.name = model.name
    return stripped


def final_layer(model):
    """The layer that computes `model`'s output, looking into nested models."""
    layer = model.outputs[0]._keras_history.operation
    return final_layer(layer) if getattr(layer, "outputs", None) else layer


def output_kind(model) -> str | None:
    """'probabilities' (a final softmax), 'logits' (a final linear layer) or None (cannot tell)."""
    if getattr(model, "outputs", None) is None:
        return None
    layer = final_layer(model)
    if type(layer).__name__ == "Softmax":
        return "probabilities"
    activation = getattr(layer, "activation", None)
    name = getattr(activation, "__name__", None)
    return {"softmax": "probabilities", "linear": "logits"}.get(name)


def features(model, name: str | None = None):
    """`model` up to its penultimate features: the input of its final classifier layer.

    Nested models (an adapted member, a member wrapping a backbone) are looked into, and
    final layers without weights (a `Softmax` after logits) or adapt's class reordering are
    stepped over. For a flat model the result shares its layers (same weights).
    """
    import keras

    name = name or f"{model.name}_features"
    tensor, nested = _penultimate(model)
    if nested is None:
        return keras.Model(model.inputs, tensor, name=name)
    inputs = keras.Input(shape=tuple(model.input_shape[1:]), name=f"{name}_input")
    x = inputs
    if tensor is not model.inputs[0]:  # layers between the input and the nested model
        x = keras.Model(model.inputs, tensor, name=f"{name}_front")(x, training=False)
    x = features(nested, f"{name}_inner")(x, training=False)
    return keras.Model(inputs, x, name=name)


def _penultimate(model):
    """(tensor, None): the input of `model`'s final weighted layer; or (tensor, nested): a
    nested model computes the output from `tensor`."""
    tensor = model.outputs[0]
    while True:
        history = tensor._keras_history
        op = history.operation
        (inner,) = op._inbound_nodes[history.node_index].input_tensors
        if getattr(op, "outputs", None):
            return inner, op
        if op.weights and not op.name.endswith(_CLASS_ORDER):
            return inner, None
        tensor = inner


# ---------------------------------------------------------------------------- fronts


def input_shape_of(model, name: str) -> tuple[int, ...]:
    """The member's one input shape (without the batch axis); refuse several inputs/outputs."""
    if getattr(model, "inputs", None) is None:
        raise MemberError(f"member '{name}' is a subclassed model whose input is unknown; wrap "
                          "it first: inputs = keras.Input(shape); "
                          "model = keras.Model(inputs, model(inputs)).")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise IncompatibleMembersError(
            f"member '{name}' must have one input and one output; received "
            f"{len(model.inputs)} inputs {model.input_shape} and {len(model.outputs)} outputs "
            f"{model.output_shape}. Wrap it in a model with one image input and one output.")
    return tuple(model.input_shape[1:])


def class_order(member_classes: Sequence[str] | None, dataset_classes: Sequence[str] | None,
                name: str) -> list[int] | None:
    """Index into the member's outputs for each dataset class (None: already in order)."""
    if member_classes is None:
        return None
    member_classes, dataset_classes = [str(c) for c in member_classes], list(dataset_classes or [])
    if sorted(member_classes) != sorted(dataset_classes) or len(set(member_classes)) != len(
            member_classes):
        raise IncompatibleMembersError(
            f"member '{name}': 'class_names' must be the dataset's classes, each once, in the "
            f"order the member predicts them; received {member_classes}, the dataset has "
            f"{dataset_classes}. Fix 'class_names' or drop the member.")
    order = [member_classes.index(c) for c in dataset_classes]
    return None if order == list(range(len(order))) else order


def _scaling(preprocess: str, value_range: tuple[float, float], channels: int, name: str):
    """(scale, offset) per channel mapping raw values to the member's convention, or None."""
    lo, hi = (float(v) for v in value_range)
    if preprocess == "none":
        return None
    if preprocess in ("caffe", "torch") and channels != 3:
        raise MemberError(f"member '{name}': preprocess '{preprocess}' is an RGB convention; the "
                          f"member takes {channels} channels. Use 'rescale', 'tf' or 'none'.")
    unit = 1.0 / (hi - lo)  # raw -> 0..1
    if preprocess == "rescale":
        return [unit] * channels, [-lo * unit] * channels
    if preprocess == "tf":
        return [2 * unit] * channels, [-2 * lo * unit - 1] * channels
    if preprocess == "torch":
        return ([unit / s for s in _TORCH_STD],
                [(-lo * unit - m) / s for m, s in zip(_TORCH_MEAN, _TORCH_STD, strict=True)])
    # caffe: 0..255 BGR minus the ImageNet means (the channel flip is a layer of its own)
    return [255 * unit] * 3, [-255 * lo * unit - m for m in _CAFFE_MEAN_BGR]


def _fixed_dense(matrix: np.ndarray, name: str):
    """A frozen Dense layer on the last axis holding `matrix` (a channel mix or a permutation)."""
    import keras

    layer = keras.layers.Dense(matrix.shape[1], use_bias=False, trainable=False, name=name)
    layer.build((None, matrix.shape[0]))
    layer.set_weights([matrix.astype("float32")])
    return layer


def front_layers(raw_shape: tuple[int, ...], member_shape: tuple[int, ...], *, preprocess: str,
                 value_range: tuple[float, float], name: str) -> list[Any]:
    """The layers that turn the dataset's raw images into what the member takes."""
    import keras

    if preprocess not in PREPROCESS:
        raise MemberError(f"member '{name}': 'preprocess' must be one of {list(PREPROCESS)}; "
                          f"received {preprocess!r}")
    if raw_shape == member_shape and preprocess == "none":
        return []
    if len(raw_shape) != 3 or len(member_shape) != 3 or None in member_shape[:2]:
        raise IncompatibleMembersError(
            f"member '{name}' takes inputs of shape {member_shape}, which kernelib cannot build "
            f"from the dataset's raw input {raw_shape}: it adapts images (height, width, "
            "channels) only, by resizing, grey<->RGB and value scaling. Retrain the member on "
            "this data's input or drop it from 'members'.")
    (h, w, c), (mh, mw, mc) = raw_shape, member_shape
    if {c, mc} - {1, 3} and c != mc:
        raise IncompatibleMembersError(
            f"member '{name}' takes {mc} channels; the data has {c}. kernelib converts grey "
            "(1) and RGB (3) only. Retrain the member or drop it from 'members'.")
    layers = []
    if c == 3 and mc == 1:
        layers.append(_fixed_dense(np.array(_GREY)[:, None], f"{name}_to_grey"))
    if (h, w) != (mh, mw):
        if mh % h == 0 and mw % w == 0 and mh // h == mw // w:
            layers.append(keras.layers.UpSampling2D(mh // h, interpolation="bilinear",
                                                    name=f"{name}_resize"))
        else:
            layers.append(keras.layers.Resizing(mh, mw, name=f"{name}_resize"))
    if c == 1 and mc == 3:
        layers.append(_fixed_dense(np.ones((1, 3)), f"{name}_to_rgb"))
    if preprocess == "caffe":
        layers.append(_fixed_dense(np.eye(3)[:, ::-1], f"{name}_to_bgr"))
    scaling = _scaling(preprocess, value_range, mc, name)
    if scaling:
        layers.append(keras.layers.Rescaling(scaling[0], offset=scaling[1],
                                             name=f"{name}_{preprocess}"))
    return layers


def adapt(model, raw_input_shape: Sequence[int], *, preprocess: str = "none",
          class_names: Sequence[str] | None = None,
          dataset_class_names: Sequence[str] | None = None, output: str | None = None,
          value_range: tuple[float, float] = (0.0, 255.0), name: str | None = None):
    """`model` behind a front that takes the dataset's raw input and predicts its classes in order.

    The front resizes to the member's input size, converts grey<->RGB, scales raw values
    (in `value_range`) to the member's `preprocess` convention (`keras.applications`':
    rescale = 0..1, tf = -1..1, caffe = BGR minus ImageNet means, torch = ImageNet mean/std;
    none = the raw values), adds a softmax when `output="logits"` (None: detected from the
    model's final layer) and reorders outputs from the member's `class_names` to
    `dataset_class_names`. Augmentation layers are removed and every layer runs with
    `training=False`. A model that needs none of this comes back without its augmentation.

    Example::

        cnn = members.adapt(keras.saving.load_model("cnn.keras"), (8, 8, 1),
                            preprocess="rescale", class_names=["1", "0", ...],
                            dataset_class_names=splits.class_names, value_range=(0, 16))
    """
    import keras

    name = name or model.name
    if output not in (None, *OUTPUTS):
        raise MemberError(f"member '{name}': 'output' must be one of {list(OUTPUTS)}; "
                          f"received {output!r}")
    raw_shape, shape = tuple(raw_input_shape), input_shape_of(model, name)
    model = without_augmentation(model)
    front = front_layers(raw_shape, shape, preprocess=preprocess, value_range=value_range,
                         name=name)
    softmax = (output or output_kind(model)) == "logits"
    order = class_order(class_names, dataset_class_names, name)
    if class_names is not None and len(class_names) != model.output_shape[-1]:
        raise IncompatibleMembersError(
            f"member '{name}' predicts {model.output_shape[-1]} classes but its 'class_names' "
            f"lists {len(class_names)}. Give one name per output, in the member's order.")
    if not front and not softmax and order is None:
        model.name = name
        return model
    inputs = keras.Input(shape=raw_shape, name=f"{name}_image")
    x = inputs
    for layer in front:
        # Resizing defaults to training=True, which a nested backbone then inherits (batch
        # norm in training mode: the exported SavedModel disagreed by 0.4): always say False
        x = layer(x, training=False)
    model.name = f"{name}_core"
    x = model(x, training=False)
    if softmax:
        x = keras.layers.Softmax(dtype="float32", name=f"{name}_softmax")(x)
    if order is not None:
        x = _fixed_dense(np.eye(len(order))[order].T, f"{name}{_CLASS_ORDER}")(x)
    return keras.Model(inputs, x, name=name)



# ---------------------------------------------------------------------------- checks


def as_models(members: Sequence[Any]) -> list[Any]:
    """Accept `Member` objects or bare `keras.Model`s; return the models, named uniquely.

    Repeated names (two `keras.models.clone_model` copies, one file loaded twice) are
    renamed as Keras names layers, `sequential`, `sequential_1`, ..., with a warning.
    """
    models = [m.model if isinstance(m, Member) else m for m in members]
    names = [m.name for m in members]
    if len({id(m) for m in models}) < len(models):
        raise IncompatibleMembersError(
            f"the same model object is given more than once (names {names}); pass distinct "
            "members (load the file again, or keras.models.clone_model with its weights).")
    unique, renamed = [], []
    for n in names:
        new, i = n, 0
        while new in unique:
            i += 1
            new = f"{n}_{i}"
        unique.append(new)
        if new != n:
            renamed.append(f"'{n}' -> '{new}'")
    if renamed:
        warnings.warn(f"member names must be unique (they name the merged model's layers); "
                      f"renamed {', '.join(renamed)}.", stacklevel=2)
    for model, member, name in zip(models, members, unique, strict=True):
        model.name = name
        if isinstance(member, Member):
            member.name = name
    return models


def probe_rows(input_shape: Sequence[int], value_range: tuple[float, float] = (0.0, 1.0), *,
               rows: int = 8, seed: int = 0) -> np.ndarray:
    """Seeded uniform rows in `value_range`: enough to see NaN or non-probability outputs."""
    lo, hi = value_range
    return np.random.default_rng(seed).uniform(lo, hi, (rows, *input_shape)).astype("float32")


def check_outputs(model, probe: np.ndarray, name: str | None = None) -> None:
    """Refuse a member whose outputs on `probe` are NaN/infinite or not class probabilities."""
    name = name or model.name
    p = np.asarray(model(probe, training=False), dtype="float64")
    if not np.isfinite(p).all():
        raise IncompatibleMembersError(
            f"member '{name}' outputs NaN or infinite values on sample input rows (expected "
            "class probabilities); its weights are probably NaN (a diverged training or a "
            "damaged file). Retrain it, or give another file.")
    if not (np.all(p >= -1e-6) and np.allclose(p.sum(axis=-1), 1.0, atol=1e-3)):
        raise IncompatibleMembersError(
            f"member '{name}' must output class probabilities; its outputs on sample rows "
            f"sum to {p.sum(axis=-1)[:3].round(3).tolist()}... If they are logits, declare "
            f"'output: logits' on the member (Python API: adapt(..., output='logits')); "
            "otherwise add a softmax layer to its end.")


def check_compatible(members: Sequence[Any], *, input_shape: tuple[int, ...] | None = None,
                     n_classes: int | None = None, probe: np.ndarray | None = None) -> None:
    """Refuse members that disagree on input shape or class count, or do not output probabilities.

    `input_shape`/`n_classes`, when given, are what the data needs; otherwise the first
    member sets them. `probe` (a few input rows) checks that outputs are probabilities.
    """
    models = as_models(members)
    for m in models:
        input_shape_of(m, m.name)
    ref_in = tuple(input_shape) if input_shape else tuple(models[0].input_shape[1:])
    ref_out = n_classes or models[0].output_shape[-1]
    what = "the data" if input_shape else f"member '{models[0].name}'"
    for m in models:
        shape = tuple(m.input_shape[1:])
        if shape != ref_in:
            raise IncompatibleMembersError(
                f"all members must take the same input shape; member '{m.name}' takes {shape}, "
                f"{what} needs {ref_in}. Put a front on it (members.adapt, or 'preprocess' in "
                "the member spec), retrain it on this data, or drop it from 'members'."
            )
        k = m.output_shape[-1]
        if k != ref_out:
            raise IncompatibleMembersError(
                f"all members must predict the same classes; member '{m.name}' predicts {k} "
                f"classes, {what} has {ref_out}. Retrain it or drop it from 'members'."
            )
        if probe is not None:
            check_outputs(m, probe[:8], m.name)


def count_params(model) -> int:
    return int(sum(int(np.prod(w.shape)) for w in model.weights))


def member_table(members: Sequence[Member]):
    """One row per member: source, parameters, file size, input shape, classes."""
    import pandas as pd

    rows = []
    for m in members:
        rows.append({
            "member": m.name,
            "source": m.source,
            "params": count_params(m.model),
            "trainable_params": int(sum(int(np.prod(w.shape)) for w in m.model.trainable_weights)),
            "file_kb": round(io.size_bytes(m.path) / 1024, 1) if m.path and m.path.exists() else None,
            "input_shape": str(tuple(m.model.input_shape[1:])),
            "classes": int(m.model.output_shape[-1]),
            "opaque": m.opaque,
        })
    return pd.DataFrame(rows).set_index("member")


# ---------------------------------------------------------------------------- a run's members


def from_spec(spec: Any, *, input_shape: tuple[int, ...], class_names: Sequence[str],
              value_range: tuple[float, float], path: str | Path | None = None) -> Member:
    """A member file of the config (`params.MemberSpec`), adapted to the data and checked.

    `path` overrides `spec.path` (the run's copy of a SavedModel folder).
    """
    member = load_member(path or spec.path, name=spec.name, trust=spec.trust)
    model = adapt(member.model, input_shape, preprocess=spec.preprocess,
                  class_names=spec.class_names, dataset_class_names=class_names,
                  output=spec.output, value_range=value_range, name=spec.name)
    check_compatible([model], input_shape=input_shape, n_classes=len(class_names),
                     probe=probe_rows(input_shape, value_range))
    member.model = model
    return member


def preflight(specs: Sequence[Any], info: dict[str, Any], *,
              inside: dict[str, Sequence[str] | None] | None = None) -> None:
    """Before any run folder exists: every member file loads, adapts and outputs probabilities.

    `info` is `data.dataset_info(...)` (input shape, classes, value range). `inside` maps
    each strategy of the run that looks inside members (concat, soup) to the member names
    it uses (None = all): a SavedModel member among them is refused.
    """
    from kernelib.errors import MergeError

    for spec in specs:
        if not spec.path:
            continue
        member = from_spec(spec, **_data_facts(info))
        uses = [s for s, names in (inside or {}).items() if names is None or spec.name in names]
        if member.opaque and uses:
            option = {"concat": "merge.concat_members", "soup": "merge.soup_ingredients"}
            raise MergeError(
                f"strategy '{uses[0]}' looks inside its members; member '{spec.name}' is a "
                "SavedModel, which kernelib cannot look inside. It can join average, vote, "
                f"weighted, select, stacking and distill: list the other members in "
                f"{option.get(uses[0], uses[0])}, or give it as a .keras file.")


def _data_facts(info: dict[str, Any]) -> dict[str, Any]:
    k = int(info["n_classes"])
    return {"input_shape": tuple(info["input_shape"]),
            "class_names": [str(c) for c in info.get("class_names") or range(k)],
            "value_range": tuple(info.get("value_range") or (info.get("min", 0.0),
                                                             info.get("max", 255.0)))}


def register(specs: Sequence[Any], run, *, input_shape: tuple[int, ...], n_classes: int,
             probe: np.ndarray | None = None):
    """Record the run's members in `members/members.json`; adapt and copy members given as files.

    `specs` are `params.MemberSpec`s; `run` is the `RunDir` (its data card, written first,
    gives the class names and value range). A SavedModel folder is copied into the run.
    Returns the member table.
    """
    import shutil

    import pandas as pd

    card = io.read_json(run.data_card) if run.data_card.exists() else {}
    facts = _data_facts({"input_shape": input_shape, "n_classes": n_classes, **card})
    rows = []
    for spec in specs:
        row = {"name": spec.name, "recipe": spec.recipe, "seed": spec.seed,
               "source": "file" if spec.path else "recipe", "given_path": spec.path,
               **spec.model_dump(include={"finetune_from", "image_size", "weights", "trainable",
                                          "preprocess", "class_names", "output", "trust",
                                          "bag"})}
        if spec.path:
            path = spec.path
            if file_kind(path, spec.name) == "saved_model":
                path = run.member_dir(spec.name) / "saved_model"
                with io.atomic_path(path) as tmp:
                    shutil.copytree(spec.path, tmp)
            member = from_spec(spec, path=path, **facts)
            if probe is not None:
                check_outputs(member.model, probe[:8], spec.name)
            save_member(member, run.member_model(spec.name))
            row["params"] = count_params(member.model)
            row["opaque"] = member.opaque
        rows.append(row)
    io.write_json(run.members_spec, rows)
    return pd.DataFrame(rows).set_index("name")


def read_specs(run) -> list[dict[str, Any]]:
    """The member list written by the load stage."""
    return io.read_json(run.require(run.members_spec, "load"))


def load_run_members(run) -> list[Member]:
    """Every member of a run, in the order of `members.json` (trained or given)."""
    out = []
    for spec in read_specs(run):
        stage = "train" if spec["source"] == "recipe" else "load"
        path = run.require(run.member_model(spec["name"]), stage)
        model = load_keras(path, trust=bool(spec.get("trust")))
        model.name = spec["name"]
        out.append(Member(spec["name"], model, path=path, source=spec["source"]))
    return out


def spec(run, name: str) -> dict[str, Any]:
    """One member's entry of `members/members.json`."""
    specs = read_specs(run)
    for s in specs:
        if s["name"] == name:
            return s
    raise MemberError(f"member '{name}' is not in this run; members: {[s['name'] for s in specs]}")


def to_train(run, name: str | None = None) -> list[str]:
    """`[name]` (checked to be a recipe member), or every recipe member of the run in order."""
    specs = read_specs(run)
    if name is None:
        return [s["name"] for s in specs if s.get("recipe")]
    spec(run, name)
    return [name]


def build_member(run, name: str, *, n_classes: int):
    """The member to train, behind the run's preprocessing model.

    A fresh initialisation from its recipe, or, for a spec with `finetune_from`, the base
    member's trained weights (the base is trained earlier in the run: members train in
    `load.members` order).
    """
    import keras

    from kernelib import zoo

    s = spec(run, name)
    if not s.get("recipe"):
        raise MemberError(f"member '{name}' was given as a file ({s.get('given_path')}); it has "
                          "no recipe to train. Train only recipe members.")
    preprocessor = keras.saving.load_model(run.require(run.preprocessor, "preprocess"))
    card = io.read_json(run.data_card) if run.data_card.exists() else {}
    options = {"image_size": s.get("image_size"), "trainable": s.get("trainable", True),
               "value_range": _data_facts({"n_classes": n_classes, "input_shape": (),
                                           **card})["value_range"]}
    if s.get("finetune_from"):
        base = load_keras(run.require(run.member_model(s["finetune_from"]), "train"))
        return zoo.finetune(base, s["recipe"], preprocessor=preprocessor,
                            n_classes=n_classes, name=name, seed=s["seed"], **options)
    return zoo.build(s["recipe"], preprocessor=preprocessor, n_classes=n_classes, name=name,
                     seed=s["seed"], weights=s.get("weights"), **options)


def histories(run) -> dict[str, Any]:
    """Training histories (DataFrames) of the run's trained members, by name."""
    import pandas as pd

    out = {}
    for s in read_specs(run):
        path = run.member_dir(s["name"]) / "history.csv"
        if path.exists():
            out[s["name"]] = pd.read_csv(path)
    return out
