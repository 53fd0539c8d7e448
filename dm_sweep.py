"""Breast segmentation and the sliding-window sweep over a whole image.

Breast segmentation and the sliding-window sweep over a whole image: shared by the patch
sampler, the heatmaps and inference (docs/method.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

from dm_errors import InputError
from dm_recipe import Recipe, finish_channels, grey_steps

Bbox = tuple[int, int, int, int]  # x, y, w, h (OpenCV order)


def largest_region(binary: np.ndarray, fill_holes: bool = True) -> tuple[np.ndarray, Bbox | None]:
    """The largest object of a binary image (its non-zero pixels) as a 0/255 mask, and
    its bounding box (None: no object).

    The object is the one whose outer contour encloses the largest area; `fill_holes`
    fills that contour (holes: background not connected to the border), otherwise the
    mask is the object's own 8-connected pixels. The project's one segmentation: the
    breast (`breast_mask`) and the original's `DMImagePreprocessor` names.
    """
    b = (binary > 0).astype(np.uint8)
    contours, _ = cv2.findContours(b, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return np.zeros_like(b), None
    idx = int(np.argmax([cv2.contourArea(c) for c in contours]))
    x, y, w, h = cv2.boundingRect(contours[idx])
    if fill_holes:
        mask = cv2.drawContours(np.zeros_like(b), contours, idx, 255, thickness=-1)
    else:
        _, labels = cv2.connectedComponents(b, connectivity=8)
        px, py = contours[idx][0][0]       # a pixel of the object itself
        mask = np.where(labels == labels[py, px], 255, 0).astype(np.uint8)
    return mask, (int(x), int(y), int(w), int(h))


def breast_mask(img: np.ndarray, low_int_threshold: float = 0.05) -> tuple[np.ndarray, Bbox]:
    """Filled largest contour of the thresholded image (the breast) and its bounding box.

    The image is first scaled to 8 bits by its maximum; a threshold < 1 is a fraction of
    the 8-bit maximum, >= 1 an 8-bit intensity.
    """
    mx = float(img.max())
    h, w = img.shape[:2]
    if mx <= 0:
        return np.zeros((h, w), np.uint8), (0, 0, w, h)
    img8 = (img.astype(np.float32) / mx * 255).astype(np.uint8)
    th = int(img8.max() * low_int_threshold) if low_int_threshold < 1 else int(low_int_threshold)
    _, binary = cv2.threshold(img8, th, 255, cv2.THRESH_BINARY)
    mask, bbox = largest_region(binary)
    return mask, (0, 0, w, h) if bbox is None else bbox


def segment_breast(img: np.ndarray, low_int_threshold: float = 0.05,
                   crop: bool = True) -> tuple[np.ndarray, Bbox]:
    """Zero everything outside the breast and (optionally) crop to its bounding box.

    Returns (image, bbox); apply the same crop to masks with `crop_img(mask, bbox)`.
    """
    mask, bbox = breast_mask(img, low_int_threshold)
    out = img.copy()
    out[mask == 0] = 0
    if crop:
        out = crop_img(out, bbox)
    return out, bbox


def crop_img(img: np.ndarray, bbox: Bbox) -> np.ndarray:
    """Crop by an (x, y, w, h) box."""
    x, y, w, h = bbox
    return img[y:y + h, x:x + w]


def add_img_margins(img: np.ndarray, margin: int) -> np.ndarray:
    """Zero-pad every side by `margin` pixels (so patches centred at the border fit)."""
    m = int(margin)
    return cv2.copyMakeBorder(img, m, m, m, m, cv2.BORDER_CONSTANT, value=0) if m > 0 else img


class SweepError(InputError):
    """A sliding-window sweep that cannot be laid out (image smaller than a patch, ...)."""


def sweep_grid(shape: tuple[int, int], patch_size: int, stride: int
               ) -> tuple[int, int, int, int]:
    """(rows, cols, y0, x0): every full patch position at `stride`, the sweep centred.

    (y0, x0) is the top-left corner of the first patch. (The original rounded
    (H - patch)/stride + 0.49, which drops the last position when the division is exact.)
    """
    h, w = int(shape[0]), int(shape[1])
    if h < patch_size or w < patch_size:
        raise SweepError(f"image of size {(h, w)} is smaller than the patch size {patch_size}")
    if stride < 1:
        raise SweepError(f"stride must be >= 1, got {stride}")
    rows = (h - patch_size) // stride + 1
    cols = (w - patch_size) // stride + 1
    y0 = (h - (patch_size + (rows - 1) * stride)) // 2
    x0 = (w - (patch_size + (cols - 1) * stride)) // 2
    return rows, cols, y0, x0


def prepare_patch(patch: np.ndarray, recipe: Recipe) -> np.ndarray:
    """A raw grey patch as network input: the recipe's steps 3-7 on the patch itself
    (img_scale uses the patch's own maximum, as patches were scaled in training)."""
    return finish_channels(grey_steps(patch, recipe), recipe)


@dataclass(frozen=True)
class Sweep:
    """Where the patches of a sliding window lie: `rows` x `cols` positions from (y0, x0)
    at `stride` on `padded` (`image`, the segmented grey image, with `margin` zero pixels
    on every side)."""

    image: np.ndarray
    padded: np.ndarray
    bbox: Bbox | None
    patch_size: int
    stride: int
    rows: int
    cols: int
    y0: int
    x0: int
    margin: int

    @property
    def centre0(self) -> tuple[int, int]:
        """Centre of the first patch in the coordinates of `image`."""
        half = self.patch_size // 2
        return self.y0 + half - self.margin, self.x0 + half - self.margin

    def patches(self, recipe: Recipe, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Patches start..stop-1 (row-major) as network input (`prepare_patch`)."""
        stop = self.rows * self.cols if stop is None else stop
        p, s = self.patch_size, self.stride
        corners = [(self.y0 + (i // self.cols) * s, self.x0 + (i % self.cols) * s)
                   for i in range(start, stop)]
        return np.stack([prepare_patch(self.padded[y:y + p, x:x + p], recipe)
                         for y, x in corners])


def sweep_image(img: np.ndarray, patch_size: int, stride: int, segment: bool = True,
                pad: bool = True, low_int_threshold: float = 0.05) -> Sweep:
    """Lay out a centred sweep over a grey image (already resized): optional breast
    segmentation (crop to the breast), then padding by half a patch so border pixels get
    centred patches."""
    if img.ndim != 2:
        raise SweepError(f"expected a 2-D grey image, got shape {img.shape}")
    bbox = None
    if segment:
        img, bbox = segment_breast(img, low_int_threshold)
    margin = patch_size // 2 if pad else 0
    padded = add_img_margins(img, margin)
    rows, cols, y0, x0 = sweep_grid(padded.shape, patch_size, stride)
    return Sweep(img, padded, bbox, patch_size, stride, rows, cols, y0, x0, margin)


def sweep_probs(predict_batch: Callable[[np.ndarray], np.ndarray], sweep: Sweep,
                recipe: Recipe, batch_size: int = 64) -> np.ndarray:
    """Class probabilities (rows, cols, classes) of every patch of a sweep, `batch_size`
    patches per call of `predict_batch` (float32 batch -> probabilities)."""
    n = sweep.rows * sweep.cols
    out = None
    for start in range(0, n, batch_size):
        batch = sweep.patches(recipe, start, min(n, start + batch_size))
        p = np.asarray(predict_batch(batch.astype(np.float32)))
        if out is None:
            out = np.empty((n, p.shape[-1]), np.float32)
        out[start:start + len(p)] = p
    return out.reshape(sweep.rows, sweep.cols, -1)
