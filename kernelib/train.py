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


# The tf.distribute strategy `setup` chose for this process. TensorFlow wants one strategy per
# process, created before any other op (MultiWorkerMirroredStrategy refuses otherwise), so it is
# process state, like the mixed-precision policy `setup` also sets.
_strategy = None


def make_strategy(distribution: str, tf=None):
    """The `tf.distribute` strategy for `train.distribution`, or None for one device.

    `mirrored` mirrors over every GPU (over the logical CPU devices when there is no GPU and
    the CPU was split, as tests do); `auto` is `mirrored` when more than one GPU is visible;
    `multi_worker` is `MultiWorkerMirroredStrategy` configured by the TF_CONFIG variable.
    """
    from kernelib.errors import ConfigError

    tf = tf or import_tensorflow()
    if distribution == "multi_worker":  # first: before anything starts TensorFlow's runtime
        if not os.environ.get("TF_CONFIG"):
            raise ConfigError(
                "train.distribution 'multi_worker' needs the TF_CONFIG environment variable "
                "(the cluster's workers and this process's task); received none. Set it on "
                "every worker (see README 'Several GPUs'), or use 'mirrored' on one machine.")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if distribution == "none" or (distribution == "auto"
                                  and len(tf.config.list_physical_devices("GPU")) < 2):
        return None
    if distribution in ("mirrored", "auto"):
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus or tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    raise ConfigError(f"unknown train.distribution {distribution!r}; valid: none, mirrored, "
                      "multi_worker, auto")


def strategy_scope():
    """The chosen strategy's scope (build and compile models in it), or a no-op context."""
    return _strategy.scope() if _strategy is not None else contextlib.nullcontext()


def strategy_name() -> str | None:
    """The public name of the chosen strategy (TensorFlow's classes behind them differ)."""
    if _strategy is None:
        return None
    import tensorflow as tf

    if isinstance(_strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "MultiWorkerMirroredStrategy"
    return type(_strategy).__name__


def replicas() -> int:
    """Replicas in sync under the chosen strategy (1 without one): the global batch factor."""
    return _strategy.num_replicas_in_sync if _strategy is not None else 1


def is_chief() -> bool:
    """Whether this process writes the results: always, except a non-chief multi-worker task."""
    if _strategy is None or not hasattr(_strategy, "cluster_resolver"):
        return True
    resolver = _strategy.cluster_resolver
    return resolver.task_type in (None, "chief") or (
        resolver.task_type == "worker" and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict())


def setup(*, seed: int, deterministic: bool = True, distribution: str = "none") -> dict[str, Any]:
    """Seed Python/NumPy/TensorFlow and pick the device path; return what was chosen.

    On a GPU: mixed precision (float16 compute, float32 softmax) and XLA for `fit`.
    Op determinism is enabled on request; on a GPU it may cost speed. `distribution` picks the
    `tf.distribute` strategy (see `make_strategy`); the result records it and its replicas.
    """
    global _strategy
    tf = import_tensorflow()
    import keras

    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    # starts the runtime: after memory growth, before anything else (collective ops refuse)
    _strategy = make_strategy(distribution, tf)
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
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
        "distribution": {"strategy": strategy_name(),
                         "replicas": replicas()},
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


def _build_for_multi_worker(model, data: tuple[np.ndarray, np.ndarray]) -> None:
    """Under MultiWorkerMirroredStrategy, build the compiled model from one local batch.

    Keras 3.15's `fit` first reduces a distributed batch with `strategy.reduce`, which
    MultiWorkerMirroredStrategy refuses for a nested batch ("unsupported type PerReplica",
    keras-team/keras#20585); the build only needs the shapes, so give it a plain batch and
    let `fit` skip that step.
    """
    if strategy_name() != "MultiWorkerMirroredStrategy":
        return
    from keras.src.backend.tensorflow import trainer

    batch = (data[0][:2], data[1][:2])
    with _strategy.scope():
        model._symbolic_build(data_batch=batch)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    if not getattr(trainer.reduce_per_replica, "kernelib_patched", False):
        # the same issue: a train step's scalar logs are mean-reduced along axis 0
        original = trainer.reduce_per_replica

        def reduce_per_replica(values, strategy, reduction):
            if reduction not in ("auto", "mean") or strategy is not _strategy:
                return original(values, strategy, reduction)

            def mean(v):
                rank = strategy.experimental_local_results(v)[0].shape.rank
                return strategy.reduce("MEAN", v, axis=0 if rank else None)

            from keras.src import tree

            return tree.map_structure(mean, values)

        reduce_per_replica.kernelib_patched = True
        trainer.reduce_per_replica = reduce_per_replica


def fit(model, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], *,
        out_dir: str | Path, epochs: int, batch_size: int, learning_rate: float, patience: int,
        seed: int = 0, jit_compile: bool | str = "auto", augment: dict | None = None,
        log_dir: str | Path | None = None):
    """Train `model` with early stopping on val loss; write `history.csv` into `out_dir`.

    `augment` (`data.read_augment`) transforms the training batches only, never val.

    Training resumes from the last finished epoch if a previous attempt was killed
    (`keras.callbacks.BackupAndRestore` in `out_dir/backup`). With `log_dir`, TensorBoard
    scalars (loss and metrics per epoch) go there too. Returns the history DataFrame.
    Under a distribution strategy `batch_size` is per replica (the global batch scales) and
    the model must have been built in `strategy_scope()`; it is compiled there.
    """
    import keras
    import pandas as pd

    from kernelib.data import make_dataset

    AtomicBackupAndRestore = _atomic_backup_class()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with strategy_scope():
        compile_model(model, learning_rate=learning_rate, jit_compile=jit_compile)
    _build_for_multi_worker(model, train)
    batch_size *= replicas()
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
    `tensorboard/<name>/`. Members are built in the distribution strategy's scope; under
    `multi_worker` only the chief writes into the run folder (the others into a temporary one).
    """
    import tempfile

    from kernelib import members as km
    from kernelib.data import bag_rows, read_augment

    histories, augment = {}, read_augment(run.data)
    for name in names:
        with strategy_scope():
            model = km.build_member(run, name, n_classes=splits.n_classes)
        s = km.spec(run, name)
        rows = bag_rows(len(splits.y_train), s.get("bag"), seed=s["seed"])
        chief = is_chief()
        out_dir = run.member_dir(name) if chief else tempfile.mkdtemp(prefix=f"{name}-worker-")
        histories[name] = fit(model, (splits.x_train[rows], splits.y_train[rows]), splits.val,
                              out_dir=out_dir, epochs=epochs,
                              batch_size=batch_size, learning_rate=learning_rate,
                              patience=patience, seed=s["seed"], jit_compile=jit_compile,
                              augment=augment,
                              log_dir=run.tensorboard_dir(name) if tensorboard and chief
                              else None)
        if chief:
            km.save_model(model, run.member_model(name))
    return histories


def last_epochs(histories: dict[str, Any]):
    """One row per member: its last logged epoch (after early stopping) and its metrics."""
    import pandas as pd

    return pd.DataFrame({n: h.iloc[-1] for n, h in histories.items()}).T.rename_axis("member")
