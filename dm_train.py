"""The shared body of the two trainers: runtime, data, callbacks, stages, test report.

`patch_clf_train.py` and `image_clf_train.py` differ only in how they build their model
and which stages they run; everything else is here, once.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import math
import os
import pathlib
import zipfile
from dataclasses import dataclass
from typing import Any, Callable

import keras
import numpy as np
from tensorflow.python.framework import config as tf_config

import dm_callbacks
import dm_cli
import dm_dataset
import dm_distribute
import dm_flags
import dm_listing
import dm_modelfile
import dm_output
import dm_pairs
import dm_recipe
import dm_scoring
import dm_stages
from dm_augment import Augment
from dm_errors import InputError
from dm_modelfile import ModelMeta
from dm_recipe import Recipe
from dm_stages import Stage

log = logging.getLogger("dm_train")


class RunError(InputError):
    """A problem with the run's inputs, reported as one line."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, with the epoch it stopped in (None: before the first)."""

    def __init__(self, epoch: int | None):
        super().__init__(epoch)
        self.epoch = epoch


class _EpochTracker:
    """Remembers the epoch in progress (1-based, counted over the whole run)."""

    epoch: int | None = None

    def callback(self):
        tracker = self

        class Track(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                tracker.epoch = epoch + 1
        return Track()


def setup_runtime(seed: int, mixed_precision: str | None, distribute: str | None,
                  deterministic: bool = True) -> Any:
    """Seed everything, choose deterministic ops, set the precision policy, and choose the
    distribution strategy.

    With deterministic ops (and OpenCV's threads off, `dm_augment`) a seed repeats to the
    last digit on a CPU shared with other jobs (docs/training.md).
    Returns a `tf.distribute.Strategy` or None (the default, single device).
    """
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf_config.enable_op_determinism()
    else:
        tf_config.disable_op_determinism()
    keras.mixed_precision.set_global_policy(
        f"mixed_{mixed_precision}" if mixed_precision else "float32")
    return dm_distribute.choose_strategy(distribute)


def strategy_scope(strategy):
    return strategy.scope() if strategy is not None else contextlib.nullcontext()


def class_weights(nb_class: int, pos_cls_weight: float, neg_cls_weight: float,
                  auto_batch_balance: bool) -> dict[int, float] | None:
    """The original's class weights {0: 1, 1: pos, 2: neg}; none with batch balancing
    or more than three classes (as the original, docs/fidelity.md)."""
    if auto_batch_balance or nb_class > 3:
        return None
    weights = {0: 1.0, 1: pos_cls_weight, 2: neg_cls_weight}
    weights = {k: v for k, v in weights.items() if k < nb_class}
    return None if all(v == 1.0 for v in weights.values()) else weights


@dataclass
class Split:
    """One evaluation split: its dataset and labels."""

    ds: Any
    labels: np.ndarray


def load_split(folder: str, class_list, recipe: Recipe, *, batch_size: int, seed: int,
               load_ram: bool = False, pairs: tuple | None = None) -> Split:
    """An evaluation split (finite, in order, never augmented) from class folders; with
    `pairs` ((pairs map, its file), see `split_pairs`), each image with its other breast."""
    paths, labels = dm_listing.list_class_folders(folder, class_list)
    ds = dm_dataset.make_dataset(paths, labels, recipe, len(class_list), batch_size,
                               training=False, seed=seed, load_ram=load_ram,
                               pairs=split_pairs(paths, pairs, folder))
    log.info("%s: %s %s", folder, dm_cli.plural(len(labels), "image"),
             dm_listing.class_counts(labels, class_list))
    return Split(ds, np.asarray(labels))


def split_pairs(paths, pairs: tuple | None, folder: str):
    """Each image's other-breast index in its own set (`dm_pairs`), or None (one view)."""
    return None if pairs is None else dm_pairs.partner_index(paths, pairs[0], pairs[1], folder)


def check_validation_classes(split: Split, folder: str, class_list) -> None:
    """A validation set with one class makes AUROC undefined: refuse it up front."""
    present = sorted(set(split.labels.tolist()))
    if len(present) < 2:
        names = [class_list[i] for i in present]
        raise RunError(f"{folder}: validation set has only class {names}; AUROC and model "
                       "selection need at least two classes")


def config_fingerprint(cfg) -> str:
    """Identifies the command: a checkpoint is resumed only by the run that wrote it."""
    d = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("resume", "test_augment")}
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _truncate_history(csv: str, next_epoch: int) -> None:
    """Keep the history rows of the `next_epoch` completed epochs (rows count from 1)."""
    if not os.path.exists(csv):
        return
    lines = pathlib.Path(csv).read_text().splitlines(keepends=True)
    kept = lines[:1] + [l for l in lines[1:] if l.split(",")[0].strip().isdigit()
                        and int(l.split(",")[0]) <= next_epoch]
    dm_output.atomic_write(csv, lambda f: f.write("".join(kept)), text=True)


def make_callbacks(checkpoint, resume: dict | None, *, es_patience: int, optim: str,
                   lr_patience: int, history_csv: str, tensorboard: str | None
                   ) -> tuple[list, list]:
    """Early stopping on val loss, the checkpoint, lr halving (sgd), CSV history, TensorBoard.

    Returns (callbacks, stateful) where `stateful` are those whose counters a resumed
    run restores, in the order their states are stored.
    """
    es = dm_callbacks.ResumableEarlyStopping(monitor="val_loss", patience=es_patience,
                                             verbose=1)
    cbs, stateful = [checkpoint, es], [es]
    if optim == "sgd":
        rlr = dm_callbacks.ResumableReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                                      patience=lr_patience, verbose=1)
        cbs.append(rlr)
        stateful.append(rlr)
    if resume:
        for cb, st in zip(stateful, resume.get("callbacks", [])):
            cb.pending = st
    csv = history_csv
    pathlib.Path(csv).parent.mkdir(parents=True, exist_ok=True)
    if resume:
        _truncate_history(csv, resume["epoch"])
    elif os.path.exists(csv):
        os.remove(csv)

    class HistoryCSV(keras.callbacks.CSVLogger):
        """Epochs counted from 1, as on the console and in the returned history."""

        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch + 1, logs)
    cbs.append(HistoryCSV(csv, append=True))
    if tensorboard:
        cbs.append(keras.callbacks.TensorBoard(tensorboard))
    return cbs, stateful


def find_resume_state(last: str | None, fingerprint: str, resume: bool) -> dict | None:
    """The position of an interrupted run of this same command (`fingerprint`), if any;
    `resume` (--resume) makes its absence an error."""
    state = dm_modelfile.read_resume_state(last) if last else None
    if state and state.get("fingerprint") != fingerprint:
        log.warning("%s belongs to a different command; starting over (it will be replaced)",
                    last)
        state = None
    if resume and state is None:
        raise RunError(f"--resume: no interrupted run of this command to resume "
                       f"({last or 'no output path given'})")
    if state:
        log.info("resuming from %s: epochs 1-%d are done, continuing at epoch %d (stage %d); "
                 "delete it to start over", last, state["epoch"], state["epoch"] + 1,
                 state["stage"] + 1)
    return state


def check_same_resume_point(strategy, state: dict | None, chief_last: str | None) -> None:
    """All workers of a multi-machine run must start from the same epoch: each reads the
    chief's last checkpoint, so a worker that cannot see it (no shared storage) would
    start afresh while the others resume. Stop with one line instead of a collective
    shape mismatch."""
    epochs = dm_distribute.resume_epochs(strategy, state["epoch"] if state else -1)
    if len(set(epochs)) > 1:
        seen = ", ".join(f"task {i}: {'none' if e < 0 else f'epochs 1-{e} done'}"
                         for i, e in enumerate(epochs))
        raise RunError(f"{chief_last}: the workers do not see the same last checkpoint "
                       f"({seen}); put the output folder on storage every worker reads, "
                       f"or delete the file to start over")


def model_input_size(path: str) -> tuple | None:
    """(H, W) of a saved model's input (None where a size is free), read from the .keras
    file's config without building the model; an .h5 file is loaded."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json"))
        stack = [config]
        while stack:
            o = stack.pop(0)
            if isinstance(o, dict):
                if o.get("class_name") == "InputLayer":
                    c = o.get("config", {})
                    shape = c.get("batch_shape") or c.get("batch_input_shape")
                    if shape and len(shape) == 4:
                        return tuple(shape[1:3])
                stack.extend(o.values())
            elif isinstance(o, list):
                stack.extend(o)
        return None
    model = dm_modelfile.load_model(path)
    return tuple(model.inputs[0].shape[1:3])


def check_resume_size(path: str | None, img_size, flag: str = "--resume-from") -> None:
    """Refuse, before any data is read, an --img-size the model to resume cannot take (a
    model whose input size is fixed)."""
    if not path or not os.path.isfile(path):
        return          # a missing file is reported by the loader, with its name
    size = model_input_size(path)
    if size is None or any(v is None for v in size):
        return
    if tuple(size) != tuple(img_size):
        raise RunError(f"{path}: this model takes {size[0]}x{size[1]} images (its input "
                       f"size is fixed); {flag} cannot continue at --img-size "
                       f"{img_size[0]} {img_size[1]}: give --img-size {size[0]} {size[1]}")


def check_split_folders(folders, class_list, rescale_factor: float | None) -> int | None:
    """List all sets (training first) before any long work, so a bad folder fails at once.

    Returns the training images' bit depth when they share one; the saved recipe records
    it so prediction can refuse images of another depth.
    """
    bits = None
    for i, folder in enumerate(folders):
        paths, _ = dm_listing.list_class_folders(folder, class_list)
        depths = dm_listing.check_bit_depths(paths, rescale_factor)
        if i == 0 and len(depths) == 1:
            bits = depths.pop()
    return bits


def _patch_useless(cfg, changed: set[str]) -> list[str]:
    if cfg.use_pretrained:
        return []
    return [f"--{name.replace('_', '-')} does nothing: without pretrained weights the patch "
            "classifier trains in one stage of --nb-epoch epochs"
            for name in ("top_layer_epochs", "all_layer_epochs", "top_layer_multiplier",
                         "all_layer_multiplier", "weight_decay2", "hidden_dropout2")
            if name in changed]


def _image_useless(cfg, changed: set[str]) -> list[str]:
    if cfg.all_layer_epochs <= 0 and "all_layer_multiplier" in changed:
        return ["--all-layer-multiplier does nothing: --all-layer-epochs is 0"]
    return []


@dataclass(frozen=True)
class TrainerSpec:
    """What differs between the two trainers, in one place (docs/training.md):
    the model kind stored in its file, the flag defaults, how the best model is chosen,
    whether a lesion-vs-background AUROC is reported, and flag combinations that do nothing."""

    kind: str                       # "patch" or "image" (ModelMeta.kind)
    defaults_name: str              # the dm_flags table of defaults
    best_by: str                    # "accuracy" (BestModelCheckpoint) or "AUROC" (AucCheckpoint)
    lesion_auroc: bool              # also the AUROC of 1 - p(class 0)
    extra_useless: Callable[[Any, set], list[str]]

    @property
    def defaults(self) -> dict:
        return getattr(dm_flags, self.defaults_name)

    def checkpoint(self, val, path: str, meta: ModelMeta):
        """The callback keeping the best model (by validation AUROC or accuracy)."""
        if self.best_by == "AUROC":
            return dm_callbacks.AucCheckpoint(val.ds, val.labels, path, meta)
        return dm_callbacks.BestModelCheckpoint(path, "val_accuracy", "max", meta)


PATCH = TrainerSpec("patch", "PATCH_DEFAULTS", "accuracy", True, _patch_useless)
IMAGE = TrainerSpec("image", "IMAGE_DEFAULTS", "AUROC", False, _image_useless)
SPECS = {"patch": PATCH, "image": IMAGE}


def _spec(kind: "str | TrainerSpec") -> TrainerSpec:
    return SPECS[kind] if isinstance(kind, str) else kind


def useless_flags(cfg, kind: "str | TrainerSpec") -> list[str]:
    """One warning line per flag, given a non-default value, that does nothing in this run."""
    spec = _spec(kind)
    changed = {k for k, v in spec.defaults.items() if getattr(cfg, k, v) != v}
    out = spec.extra_useless(cfg, changed)
    if len(cfg.class_list) > 3:
        out += [f"--{n.replace('_', '-')} does nothing with more than 3 classes (as in the "
                "original)" for n in ("pos_cls_weight", "neg_cls_weight") if n in changed]
    if len(cfg.class_list) < 3 and "neg_cls_weight" in changed:
        out.append("--neg-cls-weight does nothing: it weighs class 2 and the model has "
                   f"{len(cfg.class_list)} classes")
    if cfg.auto_batch_balance:
        out += [f"--{n.replace('_', '-')} does nothing with --auto-batch-balance"
                for n in ("pos_cls_weight", "neg_cls_weight") if n in changed]
    if cfg.optim != "sgd" and "lr_patience" in changed:
        out.append(f"--lr-patience does nothing with --optimizer {cfg.optim} (lr halving is "
                   "for sgd)")
    if not cfg.featurewise_center and "featurewise_mean" in changed:
        out.append("--featurewise-mean does nothing with --no-featurewise-center")
    return out


def renamed_classes(cfg) -> list[str]:
    """A warning line when --class-list names the outputs of the --resume-from model
    otherwise than its file does: finetuning to new class names is allowed (output column
    i becomes class i), but said, since a wrong order silently swaps the classes."""
    path = getattr(cfg, "resume_from", None)
    try:
        meta = dm_modelfile.read_model_meta(path) if path and os.path.isfile(path) else None
    except InputError:      # an unreadable file is refused by the loader, with its reason
        return []
    if (meta is None or tuple(meta.class_list) == tuple(cfg.class_list)
            or len(meta.class_list) != len(cfg.class_list)):
        return []
    pairs = ", ".join(f"{a} -> {b}" for a, b in zip(meta.class_list, cfg.class_list))
    return [f"{path} was trained with classes {' '.join(meta.class_list)}; --class-list "
            f"{' '.join(cfg.class_list)} renames its outputs in order ({pairs}); give "
            f"--class-list {' '.join(meta.class_list)} to keep its names"]


class RunLock:
    """`<best model>.lock`, held (flock) while a run writes that model: a second run with
    the same --best-model is refused. The kernel drops the lock when the process ends, even
    after kill -9, so a stale file never blocks a new run."""

    def __init__(self, target: str | None):
        self.path = None if not target else target + ".lock"
        self.fd = None

    def __enter__(self):
        if self.path is None:
            return self
        pathlib.Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunError(f"{self.path}: another run is writing this best model ({holder}); "
                           "wait for it, stop it, or choose another --best-model") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            try:
                os.remove(self.path)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None


def train_and_test(cfg, kind: "str | TrainerSpec", build_model: Callable[[], Any],
                   make_stages: Callable[[Any], list[Stage]], meta_extra: dict) -> dict:
    """Build (or resume), train through the stages, reload the best model, score the test set.

    `kind` is a `TrainerSpec` (or its name). `build_model()` returns the model (called
    inside the distribution scope). After
    every epoch the model, its optimiser and the run's position are saved atomically
    (`last_checkpoint_path`); the same command run again continues from there. Returns a
    summary dict: history, best/final paths, test AUROC (and TTA AUROC), test accuracy.
    """
    if cfg.bias_multiplier is not None:
        log.warning("--bias-multiplier %s has no effect (Keras has no per-weight learning "
                    "rates); accepted so the original scripts run", cfg.bias_multiplier)
    for line in useless_flags(cfg, kind) + renamed_classes(cfg):
        log.warning("%s", line)
    # Non-chief workers write to scratch paths but resume from the chief's last checkpoint.
    user_cfg, cfg = cfg, dm_distribute.worker_config(cfg)
    chief_last = dm_flags.last_checkpoint_path(user_cfg.best_model, user_cfg.final_model,
                                      user_cfg.history_csv)
    with RunLock(cfg.best_model):
        result = _train_and_test(cfg, _spec(kind), build_model, make_stages, meta_extra,
                                 chief_last, config_fingerprint(user_cfg))
    dm_distribute.clean_scratch(user_cfg)
    return result


def _train_and_test(cfg, spec: TrainerSpec, build_model, make_stages, meta_extra,
                    chief_last: str | None, fingerprint: str) -> dict:
    classes = list(cfg.class_list)
    input_bits = check_split_folders((cfg.train_dir, cfg.val_dir, cfg.test_dir), classes,
                                     cfg.rescale_factor)
    last = dm_flags.last_checkpoint_path(cfg.best_model, cfg.final_model, cfg.history_csv)
    state = find_resume_state(chief_last, fingerprint, cfg.resume)
    strategy = setup_runtime(cfg.seed, cfg.mixed_precision, cfg.distribute,
                             cfg.deterministic)
    check_same_resume_point(strategy, state, chief_last)
    with strategy_scope(strategy):
        model = (dm_modelfile.load_model(chief_last, compile=True) if state
                 else build_model())
    if dm_distribute.is_multi_worker():
        dm_distribute.synchronize_batch_norm(model)
    dm_modelfile.set_precision(model, cfg.mixed_precision)  # also a resumed float32 file
    channels = int(model.inputs[0].shape[-1])
    recipe = dm_recipe.recipe_from_flags(cfg, channels=channels, input_bits=input_bits)
    pairs = None
    if len(model.inputs) == 2:      # a bilateral model (dm_mil) trains on pairs
        if not getattr(cfg, "pairs", None):
            raise RunError("the model is bilateral: give --pairs")
        pairs = (dm_pairs.read_pairs(cfg.pairs), cfg.pairs)
        meta_extra = dict(meta_extra, bilateral=True)
    meta = ModelMeta(tuple(cfg.class_list), recipe, kind=spec.kind, extra=meta_extra)
    n_out = int(model.outputs[0].shape[-1])
    if n_out != len(cfg.class_list):
        raise RunError(f"the model has {n_out} outputs but --class-list names "
                       f"{len(cfg.class_list)} classes {list(cfg.class_list)}")

    train_bs = max(1, int(cfg.batch_size * cfg.train_bs_multiplier))
    val = load_split(cfg.val_dir, classes, recipe, batch_size=cfg.batch_size, seed=cfg.seed,
                     load_ram=cfg.load_val_ram, pairs=pairs)
    if spec.best_by == "AUROC":
        check_validation_classes(val, cfg.val_dir, cfg.class_list)
    train_paths, train_labels = dm_listing.list_class_folders(cfg.train_dir, cfg.class_list)
    cache = (dm_dataset.load_images(train_paths, recipe) if cfg.load_train_ram else None)

    augment = Augment(interpolation=cfg.interpolation) if cfg.augmentation else None
    weights = class_weights(len(classes), cfg.pos_cls_weight, cfg.neg_cls_weight,
                            cfg.auto_batch_balance)

    def train_ds(start_epoch: int):
        return dm_dataset.make_dataset(
            cache if cache is not None else train_paths, train_labels, recipe, len(classes),
            train_bs, training=True, augment=augment, seed=cfg.seed,
            auto_batch_balance=cfg.auto_batch_balance, class_weight=weights,
            start_epoch=start_epoch, pairs=train_pairs)
    train_pairs = split_pairs(train_paths, pairs, cfg.train_dir)
    log.info("%s: %s %s", cfg.train_dir, dm_cli.plural(len(train_labels), "image"),
             dm_listing.class_counts(train_labels, cfg.class_list))

    checkpoint = spec.checkpoint(val, cfg.best_model, meta)
    if state:
        checkpoint.best = state["best"]
    callbacks, stateful = make_callbacks(
        checkpoint, state, es_patience=cfg.es_patience, optim=cfg.optim,
        lr_patience=cfg.lr_patience, history_csv=dm_flags.history_path(cfg.history_csv, cfg.best_model),
        tensorboard=cfg.tensorboard)
    guard = dm_callbacks.NanGuard()
    stages = dm_stages.apply_fidelity_flags(cfg, spec.kind, make_stages(model))
    callbacks.insert(0, guard)
    if last:
        callbacks.append(dm_callbacks.LastCheckpoint(last, meta, fingerprint, stages,
                                                     checkpoint, stateful))
    resume_at = ((state["stage"], state["epoch"], state.get("inside_stage", True)) if state
                 else (0, 0))
    tracker = _EpochTracker()
    callbacks.insert(0, tracker.callback())
    try:
        with strategy_scope(strategy):
            history = dm_stages.run_stages(
                model, stages, train_ds, dm_dataset.steps_for(len(train_labels), train_bs),
                val.ds, callbacks, optim=cfg.optim, jit_compile=cfg.jit_compile,
                resume_at=resume_at, verbose=2, frozen_bn=cfg.frozen_bn)
    except KeyboardInterrupt:
        raise TrainingInterrupted(tracker.epoch or (state["epoch"] + 1 if state else None)
                                  ) from None
    if guard.abort:
        raise RunError(f"training loss became NaN at epoch {guard.where[0]}, batch "
                       f"{guard.where[1]}: stopped; the last good checkpoint is "
                       f"{last or cfg.best_model} (best model: {cfg.best_model})")
    if cfg.final_model:
        dm_modelfile.save_model(model, cfg.final_model, meta)
        log.info("final model saved: %s", cfg.final_model)
    if history.get("val_loss"):
        i = int(np.argmin(history["val_loss"]))
        log.info("minimum val loss %.4f at epoch %d (val accuracy %.4f); the best model is "
                 "chosen by validation %s, not by this", history["val_loss"][i],
                 history["epoch"][i], history.get("val_accuracy", [math.nan] * (i + 1))[i],
                 spec.best_by)

    best = model
    if cfg.best_model and os.path.exists(cfg.best_model):
        best = dm_modelfile.load_model(cfg.best_model, safe_mode=not cfg.unsafe_load)
        log.info("reloaded the best model: %s", cfg.best_model)
    test = load_split(cfg.test_dir, classes, recipe, batch_size=cfg.batch_size, seed=cfg.seed,
                      pairs=pairs)
    probs = dm_scoring.predict(best, test.ds)
    result = dict(history=history, best_model=cfg.best_model, final_model=cfg.final_model,
                  test_labels=test.labels, test_probs=probs,
                  test_accuracy=float(np.mean(probs.argmax(-1) == test.labels)),
                  test_auroc=dm_callbacks.mean_auroc(test.labels, probs))
    log.info("%s", accuracy_line(result["test_accuracy"], test.labels, cfg.class_list))
    if len(cfg.class_list) > 2:
        log.info("AUROC on test set (mean one-vs-rest over %d classes): %.4f",
                 len(cfg.class_list), result["test_auroc"])
        if spec.lesion_auroc:
            y = test.labels != 0
            result["test_auroc_lesion"] = (dm_callbacks.mean_auroc(y.astype(int), np.stack(
                [probs[:, 0], 1.0 - probs[:, 0]], axis=1)) if 0 < y.sum() < len(y) else math.nan)
            log.info("lesion-vs-%s AUROC on test set (1 - p(%s)): %.4f", cfg.class_list[0],
                     cfg.class_list[0], result["test_auroc_lesion"])
    else:
        log.info("AUROC on test set: %.4f", result["test_auroc"])
    if cfg.test_augment:
        probs_tta = dm_scoring.predict(best, test.ds, tta=True)
        result["test_auroc_tta"] = dm_callbacks.mean_auroc(test.labels, probs_tta)
        log.info("AUROC on test set with 4-flip TTA: %.4f", result["test_auroc_tta"])
    if last and os.path.exists(last):
        os.remove(last)  # the run is complete: the same command trains afresh next time
    dm_distribute.barrier(strategy)  # workers leave together
    return result


def accuracy_line(accuracy: float, labels, class_list) -> str:
    """The test-accuracy log line; an accuracy equal to the majority-class rate is flagged,
    since predicting that class for every image scores exactly it."""
    counts = np.bincount(np.asarray(labels, np.int64), minlength=len(class_list))
    majority = counts.max() / max(1, counts.sum())
    note = (f" (= the majority-class rate of '{class_list[int(counts.argmax())]}': the model "
            "may be predicting one class for everything)" if abs(accuracy - majority) < 1e-9
            else "")
    return f"accuracy on test set: {accuracy:.4f}{note}"
