"""Localisation figures of heatmaps against lesion masks.

Localisation figures of heatmaps against lesion masks (docs/localisation.md): the pointing
game with a mm tolerance, mass inside lesions, Dice at a validation threshold, top-k peaks,
bootstrap intervals over images, and the chance and brightest-pixel baselines.
"""
from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

import dm_recipe_utils
import dm_sweep
from dm_errors import InputError

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
    ry, rx = (int(round(r)) for r in radius_px)
    if ry <= 0 and rx <= 0:
        return mask.astype(bool)
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * rx + 1, 2 * ry + 1))
    return cv2.dilate(mask.astype(np.uint8), k) > 0


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
