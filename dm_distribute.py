"""Data-parallel training on several devices or machines through `tf.distribute`.

Data-parallel training: several local devices (`MirroredStrategy`) or several machines
(`MultiWorkerMirroredStrategy`, chosen by a `TF_CONFIG` environment), both driven by
Keras' own `fit` (docs/distributed.md).

Keras 3's `fit` does not run under `MultiWorkerMirroredStrategy` as released
(keras-team/keras#20585): two reductions in its TensorFlow trainer fail across workers.
`enable_multi_worker_fit` replaces exactly those two functions; everything else (the
train step, the optimiser, callbacks, checkpoints) is Keras' and TensorFlow's own.
Only the chief writes what the user sees; other workers write to a hidden scratch folder
that a completed run removes. A restarted run resumes every worker from the chief's last
checkpoint, as TensorFlow's own BackupAndRestore does (docs/distributed.md).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import shutil
from typing import Any

import keras
import tensorflow as tf
from keras.src.backend.tensorflow import trainer as tf_trainer

log = logging.getLogger("dm_distribute")


def tf_config() -> dict:
    """The parsed `TF_CONFIG` environment ({} when unset or empty)."""
    text = os.environ.get("TF_CONFIG", "").strip()
    return json.loads(text) if text else {}


def is_multi_worker() -> bool:
    """True when `TF_CONFIG` names more than one task in its cluster."""
    cluster = tf_config().get("cluster", {})
    return sum(len(v) for v in cluster.values()) > 1


def task() -> tuple[str, int]:
    """(task type, index) of this process; ("chief", 0) without `TF_CONFIG`."""
    t = tf_config().get("task") or {}
    return str(t.get("type", "chief")), int(t.get("index", 0))


def is_chief() -> bool:
    """The chief writes models, histories and logs: the `chief` task, or worker 0 of a
    cluster without one (TensorFlow's own rule)."""
    kind, index = task()
    if kind == "chief":
        return True
    return kind == "worker" and index == 0 and "chief" not in tf_config().get("cluster", {})


def choose_strategy(distribute: bool) -> Any:
    """MultiWorkerMirroredStrategy under a multi-task `TF_CONFIG`; MirroredStrategy over the
    local GPUs (or CPUs) with `distribute` or NUM_GPU_DEVICES > 1; else None (one device)."""
    if is_multi_worker():
        enable_multi_worker_fit()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        kind, index = task()
        log.info("multi-worker training: %s %d of %d replicas in sync%s", kind, index,
                 strategy.num_replicas_in_sync, " (chief)" if is_chief() else "")
        return strategy
    if distribute or int(os.environ.get("NUM_GPU_DEVICES", 1)) > 1:
        gpus = tf.config.list_logical_devices("GPU")
        n_gpu = int(os.environ.get("NUM_GPU_DEVICES", len(gpus) or 1))
        devices = [d.name for d in gpus][:n_gpu] or \
            [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices=devices)
        log.info("data-parallel training on %d replicas", strategy.num_replicas_in_sync)
        return strategy
    return None


_PATCHED = False


def enable_multi_worker_fit() -> None:
    """Make Keras 3's `fit`/`evaluate` run under MultiWorkerMirroredStrategy.

    1. Before the first step Keras builds the model from one batch and, for that, reduces
       the distributed batch across workers, which fails ("Attempt to convert a value
       (PerReplica...)"): use the local replica's batch instead (only its shapes matter).
    2. Per-step logs are reduced with `axis=0` on scalars, which fails across workers, and
       with one replica per worker they are not reduced at all, so each worker would log
       (and early-stop on) its own loss: reduce every value as a mean over all replicas.
    """
    global _PATCHED
    if _PATCHED:
        return

    def _local(x):
        if isinstance(x, tf.distribute.DistributedValues):
            return tf.distribute.get_strategy().experimental_local_results(x)[0]
        return x

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self._distribute_strategy is None:
            return
        if iterator is not None:
            for _, _, it in iterator:
                with self.distribute_strategy.scope():
                    data_batch = tf.nest.map_structure(_local, next(it))
                break
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    original_reduce = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if (tf_trainer._collective_all_reduce_multi_worker(strategy)
                and reduction in ("auto", "mean")):
            return tf.nest.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original_reduce(values, strategy, reduction)

    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    tf_trainer.reduce_per_replica = reduce_per_replica
    _PATCHED = True


OUTPUT_FIELDS = ("best_model", "final_model", "history_csv", "tensorboard")


def scratch_dir(cfg) -> pathlib.Path:
    """Where a non-chief worker writes: a hidden folder next to the chief's best model."""
    anchor = next((getattr(cfg, f) for f in OUTPUT_FIELDS
                   if getattr(cfg, f, None) is not None), "modelState/x")
    kind, index = task()
    return pathlib.Path(anchor).resolve().parent / f".{kind}{index}-scratch"


def worker_config(cfg):
    """`cfg` unchanged on the chief; on other workers every output path moved into
    `scratch_dir` (same file names), so they write nothing the user sees."""
    if not is_multi_worker() or is_chief():
        return cfg
    scratch = scratch_dir(cfg)
    scratch.mkdir(parents=True, exist_ok=True)
    moved = {f: str(scratch / pathlib.Path(getattr(cfg, f)).name) for f in OUTPUT_FIELDS
             if getattr(cfg, f, None) is not None}
    if "tensorboard" in moved:
        moved["tensorboard"] = None
    return dataclasses.replace(cfg, **moved)


def clean_scratch(cfg) -> None:
    """A completed run's non-chief worker removes its scratch folder."""
    if is_multi_worker() and not is_chief():
        shutil.rmtree(scratch_dir(cfg), ignore_errors=True)


def synchronize_batch_norm(model) -> int:
    """Batch statistics over the global batch (all replicas of all workers), so every
    worker's moving averages stay equal and a step sees what a one-worker step with the
    same global batch sees. Returns the number of BatchNormalization layers changed."""
    n = 0
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized:
            layer.synchronized = True
            n += 1
    return n


def _all_layers(layer):
    yield layer
    for sub in getattr(layer, "_layers", []):
        yield from _all_layers(sub)


def barrier(strategy) -> None:
    """Wait until every worker gets here (a tiny all-reduce). Called before a worker leaves,
    so no worker's coordination service sees a peer vanish while it still works."""
    if strategy is None or not is_multi_worker():
        return
    strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)


def resume_epochs(strategy, epoch: int) -> list[int]:
    """Every worker's resume point (`epoch` completed epochs, -1 for a fresh start), in
    task order. Workers that start from different points would build different optimiser
    states and stop in a collective with a shape mismatch; the caller compares these
    first."""
    if strategy is None or not is_multi_worker():
        return [epoch]
    mine = strategy.run(lambda: tf.constant([float(epoch)]))
    per_replica = [int(v) for v in strategy.gather(mine, axis=0).numpy()]
    n_tasks = sum(len(v) for v in tf_config().get("cluster", {}).values())
    return per_replica[::max(1, len(per_replica) // n_tasks)]
