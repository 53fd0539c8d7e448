"""Synthetic mammogram generator: lesions lie where their masks say; seeded; recipe layout."""
from __future__ import annotations

import pathlib

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
    syn.generate_dataset(tmp_path / "c", seed=6, **kw)
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


def test_bad_arguments():
    with pytest.raises(ValueError, match="n_patients"):
        syn.generate_dataset("/tmp/never", n_patients=0)


def _read(folder, name):
    return cv2.imread(str(folder / name), cv2.IMREAD_UNCHANGED)


def test_bilateral_pairs_complete_and_one_lesion_side(tmp_path):
    out = tmp_path / "bil"
    s = syn.generate_dataset(out, n_patients=24, img_size=(128, 96), seed=7, lesion_fraction=0.6,
                             views_per_patient=4, bilateral=True)
    images = pd.read_csv(out / "images.csv", dtype=str)
    roi = pd.read_csv(out / "roi_mask_path.csv", dtype=str)
    assert len(images) == 96 and s["images"] == 96
    pairs = images.groupby("patient_id").apply(lambda g: sorted(zip(g.side, g.view)), include_groups=False)
    assert (pairs.map(tuple) == (("LEFT", "CC"), ("LEFT", "MLO"), ("RIGHT", "CC"), ("RIGHT", "MLO"))).all()
    assert images.groupby("patient_id")["split"].nunique().max() == 1        # split by woman
    for r in images.itertuples():
        img = _read(out / "full_images", r.full_img_file)
        assert img.shape == (128, 96) and img.dtype == np.uint16
    sides = roi.groupby("patient_id")["side"].nunique()
    assert sides.max() == 1                                                  # one lesion side at most
    assert 0.3 < len(sides) / 24 < 0.9                                       # some women have lesions, some not
    for pid, g in roi.groupby("patient_id"):                                 # the lesion seen in both views
        seen = {v: sorted(zip(h.type, h.pathology)) for v, h in g.groupby("view")}
        assert seen.keys() == {"CC", "MLO"} and seen["CC"] == seen["MLO"], (pid, seen)
    pos = set(roi.loc[roi.pathology == "MALIGNANT", "full_img_file"])
    assert ((images.label == "pos") == images.full_img_file.isin(pos)).all()
    assert images.label.eq("pos").any() and images.label.eq("neg").any()

    cc = tmp_path / "cc"                                                     # 2 images: the CC pair
    syn.generate_dataset(cc, n_patients=24, img_size=(128, 96), seed=7, lesion_fraction=0.6, bilateral=True)
    cc_images = pd.read_csv(cc / "images.csv", dtype=str)
    assert set(zip(cc_images.side, cc_images.view)) == {("LEFT", "CC"), ("RIGHT", "CC")}
    assert cc_images.groupby("patient_id").size().eq(2).all() and len(cc_images) == 48
    for f in cc_images.full_img_file:                                        # the same women, MLO left out
        assert (_read(cc / "full_images", f) == _read(out / "full_images", f)).all(), f
    for vpp in (1, 3):
        with pytest.raises(ValueError, match="bilateral mode needs views_per_patient 2"):
            syn.generate_dataset(tmp_path / f"v{vpp}", n_patients=2, views_per_patient=vpp, bilateral=True)
        assert not (tmp_path / f"v{vpp}").exists()


def _side_stats(folder: pathlib.Path, images: pd.DataFrame, view: str) -> tuple[np.ndarray, np.ndarray]:
    """Per woman and side: breast area fraction, mean grey and grey sd in the breast."""
    def stats(name):
        a = _read(folder / "full_images", name).astype(np.float64)
        b = a > 0.05 * syn.PEAK                                   # background ~0.012, tissue > 0.12
        return b.mean(), a[b].mean(), a[b].std()
    g = images[images.view == view].pivot(index="patient_id", columns="side", values="full_img_file")
    return np.array([stats(f) for f in g.LEFT]), np.array([stats(f) for f in g.RIGHT])


@pytest.mark.parametrize("view", ["CC", "MLO"])
def test_bilateral_breasts_share_the_womans_traits(tmp_path, view):
    """Her two breasts are alike (size, grey level, texture); two women's are not, nor are the
    two sides of a default-mode patient, which are drawn independently."""
    corr = {}
    for bilateral in (True, False):
        out = tmp_path / str(bilateral)
        syn.generate_dataset(out, n_patients=40, img_size=(96, 80), seed=3, lesion_fraction=0.0,
                             views_per_patient=4, bilateral=bilateral)
        left, right = _side_stats(out, pd.read_csv(out / "images.csv", dtype=str), view)
        same = np.array([np.corrcoef(left[:, k], right[:, k])[0, 1] for k in range(3)])
        other = np.array([np.corrcoef(left[:, k], np.roll(right[:, k], 1))[0, 1] for k in range(3)])
        corr[bilateral] = same, other
    same, other = corr[True]
    assert (same > 0.6).all() and (same - np.abs(other) > 0.4).all(), corr
    assert same[1] > 0.9, corr                                    # mean grey: the woman's density
    assert (np.abs(corr[False][0]) < 0.45).all(), corr


def test_bilateral_lesion_side_differs_by_the_lesion_only(tmp_path):
    """Aligned by mirroring, a lesion woman's two breasts differ outside the lesion masks as much
    as a normal woman's do, with no shift of grey level or size, and inside them by the lesion's signal."""
    out = tmp_path / "bil"
    syn.generate_dataset(out, n_patients=80, img_size=(128, 96), seed=2, lesion_fraction=0.5, bilateral=True)
    images = pd.read_csv(out / "images.csv", dtype=str)
    roi = pd.read_csv(out / "roi_mask_path.csv", dtype=str)
    rows = []
    for pid, g in images.groupby("patient_id"):
        img = {r.side: _read(out / "full_images", r.full_img_file).astype(np.float64) for r in g.itertuples()}
        img["RIGHT"] = img["RIGHT"][:, ::-1]                      # chest wall on the left, like LEFT
        mask = np.zeros(img["LEFT"].shape, bool)
        lesion_side = "LEFT"
        for r in roi[roi.patient_id == pid].itertuples():
            m = _read(out / "roi_masks", r.roi_mask_file) > 0
            mask |= m[:, ::-1] if r.side == "RIGHT" else m
            lesion_side = r.side
        a, b = img[lesion_side], img["RIGHT" if lesion_side == "LEFT" else "LEFT"]
        in_a, in_b = a > 0.05 * syn.PEAK, b > 0.05 * syn.PEAK
        both = in_a & in_b & ~mask
        rows.append(dict(lesion=mask.any(), out_abs=np.abs(a - b)[both].mean(), out_mean=(a - b)[both].mean(),
                         area=in_a.mean() - in_b.mean(), inside=np.median((a - b)[mask]) if mask.any() else np.nan))
    df = pd.DataFrame(rows)
    les, norm = df[df.lesion], df[~df.lesion]
    assert len(les) >= 25 and len(norm) >= 25
    assert abs(les.out_abs.mean() / norm.out_abs.mean() - 1) < 0.1           # same texture difference
    for k in ("out_mean", "area"):                                           # no shift of grey level or size
        assert abs(les[k].mean()) < 3 * les[k].std() / np.sqrt(len(les)), k
        assert les[k].abs().max() < 3 * norm[k].abs().max(), k
    assert les.inside.median() > 0.25 * syn.SynthConfig.mass_contrast * syn.PEAK  # the lesion itself
    assert les.inside.median() > 10 * les.out_mean.abs().median()


def test_bilateral_same_seed_same_dataset_and_default_unchanged(tmp_path):
    kw = dict(n_patients=6, img_size=(96, 80), lesion_fraction=0.7, views_per_patient=4, bilateral=True)
    a = syn.generate_dataset(tmp_path / "a", seed=5, **kw)
    b = syn.generate_dataset(tmp_path / "b", seed=5, **kw)
    assert a == b and a["config"]["bilateral"] is True
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.*"))
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    syn.generate_dataset(tmp_path / "c", seed=6, **kw)
    syn.generate_dataset(tmp_path / "d", seed=5, **dict(kw, n_patients=9))    # more women: hers unchanged
    name = "full_images/S_00003_RIGHT_MLO.png"
    assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "d" / name).read_bytes()
    # The default mode records no `bilateral` key, so folders written before the option stay
    # claimable as the same configuration; a bilateral folder is not taken for a default one.
    default = dict(kw, bilateral=False)
    d = syn.generate_dataset(tmp_path / "e", seed=5, **default)
    assert "bilateral" not in d["config"] and "bilateral" not in (tmp_path / "e" / "synthetic.json").read_text()
    assert (tmp_path / "e" / name).read_bytes() != (tmp_path / "a" / name).read_bytes()
    with pytest.raises(ValueError, match="another configuration"):
        syn.generate_dataset(tmp_path / "a", seed=5, **default)
    # default mode: image v of a patient is VIEWS[v] drawn alone from its (seed, patient, v) streams
    cfg = syn.SynthConfig(img_size=(96, 80))
    for p, v in ((0, 0), (4, 3)):
        side, view = syn.VIEWS[v]
        lesions = syn.plan_lesions(np.random.default_rng([5, p, v, 0]), 0.7, 0.6, 0.35)
        s = syn.render_image(np.random.default_rng([5, p, v, 1]), view, side, lesions, cfg)
        assert (_read(tmp_path / "e" / "full_images", f"S_{p + 1:05d}_{side}_{view}.png") == s.image).all()


def test_bilateral_flag(tmp_path):
    s = syn.main([str(tmp_path / "o"), "--n-patients", "3", "--img-size", "64", "48", "--bilateral"])
    images = pd.read_csv(tmp_path / "o" / "images.csv", dtype=str)
    assert s["config"]["bilateral"] is True and len(images) == 6
    assert sorted(images.side) == ["LEFT"] * 3 + ["RIGHT"] * 3 and set(images.view) == {"CC"}


@pytest.mark.parametrize("argv,words", [
    (["--n-patients", "0"], "--n-patients: 0: must be a whole number >= 1"),
    (["--views-per-patient", "5"], "--views-per-patient: 5: must be a whole number >= 1 and <= 4"),
    (["--lesion-fraction", "1.5"], "--lesion-fraction: 1.5: must be a finite number >= 0 and <= 1"),
    (["--malignant-fraction", "-0.1"], "--malignant-fraction: -0.1: must be a finite number >= 0"),
    (["--calc-fraction", "nan"], "--calc-fraction: nan: must be a finite number"),
    (["--val-size", "2"], "--val-size: 2: must be a finite number >= 0 and <= 1"),
    (["--val-size", "0.5", "--test-size", "0.5"], "leave no patient for training"),
    (["--mass-contrast", "-0.3"], "--mass-contrast: -0.3: must be a finite number >= 0"),
    (["--calc-radius", "0"], "--calc-radius: 0: must be a finite number > 0 and <= 0.5"),
    (["--mass-radius", "0.08", "0.045"], "--mass-radius: MIN 0.08 is above MAX 0.045"),
])
def test_impossible_values_stop_at_flag_parsing(tmp_path, capsys, argv, words):
    """Refused in one line at parsing, before the output folder is claimed."""
    with pytest.raises(SystemExit) as e:
        syn.main([str(tmp_path / "o"), *argv])
    assert e.value.code == 2
    assert words in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "o").exists()
