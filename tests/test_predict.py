"""predict.py: CSV layout, labels, pass-through columns, TTA flag, errors; serving export."""
import csv

import cv2
import numpy as np
import pytest

import dm_export
import dm_image
import dm_inference as inf
import predict
from tiny_models import IMAGE_RECIPE, IMG, save, tiny_image_model, tiny_patch_model, write_images


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
    rc = predict.main([setup["m1"], setup["m2"], "--image-dir", str(setup["d"] / "data"),
                       "--out", str(out), "--batch-size", "3"])
    assert rc == 0
    rows = _read(out)
    assert list(rows[0].keys()) == ["path", "neg", "pos", "label"]
    assert [r["label"] for r in rows] == ["0", "0", "1", "1"]
    probs = np.array([[float(r["neg"]), float(r["pos"])] for r in rows])
    ms = inf.load_models([setup["m1"], setup["m2"]])
    want = inf.score_paths(ms, [r["path"] for r in rows])
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
    assert predict.main([setup["m1"], "--csv", str(lst), "--out", str(out), "--test-augment"]) == 0
    rows = _read(out)
    assert list(rows[0]) == ["path", "neg", "pos", "label", "patient_id", "side"]
    assert [r["patient_id"] for r in rows] == ["P0", "P0", "P1", "P1"]
    m = inf.load_models([setup["m1"]])
    np.testing.assert_allclose([float(r["pos"]) for r in rows],
                               inf.score_paths(m, paths, tta=True)[:, 1], atol=1e-6)


def test_images_without_labels_and_overrides(setup, tmp_path):
    out = tmp_path / "p.csv"
    assert predict.main([setup["m1"], "--images", *setup["pos"], "--out", str(out),
                         "--featurewise-mean", "0"]) == 0
    rows = _read(out)
    assert list(rows[0]) == ["path", "neg", "pos"]
    m = inf.load_models([setup["m1"]])
    want = inf.score_paths(m, setup["pos"], overrides=dict(featurewise_mean=0.0))
    np.testing.assert_allclose([float(r["pos"]) for r in rows], want[:, 1], atol=1e-6)


@pytest.mark.parametrize("argv,msg", [
    (["--images", "nope.png"], "nope.png: image file not found"),
    (["--image-dir", "nodir"], "nodir: image folder not found"),
    (["--images", "a.png", "--csv", "b.csv"], "exactly one"),
])
def test_bad_input_is_one_line_exit_2(setup, tmp_path, capsys, argv, msg):
    rc = predict.main([setup["m1"], *argv, "--out", str(tmp_path / "x.csv")])
    assert rc == 2
    err = [l for l in capsys.readouterr().out.splitlines() if "error: " in l]
    assert len(err) == 1 and msg in err[0]
    assert predict.main(["missing.keras", "--images", setup["neg"][0], "--out", "x.csv"]) == 2


def test_export_matches_predict_from_raw_image(setup, tmp_path):
    """The SavedModel, fed the raw 16-bit image (90x70), gives predict.py's probabilities."""
    exp = tmp_path / "served"
    assert predict.main([setup["m1"], "--export", str(exp)]) == 0
    served, meta = dm_export.load_serving(str(exp))
    assert meta["class_list"] == ["neg", "pos"] and meta["recipe"]["img_size"] == list(IMG)
    out = tmp_path / "p.csv"
    paths = setup["neg"] + setup["pos"]
    assert predict.main([setup["m1"], "--images", *paths, "--out", str(out)]) == 0
    want = np.array([[float(r["neg"]), float(r["pos"])] for r in _read(out)])
    raw = np.stack([cv2.imread(p, cv2.IMREAD_UNCHANGED) for p in paths])
    assert raw.dtype == np.uint16 and raw.shape[1:] == (90, 70)
    got16 = served.serve_uint16(raw).numpy()
    np.testing.assert_allclose(got16, want, atol=1e-4)
    # float32 in: no rounding/clipping after the resize (cubic overshoot stays), like cv2 on
    # a float32 image (e.g. a DICOM with a modality rescale).
    model = inf.load_models([setup["m1"]])[0].model
    rawf = raw.astype(np.float32)
    wantf = model.predict(np.stack([dm_image.preprocess(r, IMAGE_RECIPE) for r in rawf]), verbose=0)
    np.testing.assert_allclose(served.serve(rawf).numpy(), wantf, atol=1e-4)
    # The network inputs themselves: within 1 grey level of 16 bits (cv2 rounding), scaled.
    x_tf = dm_export.preprocess_graph(raw, IMAGE_RECIPE, int_max=65535.0).numpy()
    x_np = np.stack([dm_image.preprocess(r, IMAGE_RECIPE) for r in raw])
    assert np.abs(x_tf - x_np).max() <= 255 / 65535 * 1.001


def test_export_refuses_equalize_hist(tmp_path):
    model = tiny_image_model()
    recipe = inf.apply_overrides(IMAGE_RECIPE, equalize_hist=True)
    with pytest.raises(dm_export.ExportError, match="equalize_hist"):
        dm_export.export_serving(model, recipe, ["neg", "pos"], str(tmp_path / "e"))


def test_onnx_export_matches_tf(tmp_path):
    """Optional: only where tf2onnx and onnx are installed (not in requirements.txt)."""
    pytest.importorskip("tf2onnx")
    from onnx.reference import ReferenceEvaluator
    import onnx
    model = tiny_image_model()
    path = dm_export.export_onnx(model, IMAGE_RECIPE, str(tmp_path / "m.onnx"))
    raw = np.random.default_rng(1).integers(0, 65535, (2, 90, 70)).astype(np.float32)
    got = ReferenceEvaluator(onnx.load(path)).run(None, {"raw": raw})[0]
    want = model.predict(np.stack([dm_image.preprocess(r, IMAGE_RECIPE) for r in raw]), verbose=0)
    np.testing.assert_allclose(got, want, atol=1e-4)
