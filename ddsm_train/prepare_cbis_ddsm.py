"""CBIS-DDSM (TCIA download) -> the recipe layout the trainers and the patch sampler read.

    python ddsm_train/prepare_cbis_ddsm.py DICOM_ROOT CSV_DIR OUT_DIR [--img-size H W | --target-height 4096]

DICOM_ROOT is the downloaded tree (folders like `Mass-Training_P_00001_LEFT_CC/...`,
searched recursively, whatever the study/series folder names); CSV_DIR holds the four
official case-description CSVs. Output (see dm_recipe_utils): 16-bit full images, one
0/255 ROI mask per abnormality, roi_mask_path.csv, images.csv, patient lists and
<split>/{neg,pos} folders. An image is `pos` when any of its abnormalities is MALIGNANT.

Splits are by patient: every patient of the official test CSVs is a test patient (with
all of their images, including the few also listed in the training CSVs, so no woman is
in two splits); the other patients are split into train/val, stratified by label, seeded.
Which of the two DICOMs in an ROI folder is the mask and which the crop is decided by
image size (the mask has the full image's size), not by the file name.
"""
from __future__ import annotations

import argparse
import fnmatch
import logging
import multiprocessing
import os
import pathlib
import re
import sys
from dataclasses import dataclass

import pandas as pd
from tqdm import tqdm

if not __package__:  # run as a script from its folder: put the repo root on the path
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import dm_cli  # noqa: E402
import dm_output
import dm_pixels
import dm_recipe
from dm_errors import InputError, InputFileNotFoundError  # noqa: E402
from dm_pixels import ImageReadError, to_uint16, write_png
from dm_recipe_utils import (FULL_DIR, IMAGE_COLUMNS, MASK_DIR, ROI_COLUMNS, check_converted,
                             claim_folder, run_cli, stratified_split, summarize, write_layout)

log = logging.getLogger(__name__)

CSV_GLOBS = {("mass", "train"): "mass*train*.csv", ("mass", "test"): "mass*test*.csv",
             ("calc", "train"): "calc*train*.csv", ("calc", "test"): "calc*test*.csv"}
KEY_RE = re.compile(r"^(Mass|Calc)-(Training|Test)_(P_\d+)_(LEFT|RIGHT)_(CC|MLO)(_\d+)?$")


class CbisFormatError(InputError):
    """A case-description CSV doesn't have the expected columns."""


def find_case_csvs(csv_dir: str | os.PathLike) -> dict[tuple[str, str], pathlib.Path]:
    """The official case-description CSVs in a folder, keyed by (type, split)."""
    d = pathlib.Path(csv_dir)
    if not d.is_dir():
        raise InputFileNotFoundError(f"{d}: CSV folder not found")
    found = {}
    for key, pattern in CSV_GLOBS.items():
        hits = sorted(p for p in d.iterdir() if p.is_file() and fnmatch.fnmatch(p.name.lower(), "*" + pattern))
        if hits:
            found[key] = hits[0]
    if not found:
        raise InputFileNotFoundError(f"{d}: no CBIS-DDSM case-description CSV (mass_/calc_case_description_*_set.csv)")
    return found


def _col(df: pd.DataFrame, *names: str) -> str:
    norm = {re.sub(r"[\s_]+", " ", c.strip().lower()): c for c in df.columns}
    for n in names:
        if n in norm:
            return norm[n]
    raise CbisFormatError(f"missing column {names[0]!r}")


def read_case_csv(path: str | os.PathLike, abn_type: str | None = None, official: str | None = None) -> pd.DataFrame:
    """One case-description CSV as a normalised abnormality table.

    Handles the real files' quirks: fields with embedded newlines (quoted), `breast_density`
    vs `breast density`, stray whitespace in paths. Columns: patient_id, side, view, abn_num,
    type (mass/calc), pathology, breast_density, assessment, subtlety, image_path, crop_path,
    roi_path, official (train/test), image_key, roi_key.
    """
    p = pathlib.Path(path)
    if not p.is_file():
        raise InputFileNotFoundError(f"{p}: CSV not found")
    raw = pd.read_csv(p, dtype=str, keep_default_na=False)
    try:
        out = pd.DataFrame({
            "patient_id": raw[_col(raw, "patient id")].str.strip(),
            "side": raw[_col(raw, "left or right breast")].str.strip().str.upper(),
            "view": raw[_col(raw, "image view")].str.strip().str.upper(),
            "abn_num": raw[_col(raw, "abnormality id")].str.strip().astype(int),
            "type": raw[_col(raw, "abnormality type")].str.strip().str.lower()
                    .map(lambda t: "calc" if t.startswith("calc") else "mass"),
            "pathology": raw[_col(raw, "pathology")].str.strip().str.upper(),
            "breast_density": raw[_col(raw, "breast density")].str.strip(),
            "assessment": raw[_col(raw, "assessment")].str.strip(),
            "subtlety": raw[_col(raw, "subtlety")].str.strip(),
            "image_path": raw[_col(raw, "image file path")].str.strip(),
            "crop_path": raw[_col(raw, "cropped image file path")].str.strip(),
            "roi_path": raw[_col(raw, "roi mask file path")].str.strip(),
        })
    except CbisFormatError as e:
        raise CbisFormatError(f"{p}: {e}") from None
    if abn_type is not None:
        out["type"] = abn_type
    first = out["image_path"].str.split("/").str[0]
    if official is None:
        official = "test" if first.str.contains("-Test_").all() else "train"
    out["official"] = official
    out["image_key"] = first
    out["roi_key"] = out["roi_path"].str.split("/").str[0]
    bad = ~out["pathology"].isin(["MALIGNANT", "BENIGN", "BENIGN_WITHOUT_CALLBACK"])
    if bad.any():
        raise CbisFormatError(f"{p}: unexpected pathology value(s) {sorted(set(out.loc[bad, 'pathology']))}")
    return out


def load_case_tables(csv_dir: str | os.PathLike) -> pd.DataFrame:
    """All official CSVs of a folder concatenated (mass train, mass test, calc train, calc test)."""
    parts = [read_case_csv(path, t, s) for (t, s), path in sorted(find_case_csvs(csv_dir).items())]
    return pd.concat(parts, ignore_index=True)


def image_table(abn: pd.DataFrame) -> pd.DataFrame:
    """One row per (patient, side, view): label pos if any abnormality is MALIGNANT, official split."""
    g = abn.groupby(["patient_id", "side", "view"], sort=True)
    img = g.agg(label=("pathology", lambda s: "pos" if (s == "MALIGNANT").any() else "neg"),
                official=("official", lambda s: "test" if (s == "test").any() else "train"),
                n_abn=("abn_num", "size"),
                image_key=("image_key", lambda s: sorted(set(s))[0])).reset_index()
    img["image_id"] = img["patient_id"] + "_" + img["side"] + "_" + img["view"]
    img["full_img_file"] = img["image_id"] + ".png"
    return img


def assign_splits(images: pd.DataFrame, val_size: float = 0.1, seed: int = 12345) -> dict[str, str]:
    """patient -> split: official test patients to test; the rest train/val stratified by label."""
    test_pats = set(images.loc[images["official"] == "test", "patient_id"])
    rest = images[~images["patient_id"].isin(test_pats)]
    labels = rest.groupby("patient_id")["label"].agg(lambda s: int((s == "pos").any())).to_dict()
    split = stratified_split(labels, {"val": val_size}, seed)
    split.update({p: "test" for p in test_pats})
    return split


class DicomTree:
    """Finds CBIS-DDSM DICOMs by their top folder name (e.g. Mass-Training_P_00001_LEFT_CC_1)."""

    def __init__(self, root: str | os.PathLike):
        self.root = pathlib.Path(root)
        if not self.root.is_dir():
            raise InputFileNotFoundError(f"{self.root}: DICOM folder not found")
        self.index: dict[str, list[str]] = {}
        for dirpath, _, files in os.walk(self.root):
            dcms = [f for f in files if f.lower().endswith(".dcm")]
            if not dcms:
                continue
            key = next((part for part in reversed(pathlib.Path(dirpath).relative_to(self.root).parts)
                        if KEY_RE.match(part)), None)
            if key is not None:
                self.index.setdefault(key, []).extend(os.path.join(dirpath, f) for f in dcms)
        for v in self.index.values():
            v.sort()

    def candidates(self, key: str, *csv_paths: str) -> list[str]:
        """Files listed in the CSV (when present as given) plus every DICOM under the key folder."""
        out = [str(self.root / p) for p in csv_paths if p and (self.root / p).is_file()]
        out += [p for p in self.index.get(key, []) if p not in out]
        return out


def pick_largest(paths: list[str]) -> tuple[str, tuple[int, int]]:
    """The DICOM with the most pixels (by header) and its shape."""
    if not paths:
        raise ImageReadError("no DICOM file found")
    shapes = [(dm_pixels.dicom_shape(p), p) for p in paths]
    (shape, path) = max(shapes, key=lambda t: (t[0][0] * t[0][1], t[1]))
    return path, shape


def pick_mask(paths: list[str], full_shape: tuple[int, int]) -> str:
    """Of the files in an ROI folder, the mask: the one with the full image's size.

    A few CBIS-DDSM masks are slightly off the image size; the largest file is then used if it
    covers at least half the image area (it is resized), else the folder has only a crop.
    """
    if not paths:
        raise ImageReadError("no ROI DICOM file found")
    shapes = {p: dm_pixels.dicom_shape(p) for p in paths}
    same = [p for p, s in shapes.items() if tuple(s) == tuple(full_shape)]
    if same:
        return same[0]
    best = max(shapes, key=lambda p: shapes[p][0] * shapes[p][1])
    h, w = shapes[best]
    if h * w < 0.5 * full_shape[0] * full_shape[1]:  # only a crop here: no usable mask
        raise ImageReadError(f"{best}: no ROI mask of the full image's size {tuple(full_shape)} "
                             f"(largest file is {h}x{w})")
    log.debug("%s: mask size %dx%d differs from the image's %s; resizing", best, h, w, tuple(full_shape))
    return best


@dataclass(frozen=True)
class ConvertTask:
    image_id: str
    full_candidates: tuple[str, ...]
    masks: tuple[tuple[str, tuple[str, ...]], ...]  # (mask file name, candidate DICOMs)
    out_dir: str
    img_size: tuple[int, int] | None
    target_height: int | None


def convert_image(task: ConvertTask) -> dict:
    """Write one full image and its masks; returns {'image_id', 'ok', 'errors', 'masks_ok'}."""
    out = pathlib.Path(task.out_dir)
    res = {"image_id": task.image_id, "ok": False, "errors": [], "masks_ok": []}
    try:
        path, shape = pick_largest(list(task.full_candidates))
        img = dm_pixels.read_image(path)
        img = to_uint16(dm_recipe.resize_to(img, task.img_size, task.target_height))
        write_png(out / FULL_DIR / f"{task.image_id}.png", img)
        res["ok"] = True
    except (ImageReadError, ValueError, OSError) as e:
        res["errors"].append(f"{task.image_id}: {e}")
        return res
    for fname, cands in task.masks:
        try:
            mpath = pick_mask(list(cands), shape)
            m = dm_pixels.read_image(mpath)
            m = dm_recipe.resize_mask(m, img.shape[:2])
            if not m.any():
                raise ImageReadError(f"{mpath}: ROI mask is empty")
            write_png(out / MASK_DIR / fname, m)
            res["masks_ok"].append(fname)
        except (ImageReadError, ValueError, OSError) as e:
            res["errors"].append(f"{fname}: {e}")
    return res


def _convert_safe(task: ConvertTask) -> dict:
    try:
        return convert_image(task)
    except (InputError, OSError) as e:  # a broken case is listed and skipped; a bug is raised
        return {"image_id": task.image_id, "ok": False, "errors": [f"{task.image_id}: {type(e).__name__}: {e}"],
                "masks_ok": []}


def prepare(dicom_root: str | os.PathLike, csv_dir: str | os.PathLike, out_dir: str | os.PathLike,
            img_size: tuple[int, int] | None = None, target_height: int | None = 4096, val_size: float = 0.1,
            seed: int = 12345, nb_workers: int = 1, limit: int | None = None, verbose: bool = True) -> dict:
    """Convert the download and write the layout; returns the summary (counts per split and class)."""
    dm_output.check_not_input(out_dir, [("DICOM_ROOT", dicom_root), ("CSV_DIR", csv_dir)],
                              "OUT_DIR", holds=True)
    abn = load_case_tables(csv_dir)
    images = image_table(abn)
    split_of = assign_splits(images, val_size, seed)
    images["split"] = images["patient_id"].map(split_of)
    if limit:
        images = images.iloc[:limit].copy()
    abn = abn.merge(images[["patient_id", "side", "view", "full_img_file"]], on=["patient_id", "side", "view"])
    abn["roi_mask_file"] = abn["roi_key"] + ".png"
    tree = DicomTree(dicom_root)
    out = claim_folder(out_dir, "prepare_cbis_ddsm", dict(
        source=os.path.abspath(dicom_root), csv_dir=os.path.abspath(csv_dir),
        img_size=img_size, target_height=target_height, val_size=val_size, seed=seed,
        limit=limit), what="output folder")
    tasks = []
    for row in images.itertuples(index=False):
        a = abn[(abn["patient_id"] == row.patient_id) & (abn["side"] == row.side) & (abn["view"] == row.view)]
        keys = sorted(set(a["image_key"]))
        full = []
        for k in keys:
            full += [p for p in tree.candidates(k, *a.loc[a["image_key"] == k, "image_path"]) if p not in full]
        masks = tuple((r.roi_mask_file, tuple(tree.candidates(r.roi_key, r.roi_path, r.crop_path)))
                      for r in a.itertuples(index=False))
        tasks.append(ConvertTask(row.image_id, tuple(full), masks, str(out),
                                 tuple(img_size) if img_size else None, None if img_size else target_height))
    bar = dict(total=len(tasks), desc="CBIS-DDSM images", disable=not verbose)
    if nb_workers > 1 and len(tasks) > 1:
        with multiprocessing.get_context("spawn").Pool(nb_workers) as pool:
            results = list(tqdm(pool.imap(_convert_safe, tasks, chunksize=1), **bar))
    else:
        results = [_convert_safe(t) for t in tqdm(tasks, **bar)]
    ok_imgs = {r["image_id"] for r in results if r["ok"]}
    ok_masks = {m for r in results for m in r["masks_ok"]}
    skipped = [e for r in results for e in r["errors"]]
    images = images[images["image_id"].isin(ok_imgs)]
    abn = abn[abn["roi_mask_file"].isin(ok_masks)]
    roi = abn[ROI_COLUMNS + ["official", "assessment", "subtlety", "breast_density"]].rename(
        columns={"official": "official_split"})
    check_converted(out, images, skipped, "CBIS-DDSM")
    write_layout(out, roi.sort_values(["patient_id", "side", "view", "type", "abn_num"]),
                 images[IMAGE_COLUMNS], split_of, img_size=img_size, target_height=target_height)
    return summarize(images, abn, skipped, name="CBIS-DDSM")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="CBIS-DDSM download -> PNG images, ROI masks, splits, class folders.",
                                 formatter_class=dm_cli.HelpFormatter)
    ap.add_argument("dicom_root", help="the downloaded DICOM tree (CBIS-DDSM/...)")
    ap.add_argument("csv_dir", help="folder with the four official case-description CSVs")
    ap.add_argument("out_dir", help="output folder (the recipe layout)")
    dm_cli.add_img_size(ap, help="resize full images to H x W (e.g. 1152 896)")
    ap.add_argument("--target-height", "--img-height", type=dm_cli.pixels, default=4096,
                    help="else resize to this height keeping the aspect")
    ap.add_argument("--native-size", action="store_true", help="keep the DICOM size")
    ap.add_argument("--val-size", type=dm_cli.float_in(0), default=0.1,
                    help="fraction of non-test patients for validation (>= 1: a number)")
    dm_cli.add_seed_flag(ap, "split seed")
    ap.add_argument("--nb-workers", type=dm_cli.int_at_least(1),
                    default=int(os.environ.get("NUM_CPU_CORES", 1)),
                    help="conversion processes ($NUM_CPU_CORES)")
    ap.add_argument("--limit", type=dm_cli.int_at_least(1), default=None,
                    help="convert only the first N images (trial runs)")
    ap.add_argument("--no-verbose", dest="verbose", action="store_false", help="no progress bar")
    a = ap.parse_args(argv)
    return prepare(a.dicom_root, a.csv_dir, a.out_dir, a.img_size, None if a.native_size else a.target_height,
                   a.val_size, a.seed, a.nb_workers, a.limit, a.verbose)


def cli() -> None:
    """The command (the script, or installed as `prepare_cbis_ddsm`): input errors one line, exit 2."""
    run_cli(main, "prepare_cbis_ddsm")


if __name__ == "__main__":
    cli()
