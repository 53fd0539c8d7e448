"""Pieces shared by the dataset recipes: the ROI table format, seeded patient-level splits,
class folders for the whole-image trainer, atomic table writes and the end summary.

Every recipe writes the same layout under its output folder::

    full_images/<image>.png          full images (16-bit PNG for DICOM sources)
    roi_masks/<mask>.png             one 0/255 mask per abnormality
    roi_mask_path.csv                patient_id,side,view,abn_num,pathology,type,full_img_file,roi_mask_file
    images.csv                       one row per image: ids, label (neg/pos), split, full_img_file
    patients_{train,val,test,trainval}.txt
    {train,val,test}/{neg,pos}/<image>.png   hard links (or copies) of the full images
    layout.json                      image size, bit depth, rescale factor, training-split mean
    skipped.txt                      every skipped case with its reason (when there are any)
"""
from __future__ import annotations

import logging
import os
import pathlib
import shutil
from typing import Iterable, Mapping

import json

import numpy as np
import pandas as pd

import dm_output

from dm_errors import InputError, InputFileNotFoundError

log = logging.getLogger(__name__)

ROI_COLUMNS = ["patient_id", "side", "view", "abn_num", "pathology", "type", "full_img_file", "roi_mask_file"]
IMAGE_COLUMNS = ["patient_id", "side", "view", "image_id", "label", "split", "full_img_file"]
SPLITS = ("train", "val", "test")
FULL_DIR = "full_images"
MASK_DIR = "roi_masks"
LAYOUT_FILE = "layout.json"
SKIPPED_FILE = "skipped.txt"


class NothingConvertedError(InputError):
    """A recipe run that produced no image (wrong folder, no matching files)."""


def write_csv(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a CSV atomically (`dm_output.write_named`)."""
    dm_output.write_named(str(path), lambda tmp: df.to_csv(tmp, index=False), ".csv")


def write_lines(path: str | os.PathLike, lines: Iterable[str]) -> None:
    """Write one item per line atomically."""
    text = "".join(f"{line}\n" for line in lines)
    dm_output.atomic_write(str(path), lambda f: f.write(text), text=True)


def read_lines(path: str | os.PathLike) -> list[str]:
    """Non-empty stripped lines of a text file (patient lists)."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise InputFileNotFoundError(f"{p}: patient list not found")
    return [s.strip() for s in p.read_text().splitlines() if s.strip()]


def stratified_split(labels: Mapping[str, int], fractions: Mapping[str, float], seed: int,
                     rest: str = "train") -> dict[str, str]:
    """Assign each key (a patient) to a split, stratified by its label and reproducible from `seed`.

    `fractions` maps split name -> fraction of all keys (or, if >= 1, a number of keys); the
    remaining keys go to `rest`. Each split's size is rounded once over all keys and shared
    among the labels by largest remainder, so small sets still get their share. Keys are
    sorted before the seeded shuffle, so the result doesn't depend on dict order.
    """
    rng = np.random.default_rng(seed)
    total = len(labels)
    by_label = {}
    for lab in sorted(set(labels.values())):
        keys = sorted(k for k, v in labels.items() if v == lab)
        by_label[lab] = [keys[i] for i in rng.permutation(len(keys))]
    start = {lab: 0 for lab in by_label}
    out: dict[str, str] = {}
    for name, frac in fractions.items():
        n = int(round(total * float(frac))) if frac < 1 else int(frac)
        quota = {lab: n * len(ks) / total for lab, ks in by_label.items()} if total else {}
        take = {lab: int(q) for lab, q in quota.items()}
        for lab in sorted(quota, key=lambda k: (-(quota[k] - take[k]), k))[:n - sum(take.values())]:
            take[lab] += 1
        for lab, ks in by_label.items():
            t = min(take.get(lab, 0), len(ks) - start[lab])
            for k in ks[start[lab]:start[lab] + t]:
                out[k] = name
            start[lab] += t
    for lab, ks in by_label.items():
        for k in ks[start[lab]:]:
            out[k] = rest
    return out


def write_patient_lists(out_dir: str | os.PathLike, split_of: Mapping[str, str]) -> None:
    """patients_<split>.txt for train/val/test plus patients_trainval.txt (for the patch sampler)."""
    out = pathlib.Path(out_dir)
    for s in SPLITS:
        write_lines(out / f"patients_{s}.txt", sorted(p for p, v in split_of.items() if v == s))
    write_lines(out / "patients_trainval.txt", sorted(p for p, v in split_of.items() if v in ("train", "val")))


def link_or_copy(src: pathlib.Path, dst: pathlib.Path) -> None:
    """Hard-link src to dst (copy if the file system refuses), replacing dst."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_layout(out_dir: str | os.PathLike, roi: pd.DataFrame, images: pd.DataFrame,
                 split_of: Mapping[str, str], img_size=None, target_height: int | None = None
                 ) -> None:
    """The common recipe output: roi_mask_path.csv, images.csv, the patient lists (of
    patients that still have images), the neg/pos class folders and layout.json (the size the
    images were made at, their bit depth and the training split's featurewise mean).

    Refuses (NothingConvertedError) when there is no image at all.
    """
    out = pathlib.Path(out_dir)
    if len(images) == 0:
        raise NothingConvertedError(f"{out}: no image was converted; nothing written")
    write_csv(roi, out / "roi_mask_path.csv")
    write_csv(images, out / "images.csv")
    present = set(images["patient_id"])
    write_patient_lists(out, {p: s for p, s in split_of.items() if p in present})
    write_class_folders(out, images)
    write_layout_info(out, images, img_size, target_height)


def write_layout_info(out_dir: pathlib.Path, images: pd.DataFrame, img_size=None,
                      target_height: int | None = None) -> dict:
    """layout.json: what later steps need to know about the images without guessing.

    `img_size` (H, W) when every image was resized to it; the bit depth; the rescale factor
    for that depth and the featurewise mean of the training split after it (the values the
    trainers' --rescale-factor / --featurewise-mean take).
    """
    import dm_image
    train = images[images["split"] == "train"]
    paths = [str(out_dir / FULL_DIR / f) for f in (train if len(train) else images)["full_img_file"]]
    mean, factor, bits = dm_image.mean_pixel(paths)
    info = {"img_size": [int(v) for v in img_size] if img_size else None,
            "target_height": int(target_height) if target_height and not img_size else None,
            "bit_depth": bits, "rescale_factor": round(factor, 6),
            "featurewise_mean": round(mean, 2), "mean_of": "train" if len(train) else "all"}
    dm_output.write_json(out_dir / LAYOUT_FILE, info)
    log.info("training split: %d-bit images, featurewise mean %.2f after rescale factor %.6g: "
             "train with --rescale-factor %.6g --featurewise-mean %.2f", bits or 0, mean, factor,
             factor, mean)
    return info


def read_layout_info(folder: str | os.PathLike) -> dict | None:
    """layout.json of a recipe output folder (or of the parent of its full_images/), if any."""
    for d in (pathlib.Path(folder), pathlib.Path(folder).parent):
        p = d / LAYOUT_FILE
        if p.is_file():
            return json.loads(p.read_text())
    return None


def write_class_folders(out_dir: str | os.PathLike, images: pd.DataFrame) -> None:
    """Populate <split>/<label>/ with links to full_images/ for every image with a split."""
    out = pathlib.Path(out_dir)
    for s in SPLITS:
        if (out / s).is_dir():
            shutil.rmtree(out / s)
    for row in images.itertuples(index=False):
        if row.split not in SPLITS:
            continue
        src = out / FULL_DIR / row.full_img_file
        link_or_copy(src, out / row.split / row.label / row.full_img_file)


def write_skipped(out_dir: str | os.PathLike, skipped: Iterable[str]) -> str | None:
    """skipped.txt with every skipped case and its reason (removed when there is none)."""
    p = pathlib.Path(out_dir) / SKIPPED_FILE
    skipped = list(skipped)
    if not skipped:
        if p.is_file():
            p.unlink()
        return None
    write_lines(p, skipped)
    return str(p)


def check_converted(out_dir: str | os.PathLike, images: pd.DataFrame, skipped: Iterable[str],
                    name: str) -> None:
    """Write skipped.txt; refuse (exit non-zero) a run that converted no image."""
    skipped = list(skipped)
    listed = write_skipped(out_dir, skipped)
    if len(images) == 0:
        raise NothingConvertedError(
            f"{name}: no image converted into {out_dir}"
            + (f"; {len(skipped)} case(s) skipped, listed in {listed} (first: {skipped[0]})"
               if skipped else "; no case matched the input"))


def summarize(images: pd.DataFrame, abnormalities: pd.DataFrame | None = None,
              skipped: Iterable[str] = (), name: str = "dataset") -> dict:
    """Counts of images and patients per split and class; logged as a small table."""
    summary: dict = {"images": int(len(images)), "skipped": list(skipped)}
    for s in SPLITS:
        d = images[images["split"] == s]
        summary[s] = {"images": int(len(d)), "patients": int(d["patient_id"].nunique()),
                      "neg": int((d["label"] == "neg").sum()), "pos": int((d["label"] == "pos").sum())}
    if abnormalities is not None and len(abnormalities):
        summary["abnormalities"] = int(len(abnormalities))
        summary["abnormalities_by_type_pathology"] = {
            f"{t}/{p}": int(n) for (t, p), n in abnormalities.groupby(["type", "pathology"]).size().items()}
    log.info("%s summary:", name)
    log.info("  %-6s %7s %8s %6s %6s", "split", "images", "patients", "neg", "pos")
    for s in SPLITS:
        c = summary[s]
        log.info("  %-6s %7d %8d %6d %6d", s, c["images"], c["patients"], c["neg"], c["pos"])
    if summary["skipped"]:
        log.warning("  skipped %d broken case(s) (all listed in %s): %s", len(summary["skipped"]),
                    SKIPPED_FILE, "; ".join(summary["skipped"][:10])
                    + (" ..." if len(summary["skipped"]) > 10 else ""))
    return summary


def run_cli(main, tool: str | None = None) -> None:
    """Run a recipe's `main(argv)` as a command (`dm_cli.guarded`): input problems one line
    naming the tool, exit 2; bugs keep their traceback."""
    import sys

    import dm_cli
    tool = tool or pathlib.Path(main.__globals__.get("__file__", "recipe")).stem
    dm_cli.setup_logging()
    sys.exit(dm_cli.guarded(tool, main, sys.argv[1:]))


def setup_cli_logging(verbose: bool = True) -> None:
    """Log to stdout for command-line use."""
    import sys

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stdout,
                        format="%(message)s")
