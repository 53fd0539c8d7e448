"""Front door: the original's `dm_inference` names (two-view scoring).

The original's `dm_inference` names (docs/original.md): the DREAM challenge's two-view
scoring. The project's prediction code is in `dm_scoring` (whole images), `dm_inputs`
(input lists, the predictions file) and `dm_heatmaps`; project code imports from those
rooms, never from here; code written for the original keeps importing this.
"""
from __future__ import annotations

import numpy as np

from dm_errors import retired

INFER_HEADER_VAL = "subjectId\texamIndex\tlaterality\tconfidence\ttarget\n"
INFER_HEADER = "subjectId\tlaterality\tconfidence\n"


def pred_2view_img_list(cc_img_list, mlo_img_list, model, use_mean: bool = False) -> float:
    """One score for a breast from a two-input (CC, MLO) model: every CC image is paired
    with every MLO image, the pairs are scored in one batch, and their maximum (or mean)
    is returned, as the original did."""
    pairs = [(cc, mlo) for cc in cc_img_list for mlo in mlo_img_list]
    if not pairs:
        raise ValueError("pred_2view_img_list needs at least one CC and one MLO image")
    cc = np.stack([p[0] for p in pairs])
    mlo = np.stack([p[1] for p in pairs])
    preds = np.asarray(model.predict_on_batch([cc, mlo]))
    return float(preds.mean() if use_mean else preds.max())


make_pred_case = retired(
    "dm_inference.make_pred_case",
    "the heatmap scores of ddsm_train/heatmap_score.py with a classifier of your own; the "
    "original's heatmap features (dm_region) are not part of this project (docs/original.md)")
