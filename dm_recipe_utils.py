"""What the dataset recipes share: table formats, splits, class folders, summaries.

Pieces shared by the dataset recipes: the ROI table format, seeded patient-level splits,
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
    .dm_run.json                     which tool wrote the folder, with which configuration

One output folder per configuration (`claim_folder`): every tool that writes a folder (the
recipes, the synthetic data, the patch sampler, cross-validation, end2end) records what
wrote it; the same configuration may write there again (a rerun resumes or overwrites its
own files), another one, or a non-empty folder with no record, is refused in one line
naming the folder and the earlier configuration, before anything is written.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import sys
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

import dm_cli
import dm_dataset
import dm_output
from dm_errors import InputError, InputFileNotFoundError

log = logging.getLogger(__name__)

ROI_COLUMNS = ["patient_id", "side", "view", "abn_num", "pathology", "type", "full_img_file", "roi_mask_file"]
IMAGE_COLUMNS = ["patient_id", "side", "view", "image_id", "label", "split", "full_img_file"]
SPLITS = ("train", "val", "test")
FULL_DIR = "full_images"
MASK_DIR = "roi_masks"
LAYOUT_FILE = "layout.json"
RUN_STAMP = ".dm_run.json"
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
    for that depth and the featurewise mean of the training split after it, not equalised
    (the --rescale-factor / --featurewise-mean the image trainer takes at that size).
    """
    train = images[images["split"] == "train"]
    paths = [str(out_dir / FULL_DIR / f) for f in (train if len(train) else images)["full_img_file"]]
    mean, factor, bits = dm_dataset.mean_pixel(paths)
    info = {"img_size": [int(v) for v in img_size] if img_size else None,
            "target_height": int(target_height) if target_height and not img_size else None,
            "bit_depth": bits, "rescale_factor": round(factor, 6),
            "featurewise_mean": round(mean, 2), "mean_of": "train" if len(train) else "all"}
    dm_output.write_json(out_dir / LAYOUT_FILE, info)
    # The mean of the images as written, not equalised: the image trainer's at this size; the
    # patch trainer resizes and equalises, so its mean is another (dm_featurewise_mean).
    size = f"--img-size {img_size[0]} {img_size[1]}" if img_size else "the images' size"
    log.info("training split: %d-bit images, featurewise mean %.2f after rescale factor %.6g: "
             "train the image trainer at %s with --rescale-factor %.6g --featurewise-mean %.2f; "
             "for the patch trainer take the mean from featurewise_mean.py %s --trainer patch",
             bits or 0, mean, factor, size, factor, mean,
             out_dir / ("train" if len(train) else FULL_DIR))
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

    tool = tool or pathlib.Path(main.__globals__.get("__file__", "recipe")).stem
    dm_cli.setup_logging()
    sys.exit(dm_cli.guarded(tool, main, sys.argv[1:]))


# --------------------------------------------------------------------------- run folders

class FolderInUseError(InputError):
    """The output folder holds another run's files."""


def _plain(value: Any) -> Any:
    """JSON-comparable form (tuples become lists, paths strings)."""
    return json.loads(json.dumps(value, default=str))


def _show(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(_show(v) for v in value)
    return str(value)


def describe_config(config: Mapping[str, Any], keys=None) -> str:
    """`--key value` pairs, as the flags read (only `keys` if given)."""
    keys = sorted(config) if keys is None else keys
    return " ".join(f"--{k.replace('_', '-')} {_show(config.get(k))}" for k in keys)


def read_run_stamp(folder: str | os.PathLike) -> dict | None:
    """The folder's record {tool, config}, or None (no record, or unreadable)."""
    try:
        return json.loads((pathlib.Path(folder) / RUN_STAMP).read_text())
    except (OSError, ValueError):
        return None


def absolute_paths(config: Mapping[str, Any], keys: Iterable[str]) -> dict:
    """`config` with the values of `keys` (a path or a list of paths) made absolute, so a
    rerun from another working directory records the same configuration."""
    out = dict(config)
    for k in keys:
        v = out.get(k)
        if isinstance(v, (list, tuple)):
            out[k] = [os.path.abspath(x) for x in v]
        elif v is not None:
            out[k] = os.path.abspath(v)
    return out


def claim_folder(folder: str | os.PathLike, tool: str, config: Mapping[str, Any],
          what: str = "--out", paths: Iterable[str] = ()) -> pathlib.Path:
    """Make `folder` this run's: create it and record `config`, or check that it is already
    this configuration's. `what` names the flag that chose the folder (for the message);
    the values of `paths` are input files or folders, recorded absolute."""
    folder = pathlib.Path(folder)
    new = {"tool": tool, "config": _plain(absolute_paths(config, paths))}
    old = read_run_stamp(folder)
    if old is not None:
        if old == new:
            return folder
        old_cfg, new_cfg = old.get("config", {}), new["config"]
        diff = sorted(k for k in set(old_cfg) | set(new_cfg) if old_cfg.get(k) != new_cfg.get(k))
        earlier = f"{old.get('tool')} {describe_config(old_cfg, diff)}".strip()
        raise FolderInUseError(
            f"{folder}: holds a run of another configuration ({earlier}); choose another "
            f"{what} or delete the folder")
    if folder.is_dir() and any(p.name != RUN_STAMP for p in folder.iterdir()):
        raise FolderInUseError(
            f"{folder}: not empty and not a {tool} folder (no {RUN_STAMP} record); choose "
            f"another {what} or delete the folder")
    if folder.exists() and not folder.is_dir():
        raise FolderInUseError(f"{folder}: exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    dm_output.write_json(folder / RUN_STAMP, new, indent=1)
    return folder
