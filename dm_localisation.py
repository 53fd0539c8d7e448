"""Localisation of heatmaps measured against lesion masks (docs/localisation.md).

    python dm_localisation.py DATA_DIR HEATMAPS.npz [MORE.npz ...] --out DIR \
        [--val-heatmaps VAL.npz ...] [--tolerance-mm 5] [--pixel-size-mm MM]

DATA_DIR is a recipe output folder (roi_mask_path.csv, roi_masks/, full_images/; see
dm_recipe_utils); each .npz is written by ddsm_train/heatmap_score.py (one map kind each:
sliding, fprop or gradcam). Images are matched to their masks by file name. For every map
kind, over the images with at least one lesion mask: the pointing game (the map's maximum
inside the breast lies in a lesion dilated by the tolerance), the map's mass inside the
lesions, Dice at the threshold chosen on the validation maps, and the fraction of lesions
found among the top-k peaks of images with k >= 2 lesions; each with a 95% bootstrap
interval over images and beside two baselines measured on the same images: chance (a
uniform random point in the breast) and the brightest breast pixel. Writes
DIR/localisation.json, DIR/localisation_images.csv and DIR/localisation.png.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import sys
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

import dm_cli
import dm_output
from dm_errors import InputError
import dm_pixels
import dm_recipe
import dm_sweep

log = logging.getLogger("dm_localisation")

TOLERANCE_MM = 5.0
PEAK_SEPARATION_MM = 10.0
# With no pixel size known, an image is taken to span this height: the long side of the
# 18x24 cm detector; mini-MIAS spans 1024 x 0.2 = 205 mm, INbreast 3328-4084 x 0.07 =
# 233-286 mm, DDSM scans about 5000 x 0.05 = 250 mm (docs/localisation.md).
NOMINAL_HEIGHT_MM = 240.0
MIAS_PIXEL_MM = 0.2          # mini-MIAS: 200 micron pixels at 1024 x 1024
MIAS_SIDE = 1024
DICE_THRESHOLDS = tuple(np.round(np.arange(0.05, 0.96, 0.05), 2))
KINDS = ("sliding", "fprop", "gradcam")
BASELINES = ("chance", "brightest")


class LocalisationError(InputError):
    """Heatmaps, masks or flags the localisation cannot use."""


# ------------------------------------------------------------------------------ cases

@dataclass
class Case:
    """One image with its lesion masks (bool, at the image's grid) and breast mask."""

    name: str
    image: np.ndarray
    lesions: list[np.ndarray]
    breast: np.ndarray
    pathologies: list[str] = field(default_factory=list)

    @property
    def union(self) -> np.ndarray:
        return np.logical_or.reduce(self.lesions) if self.lesions else np.zeros_like(self.breast)


def breast_region(img: np.ndarray) -> np.ndarray:
    """The project's breast segmentation (dm_sweep.breast_mask, as the sliding window's
    crop uses) as a bool mask."""
    return dm_sweep.breast_mask(img)[0] > 0


def make_case(name: str, image: np.ndarray, lesions: Sequence[np.ndarray],
              pathologies: Sequence[str] = ()) -> Case:
    """A Case from an image and its 0/255 (or bool) lesion masks, the breast segmented."""
    les = [np.asarray(m) > 0 for m in lesions]
    for m in les:
        if m.shape != image.shape[:2]:
            raise LocalisationError(f"{name}: lesion mask {m.shape} and image "
                                    f"{image.shape[:2]} differ in size")
    return Case(name, image, les, breast_region(image), list(pathologies))


def pixel_size_mm(data_dir: str | os.PathLike | None, shape: Sequence[int],
                  given: float | None = None) -> tuple[tuple[float, float], str]:
    """(row mm, column mm) of one pixel of images of `shape` and where it comes from:
    the flag; layout.json's `pixel_size_mm`; mini-MIAS (mias_info.csv beside the layout:
    0.2 mm at 1024 x 1024); else the nominal 240 mm image height (square pixels)."""
    h, w = int(shape[0]), int(shape[1])
    if given is not None:
        if given <= 0:
            raise LocalisationError(f"--pixel-size-mm {given}: must be > 0")
        return (float(given), float(given)), "given"
    if data_dir is not None:
        import dm_recipe_utils
        info = dm_recipe_utils.read_layout_info(data_dir) or {}
        if info.get("pixel_size_mm"):
            v = float(info["pixel_size_mm"])
            return (v, v), "layout.json"
        if (pathlib.Path(data_dir) / "mias_info.csv").is_file():
            return (MIAS_PIXEL_MM * MIAS_SIDE / h, MIAS_PIXEL_MM * MIAS_SIDE / w), "mini-MIAS"
    v = NOMINAL_HEIGHT_MM / h
    return (v, v), f"nominal ({NOMINAL_HEIGHT_MM:.0f} mm image height)"


def dilate(mask: np.ndarray, radius_px: tuple[float, float]) -> np.ndarray:
    """A bool mask grown by an elliptical disc of (row, column) radii in pixels (the
    tolerance); radius 0 leaves it unchanged."""
    import cv2
    ry, rx = (int(round(r)) for r in radius_px)
    if ry <= 0 and rx <= 0:
        return mask.astype(bool)
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * rx + 1, 2 * ry + 1))
    return cv2.dilate(mask.astype(np.uint8), k) > 0


# ------------------------------------------------------------------------------ figures

def _valid(heat: np.ndarray, breast: np.ndarray) -> np.ndarray:
    return breast & np.isfinite(heat)


def peak_pixels(heat: np.ndarray, breast: np.ndarray) -> np.ndarray:
    """Bool mask of the pixels where the map is largest inside the breast (ties kept)."""
    ok = _valid(heat, breast)
    if not ok.any():
        return np.zeros(heat.shape, bool)
    mx = np.max(heat[ok])
    return ok & (heat >= mx)


def pointing_hit(heat: np.ndarray, target: np.ndarray, breast: np.ndarray) -> float:
    """1 if the map's maximum inside the breast falls in `target` (the dilated lesions), 0
    if not; tied maxima count as a random pick among them (the fraction inside). A map with
    no value in the breast scores 0."""
    peak = peak_pixels(heat, breast)
    n = int(peak.sum())
    return float((peak & target).sum()) / n if n else 0.0


def chance_hit(target: np.ndarray, breast: np.ndarray) -> float:
    """The pointing game of a uniform random point in the breast: area ratio."""
    nb = int(breast.sum())
    return float((target & breast).sum()) / nb if nb else 0.0


def mass_fraction(heat: np.ndarray, lesion: np.ndarray, breast: np.ndarray) -> float:
    """Share of the map's mass (negative values as 0) inside the breast that lies in the
    lesions; a map of zeros counts as uniform (the area ratio)."""
    ok = _valid(heat, breast)
    h = np.clip(np.where(ok, heat, 0.0), 0, None).astype(np.float64)
    total = h.sum()
    if total <= 0:
        return chance_hit(lesion & ok, ok)
    return float(h[lesion].sum() / total)


def normalised(heat: np.ndarray, breast: np.ndarray) -> np.ndarray:
    """The map min-max scaled to [0, 1] inside the breast (NaN outside), so one threshold
    suits every image and every map kind."""
    ok = _valid(heat, breast)
    out = np.full(heat.shape, np.nan, np.float32)
    if not ok.any():
        return out
    v = heat[ok].astype(np.float64)
    lo, hi = v.min(), v.max()
    out[ok] = (v - lo) / (hi - lo) if hi > lo else 0.0
    return out


def dice(heat_norm: np.ndarray, lesion: np.ndarray, breast: np.ndarray,
         threshold: float) -> float:
    """Dice of {normalised map >= threshold} (inside the breast) with the lesions."""
    pred = _valid(heat_norm, breast) & (np.nan_to_num(heat_norm, nan=-1.0) >= threshold)
    les = lesion & breast
    den = int(pred.sum()) + int(les.sum())
    return 2.0 * float((pred & les).sum()) / den if den else 1.0


def choose_threshold(norm_maps: Sequence[np.ndarray], cases: Sequence[Case],
                     thresholds: Sequence[float] = DICE_THRESHOLDS) -> float:
    """The threshold with the highest mean Dice over (validation) images."""
    if not cases:
        raise LocalisationError("no validation image with a lesion to choose a Dice threshold")
    best, best_t = -1.0, float(thresholds[0])
    for t in thresholds:
        m = float(np.mean([dice(h, c.union, c.breast, t) for h, c in zip(norm_maps, cases)]))
        if m > best + 1e-12:
            best, best_t = m, float(t)
    return best_t


def top_peaks(heat: np.ndarray, breast: np.ndarray, k: int,
              separation_px: tuple[float, float]) -> list[tuple[int, int]]:
    """Up to k (row, col) peaks, greedy: the maximum, then the maximum outside an
    elliptical disc of the separation radius around every earlier peak."""
    ok = _valid(heat, breast).copy()
    h = np.where(ok, heat, -np.inf)
    hh, ww = heat.shape
    yy, xx = np.ogrid[:hh, :ww]
    ry, rx = max(separation_px[0], 1e-6), max(separation_px[1], 1e-6)
    peaks = []
    for _ in range(int(k)):
        if not ok.any():
            break
        i = int(np.argmax(np.where(ok, h, -np.inf)))
        r, c = divmod(i, ww)
        peaks.append((r, c))
        ok &= ((yy - r) / ry) ** 2 + ((xx - c) / rx) ** 2 > 1.0
    return peaks


def topk_found(heat: np.ndarray, targets: Sequence[np.ndarray], breast: np.ndarray,
               separation_px: tuple[float, float]) -> float:
    """Fraction of the k lesions (dilated masks `targets`) holding one of the top-k peaks."""
    peaks = top_peaks(heat, breast, len(targets), separation_px)
    return float(np.mean([any(t[r, c] for r, c in peaks) for t in targets]))


def topk_chance(targets: Sequence[np.ndarray], breast: np.ndarray) -> float:
    """Expected fraction found by k uniform random points in the breast."""
    k = len(targets)
    return float(np.mean([1.0 - (1.0 - chance_hit(t, breast)) ** k for t in targets]))


# ------------------------------------------------------------------------------ bootstrap

def bootstrap_means(columns: dict[str, np.ndarray], n_boot: int = 2000, seed: int = 12345,
                    level: float = 0.95) -> dict[str, list[float]]:
    """Percentile intervals of the means of per-image values, every column resampled with
    the same images (so differences between columns are paired). The AUROC helper of
    dm_metrics ranks labelled cases and cannot average per-image figures."""
    cols = {k: np.asarray(v, np.float64) for k, v in columns.items()}
    n = len(next(iter(cols.values()))) if cols else 0
    if n == 0:
        return {k: [float("nan"), float("nan")] for k in cols}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, (int(n_boot), n))
    a = (1 - level) / 2
    out = {}
    for k, v in cols.items():
        means = v[idx].mean(axis=1)
        lo, hi = np.quantile(means, [a, 1 - a])
        out[k] = [float(lo), float(hi)]
    return out


# ------------------------------------------------------------------------------ evaluation

@dataclass
class Settings:
    """How figures are measured: tolerance and peak separation in mm at the pixel size."""

    pixel_mm: tuple[float, float]
    pixel_source: str = "given"
    tolerance_mm: float = TOLERANCE_MM
    peak_separation_mm: float = PEAK_SEPARATION_MM
    n_boot: int = 2000
    seed: int = 12345
    level: float = 0.95

    def px(self, mm: float) -> tuple[float, float]:
        return mm / self.pixel_mm[0], mm / self.pixel_mm[1]


def per_image(heat: np.ndarray, case: Case, s: Settings, threshold: float | None) -> dict:
    """Every figure of one map on one image."""
    tol = s.px(s.tolerance_mm)
    targets = [dilate(m, tol) for m in case.lesions]
    target = np.logical_or.reduce(targets)
    peak = peak_pixels(heat, case.breast)
    rec = dict(hit=pointing_hit(heat, target, case.breast),
               mass=mass_fraction(heat, case.union, case.breast))
    if peak.any():
        r, c = np.argwhere(peak)[0]
        rec["peak"] = (int(r), int(c))
        rec["miss_mm"] = distance_mm(case.union, (int(r), int(c)), s.pixel_mm)
    else:
        rec["peak"], rec["miss_mm"] = None, float("nan")
    if threshold is not None:
        rec["dice"] = dice(normalised(heat, case.breast), case.union, case.breast, threshold)
    if len(case.lesions) >= 2:
        rec["topk"] = topk_found(heat, targets, case.breast, s.px(s.peak_separation_mm))
    return rec


def distance_mm(lesion: np.ndarray, point: tuple[int, int], pixel_mm: tuple[float, float]
                ) -> float:
    """Distance in mm from a pixel to the nearest lesion pixel (0 inside)."""
    ys, xs = np.nonzero(lesion)
    if len(ys) == 0:
        return float("nan")
    d = np.hypot((ys - point[0]) * pixel_mm[0], (xs - point[1]) * pixel_mm[1])
    return float(d.min())


def baseline_image(case: Case, s: Settings, threshold: float | None) -> dict:
    """Chance and brightest-pixel figures of one image."""
    tol = s.px(s.tolerance_mm)
    targets = [dilate(m, tol) for m in case.lesions]
    target = np.logical_or.reduce(targets)
    bright = case.image.astype(np.float32)
    out = dict(hit_chance=chance_hit(target, case.breast),
               mass_chance=chance_hit(case.union, case.breast),
               hit_brightest=pointing_hit(bright, target, case.breast),
               mass_brightest=mass_fraction(bright, case.union, case.breast),
               # a uniform map thresholded: the whole breast
               dice_chance=dice(case.breast.astype(np.float32), case.union, case.breast, 0.5))
    if threshold is not None:
        out["dice_brightest"] = dice(normalised(bright, case.breast), case.union, case.breast,
                                     threshold)
    if len(case.lesions) >= 2:
        out["topk_chance"] = topk_chance(targets, case.breast)
        out["topk_brightest"] = topk_found(bright, targets, case.breast,
                                           s.px(s.peak_separation_mm))
    return out


def _r(v: float) -> float:
    return round(float(v), 4)


def _ci(v: list[float]) -> list[float]:
    return [_r(v[0]), _r(v[1])]


def evaluate(cases: Sequence[Case], maps: Sequence[np.ndarray], settings: Settings,
             val_cases: Sequence[Case] = (), val_maps: Sequence[np.ndarray] = ()
             ) -> tuple[dict, list[dict]]:
    """Figures of one map kind over images with lesions: (summary, per-image records).

    The Dice thresholds (map's and brightest baseline's) are chosen on the validation maps
    when given; without them Dice is not reported (None)."""
    cases = list(cases)
    if len(cases) != len(maps):
        raise LocalisationError(f"{len(cases)} images but {len(maps)} maps")
    if not cases:
        raise LocalisationError("no image with a lesion mask among the heatmaps")
    thr = thr_b = None
    if len(val_cases):
        thr = choose_threshold([normalised(h, c.breast) for h, c in zip(val_maps, val_cases)],
                               val_cases)
        thr_b = choose_threshold([normalised(c.image.astype(np.float32), c.breast)
                                  for c in val_cases], val_cases)
    recs = []
    for h, c in zip(maps, cases):
        rec = dict(name=c.name, n_lesions=len(c.lesions), **per_image(h, c, settings, thr))
        b = baseline_image(c, settings, thr_b)
        rec.update(b)
        recs.append(rec)
    col = lambda k: np.array([r[k] for r in recs], np.float64)  # noqa: E731
    cols = {k: col(k) for k in ("hit", "hit_chance", "hit_brightest", "mass", "mass_chance",
                                "mass_brightest", "dice_chance")}
    if thr is not None:
        cols.update(dice=col("dice"), dice_brightest=col("dice_brightest"))
    cols["hit_minus_brightest"] = cols["hit"] - cols["hit_brightest"]      # paired
    ci = bootstrap_means(cols, settings.n_boot, settings.seed, settings.level)
    summ = dict(n_images=len(recs), n_lesions=int(sum(r["n_lesions"] for r in recs)))
    for fig, key in (("pointing_game", "hit"), ("mass_fraction", "mass"), ("dice", "dice")):
        if key not in cols:
            summ[fig] = None
            continue
        for suffix, k in (("", key), ("_chance", f"{key}_chance"),
                          ("_brightest", f"{key}_brightest")):
            if k in cols:
                summ[fig + suffix] = _r(cols[k].mean())
                summ[fig + suffix + "_ci"] = _ci(ci[k])
    summ["pointing_game_minus_brightest"] = _r(cols["hit_minus_brightest"].mean())
    summ["pointing_game_minus_brightest_ci"] = _ci(ci["hit_minus_brightest"])
    summ["dice_threshold"] = thr
    summ["dice_threshold_brightest"] = thr_b
    multi = [r for r in recs if "topk" in r]
    summ["n_multi_lesion_images"] = len(multi)
    if multi:
        tk = {k: np.array([r[k] for r in multi]) for k in ("topk", "topk_chance", "topk_brightest")}
        tci = bootstrap_means(tk, settings.n_boot, settings.seed, settings.level)
        summ.update(topk_found=_r(tk["topk"].mean()), topk_found_ci=_ci(tci["topk"]),
                    topk_found_chance=_r(tk["topk_chance"].mean()),
                    topk_found_brightest=_r(tk["topk_brightest"].mean()))
    else:
        summ.update(topk_found=None, topk_found_chance=None, topk_found_brightest=None)
    return summ, recs


def malignant_only(cases: Sequence[Case], maps: Sequence[np.ndarray], s: Settings) -> dict:
    """The pointing game on the images with a malignant lesion, against their malignant
    lesions only (what a whole-image malignancy model is trained to find)."""
    sub = [(Case(c.name, c.image, [m for m, p in zip(c.lesions, c.pathologies)
                                   if p.upper() == "MALIGNANT"], c.breast, ["MALIGNANT"]), h)
           for c, h in zip(cases, maps) if any(p.upper() == "MALIGNANT" for p in c.pathologies)]
    if not sub:
        return dict(n_images_malignant=0, pointing_game_malignant=None)
    summ, _ = evaluate([c for c, _ in sub], [h for _, h in sub], s)
    return {f"pointing_game_malignant{k[len('pointing_game'):]}": v for k, v in summ.items()
            if k.startswith("pointing_game")} | dict(n_images_malignant=len(sub))


def brief(summary: dict) -> dict:
    """The numeric figures of a `localise` summary (per kind, and the comparisons), for a
    run's summary whose numeric leaves are aggregated over seeds."""
    keep = lambda v: isinstance(v, (int, float, list)) and not isinstance(v, bool)  # noqa: E731
    out = {k: {f: v for f, v in summary[k].items() if keep(v) and f != "heatmaps"}
           for k in KINDS if k in summary}
    out["compare"] = {k: {f: v for f, v in c.items() if keep(v)}
                      for k, c in summary.get("compare", {}).items()}
    if "settings" in summary:
        out["tolerance_mm"] = summary["settings"]["tolerance_mm"]
    return out


def compare(recs_a: Sequence[dict], recs_b: Sequence[dict], settings: Settings) -> dict:
    """Paired difference of two map kinds' pointing games (a - b) on their common images."""
    hb = {r["name"]: r["hit"] for r in recs_b}
    common = [r for r in recs_a if r["name"] in hb]
    if not common:
        return dict(n_images=0, diff=None)
    d = np.array([r["hit"] - hb[r["name"]] for r in common])
    ci = bootstrap_means({"d": d}, settings.n_boot, settings.seed, settings.level)["d"]
    return dict(n_images=len(common), diff=_r(d.mean()), diff_ci=_ci(ci))


# ------------------------------------------------------------------------------ maps on the image

def grid_to_image(values: np.ndarray, first: tuple[float, float], step: tuple[float, float],
                  shape: Sequence[int]) -> np.ndarray:
    """A (rows, cols) grid whose cell (r, c) is centred at first + (r, c) * step (pixel
    coordinates of an image of `shape`) as a bilinear map on that image, NaN farther than
    half a step beyond the outer cells."""
    from scipy.ndimage import map_coordinates
    values = np.asarray(values, np.float64)
    h, w = int(shape[0]), int(shape[1])
    fy = (np.arange(h) - first[0]) / step[0]
    fx = (np.arange(w) - first[1]) / step[1]
    gy, gx = np.meshgrid(fy, fx, indexing="ij")
    out = map_coordinates(values, [np.clip(gy, 0, values.shape[0] - 1),
                                   np.clip(gx, 0, values.shape[1] - 1)], order=1, mode="nearest")
    inside = ((gy >= -0.5) & (gy <= values.shape[0] - 0.5)
              & (gx >= -0.5) & (gx <= values.shape[1] - 0.5))
    return np.where(inside, out, np.nan).astype(np.float32)


def lesion_channel(m: np.ndarray, kind: str) -> np.ndarray:
    """The lesion score of a stored map: 1 - p(first class, background) for patch maps,
    the map itself for Grad-CAM."""
    m = np.asarray(m, np.float32)
    if kind == "gradcam" or m.ndim == 2:
        return m
    return 1.0 - m[..., 0]


def map_on_source(m: np.ndarray, meta: dict, i: int, source: np.ndarray) -> np.ndarray:
    """Map i of a heatmap_score .npz (its `meta`) on the grid of the source image it was
    scored from, with each cell at the centre of what it saw: the sliding window's patch
    centres (on the resized, breast-cropped image), fprop's pooling windows on the trunk's
    feature map, Grad-CAM's feature-map cells."""
    kind = meta["mode"]
    ch = lesion_channel(m, kind)
    H, W = source.shape[:2]
    if kind == "sliding":
        size = dm_recipe.Recipe(img_size=tuple(meta["img_size"]) if meta.get("img_size") else None,
                               target_height=meta.get("img_height"))
        hs, ws = dm_recipe.target_shape(source.shape[:2], size)
        boxes = meta.get("bbox")
        if boxes is not None and boxes[i] is not None:
            x0, y0 = boxes[i][:2]
        elif boxes is None and meta.get("segment", True):     # files written before `bbox`
            x0, y0 = dm_sweep.segment_breast(dm_recipe.resize(source, size))[1][:2]
        else:
            x0, y0 = 0, 0
        c0 = meta["centre0"][i]
        first, step = (c0[0] + y0, c0[1] + x0), (float(meta["stride"]),) * 2
    else:
        hs, ws = meta["recipe"]["img_size"] or (H, W)
        rows, cols = ch.shape
        if kind == "fprop":
            fh, fw = meta["feature_map"]
            sy, sx = hs / fh, ws / fw
            py, px = meta["avg_pool_size"]
            ty, tx = meta["hm_strides"]
            first = (py / 2 * sy - 0.5, px / 2 * sx - 0.5)
            step = (ty * sy, tx * sx)
        else:   # at what each cell sees (heatmap_score.cell_offset), when measured
            sy, sx = hs / rows, ws / cols
            dy, dx = meta.get("cell_offset") or (0.0, 0.0)
            first, step = (0.5 * sy - 0.5 + dy, 0.5 * sx - 0.5 + dx), (sy, sx)
    ky, kx = H / hs, W / ws                 # scored image -> source pixel centres
    first = ((first[0] + 0.5) * ky - 0.5, (first[1] + 0.5) * kx - 0.5)
    step = (step[0] * ky, step[1] * kx)
    return grid_to_image(ch, first, step, (H, W))


def read_heatmaps(path: str | os.PathLike) -> tuple[dict, list[str], list[np.ndarray]]:
    """(meta, image paths, maps) of a heatmap_score .npz; one line if unreadable."""
    p = str(path)
    if not os.path.isfile(p):
        raise LocalisationError(f"{p}: heatmap file not found")
    try:
        with np.load(p, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            paths = [str(v) for v in z["path"]]
            maps = [z[f"hm_{i}"] for i in range(len(paths))]
    except (KeyError, ValueError, OSError) as e:
        raise LocalisationError(f"{p}: not a heatmap file of heatmap_score.py ({e})") from None
    if meta.get("mode") not in KINDS:
        raise LocalisationError(f"{p}: unknown heatmap mode {meta.get('mode')!r}")
    return meta, paths, maps


def read_masks(data_dir: str | os.PathLike, pathology: str = "all"
               ) -> dict[str, list[tuple[str, str]]]:
    """full image file name -> [(mask path, pathology)] from the recipe's roi_mask_path.csv."""
    import pandas as pd
    d = pathlib.Path(data_dir)
    csv = d / "roi_mask_path.csv"
    if not csv.is_file():
        raise LocalisationError(f"{csv}: no ROI table (DATA_DIR must be a recipe output folder)")
    df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    need = {"full_img_file", "roi_mask_file", "pathology"}
    if not need <= set(df.columns):
        raise LocalisationError(f"{csv}: expected columns {sorted(need)} (got {list(df.columns)})")
    out: dict[str, list[tuple[str, str]]] = {}
    for r in df.itertuples(index=False):
        if pathology == "malignant" and r.pathology.upper() != "MALIGNANT":
            continue
        out.setdefault(os.path.basename(r.full_img_file), []).append(
            (str(d / "roi_masks" / r.roi_mask_file), r.pathology))
    return out


def load_case(image_path: str, masks: list[tuple[str, str]]) -> Case:
    """The image (as scored) and its masks, resized to the image's grid if they differ."""
    img = dm_pixels.read_image(image_path)
    les = []
    for mp, _ in masks:
        m = dm_pixels.read_image(mp)
        les.append(dm_recipe.resize_mask(m, img.shape[:2]) if m.shape != img.shape[:2] else m)
    return make_case(os.path.basename(image_path), img, les, [p for _, p in masks])


def cases_and_maps(npz: str, data_dir: str, pathology: str = "all"
                   ) -> tuple[str, list[Case], list[np.ndarray], int]:
    """(kind, cases with lesions, their maps on the image grid, images without lesions)."""
    meta, paths, maps = read_heatmaps(npz)
    masks = read_masks(data_dir, pathology)
    cases, heats, skipped = [], [], 0
    for i, (p, m) in enumerate(zip(paths, maps)):
        rows = masks.get(os.path.basename(p))
        if not rows:
            skipped += 1
            continue
        c = load_case(p, rows)
        cases.append(c)
        heats.append(map_on_source(m, meta, i, c.image))
    return meta["mode"], cases, heats, skipped


def localise(data_dir: str, heatmaps: Sequence[str], val_heatmaps: Sequence[str] = (),
             tolerance_mm: float = TOLERANCE_MM, pixel_size: float | None = None,
             peak_separation_mm: float = PEAK_SEPARATION_MM, pathology: str = "all",
             n_boot: int = 2000, seed: int = 12345, out: str | None = None,
             report: str | None = None) -> dict:
    """The command as a function: summary per map kind (and the files when `out`; a
    section in the HTML report `report`, an index.html of evaluate.py --html)."""
    if tolerance_mm < 0 or peak_separation_mm < 0:
        raise LocalisationError("--tolerance-mm and --peak-separation-mm must be >= 0")
    if report is not None and not os.path.isfile(report):
        raise LocalisationError(f"{report}: HTML report not found")
    loaded: dict = {}
    for npz in heatmaps:            # several files of one kind (e.g. one per fold) add up
        kind, cases, heats, skipped = cases_and_maps(npz, data_dir, pathology)
        c, h, n, files = loaded.get(kind, ([], [], 0, []))
        loaded[kind] = (c + cases, h + heats, n + skipped, files + [str(npz)])
    val: dict = {}
    for npz in val_heatmaps:
        kind, cases, heats, _ = cases_and_maps(npz, data_dir, pathology)
        c, h = val.get(kind, ([], []))
        val[kind] = (c + cases, h + heats)
    first = next(iter(loaded.values()))[0]
    if not first:
        raise LocalisationError(f"{heatmaps[0]}: none of its images has a lesion mask in "
                                f"{data_dir}/roi_mask_path.csv")
    px, src = pixel_size_mm(data_dir, first[0].image.shape, pixel_size)
    s = Settings(px, src, tolerance_mm, peak_separation_mm, n_boot, seed)
    summary: dict = {}
    recs_of = {}
    for kind, (cases, heats, skipped, npz) in loaded.items():
        vc, vh = val.get(kind, ((), ()))
        summ, recs = evaluate(cases, heats, s, vc, vh)
        summ.update(heatmaps=npz, n_images_without_lesion=skipped,
                    dice_threshold_from="validation" if len(vc) else None)
        summ.update(malignant_only(cases, heats, s))
        summary[kind] = summ
        recs_of[kind] = (recs, cases, heats)
        log.info("%s: pointing game %.3f (95%% CI %.3f-%.3f) on %d images; chance %.3f, "
                 "brightest pixel %.3f", kind, summ["pointing_game"], *summ["pointing_game_ci"],
                 summ["n_images"], summ["pointing_game_chance"], summ["pointing_game_brightest"])
    kinds = [k for k in KINDS if k in recs_of]
    summary["compare"] = {f"{a}_minus_{b}": compare(recs_of[a][0], recs_of[b][0], s)
                          for i, a in enumerate(kinds) for b in kinds[i + 1:]}
    summary["settings"] = settings_dict(s, pathology)
    if out:
        o = pathlib.Path(out)
        o.mkdir(parents=True, exist_ok=True)
        summary["files"] = dict(summary=str(o / "localisation.json"),
                                images=str(o / "localisation_images.csv"),
                                figure=str(o / "localisation.png"))
        write_records(o / "localisation_images.csv", recs_of)
        plot_figure(recs_of, s, str(o / "localisation.png"))
        dm_output.write_json(o / "localisation.json", summary, indent=2)
        if report is not None:
            import dm_report
            dm_report.add_localisation(report, summary)
    return summary


def lesion_images(data_dir: str | os.PathLike, split: str) -> list[str]:
    """Full-image paths of a recipe split's images that have a lesion mask."""
    import pandas as pd
    d = pathlib.Path(data_dir)
    images = pd.read_csv(d / "images.csv", dtype=str, keep_default_na=False)
    with_mask = set(read_masks(d))
    keep = images[(images["split"] == split) & images["full_img_file"].isin(with_mask)]
    return [str(d / "full_images" / f) for f in keep["full_img_file"]]


def write_image_list(path: pathlib.Path, paths: Sequence[str]) -> None:
    """A heatmap_score --pat-csv naming the images by path."""
    import pandas as pd
    from dm_recipe_utils import write_csv
    write_csv(pd.DataFrame(dict(patient_id=[pathlib.Path(p).stem for p in paths], side="",
                                view="", path=[os.path.abspath(p) for p in paths])), path)


def fprop_pool(patch_model: str, patch_size: int) -> list[int]:
    """The fprop pooling window that matches one patch: the patch trunk's feature map."""
    import dm_inference
    m = dm_inference.load_models([str(patch_model)])[0].model
    shape = dm_inference.fprop_model(m, (patch_size, patch_size), (1, 1), (1, 1)).outputs[0].shape
    return [int(shape[1]), int(shape[2])]


def score_kinds(paths: Sequence[str], out: pathlib.Path, tag: str, patch_model, image_model,
                patch_size: int, stride: int, img_size: Sequence[int],
                kinds: Sequence[str] = KINDS, batch_size: int = 128) -> tuple[dict, dict]:
    """heatmap_score.py on the given images for every map kind: ({kind: .npz}, {kind: s})."""
    import time

    from ddsm_train.heatmap_score import score
    opts = dict(sliding=dict(model=patch_model, stride=stride, img_size=list(img_size)),
                fprop=dict(model=patch_model, fprop_mode=True, img_size=list(img_size),
                           hm_strides=[1, 1]),
                gradcam=dict(model=image_model, grad_cam=True))
    kinds = [k for k in kinds if k != "gradcam" or image_model is not None]
    if "fprop" in kinds:
        opts["fprop"]["avg_pool_size"] = fprop_pool(str(patch_model), patch_size)
    files, seconds = {}, {}
    write_image_list(out / f"{tag}_images.csv", paths)
    for k in kinds:
        t = time.time()
        o = dict(opts[k])
        model = o.pop("model")
        files[k] = str(out / f"{tag}_{k}.npz")
        score(str(out), str(model), pat_csv=str(out / f"{tag}_images.csv"), out=files[k],
              batch_size=batch_size, **o)
        seconds[k] = time.time() - t
    return files, seconds


def score_and_localise(data_dir: str | os.PathLike, out_dir: str | os.PathLike,
                       patch_model: str | os.PathLike, image_model: str | os.PathLike | None,
                       patch_size: int, stride: int, img_size: Sequence[int],
                       splits: tuple[str, str | None] = ("test", "val"),
                       kinds: Sequence[str] = KINDS, n_boot: int = 2000, seed: int = 12345,
                       batch_size: int = 128, report: str | None = None) -> dict:
    """Heatmaps (heatmap_score.py) of a recipe folder's test images with lesions, and of
    its validation images for the Dice thresholds, for every map kind, then `localise`.
    Adds the scoring time per kind (`score_s`); {} when no test image has a lesion."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    test_paths = lesion_images(data_dir, splits[0])
    if not test_paths:
        log.warning("%s: no %s image has a lesion mask: no localisation figures", data_dir,
                    splits[0])
        return {}
    geo = (patch_model, image_model, patch_size, stride, img_size, kinds, batch_size)
    test, seconds = score_kinds(test_paths, out, splits[0], *geo)
    val_paths = lesion_images(data_dir, splits[1]) if splits[1] else []
    val = score_kinds(val_paths, out, splits[1], *geo)[0] if val_paths else {}
    summary = localise(str(data_dir), list(test.values()), [val[k] for k in test if k in val],
                       n_boot=n_boot, seed=seed, out=str(out), report=report)
    for k, v in seconds.items():
        summary[k]["score_s"] = round(v, 1)
    dm_output.write_json(out / "localisation.json", summary, indent=2)
    return summary


def localise_folds(data_dir: str | os.PathLike, out_dir: str | os.PathLike,
                   folds: Sequence[tuple[str, str | None, Sequence[str]]], patch_size: int,
                   stride: int, img_size: Sequence[int], kinds: Sequence[str] = ("sliding", "gradcam"),
                   n_boot: int = 2000, seed: int = 12345) -> dict:
    """Out-of-fold localisation: each fold's (patch model, image model, test images) scored
    by that fold's models, the maps pooled and measured once (no Dice: no validation maps)."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    masks = read_masks(data_dir)
    files: list[str] = []
    for i, (pm, im, paths) in enumerate(folds):
        paths = [p for p in paths if os.path.basename(p) in masks]
        if paths:
            files += score_kinds(paths, out, f"fold{i}", pm, im, patch_size, stride, img_size,
                                 kinds)[0].values()
    if not files:
        log.warning("%s: no out-of-fold image has a lesion mask", data_dir)
        return {}
    return localise(str(data_dir), files, n_boot=n_boot, seed=seed, out=str(out))


def settings_dict(s: Settings, pathology: str) -> dict:
    return dict(tolerance_mm=s.tolerance_mm, pixel_size_mm=[_r(v) for v in s.pixel_mm],
                pixel_size_from=s.pixel_source,
                tolerance_px=[_r(v) for v in s.px(s.tolerance_mm)],
                peak_separation_mm=s.peak_separation_mm, lesions=pathology, n_boot=s.n_boot,
                seed=s.seed, ci_level=s.level)


def write_records(path: pathlib.Path, recs_of: dict) -> None:
    """One row per (map kind, image): every per-image figure."""
    import pandas as pd
    from dm_recipe_utils import write_csv
    rows = []
    for kind, (recs, _, _) in recs_of.items():
        for r in recs:
            rows.append(dict(kind=kind, **{k: v for k, v in r.items() if k != "peak"}))
    write_csv(pd.DataFrame(rows), path)


# ------------------------------------------------------------------------------ drawing

def draw_overlay(image: np.ndarray, heat: np.ndarray, lesions: Sequence[np.ndarray],
                 peak: tuple[int, int] | None = None) -> np.ndarray:
    """BGR overlay: the map on the image, every lesion's outline in white, the map's peak
    as a cross (green inside a lesion's outline, else red)."""
    import cv2
    import dm_inference
    hv = np.asarray(heat, np.float32)
    ok = np.isfinite(hv)
    lo, hi = (float(hv[ok].min()), float(hv[ok].max())) if ok.any() else (0.0, 1.0)
    out = dm_inference.overlay_heatmap(image, hv, alpha=0.35, vmin=lo, vmax=max(hi, lo + 1e-6))
    for m in lesions:
        cs, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, cs, -1, (255, 255, 255), 1)
    if peak is not None:
        inside = any(m[peak] for m in lesions)
        size = max(4, image.shape[0] // 40)
        cv2.drawMarker(out, (int(peak[1]), int(peak[0])), (0, 200, 0) if inside else (0, 0, 255),
                       cv2.MARKER_CROSS, size, 2)
    return out


def plot_figure(recs_of: dict, s: Settings, path: str, n_worst: int = 6) -> None:
    """Per-image hits and misses of every map kind and of the brightest-pixel baseline
    (rows; images in one order), over thumbnails of the worst misses (peak farthest from
    any lesion), with lesion outlines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    kinds = list(recs_of)
    names = [r["name"] for r in recs_of[kinds[0]][0]]
    rows = [(k, {r["name"]: r["hit"] for r in recs_of[k][0]}) for k in kinds]
    rows.append(("brightest", {r["name"]: r["hit_brightest"] for r in recs_of[kinds[0]][0]}))
    misses = []
    for k in kinds:
        recs, cases, heats = recs_of[k]
        for r, c, h in zip(recs, cases, heats):
            if r["hit"] < 0.5 and r["peak"] is not None:
                misses.append((r["miss_mm"], k, r, c, h))
    misses.sort(key=lambda t: -t[0])
    misses = misses[:n_worst]
    ncol = max(1, min(n_worst, len(misses)))
    fig = plt.figure(figsize=(max(8, 2.2 * ncol), 2.2 + 0.35 * len(rows) + (3.2 if misses else 0)))
    gs = fig.add_gridspec(2 if misses else 1, ncol,
                          height_ratios=[0.6 + 0.35 * len(rows), 3.2] if misses else None)
    ax = fig.add_subplot(gs[0, :])
    grid = np.array([[row.get(n, np.nan) for n in names] for _, row in rows], np.float64)
    ax.imshow(grid, aspect="auto", cmap="RdYlGn", vmin=0, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"{k} ({np.nanmean(grid[i]):.2f})" for i, (k, _) in enumerate(rows)])
    ax.set_xlabel(f"{len(names)} images with lesions (green: peak within "
                  f"{s.tolerance_mm:g} mm of a lesion, red: miss)")
    ax.set_xticks([])
    ax.set_title("Pointing game per image")
    for j, (dist, k, r, c, h) in enumerate(misses):
        a = fig.add_subplot(gs[1, j])
        rgb = draw_overlay(c.image, h, c.lesions, r["peak"])[..., ::-1]
        a.imshow(rgb)
        a.set_title(f"{k}: {c.name}\n{dist:.0f} mm off", fontsize=7)
        a.axis("off")
    fig.tight_layout()
    dm_output.write_named(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"), ".png")
    plt.close(fig)


# ------------------------------------------------------------------------------ command

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=dm_cli.HelpFormatter)
    p.add_argument("data_dir", help="recipe output folder (roi_mask_path.csv, roi_masks/)")
    p.add_argument("heatmaps", nargs="+", help=".npz files of heatmap_score.py (one per map kind)")
    p.add_argument("--val-heatmaps", nargs="+", default=[],
                   help="the same kinds' .npz on validation images: choose the Dice "
                        "thresholds there (without them Dice is not reported)")
    p.add_argument("--out", default="runs/localisation", help="output folder")
    p.add_argument("--tolerance-mm", type=float, default=TOLERANCE_MM,
                   help="a peak this close to a lesion counts as a hit")
    p.add_argument("--pixel-size-mm", type=float,
                   help="pixel size of DATA_DIR's images (default: layout.json, mini-MIAS "
                        f"0.2 mm at 1024 px, else {NOMINAL_HEIGHT_MM:.0f} mm / image height)")
    p.add_argument("--peak-separation-mm", type=float, default=PEAK_SEPARATION_MM,
                   help="top-k peaks lie at least this far apart")
    p.add_argument("--lesions", choices=["all", "malignant"], default="all",
                   help="which lesion masks count (and so which images)")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples of images")
    p.add_argument("--html-report", metavar="INDEX",
                   help="add a localisation section to this report (evaluate.py --html)")
    dm_cli.add_seed_flag(p, "seeds the bootstrap")
    return p


def run(args: argparse.Namespace) -> dict:
    if args.n_boot < 1:
        raise LocalisationError(f"--n-boot {args.n_boot}: must be >= 1")
    summary = localise(args.data_dir, args.heatmaps, args.val_heatmaps, args.tolerance_mm,
                       args.pixel_size_mm, args.peak_separation_mm, args.lesions, args.n_boot,
                       args.seed, args.out, args.html_report)
    log.info("wrote %s", summary["files"]["summary"])
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    return dm_cli.run_tool("dm_localisation", build_parser().parse_args, run, argv)


if __name__ == "__main__":
    sys.exit(main())
