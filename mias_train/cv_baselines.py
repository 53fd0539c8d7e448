"""The trivial baselines the mini-MIAS cross-validation sets beside the network.

The trivial baselines the mini-MIAS cross-validation (mias_train/cross_validate.py) puts
next to the network: the mean grey level of a patch or breast (its sign chosen on training
data only) and a null learner trained on noise.

They say what a figure would be without any learned lesion information, measured in the
same run, on the same folds.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

import dm_pixels
from dm_sweep import breast_mask
from mias_train.cv_chain import chain_auroc

if TYPE_CHECKING:
    import pandas as pd


def null_learner(I: pd.DataFrame, n_rep: int, seed: int, n_features: int = 20) -> dict:
    """What a learner without any lesion information scores on these folds: logistic
    regression on noise features, trained on each fold's other images and pooled out of
    fold like the network. Its spread says how far from 0.5 chance alone moves a pooled
    AUROC here; `share_at_or_below` is the one-sided p-value of the network's figure
    against "no signal" (README: below-chance figures)."""
    from sklearn.linear_model import LogisticRegression  # deferred for --help (docs/modules.md)
    rng = np.random.default_rng(seed)
    folds = I["fold"].to_numpy()
    out = {}
    for task, y, score in (("abnormal_vs_normal", I["label"] > 0, 1 - I["p_normal"]),
                           ("malignant_vs_rest", I["label"] == 2, I["p_malignant"])):
        y = np.asarray(y)
        vals = []
        for _ in range(n_rep):
            X = rng.normal(size=(len(y), n_features))
            s = np.zeros(len(y))
            for k in np.unique(folds):
                tr, te = folds != k, folds == k
                if 0 < y[tr].sum() < tr.sum():
                    s[te] = LogisticRegression(max_iter=500).fit(X[tr], y[tr]).decision_function(X[te])
            vals.append(chain_auroc(y, s))
        vals = np.asarray(vals)
        net = chain_auroc(y, np.asarray(score))
        out[task] = dict(mean=round(float(vals.mean()), 4),
                         q05=round(float(np.quantile(vals, 0.05)), 4),
                         q95=round(float(np.quantile(vals, 0.95)), 4),
                         network=round(net, 4),
                         share_at_or_below=round(float((vals <= net).mean()), 4), n_rep=n_rep)
    return out


def oriented(train_y: ArrayLike, train_s: ArrayLike) -> float:
    """+1 or -1: the direction in which a baseline feature ranks positives higher on the
    training part (never chosen on test data)."""
    y = np.asarray(train_y).astype(bool)
    if y.all() or not y.any():
        return 1.0
    return 1.0 if chain_auroc(y, np.asarray(train_s, float)) >= 0.5 else -1.0


def grey_mean(path: str, breast_only: bool) -> float:
    """Mean grey level of an image (of its breast region when breast_only)."""
    img = dm_pixels.read_image(path).astype(np.float64)   # the project's one reader
    if breast_only:
        m = breast_mask(img)[0] > 0
        if m.any():
            return float(img[m].mean())
    return float(img.mean())

