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
    out = tmp_path / "mias"
    s = mias.prepare(shared_data / "mias", out, img_size=size, ids=FEW, seed=1, verbose=False)
    assert s["images"] == len(FEW) and s["skipped"] == []
    info = mias.parse_info(shared_data / "mias" / "Info.txt").set_index("image_id")
    roi = pd.read_csv(out / "roi_mask_path.csv", dtype=str)
    assert len(roi) == 7  # mdb001, 002, 005 x2, 023, 144 x2; mdb059 and mdb216 have no centre
    h, w = size or (1024, 1024)
    for r in roi.itertuples():
        m = cv2.imread(str(out / "roi_masks" / r.roi_mask_file), cv2.IMREAD_UNCHANGED)
        assert m.shape == (h, w)
        rows = info.loc[[r.side]]
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


def test_mias_split_keeps_women_together(shared_data):
    info = mias.parse_info(shared_data / "mias" / "Info.txt")
    lab = mias.image_labels(info)
    women = lab.groupby("patient_id")["label"].agg(lambda s: int((s == "pos").any())).to_dict()
    assert len(women) == 161
    split = mias.stratified_split(women, {"test": 0.2, "val": 0.15}, 12345)
    lab["split"] = lab["patient_id"].map(split)
    assert lab.groupby("split").size().to_dict() == {"test": 64, "train": 210, "val": 48}
    assert lab[lab.label == "pos"].groupby("split").size().to_dict() == {"test": 10, "train": 34, "val": 8}


@pytest.mark.slow
def test_mias_full_conversion(shared_data, tmp_path):
    s = mias.prepare(shared_data / "mias", tmp_path / "m", verbose=False)
    assert s["images"] == 322 and s["skipped"] == []
    assert sum(s[k]["pos"] for k in ("train", "val", "test")) == 52
    assert len(list((tmp_path / "m" / "roi_masks").glob("*.png"))) == 119
    assert len(list((tmp_path / "m").glob("*/pos/*.png"))) == 52
