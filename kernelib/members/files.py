"""Member files in every Keras format: `.keras`, legacy `.h5` (both under Keras' safe mode
unless trusted) and SavedModel folders (wrapped with `keras.layers.TFSMLayer`)."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kernelib import io
from kernelib.errors import IncompatibleMembersError, MemberError
from kernelib.members.inside import is_opaque

_ENDPOINTS = ("serve", "serving_default")
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
