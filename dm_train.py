"""The shared body of the two trainers: runtime, data, callbacks, stages, test report.

`patch_clf_train.py` and `image_clf_train.py` differ only in how they build their model
and which stages they run; everything else is here, once.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import pathlib
import sys
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

import dm_image
import dm_inference
import dm_keras_ext
from dm_image import Augment, DatasetError, Recipe
from dm_keras_ext import ModelMeta, Stage

log = logging.getLogger("dm_train")


class RunError(ValueError):
    """A problem with the run's inputs, reported as one line."""


def setup_logging() -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S",
                            stream=sys.stdout)
    root.setLevel(logging.INFO)


def setup_runtime(cfg) -> Any:
    """Seed everything, set the precision policy, and choose the distribution strategy.

    Returns a `tf.distribute.Strategy` or None (the default, single device).
    """
    import keras
    import tensorflow as tf
    keras.utils.set_random_seed(cfg.seed)
    if cfg.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    if os.environ.get("TF_CONFIG"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    if cfg.distribute or int(os.environ.get("NUM_GPU_DEVICES", 1)) > 1:
        gpus = tf.config.list_logical_devices("GPU")
        n_gpu = int(os.environ.get("NUM_GPU_DEVICES", len(gpus) or 1))
        devices = [d.name for d in gpus][:n_gpu] or \
            [d.name for d in tf.config.list_logical_devices("CPU")]
        strategy = tf.distribute.MirroredStrategy(devices=devices)
        log.info("data-parallel training on %d replicas", strategy.num_replicas_in_sync)
        return strategy
    return None


def strategy_scope(strategy):
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def recipe_from_config(cfg, channels: int) -> Recipe:
    return Recipe(img_size=tuple(cfg.img_size), img_scale=cfg.img_scale,
                  rescale_factor=cfg.rescale_factor, equalize_hist=cfg.equalize_hist,
                  channels=channels, featurewise_center=cfg.featurewise_center,
                  featurewise_mean=cfg.featurewise_mean)


def augment_from_config(cfg) -> Augment | None:
    return Augment(interpolation=cfg.interpolation) if cfg.augmentation else None


def class_weight_from_config(cfg, nb_class: int) -> dict[int, float] | None:
    """The original's class weights {0: 1, 1: pos, 2: neg}; none with batch balancing."""
    if cfg.auto_batch_balance:
        return None
    weights = {0: 1.0, 1: cfg.pos_cls_weight, 2: cfg.neg_cls_weight}
    weights = {k: v for k, v in weights.items() if k < nb_class}
    return None if all(v == 1.0 for v in weights.values()) else weights


@dataclass
class Split:
    """One data split: its dataset, labels and number of batches."""

    ds: Any
    labels: np.ndarray
    steps: int


def load_split(folder: str, cfg, recipe: Recipe, *, training: bool, batch_size: int,
               load_ram: bool = False) -> Split:
    """A split from class folders, checked: the folder and every class folder must exist."""
    paths, labels = dm_image.list_class_folders(folder, cfg.class_list)
    nb_class = len(cfg.class_list)
    ds = dm_image.make_dataset(
        paths, labels, recipe, nb_class, batch_size, training=training,
        augment=augment_from_config(cfg) if training else None, seed=cfg.seed,
        load_ram=load_ram, auto_batch_balance=cfg.auto_batch_balance and training,
        class_weight=class_weight_from_config(cfg, nb_class) if training else None)
    counts = dm_image.class_counts(labels, cfg.class_list)
    log.info("%s: %d images %s", folder, len(labels), counts)
    return Split(ds, np.asarray(labels), dm_image.steps_for(len(labels), batch_size))


def check_validation_classes(split: Split, folder: str, class_list) -> None:
    """A validation set with one class makes AUROC undefined: refuse it up front."""
    present = sorted(set(split.labels.tolist()))
    if len(present) < 2:
        names = [class_list[i] for i in present]
        raise RunError(f"{folder}: validation set has only class {names}; AUROC and model "
                       "selection need at least two classes")


def history_path(cfg) -> str:
    if cfg.history_csv:
        return cfg.history_csv
    if cfg.best_model and cfg.best_model != "NOSAVE":
        return str(pathlib.Path(cfg.best_model).with_suffix("")) + ".history.csv"
    return "history.csv"


def make_callbacks(cfg, checkpoint) -> list:
    """Early stopping on val loss, the checkpoint, lr halving (sgd), CSV history, TensorBoard."""
    import keras
    cbs = [checkpoint,
           keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.es_patience, verbose=1)]
    if cfg.optim == "sgd":
        cbs.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                                     patience=cfg.lr_patience, verbose=1))
    csv = history_path(cfg)
    pathlib.Path(csv).parent.mkdir(parents=True, exist_ok=True)
    if os.path.exists(csv):
        os.remove(csv)
    cbs.append(keras.callbacks.CSVLogger(csv, append=True))
    if cfg.tensorboard:
        cbs.append(keras.callbacks.TensorBoard(cfg.tensorboard))
    return cbs


def train_and_test(cfg, kind: str, build_model: Callable[[], Any],
                   make_stages: Callable[[Any], list[Stage]], meta_extra: dict) -> dict:
    """Build, train through the stages, save, reload the best model and score the test set.

    `build_model()` returns the model (called inside the distribution scope). Returns a
    summary dict: history, best/final paths, test AUROC (and TTA AUROC), test accuracy.
    """
    import keras
    if cfg.bias_multiplier is not None:
        log.warning("--bias-multiplier %s has no effect (Keras has no per-weight learning "
                    "rates); accepted so the original scripts run", cfg.bias_multiplier)
    strategy = setup_runtime(cfg)
    with strategy_scope(strategy):
        model = build_model()
    channels = int(model.inputs[0].shape[-1])
    recipe = recipe_from_config(cfg, channels)
    meta = ModelMeta(tuple(cfg.class_list), recipe, kind=kind, extra=meta_extra)
    n_out = int(model.outputs[0].shape[-1])
    if n_out != len(cfg.class_list):
        raise RunError(f"the model has {n_out} outputs but --class-list names "
                       f"{len(cfg.class_list)} classes {list(cfg.class_list)}")

    train_bs = max(1, int(cfg.batch_size * cfg.train_bs_multiplier))
    train = load_split(cfg.train_dir, cfg, recipe, training=True, batch_size=train_bs,
                       load_ram=cfg.load_train_ram)
    val = load_split(cfg.val_dir, cfg, recipe, training=False, batch_size=cfg.batch_size,
                     load_ram=cfg.load_val_ram)
    if kind == "image":
        check_validation_classes(val, cfg.val_dir, cfg.class_list)
        checkpoint = dm_keras_ext.AucCheckpoint(val.ds, val.labels, cfg.best_model, meta)
    else:
        checkpoint = dm_keras_ext.BestModelCheckpoint(cfg.best_model, "val_accuracy", "max", meta)
    callbacks = make_callbacks(cfg, checkpoint)

    with strategy_scope(strategy):
        history = dm_keras_ext.run_stages(
            model, make_stages(model), train.ds, train.steps, val.ds, callbacks,
            optim=cfg.optim, jit_compile=cfg.jit_compile, verbose=2)
    if cfg.final_model and cfg.final_model != "NOSAVE":
        dm_keras_ext.save_model(model, cfg.final_model, meta)
        log.info("final model saved: %s", cfg.final_model)
    if history.get("val_loss"):
        i = int(np.argmin(history["val_loss"]))
        log.info("minimum val loss %.4f at epoch %d (val accuracy %.4f)", history["val_loss"][i],
                 history["epoch"][i], history.get("val_accuracy", [math.nan] * (i + 1))[i])

    best = model
    if cfg.best_model != "NOSAVE" and os.path.exists(cfg.best_model):
        best = dm_keras_ext.load_model(cfg.best_model, safe_mode=not cfg.unsafe_load)
        log.info("reloaded the best model: %s", cfg.best_model)
    test = load_split(cfg.test_dir, cfg, recipe, training=False, batch_size=cfg.batch_size)
    probs = dm_inference.predict(best, test.ds)
    result = dict(history=history, best_model=cfg.best_model, final_model=cfg.final_model,
                  test_labels=test.labels, test_probs=probs,
                  test_accuracy=float(np.mean(probs.argmax(-1) == test.labels)),
                  test_auroc=dm_keras_ext.mean_auroc(test.labels, probs))
    log.info("accuracy on test set: %.4f", result["test_accuracy"])
    log.info("AUROC on test set: %.4f", result["test_auroc"])
    if cfg.test_augment:
        probs_tta = dm_inference.predict(best, test.ds, tta=True)
        result["test_auroc_tta"] = dm_keras_ext.mean_auroc(test.labels, probs_tta)
        log.info("AUROC on test set with 4-flip TTA: %.4f", result["test_auroc_tta"])
    return result


def cli(kind: str, run: Callable, argv=None) -> int:
    """Parse, run, and turn input problems into a one-line error and exit status 2."""
    import dm_flags
    setup_logging()
    cfg = dm_flags.parse(kind, argv)
    try:
        run(cfg)
    except (ValueError, OSError) as e:  # our input errors are ValueError/OSError subclasses
        lines = [l for l in str(e).splitlines() if l.strip()]
        log.error("error: %s", lines[0] if lines else type(e).__name__)
        return 2
    return 0
