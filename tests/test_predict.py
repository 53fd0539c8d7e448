"""predict.py: CSV layout, labels, pass-through columns, TTA flag, errors; serving export."""
import csv
import dataclasses
import os
import pathlib

import cv2
import numpy as np
import pytest
from tiny_models import (IMAGE_RECIPE, IMG, save, tiny_image_model, tiny_patch_model, write_images)

import dm_cli
import dm_dataset
import dm_export
import dm_inputs
import dm_modelfile
import dm_pixels
import dm_predict
import dm_recipe
import dm_scoring

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("pred")
    patch = tiny_patch_model()
    m1 = save(tiny_image_model(patch, seed=2), d / "m1.keras", "image")
    m2 = save(tiny_image_model(patch, seed=3), d / "m2.keras", "image")
    neg = write_images(d / "data" / "neg", 2, seed=0)
    pos = write_images(d / "data" / "pos", 2, seed=10)
    return dict(d=d, m1=str(m1), m2=str(m2), neg=neg, pos=pos)


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_columns_are_class_names_with_labels(setup, tmp_path):
    out = tmp_path / "preds.csv"
    rc = dm_predict.main([setup["m1"], setup["m2"], "--image-dir", str(setup["d"] / "data"),
                       "--out", str(out), "--batch-size", "3"])
    assert rc == 0
    rows = _read(out)
    assert list(rows[0].keys()) == ["path", "neg", "pos", "label"]
    assert [r["label"] for r in rows] == ["0", "0", "1", "1"]
    probs = np.array([[float(r["neg"]), float(r["pos"])] for r in rows])
    ms = dm_scoring.load_models([setup["m1"], setup["m2"]])
    want = dm_scoring.score_paths(ms, [r["path"] for r in rows])
    np.testing.assert_allclose(probs, want, atol=1e-6)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_csv_input_passes_columns_and_tta(setup, tmp_path):
    lst = tmp_path / "list.csv"
    paths = setup["neg"] + setup["pos"]
    with open(lst, "w") as f:
        f.write("path,label,patient_id,side\n")
        for i, p in enumerate(paths):
            f.write(f"{p},{'pos' if i >= 2 else 'neg'},P{i // 2},L\n")
    out = tmp_path / "p.csv"
    assert dm_predict.main([setup["m1"], "--csv", str(lst), "--out", str(out), "--test-augment"]) == 0
    rows = _read(out)
    assert list(rows[0]) == ["path", "neg", "pos", "label", "patient_id", "side"]
    assert [r["patient_id"] for r in rows] == ["P0", "P0", "P1", "P1"]
    m = dm_scoring.load_models([setup["m1"]])
    np.testing.assert_allclose([float(r["pos"]) for r in rows],
                               dm_scoring.score_paths(m, paths, tta=True)[:, 1], atol=1e-6)


def test_images_without_labels_and_overrides(setup, tmp_path):
    out = tmp_path / "p.csv"
    assert dm_predict.main([setup["m1"], "--images", *setup["pos"], "--out", str(out),
                         "--featurewise-mean", "0"]) == 0
    rows = _read(out)
    assert list(rows[0]) == ["path", "neg", "pos"]
    m = dm_scoring.load_models([setup["m1"]])
    want = dm_scoring.score_paths(m, setup["pos"], overrides=dict(featurewise_mean=0.0))
    np.testing.assert_allclose([float(r["pos"]) for r in rows], want[:, 1], atol=1e-6)


def test_no_flags_switch_stored_recipe_items_off(setup, tmp_path):
    """--no-img-scale (-nic) and --no-rescale-factor store dm_cli.OFF, which
    dm_recipe.apply_overrides turns into None: the model's stored item is switched off and
    the rest of its recipe kept."""
    stored = dataclasses.replace(IMAGE_RECIPE, img_scale=100.0)
    model = tmp_path / "scaled.keras"
    net = dm_scoring.load_models([setup["m1"]])[0].model
    dm_modelfile.save_model(net, model, dm_modelfile.ModelMeta(("neg", "pos"), stored, kind="image"))
    p = dm_predict.build_parser()
    args = p.parse_args([str(model), "--no-img-scale", "--no-rescale-factor"])
    assert args.img_scale is dm_cli.OFF and args.rescale_factor is dm_cli.OFF
    assert p.parse_args([str(model), "-nic"]).img_scale is dm_cli.OFF
    assert p.parse_args([str(model), "-ic", "4"]).img_scale == 4.0
    assert dm_scoring.load_models([str(model)])[0].recipe(**dm_recipe.flag_values(args)) == \
        dataclasses.replace(IMAGE_RECIPE, rescale_factor=None)
    raw = [dm_pixels.read_image(q) for q in setup["pos"]]
    probs = {}
    for name, flags, recipe in (
            ("stored", [], stored),
            ("no_scale", ["--no-img-scale"], IMAGE_RECIPE),
            ("no_rescale", ["--no-rescale-factor"], dataclasses.replace(stored, rescale_factor=None))):
        out = tmp_path / f"{name}.csv"
        assert dm_predict.main([str(model), "--images", *setup["pos"], "--out", str(out), *flags]) == 0
        probs[name] = np.array([float(r["pos"]) for r in _read(out)])
        want = net.predict(np.stack([dm_recipe.preprocess(x, recipe) for x in raw]), verbose=0)
        np.testing.assert_allclose(probs[name], want[:, 1], atol=1e-6)
    assert np.abs(probs["no_scale"] - probs["stored"]).max() > 1e-4
    assert np.abs(probs["no_rescale"] - probs["stored"]).max() > 1e-4


@pytest.mark.parametrize("argv,msg", [
    (["--images", "nope.png"], "nope.png: image file not found"),
    (["--image-dir", "nodir"], "nodir: image folder not found"),
    (["--images", "a.png", "--csv", "b.csv"], "exactly one"),
])
def test_bad_input_is_one_line_exit_2(setup, tmp_path, capsys, argv, msg):
    rc = dm_predict.main([setup["m1"], *argv, "--out", str(tmp_path / "x.csv")])
    assert rc == 2
    err = [l for l in capsys.readouterr().err.splitlines() if "error: " in l]
    assert len(err) == 1 and msg in err[0]
    assert dm_predict.main(["missing.keras", "--images", setup["neg"][0], "--out", "x.csv"]) == 2


def test_export_matches_predict_from_raw_image(setup, tmp_path):
    """The SavedModel, fed the raw 16-bit image (90x70), gives predict.py's probabilities."""
    exp = tmp_path / "served"
    assert dm_predict.main([setup["m1"], "--export", str(exp)]) == 0
    served, meta = dm_export.load_serving(str(exp))
    assert meta["class_list"] == ["neg", "pos"] and meta["recipe"]["img_size"] == list(IMG)
    out = tmp_path / "p.csv"
    paths = setup["neg"] + setup["pos"]
    assert dm_predict.main([setup["m1"], "--images", *paths, "--out", str(out)]) == 0
    want = np.array([[float(r["neg"]), float(r["pos"])] for r in _read(out)])
    raw = np.stack([cv2.imread(p, cv2.IMREAD_UNCHANGED) for p in paths])
    assert raw.dtype == np.uint16 and raw.shape[1:] == (90, 70)
    got16 = served.serve_uint16(raw)["probabilities"].numpy()
    np.testing.assert_allclose(got16, want, atol=1e-4)
    # float32 in: no rounding/clipping after the resize (cubic overshoot stays), like cv2 on
    # a float32 image (e.g. a DICOM with a modality rescale).
    model = dm_scoring.load_models([setup["m1"]])[0].model
    rawf = raw.astype(np.float32)
    wantf = model.predict(np.stack([dm_recipe.preprocess(r, IMAGE_RECIPE) for r in rawf]), verbose=0)
    np.testing.assert_allclose(served.serve(rawf)["probabilities"].numpy(), wantf, atol=1e-4)
    # The network inputs themselves: within 1 grey level of 16 bits (cv2 rounding), scaled.
    x_tf = dm_export.preprocess_graph(raw, IMAGE_RECIPE, int_max=65535.0).numpy()
    x_np = np.stack([dm_recipe.preprocess(r, IMAGE_RECIPE) for r in raw])
    assert np.abs(x_tf - x_np).max() <= 255 / 65535 * 1.001


def test_export_refuses_equalize_hist(tmp_path):
    model = tiny_image_model()
    recipe = dm_recipe.apply_overrides(IMAGE_RECIPE, equalize_hist=True)
    with pytest.raises(dm_export.ExportError, match="equalize_hist"):
        dm_export.export_serving(model, recipe, ["neg", "pos"], str(tmp_path / "e"))


def test_onnx_export_matches_tf(tmp_path):
    """Optional: only where tf2onnx and onnx are installed (not in requirements.txt)."""
    pytest.importorskip("tf2onnx")
    import onnx
    from onnx.reference import ReferenceEvaluator
    model = tiny_image_model()
    path = dm_export.export_onnx(model, IMAGE_RECIPE, str(tmp_path / "m.onnx"))
    raw = np.random.default_rng(1).integers(0, 65535, (2, 90, 70)).astype(np.float32)
    got = ReferenceEvaluator(onnx.load(path)).run(None, {"raw": raw})[0]
    want = model.predict(np.stack([dm_recipe.preprocess(r, IMAGE_RECIPE) for r in raw]), verbose=0)
    np.testing.assert_allclose(got, want, atol=1e-4)


# ------------------------------------------------------------------ bit depth (issue 12.1)

@pytest.fixture(scope="module")
def depth_setup(tmp_path_factory):
    """An 8-bit-trained model (as on mini-MIAS), one 8-bit PNG and the same breast as a
    16-bit MONOCHROME2 DICOM and a 16-bit PNG (pixels x257)."""
    from recipe_helpers import write_dicom
    d = tmp_path_factory.mktemp("depth")
    recipe = dm_recipe.Recipe(img_size=IMG, channels=1, featurewise_center=True,
                             featurewise_mean=100.0, input_bits=8)
    path = d / "m8.keras"
    dm_modelfile.save_model(tiny_image_model(), path,
                            dm_modelfile.ModelMeta(("neg", "pos"), recipe, kind="image"))
    img8 = (np.random.default_rng(3).integers(0, 256, (90, 70))).astype(np.uint8)
    png8 = d / "b8.png"
    cv2.imwrite(str(png8), img8)
    img16 = img8.astype(np.uint16) * 257
    dcm = write_dicom(d / "b16.dcm", img16)
    png16 = d / "b16.png"
    cv2.imwrite(str(png16), img16)
    return dict(d=d, model=str(path), png8=str(png8), dcm=str(dcm), png16=str(png16),
                img8=img8, img16=img16)


def test_other_bit_depth_is_refused_naming_file_depth_and_flag(depth_setup, tmp_path, capsys):
    s = depth_setup
    for src in (s["dcm"], s["png16"]):
        rc = dm_predict.main([s["model"], "--images", src, "--out", str(tmp_path / "p.csv")])
        assert rc == 2
        err = [l for l in capsys.readouterr().err.splitlines() if "error: " in l]
        assert len(err) == 1
        assert src in err[0] and "16-bit" in err[0] and "8-bit" in err[0]
        assert "--convert-bit-depth" in err[0]
    assert not (tmp_path / "p.csv").exists()
    # A mix of depths in one call is refused too.
    assert dm_predict.main([s["model"], "--images", s["png8"], s["dcm"], "--out",
                         str(tmp_path / "p.csv")]) == 2


def test_convert_bit_depth_gives_the_8bit_answer(depth_setup, tmp_path):
    s = depth_setup
    out = tmp_path / "p.csv"
    assert dm_predict.main([s["model"], "--images", s["png8"], s["dcm"], s["png16"], "--out",
                         str(out), "--convert-bit-depth"]) == 0
    p = np.array([float(r["pos"]) for r in _read(out)])
    # the 8- and 16-bit paths round differently; the tiny model (Keras 2.0.8 initialisation)
    # turns that into ~2e-5 of probability
    np.testing.assert_allclose(p[1:], p[0], atol=1e-4)


def test_one_image_check_for_heatmap_tools(depth_setup):
    s = depth_setup
    r8 = dm_scoring.load_models([s["model"]])[0].recipe()
    assert dm_scoring.recipe_for_image(s["png8"], r8) == r8
    with pytest.raises(dm_inputs.InferenceError, match="16-bit image.*--convert-bit-depth"):
        dm_scoring.recipe_for_image(s["dcm"], r8)
    conv = dm_scoring.recipe_for_image(s["dcm"], r8, convert=True)
    x8 = dm_recipe.preprocess(dm_pixels.read_image(s["png8"]), r8)
    x16 = dm_recipe.preprocess(dm_pixels.read_image(s["dcm"]), conv)
    # equal within the 8-bit image's rounding after its (uint8) cubic resize: half a grey level
    np.testing.assert_allclose(x16, x8, atol=0.5 + 1e-3)


def test_model_without_recorded_depth_refuses_mixed_depths():
    paths, depths = ["a.png", "b.png"], [8, 16]
    with pytest.raises(dm_inputs.InferenceError, match="b.png: 16-bit image among 8-bit"):
        dm_scoring.depth_groups(paths, depths, IMAGE_RECIPE, convert=False)
    # img_scale normalises each image by its maximum: depth does not matter.
    r = dm_recipe.apply_overrides(IMAGE_RECIPE, img_scale=255.0, input_bits=8)
    assert dm_scoring.depth_groups(paths, depths, r, convert=False) == [([0, 1], r)]


def test_export_endpoints_convert_to_the_trained_depth(depth_setup, tmp_path, caplog):
    import logging
    s = depth_setup
    exp = tmp_path / "served"
    with caplog.at_level(logging.INFO):
        assert dm_predict.main([s["model"], "--export", str(exp)]) == 0
    assert any("serve_uint16(images)['probabilities']" in r.getMessage() for r in caplog.records)
    served, meta = dm_export.load_serving(str(exp))
    assert meta["output"] == "probabilities" and meta["recipe"]["input_bits"] == 8
    out = tmp_path / "p.csv"
    assert dm_predict.main([s["model"], "--images", s["png8"], "--out", str(out)]) == 0
    want = float(_read(out)[0]["pos"])
    got8 = served.serve_uint8(s["img8"][None])["probabilities"].numpy()[0, 1]
    got16 = served.serve_uint16(s["img16"][None])["probabilities"].numpy()[0, 1]
    np.testing.assert_allclose([got8, got16], [want, want], atol=1e-4)


# ------------------------------------------------------------------ outputs (issue 12.2, 12.9)

def test_out_onto_a_symlink_writes_through_it(setup, tmp_path):
    target = tmp_path / "real.csv"
    target.write_text("old\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    assert dm_predict.main([setup["m1"], "--images", setup["neg"][0], "--out", str(link)]) == 0
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert _read(target)[0]["path"] == setup["neg"][0]


def test_out_onto_a_fifo_writes_through_it(setup, tmp_path):
    import os
    import threading
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    t = threading.Thread(target=lambda: got.append(open(fifo).read()))
    t.start()
    assert dm_predict.main([setup["m1"], "--images", setup["neg"][0], "--out", str(fifo)]) == 0
    t.join(30)
    import stat
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert got and got[0].startswith("path,neg,pos")


@pytest.mark.parametrize("out_args", [["--out", "-"], []])
def test_csv_on_standard_output(setup, capsys, out_args):
    assert dm_predict.main([setup["m1"], "--images", *setup["neg"], *out_args]) == 0
    cap = capsys.readouterr()
    rows = list(csv.DictReader(cap.out.splitlines()))
    assert [r["path"] for r in rows] == setup["neg"]
    assert "scoring" in cap.err and "scoring" not in cap.out


def test_out_dev_stdout_redirected_to_a_file(setup, tmp_path):
    """`--out /dev/stdout > file`: the CSV alone in the file, the link untouched."""
    import os
    import subprocess
    import sys
    target = tmp_path / "preds.csv"
    with open(target, "w") as f:
        r = subprocess.run([sys.executable, str(REPO / "predict.py"), setup["m1"], "--images",
                            *setup["neg"], "--out", "/dev/stdout"], stdout=f,
                           stderr=subprocess.PIPE, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    assert [row["path"] for row in _read(target)] == setup["neg"]
    assert "scoring" in r.stderr
    assert os.path.islink("/dev/stdout")


def test_many_images_need_out(setup, tmp_path, capsys):
    many = [setup["neg"][0]] * (dm_predict.STDOUT_MAX_IMAGES + 1)
    assert dm_predict.main([setup["m1"], "--images", *many]) == 2
    assert "give --out FILE" in capsys.readouterr().err


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_outputs_honour_the_umask(setup, tmp_path, mask):
    import os
    old = os.umask(mask)
    try:
        out = tmp_path / "p.csv"
        assert dm_predict.main([setup["m1"], "--images", setup["neg"][0], "--out", str(out)]) == 0
        assert os.stat(out).st_mode & 0o777 == 0o666 & ~mask
        m = tmp_path / "m.keras"
        dm_modelfile.save_model(tiny_patch_model(), m)
        assert os.stat(m).st_mode & 0o777 == 0o666 & ~mask
        exp = tmp_path / "served"
        assert dm_predict.main([setup["m1"], "--export", str(exp)]) == 0
        assert os.stat(exp).st_mode & 0o777 == 0o777 & ~mask
    finally:
        os.umask(old)


# ------------------------------------------------------------------ recipe images.csv (12.4)

def test_recipe_images_csv_is_accepted_with_split(setup, tmp_path):
    import shutil
    root = tmp_path / "recipe"
    (root / "full_images").mkdir(parents=True)
    rows = []
    for i, p in enumerate(setup["neg"] + setup["pos"]):
        name = f"img{i}.png"
        shutil.copy(p, root / "full_images" / name)
        rows.append(f"P{i // 2},{'L' if i % 2 else 'R'},CC,img{i},{'pos' if i >= 2 else 'neg'},"
                    f"{'test' if i != 1 else 'train'},{name}")
    (root / "images.csv").write_text(
        "patient_id,side,view,image_id,label,split,full_img_file\n" + "\n".join(rows) + "\n")
    out = tmp_path / "p.csv"
    assert dm_predict.main([setup["m1"], "--csv", str(root / "images.csv"), "--split", "test",
                         "--out", str(out)]) == 0
    got = _read(out)
    assert [r["label"] for r in got] == ["0", "1", "1"]
    assert [r["patient_id"] for r in got] == ["P0", "P1", "P1"]
    assert got[0]["path"] == str(root / "full_images" / "img0.png")


@pytest.mark.parametrize("rows,msg", [
    ("{a},neg\nmissing.png,pos\n", "list.csv: line 3: image not found: "),
    ("{a},neg\n,pos\n", "list.csv: line 3: empty path"),
    ("{a},benign\n", "list.csv: line 2: unknown label 'benign' (classes ['neg', 'pos'])"),
    ("{a},2\n", "list.csv: line 2: label 2 out of range"),
    ("", "list.csv: no rows"),
])
def test_a_bad_csv_is_one_line_naming_file_and_line(setup, tmp_path, capsys, rows, msg):
    """predict.py reads --csv with dm_listing.read_image_csv: its errors print as one line."""
    lst = tmp_path / "list.csv"
    lst.write_text("path,label\n" + rows.format(a=setup["neg"][0]))
    rc = dm_predict.main([setup["m1"], "--csv", str(lst), "--out", str(tmp_path / "p.csv")])
    err = [l for l in capsys.readouterr().err.splitlines() if "error: " in l]
    assert rc == 2 and len(err) == 1 and msg in err[0], err
    assert not (tmp_path / "p.csv").exists()


# ------------------------------------------------------------------ issue 23: trust

def _errors(capsys):
    return [l for l in capsys.readouterr().err.splitlines() if "error: " in l]


def _no_reading(monkeypatch):
    """Fail the test if any image is decoded or scored."""
    def fail(*a, **k):
        pytest.fail("an image was read before the problem was reported")
    monkeypatch.setattr(dm_dataset, "read_image", fail)
    monkeypatch.setattr(dm_pixels, "read_image", fail)
    monkeypatch.setattr(dm_scoring, "score_paths", fail)


def test_size_a_fixed_input_model_cannot_take_is_one_line_before_reading(
        setup, tmp_path, capsys, monkeypatch):
    _no_reading(monkeypatch)
    rc = dm_predict.main([setup["m1"], "--image-dir", str(setup["d"] / "data"), "--img-size",
                          "32", "32", "--out", str(tmp_path / "p.csv")])
    err = _errors(capsys)
    words = ["m1.keras", "takes 64x48 images only", "--img-size 32 32", "leave it out"]
    assert rc == 2 and len(err) == 1 and all(w in err[0] for w in words), err


@pytest.mark.parametrize("size", [["0", "0"], ["-5", "48"]])
def test_non_positive_size_is_refused_at_flag_parsing(setup, capsys, monkeypatch, size):
    """The one --img-size declaration (dm_cli.add_img_size) refuses it as the trainers do."""
    _no_reading(monkeypatch)
    with pytest.raises(SystemExit) as e:
        dm_predict.main([setup["m1"], "--image-dir", str(setup["d"] / "data"), "--img-size", *size])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument --img-size" in err and "sizes must be positive" in err, err


@pytest.fixture(scope="module")
def patch_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("patchm")
    return str(save(tiny_patch_model(), d / "patch.keras", "patch"))


def test_patch_model_on_whole_mammograms_is_refused_naming_the_flag(
        patch_model, setup, tmp_path, capsys, monkeypatch):
    """Patch model trained on 16x16 patches, 90x70 'mammograms': refused, with the sizes and
    --allow-whole-images; patches of the trained size are scored as before."""
    with monkeypatch.context() as mp:
        _no_reading(mp)
        assert dm_predict.main([patch_model, "--images", *setup["neg"],
                             "--out", str(tmp_path / "p.csv")]) == 2
    err = _errors(capsys)
    assert len(err) == 1
    assert all(w in err[0] for w in (setup["neg"][0], "a 90x70 image", "patch classifier",
                                     "16x16 patches", "2 of 2 images", "--allow-whole-images"))
    assert dm_predict.main([patch_model, "--images", *setup["neg"], "--allow-whole-images",
                         "--out", str(tmp_path / "p.csv")]) == 0
    patches = write_images(tmp_path / "patches", 2, shape=(20, 16))
    assert dm_predict.main([patch_model, "--images", *patches, "--out",
                         str(tmp_path / "q.csv")]) == 0


def test_colour_image_refused_grey_saved_as_rgb_accepted(setup, tmp_path, capsys):
    grey = cv2.imread(setup["neg"][0], cv2.IMREAD_UNCHANGED)
    grey8 = (grey // 257).astype(np.uint8)
    as_rgb = tmp_path / "grey_as_rgb.jpg"                 # grey content in a colour JPEG
    cv2.imwrite(str(as_rgb), cv2.cvtColor(grey8, cv2.COLOR_GRAY2BGR))
    photo = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    cv2.imwrite(str(photo), rng.integers(0, 256, (90, 70, 3)).astype(np.uint8))
    out = tmp_path / "p.csv"
    assert dm_predict.main([setup["m1"], "--images", str(as_rgb), "--out", str(out)]) == 0
    assert dm_predict.main([setup["m1"], "--images", str(as_rgb), str(photo),
                         "--out", str(out)]) == 2
    err = _errors(capsys)
    assert len(err) == 1 and "photo.png: a colour image" in err[0] and "--allow-colour" in err[0]
    assert dm_predict.main([setup["m1"], "--images", str(photo), "--allow-colour",
                         "--out", str(out)]) == 0


@pytest.fixture(scope="module")
def twelve_bit(tmp_path_factory):
    """A model trained on full-range 16-bit images and one breast three ways: 16-bit PNG of
    12-bit values (the export mistake), DICOM with BitsStored 12, full-range 16-bit PNG."""
    from recipe_helpers import write_dicom
    d = tmp_path_factory.mktemp("twelve")
    recipe = dm_recipe.Recipe(img_size=IMG, channels=1, rescale_factor=255 / 65535,
                             featurewise_center=True, featurewise_mean=50.0, input_bits=16)
    model = d / "m16.keras"
    dm_modelfile.save_model(tiny_image_model(), model,
                            dm_modelfile.ModelMeta(("neg", "pos"), recipe, kind="image"))
    full = cv2.imread(write_images(d / "src", 1, seed=5)[0], cv2.IMREAD_UNCHANGED)
    v12 = (full.astype(np.float64) * 4095 / 65535).round().astype(np.uint16)
    png12 = d / "export12.png"
    cv2.imwrite(str(png12), v12)
    dcm12 = write_dicom(d / "b12.dcm", v12, bits_stored=12)
    return dict(model=str(model), png12=str(png12), dcm12=str(dcm12))


def test_12_bit_values_in_a_16_bit_png_refused_like_the_dicom(twelve_bit, tmp_path, capsys):
    s, out = twelve_bit, tmp_path / "p.csv"
    assert dm_predict.main([s["model"], "--images", s["png12"], "--out", str(out)]) == 2
    err = _errors(capsys)
    assert len(err) == 1 and all(w in err[0] for w in (
        "export12.png", "never exceed 4095", "--stored-bits 12 --convert-bit-depth",
        "--stored-bits 16"))
    # --stored-bits 12 with conversion: the same answer as the DICOM that says BitsStored 12
    assert dm_predict.main([s["model"], "--images", s["png12"], s["dcm12"], "--stored-bits", "12",
                         "--convert-bit-depth", "--out", str(out)]) == 0
    p = [float(r["pos"]) for r in _read(out)]
    np.testing.assert_allclose(p[0], p[1], atol=1e-6)
    # --stored-bits 16: scored as it is (what the tool did silently before)
    assert dm_predict.main([s["model"], "--images", s["png12"], "--stored-bits", "16",
                         "--out", str(out)]) == 0
    m = dm_scoring.load_models([s["model"]])
    np.testing.assert_allclose(float(_read(out)[0]["pos"]),
                               dm_scoring.score_paths(m, [s["png12"]])[0, 1], atol=1e-6)


def test_unwritable_out_refused_before_scoring_naming_the_users_file(
        setup, tmp_path, capsys, monkeypatch):
    (tmp_path / "notafolder").write_text("x")
    _no_reading(monkeypatch)
    for bad, words in ((tmp_path / "notafolder" / "preds.csv", ["notafolder/preds.csv", "--out"]),
                       (tmp_path, [str(tmp_path), "is a folder"])):
        assert dm_predict.main([setup["m1"], "--image-dir", str(setup["d"] / "data"),
                             "--out", str(bad)]) == 2
        err = _errors(capsys)
        assert len(err) == 1 and all(w in err[0] for w in words), err
        assert "/." not in err[0]                     # no hidden temporary name


def test_write_failure_names_the_users_file_not_the_temporary_one(setup, tmp_path, capsys,
                                                                  monkeypatch):
    import errno
    real_open = open

    def full_disk(path, *a, **k):
        if "/.p.csv." in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_open(path, *a, **k)
    monkeypatch.setattr("builtins.open", full_disk)
    out = tmp_path / "p.csv"
    assert dm_predict.main([setup["m1"], "--images", setup["neg"][0], "--out", str(out)]) == 2
    err = _errors(capsys)
    assert len(err) == 1 and err[0].endswith(f"{out}: No space left on device")
    assert os.listdir(tmp_path) == []                 # and no temporary file left


def test_failed_onnx_export_leaves_the_earlier_export(setup, tmp_path, capsys, monkeypatch):
    """tf2onnx missing (made so here): the SavedModel written before stays byte for byte."""
    import builtins
    exp = tmp_path / "served"
    assert dm_predict.main([setup["m1"], "--export", str(exp)]) == 0
    before = {p.relative_to(exp): p.read_bytes() for p in exp.rglob("*") if p.is_file()}
    real_import = builtins.__import__

    def no_tf2onnx(name, *a, **k):
        if name == "tf2onnx":
            raise ImportError("No module named 'tf2onnx'")
        return real_import(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_tf2onnx)
    capsys.readouterr()
    assert dm_predict.main([setup["m2"], "--export", str(exp), "--export-onnx",
                         str(tmp_path / "m.onnx")]) == 2
    err = _errors(capsys)
    assert len(err) == 1 and "tf2onnx" in err[0] and "nothing was exported" in err[0]
    after = {p.relative_to(exp): p.read_bytes() for p in exp.rglob("*") if p.is_file()}
    assert after == before
    assert sorted(os.listdir(tmp_path)) == ["served"]      # no temporary folder left


def test_export_log_does_not_name_the_temporary_folder(setup, tmp_path, capsys):
    assert dm_predict.main([setup["m1"], "--export", str(tmp_path / "served")]) == 0
    out = capsys.readouterr()
    assert "/.served." not in out.out + out.err and "Assets written" not in out.out + out.err


def test_progress_bar_counts_images_on_stderr(setup, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DM_PROGRESS", "1")
    assert dm_predict.main([setup["m1"], setup["m2"], "--image-dir", str(setup["d"] / "data"),
                         "--out", str(tmp_path / "p.csv")]) == 0
    cap = capsys.readouterr()
    assert "scoring" in cap.err and "8/8" in cap.err and "8/8" not in cap.out
    monkeypatch.setenv("DM_PROGRESS", "0")
    assert dm_predict.main([setup["m1"], "--image-dir", str(setup["d"] / "data"),
                         "--out", str(tmp_path / "p.csv")]) == 0
    assert "%|" not in capsys.readouterr().err


def test_hidden_files_in_an_image_folder_are_skipped(setup, tmp_path):
    d = tmp_path / "imgs"
    paths = write_images(d, 2)
    (d / "._img_00.png").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    (d / ".thumbs").mkdir()
    write_images(d / ".thumbs", 1)
    assert dm_inputs.list_images(str(d)) == paths
    assert dm_predict.main([setup["m1"], "--image-dir", str(d), "--out",
                         str(tmp_path / "p.csv")]) == 0


# ------------------------------------------------------------------ issue 31: a new user's traps

_BEFORE_TF = """
import sys
sys.path.insert(0, {repo!r})
import dm_predict
rc = dm_predict.main({argv!r})
print("TF-LOADED" if "tensorflow" in sys.modules else "TF-NOT-LOADED", rc)
"""


def _probe(argv, cwd):
    """predict.main in a fresh process: its exit status, whether TensorFlow was loaded, and
    stdout/stderr (the refusals below must come before TensorFlow's start-up)."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", _BEFORE_TF.format(repo=str(REPO), argv=argv)],
                       cwd=cwd, capture_output=True, text=True, timeout=300)
    return r.stdout.strip().splitlines()[-1], r.stdout, r.stderr


def test_out_over_the_input_csv_is_refused_before_tensorflow(setup, tmp_path):
    """`predict.py MODEL --csv same.csv --out same.csv` replaced the user's list with the
    predictions. Now one line on stderr, exit 2, the list untouched, TensorFlow not loaded."""
    lst = tmp_path / "same.csv"
    lst.write_text("path\n" + "".join(f"{p}\n" for p in setup["neg"]))
    before = lst.read_bytes()
    status, out, err = _probe([setup["m1"], "--csv", "same.csv", "--out", "./same.csv"], tmp_path)
    assert status == "TF-NOT-LOADED 2", out + err
    assert lst.read_bytes() == before
    errors = [l for l in err.splitlines() if "error:" in l]
    assert len(errors) == 1 and "predict: error: ./same.csv (--out) is the --csv same.csv, " \
        "which this command reads" in errors[0], err
    assert "error" not in out                           # errors on stderr, even with --out


@pytest.mark.parametrize("argv,words", [
    (lambda s: [s["m1"], "--images", *s["neg"], "--out", s["neg"][0]], ("is the image",)),
    (lambda s: [s["m1"], "--images", *s["neg"], "--out", s["m1"]], ("is the MODEL",)),
    (lambda s: [s["m1"], "--export", str(pathlib.Path(s["m1"]).parent)],
     ("(--export) holds the MODEL",)),
])
def test_no_output_over_a_model_or_image(setup, tmp_path, capsys, argv, words):
    before = pathlib.Path(setup["m1"]).read_bytes()
    assert dm_predict.main(argv(setup)) == 2
    err = [l for l in capsys.readouterr().err.splitlines() if "error: " in l]
    assert len(err) == 1 and all(w in err[0] for w in words), err
    assert pathlib.Path(setup["m1"]).read_bytes() == before


def test_give_out_and_a_missing_model_are_answered_before_tensorflow(setup, tmp_path):
    many = write_images(tmp_path / "many", 21)
    status, _, err = _probe([setup["m1"], "--image-dir", str(tmp_path / "many")], tmp_path)
    assert status == "TF-NOT-LOADED 2" and "21 images: give --out FILE" in err
    status, _, err = _probe([str(tmp_path / "ddsm_vgg16.keras"), "--images", many[0]], tmp_path)
    assert status == "TF-NOT-LOADED 2"
    assert "ddsm_vgg16.keras: model file not found; a published checkpoint is downloaded " \
           "first (the .h5 links: docs/original.md), then converted: python " \
           "convert_checkpoint.py DOWNLOADED.h5" in err and "--dataset ddsm" in err


def test_truncated_model_file_is_called_truncated(setup, tmp_path, capsys):
    cut = tmp_path / "cut.keras"
    cut.write_bytes(pathlib.Path(setup["m1"]).read_bytes()[:3000])
    assert dm_predict.main([str(cut), "--images", setup["neg"][0]]) == 2
    assert "cut.keras: a truncated or corrupt .keras file" in capsys.readouterr().err


def test_folder_to_images_and_file_to_image_dir_say_so(setup, tmp_path, capsys):
    folder = str(setup["d"] / "data" / "neg")
    assert dm_predict.main([setup["m1"], "--images", folder]) == 2
    assert f"{folder}: is a folder, not an image file (--images takes files; --image-dir " \
           "takes a folder)" in capsys.readouterr().err
    assert dm_predict.main([setup["m1"], "--image-dir", setup["neg"][0]]) == 2
    assert f"{setup['neg'][0]}: is a file, not a folder of images (--image-dir takes a " \
           "folder; --images takes files)" in capsys.readouterr().err


def test_csv_path_column_keeps_the_paths_as_given(setup, tmp_path, monkeypatch, capsys):
    """The predictions' path column shows what the user wrote (relative stays relative),
    and the log says "1 image" without the raw recipe JSON."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    cv2.imwrite(str(imgs / "a.png"), cv2.imread(setup["neg"][0], cv2.IMREAD_UNCHANGED))
    (tmp_path / "list.csv").write_text("path\nimgs/a.png\n")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert dm_predict.main([setup["m1"], "--csv", "list.csv", "--out", "p.csv"]) == 0
    assert [r["path"] for r in _read(tmp_path / "p.csv")] == ["imgs/a.png"]
    log = capsys.readouterr().out
    assert "scoring 1 image with" in log and "scoring 1 images" not in log
    assert '"img_size"' not in log and "{" not in log                    # no recipe JSON
    assert "wrote 1 prediction (neg, pos) to p.csv" in log


def test_small_and_blank_images_are_refused_with_the_flag_that_forces_them(setup, tmp_path,
                                                                          capsys):
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), cv2.resize(cv2.imread(setup["neg"][0], cv2.IMREAD_UNCHANGED),
                                       (15, 20)))      # the model takes 64x48
    black = tmp_path / "black.png"
    cv2.imwrite(str(black), np.zeros((90, 70), np.uint8))
    for img, words, force in ((small, "small.png: a 20x15 image, far smaller than the 64x48 "
                               "input of", "--allow-small-images"),
                              (black, "black.png: a blank image (every pixel is 0)",
                               "--allow-blank")):
        assert dm_predict.main([setup["m1"], "--images", str(img)]) == 2
        err = [l for l in capsys.readouterr().err.splitlines() if "error: " in l]
        assert len(err) == 1 and words in err[0] and force in err[0], err
        assert dm_predict.main([setup["m1"], "--images", str(img), force]) == 0


def test_argparse_errors_are_two_lines_not_the_whole_usage(capsys):
    with pytest.raises(SystemExit) as e:
        dm_predict.main(["m.keras", "--batch-size", "0"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()   # prog: sys.argv[0] (pytest's)
    assert len(err) == 2 and err[0].startswith("usage: ")
    assert err[0].endswith(" [options] MODEL [MODEL ...]")
    assert err[1].endswith(": error: argument --batch-size: 0: must be a whole number >= 1")
