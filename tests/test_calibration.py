"""Calibration: fitting on synthetic over-confident scores, AUROC unchanged, ECE falls on a
held-out split; calibrate.py stores the map in the model file and predict.py applies it."""
import csv
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import dm_calibrate
import dm_calibration as C
import dm_metrics as M
import dm_predict
from tiny_models import IMAGE_CLASSES, save, tiny_image_model, tiny_patch_model, write_images
import dm_modelfile


def _overconfident(n, seed, sharpen=3.0, shift=0.0):
    """Labels drawn from a true probability; the 'model' reports its logit x `sharpen`."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    pos = 1 / (1 + np.exp(-(sharpen * z + shift)))
    return np.stack([1 - pos, pos], 1), y


@pytest.mark.parametrize("method,sharpen,shift", [("temperature", 3.0, 0.0),
                                                  ("platt", 2.0, 1.5), ("auto", 3.0, 1.0)])
def test_fit_keeps_auroc_and_lowers_held_out_ece(method, sharpen, shift):
    probs, y = _overconfident(4000, seed=1, sharpen=sharpen, shift=shift)
    fit_p, fit_y, test_p, test_y = probs[:2000], y[:2000], probs[2000:], y[2000:]
    cal = C.fit(fit_p, fit_y, method)
    out = C.apply(cal, test_p)
    np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-9)
    assert M.auroc(test_y, out[:, 1]) == M.auroc(test_y, test_p[:, 1])
    before = M.reliability(test_y, test_p[:, 1])
    after = M.reliability(test_y, out[:, 1])
    assert before["ece"] > 0.05 and after["ece"] < 0.5 * before["ece"]
    assert after["brier"] < before["brier"]
    assert cal["log_loss_fitted"] < cal["log_loss_raw"]
    if method == "temperature":
        assert cal["temperature"] == pytest.approx(3.0, rel=0.15)   # undoes the x3 sharpening
    if method == "auto":
        # a shifted score needs Platt's intercept: chosen by cross-validated log-loss
        assert cal["method"] == "platt" and set(cal["cv_log_loss"]) == {"temperature", "platt"}
        assert cal["cv_log_loss"]["platt"] < cal["cv_log_loss"]["temperature"]


def test_temperature_is_multiclass_and_platt_refuses_it():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1, (600, 3)) * 4
    y = np.array([rng.choice(3, p=np.exp(l / 4) / np.exp(l / 4).sum()) for l in logits])
    probs = C._softmax(logits)
    cal = C.fit(probs, y, "auto")
    assert cal["method"] == "temperature" and cal["temperature"] == pytest.approx(4, rel=0.25)
    with pytest.raises(C.CalibrationError, match="2-class"):
        C.fit(probs, y, "platt")
    with pytest.raises(C.CalibrationError, match="two classes"):
        C.fit(probs[:5], np.zeros(5, int), "temperature")


def test_reliability_bins_counts_ece_brier():
    y = np.array([0, 0, 1, 1, 1])
    s = np.array([0.05, 0.15, 0.15, 0.95, 1.0])
    r = M.reliability(y, s, n_bins=10)
    assert [b["n"] for b in r["bins"]] == [1, 2, 0, 0, 0, 0, 0, 0, 0, 2]
    assert r["bins"][1]["observed_rate"] == 0.5 and r["bins"][1]["mean_score"] == 0.15
    assert r["ece"] == pytest.approx((1 * 0.05 + 2 * 0.35 + 2 * 0.025) / 5)
    assert r["brier"] == pytest.approx(np.mean((s - y) ** 2))


@pytest.fixture(scope="module")
def model_and_preds(tmp_path_factory):
    d = tmp_path_factory.mktemp("cal")
    m = save(tiny_image_model(tiny_patch_model(), seed=4), d / "m.keras", "image")
    paths = write_images(d / "img", 4, seed=3)
    return d, m, paths


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_calibrate_cli_stores_map_and_predict_applies_it(model_and_preds, tmp_path):
    d, model, paths = model_and_preds
    val = tmp_path / "val.csv"
    probs, y = _overconfident(400, seed=5, shift=0.5)
    with open(val, "w") as f:
        f.write("path,neg,pos,label\n")
        f.writelines(f"v{i}.png,{p[0]:.6f},{p[1]:.6f},{IMAGE_CLASSES[k]}\n"
                     for i, (p, k) in enumerate(zip(probs, y)))
    out_model = tmp_path / "cal.keras"
    assert dm_calibrate.main([str(model), str(val), "--method", "temperature",
                           "--out", str(out_model)]) == 0
    assert dm_modelfile.read_model_meta(model).calibration is None     # source untouched
    meta = dm_modelfile.read_model_meta(out_model)
    assert meta.calibration["method"] == "temperature" and meta.class_list == IMAGE_CLASSES
    assert meta.calibration["temperature"] == pytest.approx(
        C.fit(np.round(probs, 6), y, "temperature")["temperature"], rel=1e-6)
    assert meta.calibration["fitted_on"] == str(val) and meta.calibration["n"] == 400
    raw, calp = tmp_path / "raw.csv", tmp_path / "cal.csv"
    assert dm_predict.main([str(out_model), "--images", *paths, "--out", str(raw),
                         "--no-calibration"]) == 0
    assert dm_predict.main([str(out_model), "--images", *paths, "--out", str(calp)]) == 0
    assert dm_predict.main([str(model), "--images", *paths, "--out", str(tmp_path / "u.csv")]) == 0
    rp = np.array([[float(r["neg"]), float(r["pos"])] for r in _read(raw)])
    cp = np.array([[float(r["neg"]), float(r["pos"])] for r in _read(calp)])
    up = np.array([[float(r["neg"]), float(r["pos"])] for r in _read(tmp_path / "u.csv")])
    np.testing.assert_allclose(rp, up, atol=1e-6)          # same weights: raw = uncalibrated
    np.testing.assert_allclose(cp, C.apply(meta.calibration, rp), atol=2e-6)
    assert np.all(cp[:, 1] > 100 * rp[:, 1])               # T=3 softens 1e-11 to ~1e-4
    assert np.all(np.argsort(cp[:, 1]) == np.argsort(rp[:, 1]))


def test_calibrate_bad_input_one_line(model_and_preds, tmp_path, capsys):
    d, model, _ = model_and_preds
    (tmp_path / "p.csv").write_text("path,neg,pos\na.png,0.2,0.8\n")
    (tmp_path / "q.csv").write_text("path,a,b,label\na.png,0.2,0.8,1\n")
    assert dm_calibrate.main([str(model), str(tmp_path / "p.csv")]) == 2
    assert dm_calibrate.main([str(model), str(tmp_path / "q.csv")]) == 2
    err = [l for l in capsys.readouterr().err.splitlines() if "error: " in l]
    assert len(err) == 2 and "no 'label' column" in err[0] and "no column for class" in err[1]


def test_calibrate_help_shows_defaults_without_tensorflow():
    code = ("import sys, dm_calibrate\n"
            "try:\n    dm_calibrate.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('TF' if 'tensorflow' in sys.modules else 'noTF')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=pathlib.Path(__file__).resolve().parents[1]).stdout
    assert out.strip().endswith("noTF") and "(default: auto)" in out


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_write_model_meta_keeps_weights_and_other_fields(tmp_path, suffix):
    import dataclasses

    model = tiny_image_model(tiny_patch_model(), seed=6)
    path = save(model, tmp_path / f"m{suffix}", "image")
    before = dm_modelfile.read_model_meta(path)
    cal = dict(method="platt", a=1.5, b=-0.25, n=10)
    dm_modelfile.write_model_meta(path, dataclasses.replace(before, calibration=cal))
    after = dm_modelfile.read_model_meta(path)
    assert after.calibration == cal
    assert dataclasses.replace(after, calibration=None) == before
    x = np.random.default_rng(0).normal(size=(2, 64, 48, 1)).astype("float32")
    np.testing.assert_allclose(dm_modelfile.load_model(path).predict(x, verbose=0),
                               model.predict(x, verbose=0), atol=1e-6)
    assert [p.name for p in tmp_path.iterdir()] == [f"m{suffix}"]     # no temporary left
    assert json.loads(before.to_json()).keys() == {"class_list", "recipe", "kind", "extra"}


def test_calibration_writes_a_new_model_never_the_run_s_own(model_and_preds, tmp_path, capsys):
    """Issue 31: the documented command updated MODEL in place, so a rerun of what wrote
    MODEL silently lost the calibration. Now the default is MODEL_calibrated.keras beside
    MODEL, and --out MODEL (any spelling) is refused before TensorFlow."""
    import shutil
    d, model, _ = model_and_preds
    mine = tmp_path / "image_model.keras"
    shutil.copyfile(model, mine)
    val = tmp_path / "val.csv"
    probs, y = _overconfident(60, seed=2, shift=0.5)
    val.write_text("path,neg,pos,label\n" + "".join(
        f"v{i}.png,{p[0]:.6f},{p[1]:.6f},{k}\n" for i, (p, k) in enumerate(zip(probs, y))))
    before = mine.read_bytes()
    assert dm_calibrate.main([str(mine), str(val), "--method", "platt"]) == 0
    assert mine.read_bytes() == before                          # MODEL itself untouched
    made = tmp_path / "image_model_calibrated.keras"
    assert dm_modelfile.read_model_meta(made).calibration["method"] == "platt"
    assert f"calibration stored in {made}" in capsys.readouterr().out
    (tmp_path / "link.keras").symlink_to(mine)
    for out in (str(mine), str(tmp_path / "link.keras")):
        assert dm_calibrate.main([str(mine), str(val), "--out", out]) == 2
        err = [l for l in capsys.readouterr().err.splitlines() if "error: " in l]
        assert len(err) == 1 and "(--out) is the MODEL" in err[0], err
    assert mine.read_bytes() == before
    code = ("import sys, dm_calibrate\n"
            f"rc = dm_calibrate.main([{str(mine)!r}, {str(val)!r}, '--out', {str(mine)!r}])\n"
            "print('TF' if 'tensorflow' in sys.modules else 'noTF', rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=pathlib.Path(__file__).resolve().parents[1]).stdout
    assert out.strip().endswith("noTF 2")
