"""Prediction: batched scoring, 4-flip test-time augmentation, model averaging."""
from __future__ import annotations

from typing import Sequence

import numpy as np

FLIPS = ("none", "horizontal", "vertical", "both")


def _images_only(ds):
    """A dataset of images from one that yields (x, y[, w])."""
    return ds.map(lambda x, *rest: x)


def flip(x, mode: str):
    """Flip a (B, H, W, C) batch: horizontal = left-right, vertical = up-down."""
    import tensorflow as tf
    axes = {"none": [], "horizontal": [2], "vertical": [1], "both": [1, 2]}[mode]
    return tf.reverse(x, axis=axes) if axes else x


def predict(model, ds, tta: bool = False, verbose: int = 0) -> np.ndarray:
    """Class probabilities for every image of a finite dataset, in order.

    With `tta`, the mean of the predictions on the image and its horizontal, vertical
    and double flips (SPEC §7).
    """
    images = _images_only(ds)
    if not tta:
        return model.predict(images, verbose=verbose)
    preds = [model.predict(images.map(lambda x, m=m: flip(x, m)), verbose=verbose)
             for m in FLIPS]
    return np.mean(preds, axis=0)


def predict_models(models: Sequence, ds, tta: bool = False) -> np.ndarray:
    """Model averaging: the mean of several models' (optionally TTA) predictions."""
    return np.mean([predict(m, ds, tta=tta) for m in models], axis=0)
