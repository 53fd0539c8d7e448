"""INbreast (DICOMs + INbreast.csv [+ XML ROIs]) -> the recipe layout (see dm_recipe_utils).

    python inbreast_train/prepare_inbreast.py DICOM_DIR INBREAST_CSV OUT_DIR [--xml-dir AllXML] [--img-size H W]

Labels (docs/data.md): BI-RADS 1-2 `neg`, 4 (4a/4b/4c), 5, 6 `pos`, 3 excluded. The sheet's
"Patient ID" column is anonymised ("removed"), so patients come from the DICOM file names
(`<File Name>_<patient hash>_MG_<L|R>_<view>_ANON.dcm`); the split (train/val/test) is by
patient, stratified by "any positive image", seeded. Optional XML annotations (the
AllXML plist files) become masks: one per mass or cluster outline, and one per image for
all single-point calcifications. INbreast gives no per-lesion pathology: a lesion is
recorded as MALIGNANT when its image is BI-RADS >= 4, else BENIGN.
"""
from __future__ import annotations

import argparse
import logging
import os
import pathlib
import plistlib
import sys

import cv2
import numpy as np
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

NEG, POS, EXCLUDED = {"1", "2"}, {"4", "4a", "4b", "4c", "5", "6"}, {"3"}


class InbreastFormatError(InputError):
    """INbreast.csv or an XML annotation is malformed."""


def birads_label(birads: str) -> str | None:
    """'neg' for BI-RADS 1-2, 'pos' for 4/4a/4b/4c/5/6, None for 3 (excluded)."""
    b = str(birads).strip().lower()
    if b in NEG:
        return "neg"
    if b in POS:
        return "pos"
    if b in EXCLUDED:
        return None
    raise InbreastFormatError(f"unknown BI-RADS value {birads!r}")


def read_inbreast_csv(path: str | os.PathLike) -> pd.DataFrame:
    """The sheet (';'-separated, CRLF) as: file_name, side, view, acr, birads, label (neg/pos/None)."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise InputFileNotFoundError(f"{p}: INbreast sheet not found")
    raw = pd.read_csv(p, sep=";", dtype=str, keep_default_na=False)
    raw.columns = [c.strip().lower() for c in raw.columns]
    need = ["laterality", "view", "file name", "acr", "bi-rads"]
    missing = [c for c in need if c not in raw.columns]
    if missing:
        raise InbreastFormatError(f"{p}: missing column(s) {missing}")
    out = pd.DataFrame({
        "file_name": raw["file name"].str.strip(),
        "side": raw["laterality"].str.strip().str.upper().map({"L": "LEFT", "R": "RIGHT"}),
        "view": raw["view"].str.strip().str.upper(),
        "acr": raw["acr"].str.strip(),
        "birads": raw["bi-rads"].str.strip().str.lower(),
    })
    try:
        out["label"] = out["birads"].map(birads_label)
    except InbreastFormatError as e:
        raise InbreastFormatError(f"{p}: {e}") from None
    return out


def index_dicoms(dicom_dir: str | os.PathLike) -> dict[str, tuple[str, str]]:
    """File Name number -> (DICOM path, patient id from the file name)."""
    d = pathlib.Path(dicom_dir)
    if not d.is_dir():
        raise InputFileNotFoundError(f"{d}: DICOM folder not found")
    out = {}
    for p in sorted(d.rglob("*")):
        if p.is_file() and p.suffix.lower() == ".dcm":
            parts = p.stem.split("_")
            out[parts[0]] = (str(p), parts[1] if len(parts) > 1 else parts[0])
    return out


def read_xml_rois(path: str | os.PathLike) -> list[tuple[str, list[tuple[float, float]]]]:
    """(name, [(x, y), ...]) for every ROI of an INbreast XML (Apple plist) file."""
    try:
        with open(path, "rb") as f:
            pl = plistlib.load(f)
        out = []
        for image in pl.get("Images", []):
            for roi in image.get("ROIs", []):
                pts = [tuple(float(v) for v in s.strip().strip("()").split(",")[:2]) for s in roi.get("Point_px", [])]
                out.append((str(roi.get("Name", "")), pts))
        return out
    except Exception as e:
        raise InbreastFormatError(f"{path}: cannot parse XML annotation ({type(e).__name__}: {e})") from None


def roi_masks(rois: list[tuple[str, list[tuple[float, float]]]], shape: tuple[int, int],
              orig_shape: tuple[int, int], calc_radius: int = 3) -> list[tuple[str, np.ndarray]]:
    """(type, 0/255 mask) list: outlines filled; single calcification points merged into one mask."""
    sy, sx = shape[0] / orig_shape[0], shape[1] / orig_shape[1]
    out, calcs = [], np.zeros(shape, np.uint8)
    for name, pts in rois:
        if not pts:
            continue
        typ = "calc" if ("calc" in name.lower() or "cluster" in name.lower()) else "mass"
        xy = np.array([[x * sx, y * sy] for x, y in pts], np.float64)
        if len(pts) >= 3:
            m = np.zeros(shape, np.uint8)
            cv2.fillPoly(m, [np.round(xy).astype(np.int32)], 255)
            out.append((typ, m))
        else:
            for x, y in xy:
                cv2.circle(calcs, (int(round(x)), int(round(y))), max(1, int(round(calc_radius * sx))), 255, -1)
    if calcs.any():
        out.append(("calc", calcs))
    return out


def prepare(dicom_dir: str | os.PathLike, csv_path: str | os.PathLike, out_dir: str | os.PathLike,
            xml_dir: str | os.PathLike | None = None, img_size: tuple[int, int] | None = None,
            val_size: float = 0.1, test_size: float = 0.2, seed: int = 12345, verbose: bool = True) -> dict:
    """Convert; returns the summary (counts per split and class, skipped cases)."""
    dm_output.check_not_input(out_dir, [("DICOM_DIR", dicom_dir), ("CSV", csv_path),
                                        ("--xml-dir", xml_dir)], "OUT_DIR", holds=True)
    sheet = read_inbreast_csv(csv_path)
    dicoms = index_dicoms(dicom_dir)
    rows = sheet[sheet["label"].notna()].copy()
    missing = rows.loc[~rows["file_name"].isin(set(dicoms)), "file_name"].tolist()
    skipped = [f"{m}: no DICOM file starting with this File Name" for m in missing]
    rows = rows[rows["file_name"].isin(set(dicoms))].copy()
    rows["patient_id"] = rows["file_name"].map(lambda f: dicoms[f][1])
    dup = rows.duplicated(["patient_id", "side", "view"], keep=False)
    rows.loc[dup, "view"] = rows.loc[dup, "view"] + "_" + rows.loc[dup, "file_name"]  # keep ids unique
    rows["image_id"] = rows["file_name"]
    rows["full_img_file"] = rows["file_name"] + ".png"
    labels = rows.groupby("patient_id")["label"].agg(lambda s: int((s == "pos").any())).to_dict()
    split_of = stratified_split(labels, {"test": test_size, "val": val_size}, seed)
    rows["split"] = rows["patient_id"].map(split_of)
    out = claim_folder(out_dir, "prepare_inbreast", dict(
        source=os.path.abspath(dicom_dir), csv=os.path.abspath(csv_path),
        xml_dir=xml_dir and os.path.abspath(xml_dir), img_size=img_size, val_size=val_size,
        test_size=test_size, seed=seed), what="output folder")
    ok, roi_rows = [], []
    for r in tqdm(list(rows.itertuples(index=False)), desc="INbreast images", disable=not verbose):
        try:
            img = dm_pixels.read_image(dicoms[r.file_name][0])
        except ImageReadError as e:
            skipped.append(str(e))
            continue
        orig = img.shape[:2]
        img = to_uint16(dm_recipe.resize_to(img, img_size))
        write_png(out / FULL_DIR / r.full_img_file, img)
        ok.append(r.file_name)
        xml = pathlib.Path(xml_dir) / f"{r.file_name}.xml" if xml_dir else None
        if xml is None or not xml.is_file():
            continue
        try:
            masks = roi_masks(read_xml_rois(xml), img.shape[:2], orig)
        except InbreastFormatError as e:
            skipped.append(str(e))
            continue
        for k, (typ, m) in enumerate(masks, start=1):
            mname = f"{'Calc' if typ == 'calc' else 'Mass'}-INbreast_{r.file_name}_{k}.png"
            write_png(out / MASK_DIR / mname, m)
            roi_rows.append([r.patient_id, r.side, r.view, k, "MALIGNANT" if r.label == "pos" else "BENIGN", typ,
                             r.full_img_file, mname])
    rows = rows[rows["file_name"].isin(ok)]
    roi = pd.DataFrame(roi_rows, columns=ROI_COLUMNS)
    check_converted(out, rows, skipped, "INbreast")
    write_layout(out, roi, rows[IMAGE_COLUMNS + ["birads", "acr"]], split_of, img_size=img_size)
    s = summarize(rows, roi if len(roi) else None, skipped, name="INbreast")
    s["excluded_birads3"] = int((sheet["label"].isna()).sum())
    return s


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="INbreast -> PNG images, neg/pos by BI-RADS, patient-level splits.",
                                 formatter_class=dm_cli.HelpFormatter)
    ap.add_argument("dicom_dir", help="folder of INbreast DICOMs (AllDICOMs)")
    ap.add_argument("csv", help="INbreast.csv (';'-separated)")
    ap.add_argument("out_dir", help="output folder (the recipe layout)")
    ap.add_argument("--xml-dir", default=None, help="AllXML folder: ROI outlines -> masks")
    dm_cli.add_img_size(ap, help="resize every image to H x W (default: keep the DICOM size)")
    ap.add_argument("--val-size", type=dm_cli.float_in(0), default=0.1,
                    help="fraction of patients for validation (>= 1: a number of patients)")
    ap.add_argument("--test-size", type=dm_cli.float_in(0), default=0.2,
                    help="fraction of patients for test (>= 1: a number of patients)")
    dm_cli.add_seed_flag(ap, "split seed")
    ap.add_argument("--no-verbose", dest="verbose", action="store_false", help="no progress bar")
    a = ap.parse_args(argv)
    return prepare(a.dicom_dir, a.csv, a.out_dir, a.xml_dir, a.img_size, a.val_size, a.test_size, a.seed, a.verbose)


def cli() -> None:
    """The command (the script, or installed as `prepare_inbreast`): input errors one line, exit 2."""
    run_cli(main, "prepare_inbreast")


if __name__ == "__main__":
    cli()
