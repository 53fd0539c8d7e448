"""Mining hard negatives: the background windows a patch classifier scores highest.

A patch model sweeps an image as the patch sampler frames it (`dm_roi.frame_image`: the
breast cropped, half a patch of zeros around it) with `dm_heatmaps.sliding_window_heatmap`
and its own stored recipe; each window's lesion score is 1 - p(class 0, background). Of
the windows that lie wholly inside the breast and that the sampler's rule calls negative
(`dm_roi.is_negative`: overlap with every lesion <= the cutoff), the K highest-scoring
are kept, no two centres closer than half a patch in both axes (greedy non-maximum
suppression). The centres are in the sampler's frame, so the sampler (`--mine-model`,
`--nb-mined`), the cross-validation's rounds (docs/mias.md) and any trainer cut the very
windows that were scored. docs/data.md describes the flags.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np

import dm_heatmaps
import dm_scoring
from dm_errors import InputError
from dm_recipe import Recipe
from dm_roi import frame_image, frame_mask, is_negative
from dm_sweep import breast_mask


class MiningError(InputError):
    """A model that cannot mine the sampler's patches (another size, not a patch model)."""


@dataclass(frozen=True)
class Mined:
    """One mined window: its centre (x, y) in the sampler's frame and its lesion score."""

    x: int
    y: int
    score: float


@dataclass
class PatchScorer:
    """A loaded patch classifier with its stored recipe, ready to sweep images."""

    model: Any
    recipe: Recipe
    patch_size: int
    path: str


def default_stride(patch_size: int) -> int:
    """The sweep's step: a quarter patch, so a half-patch suppression leaves every window
    a neighbour two steps away."""
    return max(1, int(patch_size) // 4)


def load_patch_scorer(path: str | os.PathLike, patch_size: int,
                      background: str = "background") -> PatchScorer:
    """Load a patch model for mining, refusing in one line one that cannot score the
    sampler's `patch_size` windows or whose class 0 is not `background`."""
    m = dm_scoring.load_models([str(path)])[0]
    if m.kind == "image":
        raise MiningError(f"{path}: a whole-image model; mining needs a patch classifier")
    recipe = m.recipe()
    size = m.train_size
    if size is not None and tuple(size) != (patch_size, patch_size):
        raise MiningError(f"{path}: the model was trained on {size[0]}x{size[1]} patches, "
                          f"the sampler cuts {patch_size}x{patch_size} (--patch-size)")
    if m.class_list is not None and m.class_list[0] != background:
        raise MiningError(f"{path}: class 0 is {m.class_list[0]!r}, not {background!r}; "
                          "the lesion score is 1 - p(background)")
    return PatchScorer(m.model, recipe, int(patch_size), str(path))


def windows_inside(img: np.ndarray, patch_size: int) -> np.ndarray:
    """Boolean map of the centres whose patch (as `dm_roi.extract_patch` cuts it) lies
    wholly inside the breast (`dm_sweep.breast_mask` eroded by the patch)."""
    kernel = np.ones((patch_size, patch_size), np.uint8)
    return cv2.erode(breast_mask(img)[0], kernel, borderType=cv2.BORDER_CONSTANT,
                     borderValue=0) > 0


def pick_windows(scores: np.ndarray, ys: np.ndarray, xs: np.ndarray, allowed: np.ndarray,
                 masks: Sequence[np.ndarray], patch_size: int, k: int,
                 neg_cutoff: float) -> list[Mined]:
    """The `k` highest `scores` (rows x cols, at centres `ys` x `xs`) among the `allowed`
    windows that are negatives for every mask, greedily: a window within half a patch of
    one already kept in both axes is passed over. Highest first; ties in row-major order."""
    if k <= 0:
        return []
    half = patch_size // 2
    areas = [int(np.count_nonzero(m)) for m in masks]
    flat = scores.ravel()
    cols = scores.shape[1]
    kept: list[Mined] = []
    for i in np.argsort(-flat, kind="stable"):
        r, c = divmod(int(i), cols)
        if not allowed[r, c] or not np.isfinite(flat[i]):
            continue
        y, x = int(ys[r]), int(xs[c])
        if any(abs(x - m.x) < half and abs(y - m.y) < half for m in kept):
            continue
        if not is_negative((x, y), patch_size, masks, neg_cutoff, areas):
            continue
        kept.append(Mined(x, y, float(flat[i])))
        if len(kept) == k:
            break
    return kept


def mine_framed(scorer: PatchScorer, img: np.ndarray, masks: Sequence[np.ndarray], k: int,
                neg_cutoff: float = 0.35, stride: int | None = None,
                batch_size: int = 256) -> list[Mined]:
    """The `k` hard negatives of an image already in the sampler's frame (`masks`, 0/1, on
    the same grid), centres in that frame. The sweep covers the whole framed image; only
    windows inside the breast can be picked."""
    ps = scorer.patch_size
    stride = stride or default_stride(ps)
    if k <= 0 or min(img.shape[:2]) < ps:
        return []
    hm = dm_heatmaps.sliding_window_heatmap(scorer.model, img, scorer.recipe, ps, stride,
                                             batch_size=batch_size, segment=False, pad=False)
    rows, cols = hm.probs.shape[:2]
    ys = hm.centre0[0] + stride * np.arange(rows)
    xs = hm.centre0[1] + stride * np.arange(cols)
    allowed = windows_inside(img, ps)[np.ix_(ys, xs)]
    return pick_windows(1.0 - hm.probs[..., 0], ys, xs, allowed, masks, ps, k, neg_cutoff)


def mine_image(scorer: PatchScorer, img: np.ndarray, masks: Sequence[np.ndarray], k: int,
               neg_cutoff: float = 0.35, segment: bool = True, stride: int | None = None
               ) -> tuple[list[Mined], tuple[int, int, int, int]]:
    """The `k` hard negatives of a full image at the recipe size (as the sampler reads it)
    with its lesion masks on the same grid: framed as the sampler frames it, centres in
    that frame. Returns (the windows, the breast crop box)."""
    framed, bbox = frame_image(img, scorer.patch_size, segment)
    fmasks = [frame_mask(m, bbox, scorer.patch_size) for m in masks]
    return mine_framed(scorer, framed, fmasks, k, neg_cutoff, stride), bbox
