"""mini-MIAS and INbreast recipes on the real metadata (and real MIAS images)."""
from __future__ import annotations

import pathlib
import sys

import cv2
import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from mias_train import prepare_mias as mias  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
FEW = ["mdb001", "mdb002", "mdb005", "mdb023", "mdb059", "mdb144", "mdb216"]


def test_mias_info_counts(shared_data):
    info = mias.parse_info(shared_data / "mias" / "Info.txt")
    assert len(info) == 330 and info["image_id"].nunique() == 322
    assert (info["cls"] == "NORM").sum() == 207
    assert info["x"].isna().sum() == 207 + 4                      # mdb059, 216, 233, 245 have no centre
    lab = mias.image_labels(info)
    assert len(lab) == 322 and (lab["label"] == "pos").sum() == 52
    assert (mias.image_labels(info, "abnormal")["label"] == "pos").sum() == 115
    assert int((info["severity"] == "B").groupby(info["image_id"]).any().sum()) == 64
    assert lab.set_index("image_id").loc["mdb144", "label"] == "pos"  # benign + malignant -> pos
    assert mias.woman_id("mdb001") == mias.woman_id("mdb002") == "W001" != mias.woman_id("mdb003")
    with pytest.raises(ValueError):
        mias.image_labels(info, "cancer")


@pytest.mark.parametrize("size", [None, (256, 192)])
def test_mias_few_images_masks_centred(shared_data, tmp_path, size):
    import os
    out = tmp_path / "mias"
    old = os.umask(0o022)
    try:
        s = mias.prepare(shared_data / "mias", out, img_size=size, ids=FEW, seed=1, verbose=False)
    finally:
        os.umask(old)
    for f in ("full_images/mdb001.png", "images.csv", "layout.json", "patients_train.txt"):
        assert os.stat(out / f).st_mode & 0o777 == 0o644, f     # the umask, not mkstemp's 0600
    assert s["images"] == len(FEW) and s["skipped"] == []
    info = mias.parse_info(shared_data / "mias" / "Info.txt").set_index("image_id")
    roi = pd.read_csv(out / "roi_mask_path.csv", dtype=str)
    assert len(roi) == 7  # mdb001, 002, 005 x2, 023, 144 x2; mdb059 and mdb216 have no centre
    h, w = size or (1024, 1024)
    for r in roi.itertuples():
        m = cv2.imread(str(out / "roi_masks" / r.roi_mask_file), cv2.IMREAD_UNCHANGED)
        assert m.shape == (h, w)
        assert pd.isna(r.side) or r.side == ""       # MIAS records no laterality
        rows = info.loc[[r.full_img_file[:-4]]]
        a = rows.iloc[int(r.abn_num) - 1]
        ys, xs = np.nonzero(m)
        cx, cy = xs.mean(), ys.mean()
        ex, ey = a.x * w / 1024, (1024 - a.y) * h / 1024          # y counted from the bottom
        if 0 < ex - a.radius * w / 1024 and ey + a.radius * h / 1024 < h:  # disc fully inside the image
            assert abs(cx - ex) < 1.5 and abs(cy - ey) < 1.5
            rx, ry = a.radius * w / 1024, a.radius * h / 1024
            assert len(xs) == pytest.approx(np.pi * rx * ry, rel=0.05, abs=np.pi * (rx + ry))  # +- a rim pixel
        assert r.pathology == ("MALIGNANT" if a.severity == "M" else "BENIGN")
    img = cv2.imread(str(out / "full_images" / "mdb001.png"), cv2.IMREAD_UNCHANGED)
    assert img.shape == (h, w) and img.dtype == np.uint8
    if size is None:  # pixel values unchanged
        np.testing.assert_array_equal(img, cv2.imread(str(shared_data / "mias/images/mdb001.png"), -1))
    images = pd.read_csv(out / "images.csv", dtype=str).set_index("image_id")
    assert images.loc["mdb001", "split"] == images.loc["mdb002", "split"]
    assert images.loc["mdb023", "label"] == "pos" and images.loc["mdb001", "label"] == "neg"
    assert images["side"].isna().all()                 # a side or nothing, never the image id
    # layout.json: the size, depth and the training split's mean after rescaling (12.3, 12.5)
    import json
    layout = json.loads((out / "layout.json").read_text())
    assert layout["img_size"] == (list(size) if size else None)
    assert layout["bit_depth"] == 8 and layout["rescale_factor"] == 1.0
    train = [str(out / "full_images" / f) for f in images[images.split == "train"].full_img_file]
    assert layout["featurewise_mean"] == round(dm_dataset.mean_pixel(train)[0], 2)
    assert layout["mean_of"] == "train"


def test_mias_split_keeps_women_together(shared_data):
    info = mias.parse_info(shared_data / "mias" / "Info.txt")
    lab = mias.image_labels(info)
    women = lab.groupby("patient_id")["label"].agg(lambda s: int((s == "pos").any())).to_dict()
    assert len(women) == 161
    split = mias.stratified_split(women, {"test": 0.2, "val": 0.15}, 12345)
    lab["split"] = lab["patient_id"].map(split)
    assert lab.groupby("split").size().to_dict() == {"test": 64, "train": 210, "val": 48}
    assert lab[lab.label == "pos"].groupby("split").size().to_dict() == {"test": 10, "train": 34, "val": 8}


def test_mias_full_conversion(shared_data, tmp_path):
    """All 322 images (about 8 s on 2 cores; mark slow if it grows past ~20 s)."""
    s = mias.prepare(shared_data / "mias", tmp_path / "m", verbose=False)
    assert s["images"] == 322 and s["skipped"] == []
    assert sum(s[k]["pos"] for k in ("train", "val", "test")) == 52
    assert len(list((tmp_path / "m" / "roi_masks").glob("*.png"))) == 119
    assert len(list((tmp_path / "m").glob("*/pos/*.png"))) == 52


def test_recipe_that_converts_nothing_fails_and_lists_the_skipped(shared_data, tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "Info.txt").write_text((shared_data / "mias" / "Info.txt").read_text())
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="no image converted"):
        mias.prepare(src, out, ids=FEW, verbose=False)
    listed = (out / "skipped.txt").read_text().splitlines()
    assert len(listed) == len(FEW) and all("mdb" in l for l in listed)
    assert not (out / "images.csv").exists()
    # As a command: exit status 2 and one error line.
    import subprocess
    import sys
    r = subprocess.run([sys.executable, str(REPO / "mias_train" / "prepare_mias.py"), str(src),
                        str(tmp_path / "out2"), "--no-verbose"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2
    assert len([l for l in r.stderr.splitlines() if "prepare_mias: error: " in l]) == 1


def test_featurewise_mean_command(shared_data, tmp_path, capsys, caplog):
    import dm_featurewise_mean as fm
    d = tmp_path / "set" / "neg"
    d.mkdir(parents=True)
    a = np.full((20, 10), 100, np.uint16) * 257
    b = np.full((20, 10), 200, np.uint16) * 257
    cv2.imwrite(str(d / "a.png"), a)
    cv2.imwrite(str(d / "b.png"), b)
    assert fm.main([str(tmp_path / "set"), "--trainer", "image", "--print", "mean"]) == 0
    assert capsys.readouterr().out.strip() == "150.00"      # 16-bit: x 255/65535
    assert fm.main([str(tmp_path / "set"), "--trainer", "image", "--print", "rescale"]) == 0
    assert capsys.readouterr().out.strip() == "0.00389105"
    assert fm.main([str(tmp_path / "set"), "--trainer", "image"]) == 0
    # (the last line: other tests in this process may have sent the log to stdout too)
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == "--rescale-factor 0.00389105 --featurewise-mean 150.00"
    cv2.imwrite(str(d / "c.png"), np.full((20, 10), 7, np.uint8))
    assert fm.main([str(tmp_path / "set"), "--trainer", "image"]) == 2            # mixed 8/16 bits refused
    assert any("16-bit image among 8-bit" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- INbreast
from inbreast_train import prepare_inbreast as inb  # noqa: E402
from recipe_helpers import write_dicom  # noqa: E402
import dm_dataset


def test_inbreast_sheet_counts(shared_data):
    df = inb.read_inbreast_csv(shared_data / "inbreast" / "INbreast.csv")
    assert len(df) == 410
    assert df["birads"].value_counts().to_dict() == {"2": 220, "1": 67, "5": 49, "3": 23, "4c": 22,
                                                     "4a": 13, "4b": 8, "6": 8}
    assert df["label"].value_counts().to_dict() == {"neg": 287, "pos": 100}
    assert df["label"].isna().sum() == 23                          # BI-RADS 3 excluded
    assert set(df["side"]) == {"LEFT", "RIGHT"}
    assert df["view"].value_counts().to_dict() == {"CC": 203, "MLO": 206, "FB": 1}  # one 'FB' row is real
    assert df["file_name"].str.fullmatch(r"\d{8}").all() and df["file_name"].is_unique
    assert [inb.birads_label(b) for b in ("1", "2", "3", "4A", "4b", "4c", "5", "6")] == \
        ["neg", "neg", None, "pos", "pos", "pos", "pos", "pos"]
    with pytest.raises(inb.InbreastFormatError):
        inb.birads_label("0")


def _plist(path, rois):
    import plistlib
    images = [{"ROIs": [{"Name": n, "NumberOfPoints": len(p), "Point_px": [f"({x}, {y})" for x, y in p]}
                        for n, p in rois]}]
    with open(path, "wb") as f:
        plistlib.dump({"Images": images}, f, fmt=plistlib.FMT_XML)


def test_inbreast_mini_tree(shared_data, tmp_path):
    """Real sheet rows; synthetic DICOMs named like the release; one XML with a mass and calcs."""
    sheet = inb.read_inbreast_csv(shared_data / "inbreast" / "INbreast.csv")
    rows = sheet.iloc[:12]                     # 3 women x 4 images, BI-RADS 1/3/4a/5/2/...
    dcm_dir, xml_dir = tmp_path / "AllDICOMs", tmp_path / "AllXML"
    xml_dir.mkdir()
    rng = np.random.default_rng(0)
    for i, r in enumerate(rows.itertuples()):
        arr = rng.integers(0, 4000, (80, 64)).astype(np.uint16)
        name = f"{r.file_name}_pat{i // 4:04d}_MG_{r.side[0]}_{r.view}_ANON.dcm"
        if i == 5:
            (dcm_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (dcm_dir / name).write_bytes(b"broken")
        else:
            write_dicom(dcm_dir / name, arr)
    first_pos = rows[rows.label == "pos"].iloc[0].file_name
    _plist(xml_dir / f"{first_pos}.xml", [("Mass", [(10, 10), (30, 10), (30, 40), (10, 40)]),
                                          ("Calcification", [(50, 60)]), ("Calcification", [(55, 70)])])
    out = tmp_path / "out"
    s = inb.prepare(dcm_dir, shared_data / "inbreast" / "INbreast.csv", out, xml_dir=xml_dir,
                    img_size=(40, 32), val_size=0.0, test_size=0.34, seed=3, verbose=False)
    n_incl = int(rows["label"].notna().sum())
    assert len(s["skipped"]) == 1 + (410 - 23 - n_incl)   # the broken DICOM + sheet rows without a file
    images = pd.read_csv(out / "images.csv", dtype=str)
    bad = rows.iloc[5].file_name
    assert len(images) == n_incl - (1 if rows.iloc[5].label else 0)
    assert bad not in set(images.full_img_file.str[:-4])
    assert set(images.patient_id) <= {"pat0000", "pat0001", "pat0002"}
    assert images.groupby("patient_id")["split"].nunique().max() == 1
    for r in images.itertuples():
        assert r.label == inb.birads_label(r.birads)
        png = cv2.imread(str(out / r.split / r.label / r.full_img_file), cv2.IMREAD_UNCHANGED)
        assert png.shape == (40, 32) and png.dtype == np.uint16
    roi = pd.read_csv(out / "roi_mask_path.csv", dtype=str)
    assert roi[["type", "pathology"]].values.tolist() == [["mass", "MALIGNANT"], ["calc", "MALIGNANT"]]
    mass = cv2.imread(str(out / "roi_masks" / roi.roi_mask_file[0]), cv2.IMREAD_UNCHANGED)
    ys, xs = np.nonzero(mass)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (5, 15, 5, 20)   # outline scaled by 0.5
    calc = cv2.imread(str(out / "roi_masks" / roi.roi_mask_file[1]), cv2.IMREAD_UNCHANGED)
    assert calc[30, 25] == 255 and calc[35, 28] == 255 and calc[0, 0] == 0


def test_inbreast_without_matching_dicoms_fails(shared_data, tmp_path):
    (tmp_path / "AllDICOMs").mkdir()
    with pytest.raises(ValueError, match="INbreast: no image converted"):
        inb.prepare(tmp_path / "AllDICOMs", shared_data / "inbreast" / "INbreast.csv",
                    tmp_path / "out", verbose=False)
    assert len((tmp_path / "out" / "skipped.txt").read_text().splitlines()) == 410 - 23


def test_a_missing_mini_mias_folder_is_named_not_info_txt(tmp_path):
    """Issue 31: a missing folder gave "Info.txt not found"."""
    from dm_errors import InputError
    with pytest.raises(InputError, match=r"nowhere: mini-MIAS folder not found$"):
        mias.prepare(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: no Info.txt in this folder: is it the "
                                         r"mini-MIAS folder"):
        mias.parse_info(tmp_path / "empty" / "Info.txt")
    assert not (tmp_path / "out").exists()
