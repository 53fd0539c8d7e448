"""mini-MIAS (images + Info.txt) -> the recipe layout (see dm_recipe_utils).

    python mias_train/prepare_mias.py MIAS_DIR OUT_DIR [--img-size H W] [--label abnormal]

Info.txt gives each abnormality's centre and radius with y counted from the BOTTOM-left
corner, so the mask circle is centred at row (height - y). Abnormalities without
coordinates (mdb059; the widely spread calcifications of mdb216, mdb233, mdb245) label
their image but get no mask. Labels: `pos` = any malignant abnormality (default) or, with
`--label abnormal`, any abnormality. Consecutive images (mdb001+mdb002, ...) are the two
breasts of one woman: they share a patient id (W001, ...) and always land in one split.
MIAS has no laterality field, so `side` is empty (images are told apart by image_id and
full_img_file) and `view` is MLO. The pairs of breasts go to `pairs.csv` (path,other_path,
the odd image of a pair being the left breast: its chest wall is on the image's right edge
in 161 of 161 pairs, the even one's on the left edge in 160): what a bilateral model needs
(`--pairs`, docs/mias.md). (`side` stays empty: the patch sampler names an image's patches
and seeds its draws by patient, side and view, and a filled side would change them all.)
"""
from __future__ import annotations

import argparse
import logging
import os
import pathlib
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
                             claim_folder, run_cli, stratified_split, summarize, write_csv,
                             write_layout)

log = logging.getLogger(__name__)

CLASSES = {"CALC", "CIRC", "SPIC", "MISC", "ARCH", "ASYM", "NORM"}


class InfoFormatError(InputError):
    """Info.txt has a malformed data line."""


def check_source(mias_dir: str | os.PathLike) -> None:
    """The mini-MIAS folder is there and holds Info.txt (one line naming what is wrong:
    a missing folder is not called a missing Info.txt)."""
    d = pathlib.Path(mias_dir)
    if not d.is_dir():
        raise InputFileNotFoundError(f"{d}: mini-MIAS folder not found" + (
            " (it is a file)" if d.exists() else ""))
    if not (d / "Info.txt").is_file():
        raise InputFileNotFoundError(f"{d}: no Info.txt in this folder: is it the mini-MIAS "
                                     "folder (Info.txt and images/mdbNNN.png)?")


def parse_info(path: str | os.PathLike) -> pd.DataFrame:
    """Info.txt data lines as a table: image_id, tissue, cls, severity (B/M/''), x, y, radius (NaN if absent)."""
    p = pathlib.Path(path)
    if not p.is_file():
        check_source(p.parent)      # a missing folder, or a folder without Info.txt
        raise InputFileNotFoundError(f"{p}: Info.txt not found")
    rows = []
    for n, line in enumerate(p.read_text(errors="replace").splitlines(), start=1):
        tok = line.split()
        if not tok or not tok[0].startswith("mdb"):
            continue
        if len(tok) < 3 or tok[2] not in CLASSES:
            raise InfoFormatError(f"{p}:{n}: cannot parse {line.strip()!r}")
        sev = tok[3] if len(tok) > 3 and tok[3] in ("B", "M") else ""
        xyr = [float("nan")] * 3
        if len(tok) >= 7:
            try:
                xyr = [float(t) for t in tok[4:7]]
            except ValueError:
                pass
        rows.append([tok[0], tok[1], tok[2], sev, *xyr])
    if not rows:
        raise InfoFormatError(f"{p}: no data line starting with 'mdb'")
    return pd.DataFrame(rows, columns=["image_id", "tissue", "cls", "severity", "x", "y", "radius"])


def woman_id(image_id: str) -> str:
    """mdb001 and mdb002 -> W001 (the two breasts of one woman)."""
    return f"W{(int(image_id[3:]) + 1) // 2:03d}"


def image_labels(info: pd.DataFrame, label: str = "malignant") -> pd.DataFrame:
    """One row per image with neg/pos label and woman id."""
    if label not in ("malignant", "abnormal"):
        raise InputError(f"label must be 'malignant' or 'abnormal', got {label!r}")
    key = (info["severity"] == "M") if label == "malignant" else (info["cls"] != "NORM")
    g = key.groupby(info["image_id"]).any()
    out = pd.DataFrame({"image_id": g.index, "label": np.where(g.values, "pos", "neg")})
    out["patient_id"] = out["image_id"].map(woman_id)
    out["side"] = ""
    out["view"] = "MLO"
    return out.reset_index(drop=True)


def circle_mask(shape: tuple[int, int], x: float, y_from_bottom: float, radius: float,
                orig_shape: tuple[int, int] = (1024, 1024)) -> np.ndarray:
    """0/255 disc for an Info.txt (x, y, r) on an image resized from orig_shape to shape."""
    sy, sx = shape[0] / orig_shape[0], shape[1] / orig_shape[1]
    row = (orig_shape[0] - y_from_bottom) * sy
    m = np.zeros(shape, np.uint8)
    shift = 4  # sub-pixel centre
    cv2.ellipse(m, (int(round(x * sx * 16)), int(round(row * 16))),
                (max(1, int(round(radius * sx * 16))), max(1, int(round(radius * sy * 16)))),
                0, 0, 360, 255, -1, lineType=cv2.LINE_8, shift=shift)
    return m


def prepare(mias_dir: str | os.PathLike, out_dir: str | os.PathLike, img_size: tuple[int, int] | None = None,
            label: str = "malignant", val_size: float = 0.15, test_size: float = 0.2, seed: int = 12345,
            bit_depth: int = 8, ids: list[str] | None = None, verbose: bool = True) -> dict:
    """Convert; returns the summary. `ids` restricts to some images (trial runs, tests)."""

    d = pathlib.Path(mias_dir)
    check_source(d)
    dm_output.check_not_input(out_dir, [("MIAS_DIR", d)], "OUT_DIR", holds=True)
    info = parse_info(d / "Info.txt")
    images = image_labels(info, label)
    women = images.groupby("patient_id")["label"].agg(lambda s: int((s == "pos").any())).to_dict()
    split_of = stratified_split(women, {"test": test_size, "val": val_size}, seed)
    images["split"] = images["patient_id"].map(split_of)
    if ids is not None:
        images = images[images["image_id"].isin(set(ids))].reset_index(drop=True)
    images["full_img_file"] = images["image_id"] + ".png"
    out = claim_folder(out_dir, "prepare_mias", dict(
        source=os.path.abspath(d), img_size=img_size, label=label, val_size=val_size,
        test_size=test_size, seed=seed, bit_depth=bit_depth, ids=ids), what="output folder")
    ok, skipped, roi_rows = [], [], []
    for row in tqdm(list(images.itertuples(index=False)), desc="mini-MIAS images", disable=not verbose):
        src = d / "images" / f"{row.image_id}.png"
        if not src.is_file() and (d / f"{row.image_id}.pgm").is_file():
            src = d / f"{row.image_id}.pgm"
        try:
            img = dm_pixels.read_image(src)
        except ImageReadError as e:
            skipped.append(str(e))
            continue
        orig = img.shape[:2]
        img = dm_recipe.resize_to(img, img_size)
        img = to_uint16(img) if bit_depth == 16 else img
        write_png(out / FULL_DIR / row.full_img_file, img)
        ok.append(row.image_id)
        abns = info[(info["image_id"] == row.image_id) & (info["cls"] != "NORM")]
        for k, a in enumerate(abns.itertuples(index=False), start=1):
            if np.isnan(a.x):
                continue
            mname = f"{'Calc' if a.cls == 'CALC' else 'Mass'}-MIAS_{row.patient_id}_{row.image_id}_MLO_{k}.png"
            write_png(out / MASK_DIR / mname, circle_mask(img.shape[:2], a.x, a.y, a.radius, orig))
            roi_rows.append([row.patient_id, "", "MLO", k,
                             "MALIGNANT" if a.severity == "M" else "BENIGN",
                             "calc" if a.cls == "CALC" else "mass", row.full_img_file, mname, a.cls])
    images = images[images["image_id"].isin(ok)]
    roi = pd.DataFrame(roi_rows, columns=ROI_COLUMNS + ["mias_class"])
    check_converted(out, images, skipped, "mini-MIAS")
    write_layout(out, roi, images[IMAGE_COLUMNS], split_of, img_size=img_size)
    write_csv(info, out / "mias_info.csv")
    write_csv(pair_table(images), out / "pairs.csv")
    return summarize(images, roi, skipped, name="mini-MIAS")


def pair_table(images: pd.DataFrame) -> pd.DataFrame:
    """path,other_path (under full_images/) of every woman whose two images are both here,
    the left breast (odd image number) first."""
    rows = []
    for _, g in images.sort_values("image_id").groupby("patient_id", sort=True):
        if len(g) == 2:
            a, b = (f"{FULL_DIR}/{f}" for f in g["full_img_file"])
            rows.append((a, b))
    return pd.DataFrame(rows, columns=["path", "other_path"])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description="mini-MIAS -> PNG images, circular ROI masks, splits, class folders.",
                                 formatter_class=dm_cli.HelpFormatter)
    ap.add_argument("mias_dir", help="folder with Info.txt and images/mdbNNN.png")
    ap.add_argument("out_dir", help="output folder (the recipe layout)")
    dm_cli.add_img_size(ap, help="resize every image to H x W (default: keep 1024x1024)")
    ap.add_argument("--label", choices=["malignant", "abnormal"], default="malignant",
                    help="pos = malignant (default) or any abnormality")
    ap.add_argument("--bit-depth", type=int, choices=[8, 16], default=8,
                    help="8 keeps the original pixel values; 16 stores the same values in 16-bit PNGs")
    ap.add_argument("--val-size", type=dm_cli.float_in(0), default=0.15,
                    help="fraction of women for validation (>= 1: a number of women)")
    ap.add_argument("--test-size", type=dm_cli.float_in(0), default=0.2,
                    help="fraction of women for test (>= 1: a number of women)")
    dm_cli.add_seed_flag(ap, "split seed")
    ap.add_argument("--no-verbose", dest="verbose", action="store_false", help="no progress bar")
    a = ap.parse_args(argv)
    return prepare(a.mias_dir, a.out_dir, a.img_size, a.label, a.val_size, a.test_size, a.seed, a.bit_depth,
                   verbose=a.verbose)


def cli() -> None:
    """The command (the script, or installed as `prepare_mias`): input errors one line, exit 2."""
    run_cli(main, "prepare_mias")


if __name__ == "__main__":
    cli()
