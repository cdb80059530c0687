"""Device set-up and member training: Keras callbacks for early stopping, history and resume."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from kernelib import io


@contextlib.contextmanager
def _quiet_stderr():
    """Silence C-level start-up logging (absl/CUDA probing) written straight to file descriptor 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_tensorflow():
    """Import TensorFlow and probe devices without its start-up noise; Python errors still raise."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _quiet_stderr():
        import tensorflow as tf

        threads = int(os.environ.get("KERNELIB_THREADS", "0"))
        if threads:  # set by the runner for parallel jobs, before TensorFlow's runtime starts
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(threads)
            except RuntimeError:
                pass  # runtime already started in this process: keep its pools
        tf.config.list_physical_devices()
    return tf


def setup(*, seed: int, deterministic: bool = True) -> dict[str, Any]:
    """Seed Python/NumPy/TensorFlow and pick the device path; return what was chosen.

    On a GPU: mixed precision (float16 compute, float32 softmax) and XLA for `fit`.
    Op determinism is enabled on request; on a GPU it may cost speed.
    """
    tf = import_tensorflow()
    import keras

    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    policy = "mixed_float16" if gpus else "float32"
    keras.mixed_precision.set_global_policy(policy)
    return {
        "devices": [f"{d.name} ({d.device_type})" for d in tf.config.list_logical_devices()],
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "gpus": len(gpus),
        "precision": policy,
        "jit_compile": bool(gpus),
        "deterministic": deterministic,
        "seed": seed,
    }


def _atomic_backup_class():
    import keras

    class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
        """`BackupAndRestore` whose checkpoint files are replaced atomically.

        Keras writes `latest.weights.h5` in place, so a kill during the write leaves a file
        h5py cannot open (and the fallback copy is only used for OSError). Here each file is
        written under a temporary name and renamed, so the backup is always a whole epoch.
        """

        def _save_model(self):
            os.makedirs(self.backup_dir, exist_ok=True)
            tmp = os.path.join(self.backup_dir, ".partial.weights.h5")
            self.model.save_weights(tmp, overwrite=True)
            os.replace(tmp, self._weights_path)
            meta = {"epoch": self._current_epoch, "batch": self._last_batch_seen}
            io.write_text(self._training_metadata_path, json.dumps(meta))

    return AtomicBackupAndRestore


def compile_model(model, *, learning_rate: float, jit_compile: bool | str = "auto") -> None:
    """Adam + sparse categorical cross-entropy on the softmax output, with accuracy."""
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )


def tensorboard_callbacks(log_dir: str | Path | None) -> list:
    """`[keras.callbacks.TensorBoard]` writing per-epoch scalars only into `log_dir`; `[]` for None."""
    if log_dir is None:
        return []
    import keras

    return [keras.callbacks.TensorBoard(str(log_dir), histogram_freq=0, write_graph=False,
                                        update_freq="epoch", profile_batch=0)]


def fit(model, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], *,
        out_dir: str | Path, epochs: int, batch_size: int, learning_rate: float, patience: int,
        seed: int = 0, jit_compile: bool | str = "auto", augment: dict | None = None,
        log_dir: str | Path | None = None):
    """Train `model` with early stopping on val loss; write `history.csv` into `out_dir`.

    `augment` (`data.read_augment`) transforms the training batches only, never val.

    Training resumes from the last finished epoch if a previous attempt was killed
    (`keras.callbacks.BackupAndRestore` in `out_dir/backup`). With `log_dir`, TensorBoard
    scalars (loss and metrics per epoch) go there too. Returns the history DataFrame.
    """
    import keras
    import pandas as pd

    from kernelib.data import make_dataset

    AtomicBackupAndRestore = _atomic_backup_class()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    compile_model(model, learning_rate=learning_rate, jit_compile=jit_compile)
    log = out_dir / ".history.partial.csv"
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience,
                                      restore_best_weights=True),
        keras.callbacks.CSVLogger(str(log), append=True),
        AtomicBackupAndRestore(str(out_dir / "backup")),
        *tensorboard_callbacks(log_dir),
    ]
    model.fit(
        make_dataset(*train, batch_size=batch_size, shuffle=True, seed=seed, augment=augment),
        validation_data=make_dataset(*val, batch_size=batch_size),
        epochs=epochs, callbacks=callbacks, verbose=2, shuffle=False,
    )
    # a resumed fit appends to the log; an epoch logged just before a kill may repeat
    history = pd.read_csv(log).drop_duplicates("epoch", keep="last")
    io.write_text(out_dir / "history.csv", history.to_csv(index=False))
    os.remove(log)
    shutil.rmtree(out_dir / "backup", ignore_errors=True)
    return history


def train_members(run, names, splits, *, epochs: int, batch_size: int, learning_rate: float,
                  patience: int, jit_compile: bool | str = "auto",
                  tensorboard: bool = True) -> dict[str, Any]:
    """Build, fit and save each named recipe member of a run, in order; their histories.

    Members are trained in the given order, so a fine-tune comes after the member it starts
    from (the order of `load.members`). A member with a `bag` share trains on that seeded
    subset of the training rows (validation stays whole). With `tensorboard`, each logs to
    `tensorboard/<name>/`.
    """
    from kernelib import members as km
    from kernelib.data import bag_rows, read_augment

    histories, augment = {}, read_augment(run.data)
    for name in names:
        model = km.build_member(run, name, n_classes=splits.n_classes)
        s = km.spec(run, name)
        rows = bag_rows(len(splits.y_train), s.get("bag"), seed=s["seed"])
        histories[name] = fit(model, (splits.x_train[rows], splits.y_train[rows]), splits.val,
                              out_dir=run.member_dir(name), epochs=epochs,
                              batch_size=batch_size, learning_rate=learning_rate,
                              patience=patience, seed=s["seed"], jit_compile=jit_compile,
                              augment=augment,
                              log_dir=run.tensorboard_dir(name) if tensorboard else None)
        km.save_model(model, run.member_model(name))
    return histories


def last_epochs(histories: dict[str, Any]):
    """One row per member: its last logged epoch (after early stopping) and its metrics."""
    import pandas as pd

    return pd.DataFrame({n: h.iloc[-1] for n, h in histories.items()}).T.rename_axis("member")
