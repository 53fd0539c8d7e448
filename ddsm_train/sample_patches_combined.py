"""Sample ROI, background and hard-negative patches from full mammograms (docs/method.md, section 3).

Same positional arguments, flags and defaults as the original
`ddsm_train/sample_patches_combined.py`:

    python ddsm_train/sample_patches_combined.py ROI_MASK_PATH_FILE ROI_MASK_DIR \
        PAT_TRAIN_LIST_FILE FULL_IMG_DIR TRAIN_OUT_DIR [VAL_OUT_DIR] \
        [--target-height 4096 | --target-size H W] [--no-segment-breast] --patch-size 256 \
        --nb-abn 30 --nb-bkg 30 --nb-hns 15 --pos-cutoff .75 --neg-cutoff .35 --val-size .1

Image size: `--target-size`/`--img-size` or `--target-height`/`--img-height`; without
either, images prepared by a recipe (its `layout.json`) are used at the size it made them,
and anything else is resized to the original's 4096-px height. Upscaling beyond 2x
is warned about (it makes blurred, flat patches). Without VAL_OUT_DIR there is no
validation split (e.g. for test patients); the summary names the split after the patient
list (patients_test.txt -> test) or `--split-name`.

Per image: resize, optionally segment the breast and crop to it, pad by half a patch.
Per abnormality: bounding box of the largest mask contour; draw patch centres in it until
`nb_abn` patches overlap the ROI by more than `pos_cutoff` of the ROI area or of the patch
area (after `--max-tries` failed draws the cutoff drops by 0.05). Per image: `nb_hns` hard
negatives at blob-detector key points and `nb_bkg - hns` random background patches, all
overlapping every ROI of the image by at most `neg_cutoff`. Additions over the original:
a seed (`--seed`, default $RANDOM_SEED or 12345) with one generator per image derived from
(seed, image id), so results don't depend on `--nb-workers`; `--val-list` to reuse a given
validation patient list; `--class-layout 3class` (background/malignant/benign); a
`patch_index.csv` per output folder recording every patch's centre and the cutoff it met;
broken images are skipped and reported instead of ending the run; `--mine-model M --nb-mined K`
adds K background patches per image (kind `mined`, with their score) that the patch model M
scores highest (`dm_hardneg`).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import multiprocessing
import os
import pathlib
import sys
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

if not __package__:  # run as a script from its folder: put the repo root on the path
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import dm_cli  # noqa: E402
import dm_pixels
import dm_recipe
from dm_errors import InputError, InputFileNotFoundError  # noqa: E402
from dm_pixels import ImageReadError, write_png
from dm_recipe_utils import (
    claim_folder,
    read_layout_info,
    read_lines,
    run_cli,
    stratified_split,  # noqa: E402
    write_csv,
    write_lines,
)
from dm_roi import (EmptyMaskError, blob_keypoints, create_blob_detector, extract_patch,
                    frame_image, frame_mask, is_negative, largest_contour_bbox,
                    patch_roi_overlap)

log = logging.getLogger(__name__)

REQUIRED = ["patient_id", "side", "view", "abn_num", "pathology", "type"]
INDEX_COLUMNS = ["file", "class", "kind", "patient_id", "img_id", "abn", "x", "y", "cutoff", "crop_x", "crop_y"]
DEFAULT_TARGET_HEIGHT = 4096   # the original's default
UPSCALE_WARN = 2.0


class SamplingError(InputError):
    """Patches can't be sampled from an ROI (e.g. the overlap cutoff fell to zero)."""


@dataclass(frozen=True)
class Abn:
    abn_num: int
    pathology: str
    type: str
    mask_path: str


@dataclass(frozen=True)
class ImageTask:
    patient_id: str
    img_id: str
    full_path: str
    abns: tuple[Abn, ...]
    out_dir: str
    mined: tuple[tuple[int, int, float], ...] = ()   # (x, y, score) in the frame, --mine-model


def const_filename(pat: str, side: str, view: str, directory: str | os.PathLike,
                   itype: str | None = None, abn: int | None = None) -> str:
    """The original's file naming: PAT_SIDE_VIEW.png, or Calc|Mass-Training_PAT_SIDE_VIEW_ABN.png for masks."""
    tokens = [str(pat), str(side), str(view)]
    if itype is not None:
        tokens.insert(0, ("Calc" if itype == "calc" else "Mass") + "-Training")
        tokens.append(str(abn))
    return os.path.join(directory, "_".join(tokens) + ".png")


def read_roi_table(path: str | os.PathLike) -> pd.DataFrame:
    """The per-abnormality table (CSV, or TSV by extension), ids as strings; checks the columns."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise InputFileNotFoundError(f"{p}: ROI mask table not found")
    sep = "\t" if p.suffix.lower() in (".tsv", ".tab") else ","
    df = pd.read_csv(p, sep=sep, dtype={"patient_id": str, "side": str, "view": str}, keep_default_na=False)
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise InputError(f"{p}: missing column(s) {missing}; need {REQUIRED}")
    df["abn_num"] = df["abn_num"].astype(int)
    df["type"] = df["type"].str.lower().map(lambda t: "calc" if t.startswith("calc") else "mass")
    return df


def patch_class(kind: str, abn: Abn | None, layout: dict[str, str]) -> str:
    """Output folder of a patch under the chosen class layout."""
    if kind != "roi":
        return layout["bkg"]
    mal = abn.pathology.upper().startswith("MALIGNANT")
    return layout[("calc_" if abn.type == "calc" else "mass_") + ("pos" if mal else "neg")]


def class_layout(args: argparse.Namespace) -> dict[str, str]:
    if args.class_layout == "3class":
        return {"bkg": args.bkg_dir, "calc_pos": "malignant", "mass_pos": "malignant",
                "calc_neg": "benign", "mass_neg": "benign"}
    return {"bkg": args.bkg_dir, "calc_pos": args.calc_pos_dir, "calc_neg": args.calc_neg_dir,
            "mass_pos": args.mass_pos_dir, "mass_neg": args.mass_neg_dir}


def image_seed(seed: int, img_id: str) -> np.random.Generator:
    """A generator that depends only on the run seed and the image id (not on worker scheduling)."""
    return np.random.default_rng([int(seed), zlib.crc32(img_id.encode())])


_DETECTOR = {}


def _detector(patch_size: int):
    if patch_size not in _DETECTOR:
        _DETECTOR[patch_size] = create_blob_detector(roi_size=(patch_size, patch_size))
    return _DETECTOR[patch_size]


def read_resized(path: str, opts: dict) -> tuple[np.ndarray, int]:
    """The full image as the training recipe reads and resizes it (`dm_pixels`, `dm_recipe`), and its
    original height."""
    img = dm_pixels.read_image(path)
    return dm_recipe.resize_to(img, opts["target_size"], opts["target_height"]), img.shape[0]


def read_resized_mask(path: str, shape: tuple[int, int]) -> np.ndarray:
    """An ROI mask on the resized image's grid (0/255)."""
    return dm_recipe.resize_mask(dm_pixels.read_image(path), shape)


@dataclass
class Framed:
    """One image in the frame patches are cut from (`dm_roi.frame_image`), with the masks
    of its readable lesions on the same grid."""
    img: np.ndarray
    bbox: tuple[int, int, int, int]
    masks: list[np.ndarray]
    abns: list[Abn]
    upscale: float
    errors: list[str]


def frame_task(task: ImageTask, opts: dict) -> Framed:
    """Read an image and its ROI masks into the sampler's frame. An unreadable image raises
    an InputError; an unreadable or empty mask is listed in `errors` and left out."""
    ps = int(opts["patch_size"])
    img, orig_h = read_resized(task.full_path, opts)
    full_shape = img.shape[:2]  # masks are resized to this grid, then cropped like the image
    img, bbox = frame_image(img, ps, opts["segment_breast"])
    masks, abns, errors = [], [], []
    for abn in task.abns:
        try:
            m = frame_mask(read_resized_mask(abn.mask_path, full_shape), bbox, ps)
            if not np.any(m):
                raise EmptyMaskError(f"{abn.mask_path}: ROI mask is empty")
            masks.append(m)
            abns.append(abn)
        except (ImageReadError, EmptyMaskError) as e:
            errors.append(str(e))
    return Framed(img, bbox, masks, abns, full_shape[0] / max(1, orig_h), errors)


def process_image(task: ImageTask, opts: dict) -> dict:
    """Sample and write all patches of one image; returns {'records': [...], 'errors': [...]}."""
    ps = int(opts["patch_size"])
    half = ps // 2
    rng = image_seed(opts["seed"], task.img_id)
    records: list[dict] = []
    try:
        fr = frame_task(task, opts)
    except InputError as e:   # this image is skipped and listed; anything else is a bug
        return {"records": [], "errors": [str(e)], "upscale": 1.0}
    img, bbox, masks, abns, errors, upscale = fr.img, fr.bbox, fr.masks, fr.abns, fr.errors, fr.upscale
    areas = [int(np.count_nonzero(m)) for m in masks]
    layout = opts["layout"]
    out = pathlib.Path(task.out_dir)

    def save(kind: str, abn: Abn | None, x: int, y: int, tag: str, i: int, cutoff: float,
             **extra: float) -> None:
        cls = patch_class(kind, abn, layout)
        fname = f"{task.img_id}_{tag}_{i:04d}.png"
        write_png(out / cls / fname, extract_patch(img, (x, y), ps))
        records.append(dict(file=f"{cls}/{fname}", **{"class": cls}, kind=kind, patient_id=task.patient_id,
                            img_id=task.img_id, abn=tag if kind == "roi" else "", x=x, y=y,
                            cutoff=round(cutoff, 4), crop_x=bbox[0], crop_y=bbox[1], **extra))

    def negative(x: int, y: int) -> bool:
        return is_negative((x, y), ps, masks, opts["neg_cutoff"], areas)

    h, w = img.shape[:2]
    # Hard negatives at blob key points (shuffled), then random background.
    n_hns = 0
    if opts["nb_hns"] > 0 and opts["nb_bkg"] > 0:
        kps = blob_keypoints(img, _detector(ps))
        for j in rng.permutation(len(kps)):
            if n_hns >= min(opts["nb_hns"], opts["nb_bkg"]):
                break
            x, y = kps[j]
            if half <= x <= w - (ps - half) and half <= y <= h - (ps - half) and negative(x, y):
                save("hns", None, x, y, "hns", n_hns, opts["neg_cutoff"])
                n_hns += 1
    n_bkg, tries = 0, 0
    max_bkg_tries = opts["max_tries"] * max(1, opts["nb_bkg"])
    while n_hns + n_bkg < opts["nb_bkg"] and tries < max_bkg_tries:
        tries += 1
        x = int(rng.integers(half, w - (ps - half) + 1))
        y = int(rng.integers(half, h - (ps - half) + 1))
        if negative(x, y):
            save("bkg", None, x, y, "bkg", n_bkg, opts["neg_cutoff"])
            n_bkg += 1
    if n_hns + n_bkg < opts["nb_bkg"]:
        errors.append(f"{task.img_id}: only {n_hns + n_bkg} of {opts['nb_bkg']} background patches found")
    # ROI patches.
    for abn, m, area in zip(abns, masks, areas):
        tag = f"{abn.type}{abn.abn_num}"
        rx, ry, rw, rh = largest_contour_bbox(m)
        cutoff, fails, got = float(opts["pos_cutoff"]), 0, 0
        try:
            while got < opts["nb_abn"]:
                x = int(rng.integers(rx, rx + rw))
                y = int(rng.integers(ry, ry + rh))
                fr, fp = patch_roi_overlap((x, y), ps, m, area)
                if fr > cutoff or fp > cutoff:
                    save("roi", abn, x, y, tag, got, cutoff)
                    got += 1
                    fails = 0
                    continue
                fails += 1
                if fails >= opts["max_tries"]:
                    cutoff = round(cutoff - 0.05, 10)
                    fails = 0
                    log.debug("%s %s: lowering the overlap cutoff to %.2f", task.img_id, tag, cutoff)
                    if cutoff <= 0:
                        raise SamplingError(f"{abn.mask_path}: overlap cutoff fell to 0; check the ROI mask")
        except SamplingError as e:
            errors.append(str(e))
    # Mined hard negatives (--mine-model), found in the main process: written last, no draw.
    for i, (x, y, score) in enumerate(task.mined):
        save("mined", None, x, y, "mined", i, opts["neg_cutoff"], score=round(score, 6))
    return {"records": records, "errors": errors, "upscale": upscale}


def _worker(arg: tuple[ImageTask, dict]) -> dict:
    task, opts = arg
    try:
        return process_image(task, opts)
    except (InputError, OSError) as e:  # a broken image is listed and skipped; a bug is raised
        return {"records": [], "errors": [f"{task.full_path}: {type(e).__name__}: {e}"], "upscale": 1.0}


def build_tasks(df: pd.DataFrame, patients: list[str], roi_mask_dir: str, full_img_dir: str,
                out_dir: str, normal_images: pd.DataFrame | None = None) -> list[ImageTask]:
    """One task per (patient, side, view) of the given patients, in a stable order.

    `normal_images` (rows of a recipe's images.csv) adds background-only tasks for images
    that have no abnormality in the ROI table.
    """
    sub = df[df["patient_id"].isin(set(patients))]
    tasks = []
    if normal_images is not None:
        have = set(sub["full_img_file"]) if "full_img_file" in sub.columns else set()
        for r in normal_images[normal_images["patient_id"].isin(set(patients))].itertuples(index=False):
            if r.full_img_file not in have:
                tasks.append(ImageTask(str(r.patient_id), _img_id(r.patient_id, r.side, r.view, r.full_img_file),
                                       os.path.join(full_img_dir, r.full_img_file), (), out_dir))
    keys = ["patient_id", "side", "view"] + (["full_img_file"] if "full_img_file" in sub.columns else [])
    for key, g in sorted(sub.groupby(keys, sort=True), key=lambda t: t[0]):
        pat, side, view = key[:3]
        first = g.iloc[0]
        if "full_img_file" in g.columns and str(first["full_img_file"]):
            full = os.path.join(full_img_dir, str(first["full_img_file"]))
        else:
            full = const_filename(pat, side, view, full_img_dir)
        abns = []
        for r in g.sort_values(["type", "abn_num"]).itertuples(index=False):
            mf = getattr(r, "roi_mask_file", "")
            if isinstance(mf, str) and mf:
                mpath = os.path.join(roi_mask_dir, mf)
            else:
                mpath = const_filename(pat, side, view, roi_mask_dir, r.type, r.abn_num)
            abns.append(Abn(int(r.abn_num), str(r.pathology), str(r.type), mpath))
        tasks.append(ImageTask(str(pat), _img_id(pat, side, view, first.get("full_img_file", "")), full,
                               tuple(abns), out_dir))
    return sorted(tasks, key=lambda t: t.img_id)


def _img_id(pat, side, view, full_img_file) -> str:
    """PAT_SIDE_VIEW; without a side (mini-MIAS) the image file's stem stands in for it."""
    side = str(side) if side is not None and str(side) not in ("", "nan") else \
        os.path.splitext(str(full_img_file or ""))[0]
    return f"{pat}_{side}_{view}"


def split_train_val(df: pd.DataFrame, patients: list[str], val_size: float, seed: int,
                    val_list: str | None = None) -> tuple[list[str], list[str]]:
    """Patient-level validation split, stratified by 'any abnormality malignant'."""
    if val_list:
        val = set(read_lines(val_list))
        return [p for p in patients if p not in val], sorted(val)
    if val_size <= 0:
        return list(patients), []
    mal = df.groupby("patient_id")["pathology"].agg(lambda s: int(any(str(v).upper().startswith("MALIGNANT")
                                                                        for v in s)))
    labels = {p: int(mal.get(p, 0)) for p in patients}
    frac = val_size if val_size < 1 else min(1.0, val_size / len(patients))  # a count of patients
    split = stratified_split(labels, {"val": frac}, seed)
    return sorted(p for p in patients if split[p] == "train"), sorted(p for p in patients if split[p] == "val")


_INPUT_PATHS = (   # the flags naming inputs: recorded absolute
    "roi_mask_path_file", "roi_mask_dir", "pat_train_list_file", "full_img_dir", "val_list", "images_csv",
    "mine_model")
MINING = ("mine_model", "nb_mined")   # recorded only when mining, so older folders stay this run's


def load_miner(args: argparse.Namespace) -> Any:
    """The patch model that mines hard negatives (a `dm_hardneg.PatchScorer`), or None
    without mining; refuses half the pair of flags or an unusable model before anything is
    written."""
    if args.mine_model is None and not args.nb_mined:
        return None
    if args.mine_model is None:
        raise InputError(f"--nb-mined {args.nb_mined}: needs --mine-model PATCH.keras (the model "
                         "that scores the windows)")
    if args.nb_mined < 1:
        raise InputError(f"--mine-model {args.mine_model}: needs --nb-mined N >= 1 (hard negatives "
                         "per image)")
    import dm_hardneg  # deferred for --help (docs/modules.md): TensorFlow only where mining runs
    return dm_hardneg.load_patch_scorer(args.mine_model, args.patch_size, args.bkg_dir)


def mine_tasks(tasks: list[ImageTask], opts: dict, scorer: Any, k: int, verbose: bool) -> list[ImageTask]:
    """The tasks with their `k` mined windows each, scored here in the main process (the
    model and TensorFlow stay out of the workers); a broken image is left to its worker."""
    import dm_hardneg  # deferred for --help (docs/modules.md)
    out = []
    for t in tqdm(tasks, desc="mining", disable=not verbose):
        try:
            fr = frame_task(t, opts)
        except InputError:
            out.append(t)
            continue
        picked = dm_hardneg.mine_framed(scorer, fr.img, fr.masks, k, opts["neg_cutoff"])
        out.append(dataclasses.replace(t, mined=tuple((m.x, m.y, m.score) for m in picked)))
    return out


def run(args: argparse.Namespace) -> dict:
    """Sample patches for the train and validation patients; returns {split: {class: count}, 'skipped': [...]}."""
    df = read_roi_table(args.roi_mask_path_file)
    patients = [p for p in read_lines(args.pat_train_list_file)]
    known = set(df["patient_id"])
    normal = None
    if args.images_csv:
        if not pathlib.Path(args.images_csv).is_file():
            raise InputFileNotFoundError(f"{args.images_csv}: image table not found")
        normal = pd.read_csv(args.images_csv, dtype=str, keep_default_na=False)
        known |= set(normal["patient_id"])
    unknown = [p for p in patients if p not in known]
    if unknown:
        log.info("%d patient(s) of %s have no abnormality in the ROI table (use --images-csv to sample "
                 "background from their images); skipped: %s", len(unknown), args.pat_train_list_file,
                 ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else ""))
    patients = [p for p in dict.fromkeys(patients) if p in known]
    if not patients:
        raise InputError(f"{args.pat_train_list_file}: none of its patients is in {args.roi_mask_path_file}")
    if args.val_out_dir is None:
        if args.val_list or args.val_size not in (0, None):
            log.info("no VAL_OUT_DIR: no validation split (--val-size/--val-list ignored)")
        args.val_size, args.val_list = 0, None
    train_pats, val_pats = split_train_val(df, patients, args.val_size, args.seed, args.val_list)
    target_size, target_height = resolve_size(args)
    miner = load_miner(args)
    opts = dict(patch_size=args.patch_size, seed=args.seed, segment_breast=args.segment_breast,
                target_size=target_size, target_height=None if target_size else target_height,
                nb_abn=args.nb_abn, nb_bkg=args.nb_bkg, nb_hns=args.nb_hns, pos_cutoff=args.pos_cutoff,
                neg_cutoff=args.neg_cutoff, max_tries=args.max_tries, layout=class_layout(args))
    summary: dict = {"skipped": []}
    name = args.split_name or ("test" if "test" in pathlib.Path(args.pat_train_list_file).name.lower()
                               and not val_pats else "train")
    upscales = []
    outputs = [(split, pats, out_dir) for split, pats, out_dir in
               ((name, train_pats, args.train_out_dir), ("val", val_pats, args.val_out_dir)) if pats]
    settings = {k: v for k, v in vars(args).items()
                if k not in ("nb_workers", "verbose", "train_out_dir", "val_out_dir")
                and (miner is not None or k not in MINING)}
    for split, _, out_dir in outputs:      # all claimed before anything is written
        claim_folder(out_dir, "sample_patches_combined", dict(settings, split=split),
                     what="output folder", paths=_INPUT_PATHS)
    for split, pats, out_dir in outputs:
        out = pathlib.Path(out_dir)
        for d in set(opts["layout"].values()):
            (out / d).mkdir(parents=True, exist_ok=True)
        write_lines(out / "pat_lst.txt", pats)
        tasks = build_tasks(df, pats, args.roi_mask_dir, args.full_img_dir, str(out), normal)
        if miner is not None:
            tasks = mine_tasks(tasks, opts, miner, args.nb_mined, args.verbose)
        results = _map(tasks, opts, args.nb_workers, desc=f"{split} images", verbose=args.verbose)
        recs = [r for res in results for r in res["records"]]
        for res in results:
            summary["skipped"].extend(res["errors"])
            upscales.append(res.get("upscale", 1.0))
        index = pd.DataFrame(recs, columns=INDEX_COLUMNS + (["score"] if miner is not None else []))
        write_csv(index, out / "patch_index.csv")
        summary[split] = {c: int((index["class"] == c).sum()) for c in sorted(set(opts["layout"].values()))}
        if miner is not None:
            summary[split]["mined"] = int((index["kind"] == "mined").sum())
        summary[split]["images"] = int(index["img_id"].nunique())
        summary[split]["patients"] = int(index["patient_id"].nunique())   # those sampled from
    big = [u for u in upscales if u > UPSCALE_WARN]
    if big:
        log.warning("WARNING: %d image(s) were UPSCALED by more than %gx (up to %.1fx) to %s: their "
                    "patches are blurred and nearly flat. Give --target-size/--img-size H W matching "
                    "your images (or the recipe's size)", len(big), UPSCALE_WARN, max(big),
                    f"{target_size[0]}x{target_size[1]}" if target_size else f"height {target_height}")
        summary["upscaled"] = len(big)
    _log_summary(summary)
    return summary


def resolve_size(args: argparse.Namespace) -> tuple[tuple[int, int] | None, int | None]:
    """(target size, target height) from the flags, else the recipe layout, else 4096 px high."""
    if args.target_size:
        return tuple(args.target_size), None
    if args.target_height is not None:
        if args.target_width:
            return (args.target_height, args.target_width), None
        return None, args.target_height
    info = read_layout_info(args.full_img_dir)
    if info and info.get("img_size"):
        log.info("images prepared at %dx%d (layout.json): sampling at that size", *info["img_size"])
        return tuple(info["img_size"]), None
    if info and info.get("target_height"):
        log.info("images prepared at height %d (layout.json): sampling at that height", info["target_height"])
        return None, int(info["target_height"])
    if info is not None:
        log.info("images prepared by a recipe at their native size (layout.json): sampling without resizing")
        return None, None
    log.info("no --target-size/--target-height and no recipe layout.json: resizing to height %d "
             "(the original's default)", DEFAULT_TARGET_HEIGHT)
    return None, DEFAULT_TARGET_HEIGHT


def _map(tasks: list[ImageTask], opts: dict, nb_workers: int, desc: str, verbose: bool) -> list[dict]:

    items = [(t, opts) for t in tasks]
    bar = dict(total=len(tasks), desc=desc, disable=not verbose)
    if nb_workers <= 1 or len(tasks) <= 1:
        return [_worker(it) for it in tqdm(items, **bar)]
    ctx = multiprocessing.get_context("spawn")  # safe even if the parent already runs TensorFlow threads
    with ctx.Pool(min(nb_workers, len(tasks))) as pool:
        return list(tqdm(pool.imap(_worker, items, chunksize=1), **bar))


def _log_summary(summary: dict) -> None:
    log.info("patch summary:")
    for split in ("train", "test", "val"):
        if split in summary:
            s = summary[split]
            counts = ", ".join(f"{k}={v}" for k, v in s.items() if k not in ("images", "patients"))
            log.info("  %-5s %d patients, %d images: %s", split, s["patients"], s["images"], counts)
    if summary["skipped"]:
        log.warning("  %d problem(s): %s", len(summary["skipped"]), "; ".join(summary["skipped"][:10]))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Sample patches for DDSM-layout images.",
                                formatter_class=dm_cli.HelpFormatter)
    p.add_argument("roi_mask_path_file", help="per-abnormality table (roi_mask_path.csv / .tsv)")
    p.add_argument("roi_mask_dir", help="folder of ROI mask PNGs")
    p.add_argument("pat_train_list_file", help="patients to sample from (one id a line)")
    p.add_argument("full_img_dir", help="folder of full images")
    p.add_argument("train_out_dir", help="output folder of the (training or test) patches")
    p.add_argument("val_out_dir", nargs="?", default=None,
                   help="output folder of the validation patches (omit: no validation split)")
    p.add_argument("--target-height", "--img-height", dest="target_height", type=int, default=None,
                   help="resize to this height, aspect kept (default: the recipe's size from layout.json, "
                        f"else {DEFAULT_TARGET_HEIGHT})")
    p.add_argument("--target-width", type=int, default=None, help="with --target-height: resize to H x W")
    p.add_argument("--no-target-width", dest="target_width", action="store_const", const=None,
                   help="unset --target-width")
    dm_cli.add_img_size(p, help="resize to H x W (overrides --target-height/--target-width)", dest="target_size")
    p.add_argument("--segment-breast", "--segment", dest="segment_breast", action="store_true",
                   help="crop each image to the breast before sampling")
    p.add_argument("--no-segment-breast", "--no-segment", dest="segment_breast", action="store_false",
                   help="sample from the whole image")
    p.set_defaults(segment_breast=True)
    p.add_argument("--patch-size", type=dm_cli.pixels, default=256, help="patch side in pixels")
    p.add_argument("--nb-bkg", type=int, default=30, help="background patches per image (hard negatives included)")
    p.add_argument("--nb-abn", type=int, default=30, help="patches per abnormality")
    p.add_argument("--nb-hns", type=int, default=15, help="hard negatives per image (blob key points)")
    p.add_argument("--pos-cutoff", type=float, default=.75,
                   help="an ROI patch overlaps the ROI by more than this (of ROI or patch area)")
    p.add_argument("--neg-cutoff", type=float, default=.35,
                   help="a background patch overlaps every ROI by at most this")
    p.add_argument("--val-size", type=float, default=.1, help="fraction (<1) or number of validation patients")
    p.add_argument("--val-list", default=None, help="use these validation patients instead of a random split")
    p.add_argument("--split-name", default=None,
                   help="name of the first split in the summary (default: test for a patients_test list "
                        "without validation, else train)")
    p.add_argument("--bkg-dir", default="background", help="folder name of background patches")
    p.add_argument("--calc-pos-dir", default="calc_mal", help="folder name of malignant calcification patches")
    p.add_argument("--calc-neg-dir", default="calc_ben", help="folder name of benign calcification patches")
    p.add_argument("--mass-pos-dir", default="mass_mal", help="folder name of malignant mass patches")
    p.add_argument("--mass-neg-dir", default="mass_ben", help="folder name of benign mass patches")
    p.add_argument("--class-layout", choices=["5class", "3class"], default="5class",
                   help="5class: background calc_mal calc_ben mass_mal mass_ben; 3class: background malignant benign")
    p.add_argument("--images-csv", default=None,
                   help="a recipe's images.csv: also draw background patches from images without abnormalities")
    p.add_argument("--mine-model", default=None, metavar="PATCH.keras",
                   help="a patch classifier: also write --nb-mined hard negatives per image, the "
                        "background windows it scores highest (docs/data.md)")
    p.add_argument("--nb-mined", type=int, default=0, help="mined hard negatives per image (with --mine-model)")
    p.add_argument("--max-tries", type=int, default=1000, help="failed draws before the ROI cutoff drops by 0.05")
    dm_cli.add_seed_flag(p, "sampling seed")
    p.add_argument("--nb-workers", type=int, default=int(os.environ.get("NUM_CPU_CORES", 1)),
                   help="processes ($NUM_CPU_CORES); results do not depend on it")
    p.add_argument("--verbose", dest="verbose", action="store_true", help="progress bars")
    p.add_argument("--no-verbose", dest="verbose", action="store_false", help="no progress bars")
    p.set_defaults(verbose=True)
    return p


def sample_patches(roi_mask_path_file: str, roi_mask_dir: str, pat_train_list_file: str,
                   full_img_dir: str, train_out_dir: str, val_out_dir: str | None = None,
                   **options: Any) -> dict:
    """The command as a function: `options` are its flags by destination name
    (`target_size=(H, W)`, `patch_size=64`, `class_layout="3class"`, ...), defaults as the
    command's. Returns the summary `run` returns; bad input raises an InputError."""
    args = dm_cli.namespace(build_parser(), roi_mask_path_file=str(roi_mask_path_file),
                            roi_mask_dir=str(roi_mask_dir),
                            pat_train_list_file=str(pat_train_list_file),
                            full_img_dir=str(full_img_dir), train_out_dir=str(train_out_dir),
                            val_out_dir=None if val_out_dir is None else str(val_out_dir),
                            **options)
    return run(_complete(args))


def _complete(args: argparse.Namespace) -> argparse.Namespace:
    """--target-width alone means the default height at that width."""
    if args.target_size is None and args.target_width is not None:
        args.target_size = [args.target_height or DEFAULT_TARGET_HEIGHT, args.target_width]
    return args


def main(argv: list[str] | None = None) -> dict:
    return run(_complete(build_parser().parse_args(argv)))


def cli() -> None:
    """The command (the script, or installed as `sample_patches_combined`): input errors one line, exit 2."""
    run_cli(main, "sample_patches_combined")


if __name__ == "__main__":
    cli()
