"""ddsm_train/heatmap_score.py: sliding window, fprop and Grad-CAM modes, .npz, overlays."""
import importlib.util
import pathlib
import sys

import cv2
import numpy as np
import pytest

import dm_image
import dm_inference as inf
from tiny_models import PATCH_RECIPE, mammogram, save, tiny_image_model, tiny_patch_model

_spec = importlib.util.spec_from_file_location(
    "heatmap_score", pathlib.Path(__file__).resolve().parents[1] / "ddsm_train" / "heatmap_score.py")
hs = importlib.util.module_from_spec(_spec)
sys.modules["heatmap_score"] = hs
_spec.loader.exec_module(hs)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("hm")
    patch = tiny_patch_model()
    pm = save(patch, d / "patch.keras", "patch")
    im = save(tiny_image_model(patch), d / "image.keras", "image")
    imgs = d / "imgs"
    imgs.mkdir()
    for k, name in enumerate(["P1_LEFT_CC", "P1_LEFT_MLO", "P2_RIGHT_MLO"]):
        cv2.imwrite(str(imgs / f"{name}.png"), mammogram((50, 40), seed=k))
    return dict(d=d, patch=str(pm), image=str(im), imgs=str(imgs))


def test_sliding_window_groups_npz_and_overlays(setup, tmp_path):
    out = tmp_path / "hm.npz"
    rc = hs.main([setup["imgs"], setup["patch"], "--stride", "8", "--batch-size", "5",
                  "--out", str(out), "--overlay-dir", str(tmp_path / "ov")])
    assert rc == 0
    groups = hs.load_heatmaps(str(out))
    assert [(g["patient_id"], g["side"]) for g in groups] == [("P1", "LEFT"), ("P2", "RIGHT")]
    assert groups[0]["cc"] is not None and groups[0]["mlo"] is not None
    assert groups[1]["cc"] is None and groups[1]["mlo"].ndim == 3
    img = dm_image.read_image(f"{setup['imgs']}/P1_LEFT_CC.png")
    want = inf.sliding_window_heatmap(inf.load_models([setup["patch"]])[0].model, img,
                                      PATCH_RECIPE, 16, 8, segment=True, pad=True)
    np.testing.assert_allclose(groups[0]["cc"], want.probs, atol=1e-6)
    pngs = sorted((tmp_path / "ov").glob("*.png"))
    assert [p.name for p in pngs] == ["P1_LEFT_CC_sliding.png", "P1_LEFT_MLO_sliding.png",
                                      "P2_RIGHT_MLO_sliding.png"]
    assert all(p.stat().st_size > 500 for p in pngs)
    with np.load(out, allow_pickle=False) as z:
        assert z["group"].tolist() == [0, 0, 1]


def test_fprop_mode_from_patient_csv(setup, tmp_path):
    csv = tmp_path / "pat.csv"
    csv.write_text("patient_id,side,cancer\nP1,LEFT,1\nP2,RIGHT,0\n")
    out = tmp_path / "f.npz"
    rc = hs.main([setup["imgs"], setup["patch"], "--fprop-mode", "--img-size", "64", "48",
                  "--avg-pool-size", "2", "2", "--hm-strides", "1", "1", "--pat-csv", str(csv),
                  "--out", str(out), "--overlay-dir", str(tmp_path / "ov")])
    assert rc == 0
    groups = hs.load_heatmaps(str(out))
    assert [g["cancer"] for g in groups] == [1.0, 0.0]
    assert groups[0]["cc"].shape == (15, 11, 3) and groups[1]["mlo"].shape == (15, 11, 3)
    assert len(list((tmp_path / "ov").glob("*_fprop.png"))) == 3


def test_grad_cam_mode(setup, tmp_path):
    out = tmp_path / "g.npz"
    rc = hs.main([setup["imgs"], setup["image"], "--grad-cam", "--out", str(out),
                  "--overlay-dir", str(tmp_path / "ov")])
    assert rc == 0
    g = hs.load_heatmaps(str(out))[0]
    assert g["cc"].shape == (16, 12) and 0 <= g["cc"].min() and g["cc"].max() <= 1
    ov = cv2.imread(str(tmp_path / "ov" / "P1_LEFT_CC_gradcam.png"))
    assert ov.shape == (64, 48, 3)


def test_fprop_whole_image_model_needs_patch_model(setup, tmp_path, capsys):
    rc = hs.main([setup["imgs"], setup["image"], "--fprop-mode", "--avg-pool-size", "2", "2",
                  "--out", str(tmp_path / "x.npz")])
    assert rc == 2 and "--patch-model" in capsys.readouterr().out
    rc = hs.main([setup["imgs"], setup["image"], "--fprop-mode", "--avg-pool-size", "2", "2",
                  "--patch-model", setup["patch"], "--out", str(tmp_path / "y.npz")])
    assert rc == 0 and hs.load_heatmaps(str(tmp_path / "y.npz"))[0]["cc"].shape == (15, 11, 3)


def test_bad_csv_one_line(setup, tmp_path, capsys):
    assert hs.main([setup["imgs"], setup["patch"], "--pat-csv", str(tmp_path / "no.csv")]) == 2
    assert "patient CSV not found" in capsys.readouterr().out
