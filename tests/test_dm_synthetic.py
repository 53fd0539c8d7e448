"""Synthetic mammogram generator: lesions lie where their masks say; seeded; recipe layout."""
from __future__ import annotations

import time

import cv2
import numpy as np
import pandas as pd
import pytest

import dm_synthetic as syn
from dm_sweep import segment_breast

CFG = syn.SynthConfig(img_size=(192, 160))


@pytest.mark.parametrize("typ,path", [("mass", "MALIGNANT"), ("mass", "BENIGN"),
                                      ("calc", "MALIGNANT"), ("calc", "BENIGN")])
def test_lesion_signal_is_inside_its_mask(typ, path):
    for seed in range(4):
        s = syn.render_image(np.random.default_rng(seed), "MLO" if seed % 2 else "CC",
                             "RIGHT" if seed > 1 else "LEFT", [(typ, path)], CFG)
        assert len(s.lesions) == 1
        les = s.lesions[0]
        assert (les.type, les.pathology) == (typ, path)
        mask = les.mask > 0
        diff = s.image.astype(np.float64) - s.clean
        contrast = (CFG.mass_contrast if typ == "mass" else CFG.calc_contrast) * syn.PEAK
        assert np.abs(diff[~mask]).max() <= 0.03 * contrast          # nothing outside the mask
        assert diff[mask].max() >= 0.5 * contrast                    # a strong signal inside
        assert mask[les.center[1], les.center[0]]                    # the centre is in its mask
        assert (s.breast[mask] > 0).all()                            # the lesion is in the breast
        assert s.label == int(path == "MALIGNANT")


def test_image_appearance():
    s = syn.render_image(np.random.default_rng(3), "CC", "LEFT", [], CFG)
    assert s.image.dtype == np.uint16 and s.image.shape == (192, 160)
    breast = s.breast > 0
    assert 0.3 < breast.mean() < 0.8
    assert breast[:, 0].sum() > breast[:, -1].sum()                 # LEFT: chest wall on the left edge
    assert s.image[breast].mean() > 8 * s.image[~breast].mean()     # dark background
    _, bbox = segment_breast(s.image)
    assert bbox[0] == 0 and bbox[2] < 160
    r = syn.render_image(np.random.default_rng(3), "CC", "RIGHT", [], CFG)
    np.testing.assert_array_equal(r.image, s.image[:, ::-1])


def test_same_seed_same_dataset(tmp_path):
    kw = dict(n_patients=6, img_size=(96, 80), lesion_fraction=0.7)
    a = syn.generate_dataset(tmp_path / "a", seed=5, **kw)
    b = syn.generate_dataset(tmp_path / "b", seed=5, **kw)
    c = syn.generate_dataset(tmp_path / "c", seed=6, **kw)
    assert a == b
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.*"))
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    fa = (tmp_path / "a" / "full_images" / "S_00001_LEFT_CC.png").read_bytes()
    assert fa != (tmp_path / "c" / "full_images" / "S_00001_LEFT_CC.png").read_bytes()
    # an image doesn't change when more patients are requested
    syn.generate_dataset(tmp_path / "d", seed=5, **dict(kw, n_patients=9))
    assert fa == (tmp_path / "d" / "full_images" / "S_00001_LEFT_CC.png").read_bytes()


def test_dataset_layout(tmp_path):
    out = tmp_path / "syn"
    s = syn.generate_dataset(out, n_patients=20, img_size=(128, 96), seed=1, lesion_fraction=0.6)
    images = pd.read_csv(out / "images.csv", dtype=str)
    roi = pd.read_csv(out / "roi_mask_path.csv", dtype=str)
    assert list(roi.columns) == ["patient_id", "side", "view", "abn_num", "pathology", "type",
                                 "full_img_file", "roi_mask_file"]
    assert len(images) == 40 and s["images"] == 40
    assert sum(s[k]["images"] for k in ("train", "val", "test")) == 40
    assert images.groupby("patient_id")["split"].nunique().max() == 1
    assert set(roi["type"]) <= {"mass", "calc"} and set(roi["pathology"]) <= {"MALIGNANT", "BENIGN"}
    pos = set(roi.loc[roi.pathology == "MALIGNANT", "full_img_file"])
    for r in images.itertuples():
        assert (r.label == "pos") == (r.full_img_file in pos)
        assert (out / r.split / r.label / r.full_img_file).is_file()
    for r in roi.itertuples():
        m = cv2.imread(str(out / "roi_masks" / r.roi_mask_file), cv2.IMREAD_UNCHANGED)
        img = cv2.imread(str(out / "full_images" / r.full_img_file), cv2.IMREAD_UNCHANGED)
        assert m.shape == img.shape == (128, 96) and m.dtype == np.uint8 and img.dtype == np.uint16
        assert r.roi_mask_file.startswith("Calc-" if r.type == "calc" else "Mass-")
    for split in ("train", "val", "test"):
        listed = set((out / f"patients_{split}.txt").read_text().split())
        assert listed == set(images.loc[images.split == split, "patient_id"])


def test_generation_is_fast(tmp_path):
    t = time.perf_counter()
    syn.generate_dataset(tmp_path / "f", n_patients=30, img_size=(288, 224), seed=2)
    assert time.perf_counter() - t < 15  # ~60 images; typically ~1-2 s


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_patients"):
        syn.generate_dataset("/tmp/never", n_patients=0)
