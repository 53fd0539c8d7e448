"""The localisation command: how well heatmaps point at the lesions of a recipe's masks.

The localisation command (docs/localisation.md): reads heatmap files and lesion masks,
places each map on its source image, computes the figures of `dm_localisation_metrics`,
and writes the summary, the per-image table and the figure.

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
import time
from typing import Sequence

import cv2
import numpy as np
import pandas as pd

import dm_cli
import dm_output
import dm_overlay
import dm_pixels
import dm_recipe
import dm_sweep
from ddsm_train.heatmap_score import score
from dm_listing import read_image_csv
from dm_localisation_metrics import (KINDS, NOMINAL_HEIGHT_MM, PEAK_SEPARATION_MM, TOLERANCE_MM,
                                     Case, LocalisationError, Settings, _r, compare, evaluate,
                                     make_case, malignant_only, pixel_size_mm)
from dm_recipe_utils import write_csv

log = logging.getLogger("dm_localisation")
RECIPE_CLASSES = ("neg", "pos")     # the labels of a recipe's images.csv (dm_recipe_utils)
#: The files the command writes into --out.
OUTPUT_FILES = dict(summary="localisation.json", images="localisation_images.csv",
                    figure="localisation.png")


def grid_to_image(values: np.ndarray, first: tuple[float, float], step: tuple[float, float],
                  shape: Sequence[int]) -> np.ndarray:
    """A (rows, cols) grid whose cell (r, c) is centred at first + (r, c) * step (pixel
    coordinates of an image of `shape`) as a bilinear map on that image, NaN farther than
    half a step beyond the outer cells."""
    from scipy.ndimage import map_coordinates  # deferred for --help (docs/modules.md)
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
    p = require_heatmaps(path)
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


def require_heatmaps(path: str | os.PathLike) -> str:
    """The path of a heatmap file that is there; one line if it is not."""
    if not os.path.isfile(path):
        raise LocalisationError(f"{path}: heatmap file not found")
    return str(path)


def roi_table(data_dir: str | os.PathLike) -> pathlib.Path:
    """A recipe folder's roi_mask_path.csv; one line if there is none."""
    csv = pathlib.Path(data_dir) / "roi_mask_path.csv"
    if not csv.is_file():
        raise LocalisationError(f"{csv}: no ROI table (DATA_DIR must be a recipe output folder)")
    return csv


def read_masks(data_dir: str | os.PathLike, pathology: str = "all"
               ) -> dict[str, list[tuple[str, str]]]:
    """full image file name -> [(mask path, pathology)] from the recipe's roi_mask_path.csv."""
    d = pathlib.Path(data_dir)
    csv = roi_table(d)
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
        summary["files"] = {k: str(o / f) for k, f in OUTPUT_FILES.items()}
        write_records(o / OUTPUT_FILES["images"], recs_of)
        plot_figure(recs_of, s, str(o / OUTPUT_FILES["figure"]))
        dm_output.write_json(o / OUTPUT_FILES["summary"], summary, indent=2)
        if report is not None:
            import dm_report  # deferred for --help (docs/modules.md)
            dm_report.add_localisation(report, summary)
    return summary


def lesion_images(data_dir: str | os.PathLike, split: str) -> list[str]:
    """Full-image paths of a recipe split's images that have a lesion mask, in the order
    of the recipe's images.csv (read by the one image-CSV reader); [] when none has."""
    listed = read_image_csv(pathlib.Path(data_dir) / "images.csv", RECIPE_CLASSES)
    with_mask = set(read_masks(data_dir))
    return [p for p, s in zip(listed.paths, listed.extra.get("split", [])) if s == split
            and os.path.basename(p) in with_mask]


def write_image_list(path: pathlib.Path, paths: Sequence[str]) -> None:
    """A heatmap_score --pat-csv naming the images by path."""
    write_csv(pd.DataFrame(dict(patient_id=[pathlib.Path(p).stem for p in paths], side="",
                                view="", path=[os.path.abspath(p) for p in paths])), path)


def fprop_pool(patch_model: str, patch_size: int) -> list[int]:
    """The fprop pooling window that matches one patch: the patch trunk's feature map."""
    import dm_heatmaps  # deferred for --help (docs/modules.md)
    import dm_scoring  # deferred for --help (docs/modules.md)
    m = dm_scoring.load_models([str(patch_model)])[0].model
    shape = dm_heatmaps.fprop_model(m, (patch_size, patch_size), (1, 1), (1, 1)).outputs[0].shape
    return [int(shape[1]), int(shape[2])]


def score_kinds(paths: Sequence[str], out: pathlib.Path, tag: str, patch_model, image_model,
                patch_size: int, stride: int, img_size: Sequence[int],
                kinds: Sequence[str] = KINDS, batch_size: int = 128,
                pairs: str | None = None) -> tuple[dict, dict]:
    """heatmap_score.py on the given images for every map kind: ({kind: .npz}, {kind: s}).
    `pairs`: where a bilateral image model finds each breast's pair (`recipe_pairs`)."""

    opts = dict(sliding=dict(model=patch_model, stride=stride, img_size=list(img_size)),
                fprop=dict(model=patch_model, fprop_mode=True, img_size=list(img_size),
                           hm_strides=[1, 1]),
                gradcam=dict(model=image_model, grad_cam=True, pairs=pairs))
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


def recipe_pairs(data_dir: str | os.PathLike) -> str:
    """A recipe's pairs of breasts for a bilateral model: its pairs.csv (mini-MIAS), else
    its images.csv (patient, side, view)."""
    d = pathlib.Path(data_dir)
    return str(d / "pairs.csv" if (d / "pairs.csv").is_file() else d / "images.csv")


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
    geo = (patch_model, image_model, patch_size, stride, img_size, kinds, batch_size,
           recipe_pairs(data_dir))
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
                                 kinds, pairs=recipe_pairs(data_dir))[0].values()
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
    rows = []
    for kind, (recs, _, _) in recs_of.items():
        for r in recs:
            rows.append(dict(kind=kind, **{k: v for k, v in r.items() if k != "peak"}))
    write_csv(pd.DataFrame(rows), path)


def draw_overlay(image: np.ndarray, heat: np.ndarray, lesions: Sequence[np.ndarray],
                 peak: tuple[int, int] | None = None) -> np.ndarray:
    """BGR overlay: the map on the image, every lesion's outline in white, the map's peak
    as a cross (green inside a lesion's outline, else red)."""
    hv = np.asarray(heat, np.float32)
    ok = np.isfinite(hv)
    lo, hi = (float(hv[ok].min()), float(hv[ok].max())) if ok.any() else (0.0, 1.0)
    out = dm_overlay.overlay_heatmap(image, hv, alpha=0.35, vmin=lo, vmax=max(hi, lo + 1e-6))
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
    import matplotlib  # deferred for --help (docs/modules.md)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred for --help (docs/modules.md)
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=dm_cli.HelpFormatter)
    p.add_argument("data_dir", help="recipe output folder (roi_mask_path.csv, roi_masks/)")
    p.add_argument("heatmaps", nargs="+", help=".npz files of heatmap_score.py (one per map kind)")
    p.add_argument("--val-heatmaps", nargs="+", default=[],
                   help="the same kinds' .npz on validation images: choose the Dice "
                        "thresholds there (without them Dice is not reported)")
    p.add_argument("--out", default="runs/localisation", help="output folder")
    p.add_argument("--tolerance-mm", type=dm_cli.float_in(0), default=TOLERANCE_MM,
                   help="a peak this close to a lesion counts as a hit")
    p.add_argument("--pixel-size-mm", type=dm_cli.float_in(0, low_open=True),
                   help="pixel size of DATA_DIR's images (default: layout.json, mini-MIAS "
                        f"0.2 mm at 1024 px, else {NOMINAL_HEIGHT_MM:.0f} mm / image height)")
    p.add_argument("--peak-separation-mm", type=dm_cli.float_in(0), default=PEAK_SEPARATION_MM,
                   help="top-k peaks lie at least this far apart")
    p.add_argument("--lesions", choices=["all", "malignant"], default="all",
                   help="which lesion masks count (and so which images)")
    p.add_argument("--n-boot", type=dm_cli.int_at_least(1), default=2000,
                   help="bootstrap resamples of images")
    p.add_argument("--html-report", metavar="INDEX",
                   help="add a localisation section to this report (evaluate.py --html)")
    dm_cli.add_seed_flag(p, "seeds the bootstrap")
    return p


def precheck(args: argparse.Namespace) -> None:
    """The refusals before any image is read: a missing heatmap file or ROI table, and an
    --out that cannot be written or that would write over an input (the recipe folder
    itself, or a heatmap file under one of the names the command writes)."""
    heatmaps = [require_heatmaps(h) for h in args.heatmaps + args.val_heatmaps]
    roi_table(args.data_dir)
    dm_output.check_writable(args.out, "--out", folder=True)
    inputs = [("DATA_DIR", args.data_dir)] + [("heatmap file", h) for h in heatmaps]
    dm_output.check_not_input(args.out, inputs, "--out")
    for name in OUTPUT_FILES.values():
        dm_output.check_not_input(os.path.join(args.out, name), inputs, "--out")


def run(args: argparse.Namespace) -> dict:
    """The command after `precheck`: localise and write the files."""
    summary = localise(args.data_dir, args.heatmaps, args.val_heatmaps, args.tolerance_mm,
                       args.pixel_size_mm, args.peak_separation_mm, args.lesions, args.n_boot,
                       args.seed, args.out, args.html_report)
    log.info("wrote %s", summary["files"]["summary"])
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    return dm_cli.run_tool("dm_localisation", build_parser().parse_args, run, argv,
                           precheck=precheck)


if __name__ == "__main__":
    sys.exit(main())
