"""Drawing heatmaps onto mammograms.

Drawing heatmaps onto mammograms: a grey image in display range, a heatmap grid placed on
its image, the colour overlay. No TensorFlow here, so the tools that only draw stay light.
"""
from __future__ import annotations

import cv2
import numpy as np

from dm_inputs import InferenceError


def to_display(grey: np.ndarray) -> np.ndarray:
    """A grey image as uint8 for display: min-max stretched (flat images become 0)."""
    g = np.asarray(grey, np.float32)
    lo, hi = float(g.min()), float(g.max())
    if hi <= lo:
        return np.zeros(g.shape, np.uint8)
    return np.round((g - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def place_heatmap(heat: np.ndarray, shape: tuple[int, int], centre0: tuple[int, int] | None = None,
                  step: int | None = None) -> np.ndarray:
    """A (rows, cols) map as an image of `shape`, bilinear, NaN where it has no value.

    Without `centre0`/`step` the grid is stretched over the whole image (fprop, Grad-CAM);
    with them cell (r, c) is centred at centre0 + (r, c)*step (sliding window).
    """
    heat = np.asarray(heat, np.float32)
    h, w = shape
    if centre0 is None:
        return cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)
    rows, cols = heat.shape
    out = np.full((h, w), np.nan, np.float32)
    y1, x1 = centre0[0] - step // 2, centre0[1] - step // 2
    big = cv2.resize(heat, (cols * step, rows * step), interpolation=cv2.INTER_LINEAR)
    ys, xs = max(0, y1), max(0, x1)
    ye, xe = min(h, y1 + rows * step), min(w, x1 + cols * step)
    if ye > ys and xe > xs:
        out[ys:ye, xs:xe] = big[ys - y1:ye - y1, xs - x1:xe - x1]
    return out


def overlay_heatmap(grey: np.ndarray, heat: np.ndarray, alpha: float = 0.4,
                    colormap: int = cv2.COLORMAP_JET, vmin: float = 0.0, vmax: float = 1.0
                    ) -> np.ndarray:
    """A BGR uint8 image: the colour-mapped heat (same size as `grey`) blended on the grey
    mammogram with weight `alpha`; NaN heat (no value) leaves the grey image."""
    if heat.shape != grey.shape:
        raise InferenceError(f"heatmap {heat.shape} and image {grey.shape} differ in size")
    base = cv2.cvtColor(to_display(grey), cv2.COLOR_GRAY2BGR)
    valid = np.isfinite(heat)
    h = np.clip((np.nan_to_num(heat, nan=vmin) - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    colour = cv2.applyColorMap(np.round(h * 255).astype(np.uint8), colormap)
    blend = cv2.addWeighted(colour, alpha, base, 1.0 - alpha, 0.0)
    return np.where(valid[..., None], blend, base)
