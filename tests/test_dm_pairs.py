"""Pairs of breasts (dm_pairs) and the bilateral model through the trainer and predict.py."""
from __future__ import annotations

import pathlib

import cv2
import numpy as np
import pytest

import dm_flags
import dm_modelfile
import dm_predict
import image_clf_train
from dm_pairs import PairingError, partner_index, partner_paths, read_pairs
from tiny_models import mammogram, save, tiny_patch_model

IMG = ["64", "48"]


def _write(path: pathlib.Path, seed: int, lesion: bool = False) -> str:
    img = mammogram((64, 48), seed)
    if lesion:      # a bright square on one breast only
        img[20:30, 10:20] = 60000
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)
    return str(path)


def _recipe_table(rows, path: pathlib.Path) -> pathlib.Path:
    path.write_text("patient_id,side,view,full_img_file\n" +
                    "".join(f"{p},{s},{v},{f}\n" for p, s, v, f in rows))
    return path


def test_pairs_from_a_recipe_table_and_from_an_explicit_list(tmp_path):
    for name in ("a_L.png", "a_R.png", "b_L.png", "c_L.png", "c_R.png", "c_Lcc.png"):
        _write(tmp_path / "full_images" / name, 0)
    t = _recipe_table([("A", "LEFT", "MLO", "a_L.png"), ("A", "RIGHT", "MLO", "a_R.png"),
                       ("B", "LEFT", "MLO", "b_L.png"),               # no right breast
                       ("C", "left", "MLO", "c_L.png"), ("C", "RIGHT", "MLO", "c_R.png"),
                       ("C", "LEFT", "CC", "c_Lcc.png")], tmp_path / "images.csv")
    pairs = read_pairs(t)
    assert pathlib.Path(pairs["a_L.png"]).name == "a_R.png"
    assert pathlib.Path(pairs["a_R.png"]).name == "a_L.png"
    assert pathlib.Path(pairs["c_L.png"]).name == "c_R.png"       # side without case
    assert "b_L.png" not in pairs and "c_Lcc.png" not in pairs    # no other side of the view
    paths = [str(tmp_path / "x" / n) for n in ("a_R.png", "a_L.png", "c_L.png", "c_R.png")]
    assert partner_index(paths, pairs, "t", "here").tolist() == [1, 0, 3, 2]
    with pytest.raises(PairingError, match="b_L.png: no other breast"):
        partner_paths([str(tmp_path / "b_L.png")], pairs, "images.csv")
    with pytest.raises(PairingError, match="not in here"):
        partner_index(paths[:3], pairs, "t", "here")
    # the explicit layout, relative to the CSV
    lst = tmp_path / "pairs.csv"
    lst.write_text("path,other_path\nfull_images/a_L.png,full_images/b_L.png\n")
    p2 = read_pairs(lst)
    assert pathlib.Path(p2["b_L.png"]).name == "a_L.png"
    lst.write_text("path,other_path\nfull_images/a_L.png,full_images/zz.png\n")
    with pytest.raises(PairingError, match="not found"):
        read_pairs(lst)
    lst.write_text("path\nfull_images/a_L.png\n")
    with pytest.raises(PairingError, match="cannot pair"):
        read_pairs(lst)


@pytest.fixture(scope="module")
def bilateral_run(tmp_path_factory):
    """Women with two breasts, a lesion on one side of half of them; a tiny patch model;
    the bilateral model trained through image_clf_train on class folders."""
    d = tmp_path_factory.mktemp("bilateral")
    rows, k = [], 0
    for split, n in (("train", 6), ("val", 4), ("test", 4)):
        for w in range(n):
            sick = w % 2 == 0
            side = "LEFT" if w % 4 < 2 else "RIGHT"
            for s in ("LEFT", "RIGHT"):
                pos = sick and s == side
                name = f"W{k:02d}_{s}_CC.png"
                _write(d / split / ("pos" if pos else "neg") / name, 100 + k, lesion=pos)
                _write(d / "full_images" / name, 100 + k, lesion=pos)
                rows.append((f"W{k:02d}", s, "CC", name))
            k += 1
    table = _recipe_table(rows, d / "images.csv")
    patch = save(tiny_patch_model(), d / "patch.keras", "patch")
    model = d / "bi.keras"
    res = image_clf_train.run(dm_flags.parse("image", [
        str(d / "train"), str(d / "val"), str(d / "test"), "--patch-model-state", str(patch),
        "--bilateral", "--pairs", str(table), "--img-size", *IMG, "--rescale-factor",
        "0.003891", "--featurewise-mean", "50", "--batch-size", "4", "--train-bs-multiplier",
        "1", "--nb-epoch", "1", "--all-layer-epochs", "2", "--optimizer", "adam",
        "--best-model", str(model)]))
    return dict(dir=d, table=table, model=model, res=res)


def test_bilateral_model_trains_and_records_what_it_takes(bilateral_run):
    res, model = bilateral_run["res"], bilateral_run["model"]
    assert res["history"]["epoch"] == [1, 2] and res["history"]["stage"] == [1, 2]
    assert res["test_probs"].shape == (8, 2)
    meta = dm_modelfile.read_model_meta(model)
    assert meta.extra["bilateral"] is True and meta.extra["mil_pooling"] == "top"
    m = dm_modelfile.load_model(model)
    assert [t.name.split(":")[0] for t in m.inputs] == ["image_input", "other_input"]


def test_predict_scores_pairs_from_the_recipe_or_a_pairs_csv(bilateral_run, tmp_path):
    d, model = bilateral_run["dir"], str(bilateral_run["model"])
    out1 = tmp_path / "p1.csv"
    assert dm_predict.main([model, "--csv", str(bilateral_run["table"]), "--out",
                            str(out1)]) == 0
    out2 = tmp_path / "p2.csv"
    imgs = sorted((d / "test").rglob("*.png"))
    assert dm_predict.main([model, "--images", *map(str, imgs), "--pairs",
                            str(bilateral_run["table"]), "--out", str(out2)]) == 0
    import pandas as pd
    a = pd.read_csv(out1).assign(name=lambda t: t["path"].map(lambda p: pathlib.Path(p).name))
    b = pd.read_csv(out2).assign(name=lambda t: t["path"].map(lambda p: pathlib.Path(p).name))
    m = b.merge(a, on="name")
    assert len(m) == len(imgs)
    np.testing.assert_allclose(m["pos_x"], m["pos_y"], rtol=1e-5, atol=1e-6)
    # the trainer's own test scores, image by image
    probs = bilateral_run["res"]["test_probs"][:, 1]
    np.testing.assert_allclose(np.sort(probs), np.sort(b["pos"].to_numpy()), atol=2e-5)


def test_predict_refuses_an_unpaired_image_in_one_line(bilateral_run, tmp_path, capsys):
    d = bilateral_run["dir"]
    lone = _write(tmp_path / "lone.png", 7)
    rc = dm_predict.main([str(bilateral_run["model"]), "--images", lone, "--pairs",
                          str(bilateral_run["table"]), "--out", str(tmp_path / "o.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "lone.png: no other breast" in err[-1]
    rc = dm_predict.main([str(bilateral_run["model"]), "--images",
                          str(next((d / "test").rglob("*.png"))),
                          "--out", str(tmp_path / "o.csv")])
    assert rc == 2 and "bilateral" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


def test_mias_recipe_records_the_pairs_left_breast_first(shared_data, tmp_path):
    """prepare_mias writes pairs.csv; the odd image of a pair is the left breast, whose
    chest wall is on the image's right edge (the breast's centre of mass right of the
    middle), the even one the right breast."""
    from dm_sweep import breast_mask
    from mias_train import prepare_mias
    mias = shared_data / "mias"
    prepare_mias.prepare(mias, tmp_path / "r", img_size=(128, 128),
                         ids=["mdb001", "mdb002", "mdb003", "mdb011", "mdb012"], verbose=False)
    pairs = read_pairs(tmp_path / "r" / "pairs.csv")
    assert {k: pathlib.Path(v).name for k, v in pairs.items()} == {
        "mdb001.png": "mdb002.png", "mdb002.png": "mdb001.png",
        "mdb011.png": "mdb012.png", "mdb012.png": "mdb011.png"}
    lines = (tmp_path / "r" / "pairs.csv").read_text().splitlines()
    assert lines[1] == "full_images/mdb001.png,full_images/mdb002.png"
    for i in range(1, 323, 16):
        img = cv2.imread(str(mias / "images" / f"mdb{i:03d}.png"), cv2.IMREAD_GRAYSCALE)
        xs = np.nonzero(breast_mask(img)[0])[1]
        assert (xs.mean() > img.shape[1] / 2) == (i % 2 == 1), i


def test_heatmaps_of_a_bilateral_model(bilateral_run, tmp_path):
    """fprop maps the scored breast with the model's own window map; Grad-CAM scores each
    breast with its pair found among the images (patient, view, other side)."""
    from ddsm_train import heatmap_score
    d, model = bilateral_run["dir"], str(bilateral_run["model"])
    out = tmp_path / "fprop.npz"
    assert heatmap_score.main([str(d / "full_images"), model, "--fprop-mode",
                               "--out", str(out)]) == 0
    z = np.load(out)
    n = len(z["path"])
    assert n == 28 and z["hm_0"].ndim == 3 and z["hm_0"].shape[-1] == 3
    m = dm_modelfile.load_model(model)
    import keras
    probe = keras.Model(m.inputs[0], m.get_layer("hm_dense").output)
    assert z["hm_0"].shape[:2] == tuple(probe.outputs[0].shape[1:3])
    out = tmp_path / "cam.npz"
    assert heatmap_score.main([str(d / "full_images"), model, "--grad-cam",
                               "--out", str(out)]) == 0
    z = np.load(out)
    assert len(z["path"]) == 28 and all(np.isfinite(z[f"hm_{i}"]).all() for i in range(28))
    # the head is linear in [own, own - other]: the other breast moves the score, not where
    # the scored breast's Grad-CAM looks
    import dm_heatmaps, dm_recipe, dm_pixels
    from dm_modelfile import read_model_meta
    recipe = read_model_meta(model).recipe
    own, mate, stranger = (dm_recipe.preprocess(dm_pixels.read_image(
        str(d / "full_images" / f)), recipe)[None] for f in
        ("W00_LEFT_CC.png", "W00_RIGHT_CC.png", "W03_RIGHT_CC.png"))
    a = dm_heatmaps.grad_cam(m, (own, mate), 1, normalise=False)
    b = dm_heatmaps.grad_cam(m, (own, stranger), 1, normalise=False)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-9)
    assert a.shape[1:] == z["hm_0"].shape
    pa, pb = (m.predict([own, o], verbose=0)[0, 1] for o in (mate, stranger))
    assert pa != pb
    # a breast without its pair is refused in one line
    lone = tmp_path / "lone"
    lone.mkdir()
    cv2.imwrite(str(lone / "W00_LEFT_CC.png"), cv2.imread(str(d / "full_images" / "W00_LEFT_CC.png"),
                                                           cv2.IMREAD_UNCHANGED))
    assert heatmap_score.main([str(lone), model, "--grad-cam", "--out",
                               str(tmp_path / "x.npz")]) == 2


def test_a_fresh_process_loads_and_scores_the_bilateral_model(bilateral_run, tmp_path):
    """predict.py in a new Python process (nothing of dm_mil imported beforehand) reads
    the model's own layers and scores the pairs as the trainer did."""
    import subprocess
    import sys
    repo = pathlib.Path(__file__).resolve().parents[1]
    out = tmp_path / "fresh.csv"
    r = subprocess.run([sys.executable, str(repo / "predict.py"), str(bilateral_run["model"]),
                        "--csv", str(bilateral_run["table"]), "--out", str(out)],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    import pandas as pd
    assert len(pd.read_csv(out)) == 28
