"""ddsm_train/heatmap_score.py: sliding window, fprop and Grad-CAM modes, .npz, overlays."""
import dataclasses
import importlib.util
import json
import pathlib
import sys

import cv2
import numpy as np
import pytest
from tiny_models import (PATCH_RECIPE, mammogram, save, tiny_image_model, tiny_patch_model)

import dm_cli
import dm_heatmaps
import dm_modelfile
import dm_overlay
import dm_pixels
import dm_recipe
import dm_predict
import dm_scoring
import dm_sweep

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
    img = dm_pixels.read_image(f"{setup['imgs']}/P1_LEFT_CC.png")
    want = dm_heatmaps.sliding_window_heatmap(dm_scoring.load_models([setup["patch"]])[0].model, img,
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
    # The overlay sits on the whole source image (50x40), under a title strip.
    assert ov.shape[0] == hs.TITLE_H + 60 and ov.shape[1] >= 40 + hs.BAR_W


def test_fprop_whole_image_model_needs_patch_model(setup, tmp_path, capsys):
    rc = hs.main([setup["imgs"], setup["image"], "--fprop-mode", "--avg-pool-size", "2", "2",
                  "--out", str(tmp_path / "x.npz")])
    assert rc == 2 and "--patch-model" in capsys.readouterr().err
    rc = hs.main([setup["imgs"], setup["image"], "--fprop-mode", "--avg-pool-size", "2", "2",
                  "--patch-model", setup["patch"], "--out", str(tmp_path / "y.npz")])
    assert rc == 0 and hs.load_heatmaps(str(tmp_path / "y.npz"))[0]["cc"].shape == (15, 11, 3)


def test_bad_csv_one_line(setup, tmp_path, capsys):
    assert hs.main([setup["imgs"], setup["patch"], "--pat-csv", str(tmp_path / "no.csv")]) == 2
    assert "patient CSV not found" in capsys.readouterr().err


# ----------------------------------------------------------------- meaningless maps refused


def test_whole_image_model_without_grad_cam_refused(setup, tmp_path, capsys):
    out = tmp_path / "w.npz"
    rc = hs.main([setup["imgs"], setup["image"], "--out", str(out)])
    text = capsys.readouterr().err
    assert rc == 2 and not out.exists()
    line = [l for l in text.splitlines() if "error" in l]
    assert len(line) == 1 and "whole-image model" in line[0] and "--grad-cam" in line[0]
    assert "image.keras" in line[0]


@pytest.mark.parametrize("model,extra", [("patch", []), ("image", ["--patch-model"])])
def test_avg_pool_larger_than_feature_map_refused(setup, tmp_path, capsys, model, extra):
    extra = extra + ([setup["patch"]] if extra else [])
    rc = hs.main([setup["imgs"], setup[model], "--fprop-mode", "--img-size", "64", "48",
                  "--avg-pool-size", "20", "5", "--out", str(tmp_path / "f.npz")] + extra)
    text = capsys.readouterr().err
    assert rc == 2 and not (tmp_path / "f.npz").exists()
    assert "--avg-pool-size 20 5 is larger than the trunk's feature map 16x12" in text


# ----------------------------------------------------------------- readable overlays


def _image_area(ov, shape):
    return ov[hs.TITLE_H:hs.TITLE_H + shape[0], :shape[1]].astype(int)


def test_sliding_overlay_aligned_with_whole_source_image(setup, tmp_path):
    out = tmp_path / "s.npz"
    assert hs.main([setup["imgs"], setup["patch"], "--stride", "4", "--out", str(out),
                    "--overlay-dir", str(tmp_path / "ov")]) == 0
    src = dm_pixels.read_image(f"{setup['imgs']}/P1_LEFT_CC.png")
    ov = cv2.imread(str(tmp_path / "ov" / "P1_LEFT_CC_sliding.png"))
    area = _image_area(ov, src.shape)
    coloured = (np.abs(area[..., 0] - area[..., 2]) > 3) | (np.abs(area[..., 1] - area[..., 2]) > 3)
    # where there is no heat, the figure shows the source image itself, pixel for pixel
    np.testing.assert_array_equal(area[~coloured][:, 0], dm_overlay.to_display(src)[~coloured])
    # the heat covers the breast's box of the source image, not a crop moved to the corner
    _, (x, y, w, h) = dm_sweep.segment_breast(src)
    ys, xs = np.nonzero(coloured)
    assert abs(ys.min() - y) <= 2 and abs(xs.min() - x) <= 2
    assert abs(ys.max() - (y + h - 1)) <= 2 and abs(xs.max() - (x + w - 1)) <= 2
    assert (x, y, w, h) != (0, 0, src.shape[1], src.shape[0])  # the test means something


def test_overlay_has_title_with_class_and_probability_and_colour_bar(setup, tmp_path):
    out = tmp_path / "g.npz"
    assert hs.main([setup["imgs"], setup["image"], "--grad-cam", "--out", str(out),
                    "--overlay-dir", str(tmp_path / "ov")]) == 0
    with np.load(out, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
    loaded = dm_scoring.load_models([setup["image"]])[0]
    img = dm_pixels.read_image(f"{setup['imgs']}/P1_LEFT_CC.png")
    p = loaded.model.predict_on_batch(dm_recipe.preprocess(img, loaded.recipe())[None])[0, 1]
    assert meta["overlay_titles"][0] == f"P1 LEFT CC: p(pos) = {p:.3f}, Grad-CAM"
    ov = cv2.imread(str(tmp_path / "ov" / "P1_LEFT_CC_gradcam.png")).astype(int)
    assert (ov[:hs.TITLE_H] < 100).all(axis=2).sum() > 50          # title text drawn
    bar = ov[hs.TITLE_H + 2:hs.TITLE_H + 58, 40 + 4 + 6]            # colour bar column
    assert bar[0, 2] > 100 and bar[0, 0] < 50                        # top: red (max)
    assert bar[-1, 0] > 100 and bar[-1, 2] < 50                      # bottom: blue (0)


def test_grad_cam_absolute_scale_keeps_a_chance_model_dark(setup, tmp_path):
    import keras
    from tiny_models import tiny_image_model
    m = tiny_image_model()
    k, b = m.get_layer("clf_dense").get_weights()
    m.get_layer("clf_dense").set_weights([k * 1e-4, b * 0])
    path = save(m, tmp_path / "chance.keras", "image")
    assert keras.saving.load_model(path).get_layer("clf_dense") is not None
    red = {}
    for scale in ("relative", "absolute"):
        out = tmp_path / f"{scale}.npz"
        assert hs.main([setup["imgs"], str(path), "--grad-cam", "--grad-cam-scale", scale,
                        "--out", str(out), "--overlay-dir", str(tmp_path / scale)]) == 0
        area = _image_area(cv2.imread(str(tmp_path / scale / "P1_LEFT_CC_gradcam.png")), (50, 40))
        red[scale] = (area[..., 2] - area[..., 0]).max()
        with np.load(out, allow_pickle=False) as z:
            red[scale + "_max"] = float(z["hm_0"].max())
    assert red["relative_max"] == pytest.approx(1.0)  # relative: a hot spot whatever the model
    assert red["relative"] > 80
    assert red["absolute_max"] < 0.01 and red["absolute"] < 10  # absolute: stays blue


def test_no_flags_switch_stored_recipe_items_off(setup, tmp_path):
    out = tmp_path / "o.npz"
    assert hs.main([setup["imgs"], setup["patch"], "--no-featurewise-center",
                    "--no-rescale-factor", "--img-scale", "255", "--out", str(out)]) == 0
    img = dm_pixels.read_image(f"{setup['imgs']}/P1_LEFT_CC.png")
    recipe = dataclasses.replace(PATCH_RECIPE, featurewise_center=False, rescale_factor=None,
                                 img_scale=255.0)
    want = dm_heatmaps.sliding_window_heatmap(dm_scoring.load_models([setup["patch"]])[0].model, img,
                                      recipe, 16, 8, segment=True, pad=True)
    np.testing.assert_allclose(hs.load_heatmaps(str(out))[0]["cc"], want.probs, atol=1e-6)


def test_no_flags_are_the_shared_override_flags(setup, tmp_path):
    """heatmap_score takes predict's recipe flags (dm_cli.add_recipe_flags): -nic and
    --no-rescale-factor store dm_cli.OFF, which switches a stored item off; the original's
    -ic alias and --input-bits are accepted; --img-size stays the sliding window's resize."""
    p = hs.build_parser()
    args = p.parse_args(["imgs", "m.keras", "-nic", "--no-rescale-factor", "--input-bits", "16"])
    assert args.img_scale is dm_cli.OFF and args.rescale_factor is dm_cli.OFF
    assert p.parse_args(["imgs", "m.keras", "-ic", "255"]).img_scale == 255.0
    assert p.parse_args(["imgs", "m.keras", "-is", "60", "50"]).img_size == [60, 50]
    stored = dataclasses.replace(PATCH_RECIPE, img_scale=200.0)
    assert dm_recipe.recipe_from_flags(args, base=stored, img_size=None) == dataclasses.replace(
        PATCH_RECIPE, img_scale=None, rescale_factor=None, input_bits=16)
    # Through the command: a patch model storing --img-scale 200, mapped with -nic.
    model = tmp_path / "scaled.keras"
    dm_modelfile.save_model(dm_scoring.load_models([setup["patch"]])[0].model, model,
                            dm_modelfile.ModelMeta(("background", "malignant", "benign"),
                                                   stored, kind="patch"))
    img = dm_pixels.read_image(f"{setup['imgs']}/P1_LEFT_CC.png")
    net = dm_scoring.load_models([str(model)])[0].model
    maps = {}
    for name, flags in (("stored", []), ("off", ["-nic", "--input-bits", "16"])):
        out = tmp_path / f"{name}.npz"
        assert hs.main([setup["imgs"], str(model), *flags, "--out", str(out)]) == 0
        maps[name] = hs.load_heatmaps(str(out))[0]["cc"]
        with np.load(out, allow_pickle=False) as z:
            maps[name + "_recipe"] = json.loads(str(z["meta"]))["recipe"]
    want = dm_heatmaps.sliding_window_heatmap(net, img, PATCH_RECIPE, 16, 8, segment=True,
                                              pad=True)
    np.testing.assert_allclose(maps["off"], want.probs, atol=1e-6)
    assert maps["stored_recipe"]["img_scale"] == 200.0 and maps["off_recipe"]["img_scale"] is None
    assert maps["off_recipe"]["input_bits"] == 16
    assert np.abs(maps["off"] - maps["stored"]).max() > 1e-4   # the flag made a difference


def test_original_run_keywords_switch_stored_items_off_as_the_original_did():
    """`run(img_folder, dl_state, **keywords)`: the original's img_scale=None and
    rescale_factor=None become dm_cli.OFF (switch the stored item off), featurewise_center
    False drops the mean; given values replace the stored ones."""
    stored = dataclasses.replace(PATCH_RECIPE, img_scale=200.0, equalize_hist=True)
    args = hs.parse_original("imgs", "m.keras")
    assert args.img_scale is dm_cli.OFF and args.rescale_factor is dm_cli.OFF
    assert dm_recipe.recipe_from_flags(args, base=stored, img_size=None) == dataclasses.replace(
        PATCH_RECIPE, rescale_factor=None, featurewise_center=False)
    args = hs.parse_original("imgs", "m.keras", img_scale=4095.0, featurewise_center=True,
                             featurewise_mean=60.0)
    assert dm_recipe.recipe_from_flags(args, base=stored, img_size=None) == dataclasses.replace(
        PATCH_RECIPE, img_scale=4095.0, rescale_factor=None, featurewise_mean=60.0)


def test_help_shows_defaults_without_tensorflow():
    import subprocess
    code = ("import runpy, sys; sys.argv = ['heatmap_score.py', '--help']\n"
            "try:\n    runpy.run_path(%r, run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('TF', 'tensorflow' in sys.modules, 'keras' in sys.modules)") % str(
                pathlib.Path(hs.__file__))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.stdout.strip().endswith("TF False False")
    assert "(default: 8)" in res.stdout and "--no-img-scale" in res.stdout


def test_other_bit_depth_refused_or_converted_like_predict(setup, tmp_path, capsys):
    """A patch model trained on 8-bit images (input_bits 8) and the same breast as a 16-bit
    PNG (x257): refused in one line naming file, depths and flag; converted with
    --convert-bit-depth, giving the 8-bit image's heatmap."""
    recipe8 = dataclasses.replace(PATCH_RECIPE, rescale_factor=None, input_bits=8)
    model8 = tmp_path / "patch8.keras"
    dm_modelfile.save_model(dm_scoring.load_models([setup["patch"]])[0].model, model8,
                            dm_modelfile.ModelMeta(("background", "malignant", "benign"),
                                                   recipe8, kind="patch"))
    img8 = (mammogram((50, 40), seed=0) // 257).astype(np.uint8)
    d8, d16 = tmp_path / "eight", tmp_path / "sixteen"
    d8.mkdir()
    d16.mkdir()
    cv2.imwrite(str(d8 / "P1_LEFT_CC.png"), img8)
    cv2.imwrite(str(d16 / "P1_LEFT_CC.png"), img8.astype(np.uint16) * 257)
    args = ["--stride", "8", "--batch-size", "5"]
    capsys.readouterr()
    assert hs.main([str(d16), str(model8), *args, "--out", str(tmp_path / "x.npz")]) == 2
    err = [l for l in capsys.readouterr().err.splitlines() if "error: " in l]
    assert len(err) == 1 and "P1_LEFT_CC.png" in err[0] and "16-bit" in err[0]
    assert "--convert-bit-depth" in err[0]
    # the same alternative as predict.py names: this tool has --input-bits too (issue 31)
    assert err[0].endswith("(or give a matching --rescale-factor with --input-bits)")
    assert not (tmp_path / "x.npz").exists()
    # --input-bits replacing the recorded depth is said, in both tools, in the same words
    for tool, argv in ((hs.main, [str(d16), str(model8), *args, "--out", str(tmp_path / "y.npz")]),
                       (dm_predict.main, [str(model8), "--image-dir", str(d16), "--out",
                                          str(tmp_path / "y.csv"), "--allow-whole-images"])):
        assert tool(argv + ["--input-bits", "16"]) == 0
        warn = [l for l in capsys.readouterr().err.splitlines() if "--input-bits" in l]
        assert len(warn) == 1 and "patch8.keras was trained on 8-bit images; --input-bits 16 " \
            "replaces that" in warn[0], warn
    assert hs.main([str(d8), str(model8), *args, "--out", str(tmp_path / "a.npz")]) == 0
    assert hs.main([str(d16), str(model8), *args, "--convert-bit-depth",
                    "--out", str(tmp_path / "b.npz")]) == 0
    a, b = hs.load_heatmaps(str(tmp_path / "a.npz")), hs.load_heatmaps(str(tmp_path / "b.npz"))
    np.testing.assert_allclose(b[0]["cc"], a[0]["cc"], atol=1e-5)


# ------------------------------------------------------------------ issue 23

def test_overlay_title_leaves_out_an_empty_side_and_view(setup, tmp_path):
    """Images named without <patient>_<side>_<view> (e.g. mini-MIAS mdb117.png) get the
    title `mdb117: p(...)`, not `mdb117  : p(...)`."""
    d = tmp_path / "mias"
    d.mkdir()
    cv2.imwrite(str(d / "mdb117.png"), mammogram((50, 40), seed=4))
    meta = hs.score(str(d), setup["patch"], stride=8, out=str(tmp_path / "h.npz"),
                    overlay_dir=str(tmp_path / "ov"))
    assert meta["overlay_titles"][0].startswith("mdb117: p(not background) max ")


def test_progress_bar_on_stderr(setup, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DM_PROGRESS", "1")
    assert hs.main([setup["imgs"], setup["patch"], "--stride", "8",
                    "--out", str(tmp_path / "h.npz")]) == 0
    err = capsys.readouterr().err
    assert "heatmaps" in err and "3/3" in err


def test_a_non_positive_img_size_is_refused_at_flag_parsing(setup, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        hs.main([setup["imgs"], setup["patch"], "--img-size", "0", "0"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument --img-size" in err and "sizes must be positive" in err, err


@pytest.mark.parametrize("argv,words", [
    (["--patch-size", "-3"], "argument --patch-size: -3: sizes must be positive"),
    (["--img-height", "0"], "argument --img-height/-ih: 0: sizes must be positive"),
    (["--stride", "0"], "argument --stride: 0: sizes must be positive"),
    (["--batch-size", "-1"], "argument --batch-size: -1: must be a whole number >= 1"),
    (["--grad-cam-max", "nan"], "argument --grad-cam-max: nan: must be a finite number > 0")])
def test_impossible_numbers_stop_at_flag_parsing(setup, tmp_path, capsys, argv, words):
    with pytest.raises(SystemExit) as e:
        hs.main([setup["imgs"], setup["patch"], *argv, "--out", str(tmp_path / "h.npz")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 2 and words in err[1], err
    # the Python API (no flag parsing) refuses them in one line too
    kw = {"patch_size": -3, "img_height": 0, "stride": 0, "batch_size": -1}
    name = argv[0][2:].replace("-", "_")
    if name in kw:
        with pytest.raises(hs.HeatmapError, match="must be positive"):
            hs.score(setup["imgs"], setup["patch"], out=str(tmp_path / "h.npz"),
                     **{name: kw[name]})


def test_unwritable_out_refused_before_any_heatmap(setup, tmp_path, capsys, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(dm_heatmaps, "sliding_window_heatmap",
                        lambda *a, **k: pytest.fail("mapped before the output was checked"))
    assert hs.main([setup["imgs"], setup["patch"],
                    "--out", str(tmp_path / "file" / "h.npz")]) == 2
    err = [l for l in capsys.readouterr().err.splitlines() if "error: " in l]
    assert len(err) == 1 and "file/h.npz" in err[0] and "--out" in err[0]


def test_colour_image_refused_before_any_heatmap(setup, tmp_path, capsys):
    d = tmp_path / "colour"
    d.mkdir()
    cv2.imwrite(str(d / "P1_LEFT_CC.png"), mammogram((50, 40), seed=0))
    photo = np.random.default_rng(0).integers(0, 256, (50, 40, 3)).astype(np.uint8)
    cv2.imwrite(str(d / "P9_LEFT_CC.png"), photo)
    assert hs.main([str(d), setup["patch"], "--out", str(tmp_path / "h.npz")]) == 2
    err = [l for l in capsys.readouterr().err.splitlines() if "error: " in l]
    assert len(err) == 1 and "P9_LEFT_CC.png: a colour image" in err[0]
    assert "--allow-colour" in err[0]
    assert hs.main([str(d), setup["patch"], "--allow-colour",
                    "--out", str(tmp_path / "h.npz")]) == 0


# ------------------------------------------------------------------ issue 31

def test_outputs_over_the_inputs_are_refused_before_any_model_loads(setup, tmp_path, capsys,
                                                                     monkeypatch):
    """No --out over the model or an image, no overlays into the folder the images come
    from (they would be mapped next time); checked before TensorFlow's work starts."""
    loads = []
    monkeypatch.setattr(dm_scoring, "load_models", lambda *a, **k: loads.append(a) or [])
    first = str(pathlib.Path(setup["imgs"]) / "P1_LEFT_CC.png")
    before = pathlib.Path(first).read_bytes()
    for argv, words in (
            (["--out", setup["patch"]], "(--out) is the MODEL"),
            (["--out", first], "(--out) is the image"),
            (["--out", str(tmp_path / "h.npz"), "--overlay-dir", setup["imgs"]],
             "(--overlay-dir) is the IMG_FOLDER")):
        assert hs.main([setup["imgs"], setup["patch"], *argv]) == 2
        err = [l for l in capsys.readouterr().err.splitlines() if "error: " in l]
        assert len(err) == 1 and words in err[0], err
    assert loads == [] and pathlib.Path(first).read_bytes() == before


def test_an_image_far_smaller_than_a_patch_or_the_model_is_refused(setup, tmp_path, capsys):
    """Issue 31: a 40x30 image was mapped to a 6x4 map without a word."""
    d = tmp_path / "small"
    d.mkdir()
    cv2.imwrite(str(d / "P9_LEFT_CC.png"), mammogram((7, 6), seed=1))   # the patch is 16x16
    out = str(tmp_path / "h.npz")
    assert hs.main([str(d), setup["patch"], "--stride", "4", "--out", out]) == 2
    err = [l for l in capsys.readouterr().err.splitlines() if "error: " in l]
    assert len(err) == 1 and "P9_LEFT_CC.png: a 7x6 image, far smaller than a 16x16 patch" \
        in err[0] and "--allow-small-images" in err[0], err
    assert hs.main([str(d), setup["patch"], "--stride", "4", "--out", out,
                    "--allow-small-images"]) == 0
    cv2.imwrite(str(d / "P9_LEFT_CC.png"), mammogram((20, 15), seed=1))
    assert hs.main([str(d), setup["image"], "--grad-cam", "--out", out]) == 2
    assert "a 20x15 image, far smaller than the 64x48 size it is resized to" in \
        capsys.readouterr().err
