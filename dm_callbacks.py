"""Training callbacks: validation AUROC, best and last checkpoints, restart-proof schedules.

Validation AUROC and the best model, NaN guard, and early stopping,
lr scheduling and the last-epoch checkpoint with counters that survive a restart (the
resume pieces; docs/fidelity.md says how they count as Keras 2.0.8 counted).
"""
from __future__ import annotations

import logging
import math

import keras
import numpy as np

import dm_metrics
import dm_scoring
from dm_errors import OriginalAPIError
from dm_metrics import auroc
from dm_modelfile import ModelMeta, save_model

log = logging.getLogger("dm_callbacks")

def mean_auroc(labels, probs) -> float:
    """Mean one-vs-rest AUROC over the classes that have both positives and negatives.

    Two classes: the AUROC of column 1. NaN (with a warning), never 0, when the set has
    a single class.
    """

    labels = np.asarray(labels)
    probs = np.asarray(probs)
    if labels.ndim == 2:
        labels = labels.argmax(-1)
    present = np.unique(labels)
    if len(present) < 2:
        log.warning("AUROC is undefined: the set has one class only (%s)", present.tolist())
        return float("nan")
    if probs.shape[1] == 2:
        return auroc(labels == 1, probs[:, 1])
    return float(np.mean([auroc(labels == k, probs[:, k]) for k in present]))


class AucCheckpoint(keras.callbacks.Callback):
    """After each epoch: AUROC on the whole validation set; keep the best model.

    The value is added to the epoch logs as `val_auroc` (so CSVLogger records it). The
    best model (highest AUROC) is saved atomically with its class list and recipe;
    `path` None disables saving but the best value is still tracked.
    """

    def __init__(self, val_ds, val_labels, path: str | None, meta: ModelMeta | None = None,
                 best: float = float("-inf")):
        super().__init__()
        self.val_ds, self.val_labels = val_ds, val_labels
        self.path = path
        self.meta, self.best = meta, best

    def on_epoch_end(self, epoch, logs=None):
        if not _finite(logs):
            return
        probs = self.model.predict(self.val_ds, verbose=0)
        auc = mean_auroc(self.val_labels, probs)
        if logs is not None:
            logs["val_auroc"] = auc
        improved = not math.isnan(auc) and auc > self.best
        log.info("epoch %d: validation AUROC %.4f%s", epoch + 1, auc,
                 " (best so far)" if improved else f" (best {self.best:.4f})")
        if improved:
            self.best = auc
            if self.path:
                save_model(self.model, self.path, self.meta)


class BestModelCheckpoint(keras.callbacks.Callback):
    """Keep the model with the best value of a logged metric (atomic save, with meta)."""

    def __init__(self, path: str | None, monitor: str = "val_accuracy", mode: str = "max",
                 meta: ModelMeta | None = None, best: float | None = None):
        super().__init__()
        self.path = path
        self.monitor, self.mode, self.meta = monitor, mode, meta
        self.best = best if best is not None else (float("-inf") if mode == "max" else float("inf"))

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not _finite(logs):
            return
        better = value > self.best if self.mode == "max" else value < self.best
        if better:
            log.info("epoch %d: %s improved to %.4f", epoch + 1, self.monitor, value)
            self.best = float(value)
            if self.path:
                save_model(self.model, self.path, self.meta)


def _finite(logs) -> bool:
    loss = (logs or {}).get("loss")
    return loss is None or math.isfinite(float(loss))


class NanGuard(keras.callbacks.Callback):
    """Stop at the first non-finite training loss and tell every stage to stop (`abort`)."""

    def __init__(self):
        super().__init__()
        self.abort = False
        self.where: tuple[int, int] | None = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if not _finite(logs) and not self.abort:
            self.abort, self.where = True, (self._epoch + 1, batch + 1)
            self.model.stop_training = True


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping counted as Keras 2.0.8 counted (docs/fidelity.md), whose counters
    survive a restart (`pending`, restored at the start of the next fit).

    Keras 2.0.8 stopped at a non-improving epoch only once `patience` earlier epochs had
    not improved, i.e. after `patience + 1` epochs without progress (Keras 3: `patience`).
    """

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.pending: dict | None = None

    def state(self) -> dict:
        return {"wait": int(self.wait), "best": None if self.best is None else float(self.best)}

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.best = float("inf")
        if self.pending:
            self.wait, self.best = self.pending["wait"], self.pending["best"]
            if self.best is None:
                self.best = float("inf")
            self.pending = None

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get(self.monitor)
        if current is None:
            return
        if current < self.best:   # val_loss, min_delta 0, as the original used it
            self.best, self.wait = float(current), 0
        else:
            if self.wait >= self.patience:
                self.stopped_epoch = epoch
                self.model.stop_training = True
                log.info("epoch %d: early stopping (no %s progress for %d epochs)",
                         epoch + 1, self.monitor, self.wait + 1)
            self.wait += 1


class ResumableReduceLROnPlateau(keras.callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau counted as Keras 2.0.8 counted, with counters that survive a
    restart.

    Keras 2.0.8 (epsilon 1e-4 = `min_delta`): the first reduction comes after
    `patience + 1` epochs without progress, and since the counter restarts at 1 after a
    reduction, the next ones every `patience` epochs (Keras 3: every `patience`).
    """

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.pending: dict | None = None

    def state(self) -> dict:
        return {"wait": int(self.wait), "best": float(self.best),
                "cooldown_counter": int(self.cooldown_counter)}

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.best = float("inf")
        if self.pending:
            self.wait, self.best = self.pending["wait"], self.pending["best"]
            self.cooldown_counter = self.pending["cooldown_counter"]
            self.pending = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        logs["learning_rate"] = lr
        current = logs.get(self.monitor)
        if current is None:
            return
        if self.in_cooldown():
            self.cooldown_counter -= 1
            self.wait = 0
        if current < self.best - self.min_delta:
            self.best, self.wait = float(current), 0
        elif not self.in_cooldown():
            if self.wait >= self.patience:
                if lr > self.min_lr * (1 + 1e-4):
                    new_lr = max(lr * self.factor, self.min_lr)
                    self.model.optimizer.learning_rate = new_lr
                    log.info("epoch %d: learning rate reduced to %g", epoch + 1, new_lr)
                    self.cooldown_counter = self.cooldown
                    self.wait = 0
            self.wait += 1


class LastCheckpoint(keras.callbacks.Callback):
    """After every epoch: the model with its optimiser and the run's position, in one
    atomically written file, so a killed run can continue from its last completed epoch.

    The position (next stage and epoch), the best monitored value and the counters of
    early stopping and lr scheduling travel in the file's `ModelMeta.extra["resume"]`.
    A state reached with a non-finite loss is never written.
    """

    def __init__(self, path: str, meta: ModelMeta, fingerprint: str, stages: list,
                 best_cb, stateful_cbs: list):
        super().__init__()
        self.path, self.meta, self.fingerprint = path, meta, fingerprint
        self.ends = [int(s.epochs) for s in stages]
        self.best_cb, self.stateful = best_cb, stateful_cbs
        self.stage = 0

    def on_epoch_end(self, epoch, logs=None):
        if not _finite(logs):
            return
        stage, nxt, inside = self.stage, epoch + 1, True
        if self.model.stop_training or nxt >= self.ends[stage]:
            stage, inside = stage + 1, False   # the next stage starts where this one ended
        state = {"fingerprint": self.fingerprint, "stage": stage, "epoch": nxt,
                 "inside_stage": inside, "best": float(self.best_cb.best),
                 "callbacks": [cb.state() for cb in self.stateful]}
        meta = ModelMeta(self.meta.class_list, self.meta.recipe, self.meta.kind,
                         dict(self.meta.extra, resume=state))
        save_model(self.model, self.path, meta)


# ------------------------------------------------------------------ the original's callbacks
# (docs/original.md, "Code written for the original"; `dm_keras_ext` re-exports them.)


def _flips(X):
    """[X and its three flips] (`dm_scoring.FLIPS`), as numpy arrays."""

    return [np.asarray(dm_scoring.flip(X, m)) for m in dm_scoring.FLIPS]


def calc_test_auc(test_set, model, batch_size=None, test_samples=None, return_y_res=False,
                  test_augment=False):
    """AUROC per class (`roc_auc_score(..., average=None)`) of a model on a RAM set
    (X, y[, w]) or a generator; with `return_y_res`, also (one-hot y_true, y_pred).
    `test_augment`: the mean over the 4 flips (`dm_scoring.FLIPS`)."""


    def per_class(y, p, w):
        """`roc_auc_score(y, p, average=None, sample_weight=w)` through dm_metrics.auroc."""
        y, p = np.asarray(y), np.asarray(p)
        if y.ndim == 2:
            return np.array([dm_metrics.auroc(y[:, k], p[:, k], w) for k in range(y.shape[1])])
        return dm_metrics.auroc(y, p.ravel() if p.ndim == 2 and p.shape[1] == 1 else p, w)

    def predict(X):
        views = _flips(X) if test_augment else [X]
        if batch_size is None:
            return np.mean([np.asarray(model.predict_on_batch(v)) for v in views], axis=0)
        return np.mean([model.predict(v, batch_size=batch_size, verbose=0) for v in views], axis=0)

    if isinstance(test_set, tuple):
        if batch_size is None:
            raise OriginalAPIError("calc_test_auc: batch_size must be given for a RAM test set")
        y_true, y_pred = np.asarray(test_set[1]), predict(np.asarray(test_set[0]))
        weights = test_set[2] if len(test_set) > 2 else None
    else:
        if test_samples is None:
            raise OriginalAPIError("calc_test_auc: test_samples must be given for a generator")
        test_set.reset()
        ys, preds, ws, seen = [], [], [], 0
        while seen < test_samples:
            res = next(test_set)
            if len(res) > 2:
                ws.append(res[2])
            ys.append(res[1])
            preds.append(predict(res[0]))
            seen += len(res[1])
        y_true, y_pred = np.concatenate(ys), np.concatenate(preds)
        weights = np.concatenate(ws) if ws else None
    try:
        auc = per_class(y_true, y_pred, weights)
    except ValueError as e:  # the original's value for a one-class set
        log.warning("AUROC undefined (%s): 0.0 returned as the original did", e)
        auc = 0.0
    return (auc, y_true, y_pred) if return_y_res else auc


class DMAucModelCheckpoint(keras.callbacks.Callback):
    """Keep the model with the best mean validation AUROC (saved with `save_model`)."""

    calc_test_auc = staticmethod(calc_test_auc)

    def __init__(self, filepath, test_data, test_samples=None, batch_size=None):
        super().__init__()
        if isinstance(test_data, tuple) and batch_size is None:
            raise OriginalAPIError("DMAucModelCheckpoint: batch_size must be given for "
                                   "validation data in RAM")
        if not isinstance(test_data, tuple) and test_samples is None:
            raise OriginalAPIError("DMAucModelCheckpoint: test_samples must be given for "
                                   "a generator")
        self.filepath, self.test_data = filepath, test_data
        self.test_samples, self.batch_size = test_samples, batch_size
        self.best_epoch, self.best_auc, self.best_all_auc = 0, -1.0, None

    def on_epoch_end(self, epoch, logs=None):
        auc = self.calc_test_auc(self.test_data, self.model, self.batch_size,
                                 self.test_samples)
        mean = float(np.mean(auc))
        log.info("AUROC = %s, mean %.4f", np.round(np.atleast_1d(auc), 4).tolist(), mean)
        if mean > self.best_auc:
            self.best_epoch, self.best_auc, self.best_all_auc = epoch + 1, mean, auc
            if self.filepath not in (None, "NOSAVE"):
                save_model(self.model, self.filepath)

    def on_train_end(self, logs=None):
        log.info(">>> Found best AUROC: %.4f at epoch: %d, saved to: %s <<<",
                 self.best_auc, self.best_epoch, self.filepath)


class DMFlush(keras.callbacks.Callback):
    """Kept so code that adds it runs; logging already flushes every line."""
