"""Probability calibration maps: fitted on validation predictions, stored, applied.

Probability calibration: temperature scaling or Platt scaling fitted on validation
predictions, stored in the model's metadata, applied by predict.py.

Both maps are monotone in the positive-class score of a 2-class model, so they change
what "0.8" means but not the ranking: AUROC, ROC and PR curves are unchanged. The
method is chosen by cross-validated log-loss on the validation predictions (Platt has
two parameters and would always win in-sample). See docs/prediction.md, "Calibration".
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Sequence

import numpy as np
from scipy.optimize import minimize, minimize_scalar

from dm_errors import InputError

log = logging.getLogger(__name__)

METHODS = ("temperature", "platt")
_EPS = 1e-15     # clip only exact 0 and 1: tiny probabilities keep their order


class CalibrationError(InputError):
    """Predictions or labels a calibration cannot be fitted on, or an unknown stored map."""


def _logp(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probs, np.float64), _EPS, 1.0))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def apply(cal: dict, probs: np.ndarray) -> np.ndarray:
    """Calibrated (N, C) probabilities from raw ones, by the stored map `cal`."""
    probs = np.asarray(probs, np.float64)
    method = cal.get("method")
    if method == "temperature":
        return _softmax(_logp(probs) / float(cal["temperature"]))
    if method == "platt":
        if probs.shape[1] != 2:
            raise CalibrationError(f"Platt scaling is for 2-class models, got {probs.shape[1]}")
        p = np.clip(probs[:, 1], _EPS, 1 - _EPS)
        z = float(cal["a"]) * np.log(p / (1 - p)) + float(cal["b"])
        pos = 1.0 / (1.0 + np.exp(-z))
        return np.stack([1 - pos, pos], axis=1)
    raise CalibrationError(f"unknown calibration method {method!r} (known: {', '.join(METHODS)})")


def log_loss(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes."""
    p = np.clip(np.asarray(probs, np.float64)[np.arange(len(y)), y], _EPS, 1.0)
    return float(-np.mean(np.log(p)))


def _fit_one(method: str, probs: np.ndarray, y: np.ndarray) -> dict:
    if method == "temperature":
        res = minimize_scalar(lambda lt: log_loss(apply(dict(method=method, temperature=math.exp(lt)),
                                                        probs), y),
                              bounds=(-5.0, 5.0), method="bounded")
        return dict(method=method, temperature=float(math.exp(res.x)))
    # Platt on the logit of the positive score; a = exp(.) > 0 keeps the ranking.
    res = minimize(lambda v: log_loss(apply(dict(method=method, a=math.exp(v[0]), b=v[1]),
                                            probs), y),
                   x0=np.zeros(2), method="Nelder-Mead",
                   options=dict(xatol=1e-6, fatol=1e-9, maxiter=2000))
    return dict(method=method, a=float(math.exp(res.x[0])), b=float(res.x[1]))


def _folds(y: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """Stratified fold index arrays (each class spread over the folds), seeded."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(y), int)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        fold[idx] = np.arange(len(idx)) % k
    return [np.flatnonzero(fold == f) for f in range(k)]


def fit(probs, y, method: str = "auto", folds: int = 5, seed: int = 12345) -> dict:
    """Fit a calibration map on validation predictions (N, C) and class indices (N,).

    `method`: "temperature", "platt" (2 classes only) or "auto" (the one with the lower
    `folds`-fold cross-validated log-loss). Returns the stored form: the method, its
    parameters, and the log-losses it was chosen by.
    """
    probs = np.asarray(probs, np.float64)
    y = np.asarray(y, int)
    if probs.ndim != 2 or len(probs) != len(y):
        raise CalibrationError(f"{len(y)} labels for predictions of shape {probs.shape}")
    n_class = probs.shape[1]
    counts = np.bincount(y, minlength=n_class)
    if np.count_nonzero(counts) < 2:
        raise CalibrationError("calibration needs at least two classes among the labels")
    if method == "platt" and n_class != 2:
        raise CalibrationError(f"Platt scaling is for 2-class models; this one has {n_class}")
    cands = [method] if method != "auto" else [m for m in METHODS if m != "platt" or n_class == 2]
    if any(m not in METHODS for m in cands):
        raise CalibrationError(f"unknown method {method!r}: use auto, {', '.join(METHODS)}")
    k = int(min(folds, counts[counts > 0].min()))
    cv: dict[str, float] = {}
    if len(cands) > 1:
        if k < 2:
            raise CalibrationError("too few examples of a class to choose the method by "
                                   "cross-validation; give --method")
        parts = _folds(y, k, seed)
        for m in cands:
            losses = []
            for test in parts:
                train = np.setdiff1d(np.arange(len(y)), test)
                cal = _fit_one(m, probs[train], y[train])
                losses.append(log_loss(apply(cal, probs[test]), y[test]) * len(test))
            cv[m] = float(np.sum(losses) / len(y))
    best = min(cv, key=cv.get) if cv else cands[0]
    cal = _fit_one(best, probs, y)
    cal.update(n=int(len(y)), log_loss_raw=log_loss(probs, y),
               log_loss_fitted=log_loss(apply(cal, probs), y))
    if cv:
        cal.update(cv_log_loss=cv, cv_folds=k)
    return cal


def describe(cal: dict) -> str:
    """One line: the map and its parameters."""
    if cal.get("method") == "temperature":
        return f"temperature scaling, T={cal['temperature']:.4g}"
    if cal.get("method") == "platt":
        return f"Platt scaling, a={cal['a']:.4g} b={cal['b']:+.4g}"
    return str(cal.get("method"))


def score_models(models: Sequence, score: Callable[[list], np.ndarray],
                 enabled: bool = True) -> np.ndarray:
    """Mean probabilities of `models` (objects with `.meta` and `.path`), each calibrated by
    its stored map when `enabled`; `score([m, ...])` gives raw mean probabilities."""
    cals = [getattr(m.meta, "calibration", None) if m.meta is not None else None for m in models]
    if not any(cals):
        return score(list(models))
    if not enabled:
        log.info("raw probabilities (--no-calibration): the stored calibration is not applied")
        return score(list(models))
    out = []
    for m, cal in zip(models, cals):
        p = score([m])
        if cal:
            log.info("%s: calibrated probabilities (%s)", m.path, describe(cal))
            p = apply(cal, p)
        out.append(p)
    return np.mean(out, axis=0)
