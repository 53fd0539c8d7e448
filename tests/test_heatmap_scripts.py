"""ddsm_train/fprop_heatmap_all.sh and score_heatmap_all.sh run and give heatmap_score.py's .npz."""
import importlib.util
import os
import pathlib
import subprocess
import sys

import cv2
import numpy as np
import pytest

from tiny_models import mammogram, save, tiny_patch_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("heatmap_score", ROOT / "ddsm_train" / "heatmap_score.py")
hs = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("heatmap_score", hs)
_spec.loader.exec_module(hs)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("hmsh")
    model = save(tiny_patch_model(), d / "patch.keras", "patch")
    imgs = d / "imgs"
    imgs.mkdir()
    for k, name in enumerate(["P1_LEFT_CC", "P1_LEFT_MLO", "P2_RIGHT_CC", "P3_LEFT_MLO"]):
        cv2.imwrite(str(imgs / f"{name}.png"), mammogram((50, 40), seed=k))
    (d / "pat.csv").write_text("patient_id,side,cancer\nP1,LEFT,1\nP2,RIGHT,0\nP3,LEFT,0\n")
    (d / "patient_test.txt").write_text("patient_id\nP1\nP2\n")
    return d, model, imgs


def _npz(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("script,extra,out_name", [
    ("fprop_heatmap_all.sh", ["--img-size", "64", "48", "--avg-pool-size", "2", "2"],
     "phm_s1x1_test.npz"),
    ("score_heatmap_all.sh", ["--img-height", "60", "--patch-size", "16", "--batch-size", "16"],
     "phm_s8_test.npz"),
])
def test_script_npz_equals_heatmap_score(data, tmp_path, script, extra, out_name):
    d, model, imgs = data
    env = dict(os.environ, PYTHON=sys.executable, PAT_CSV=str(d / "pat.csv"), IMG_FOLDER=str(imgs),
               DL_STATE=str(model), PAT_DIR=str(d), OUT_DIR=str(tmp_path / "out"), SETS="test",
               STRIDES="8")
    res = subprocess.run(["bash", str(ROOT / "ddsm_train" / script)] + extra, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    got = _npz(tmp_path / "out" / out_name)
    assert list(got["group_patient_id"]) == ["P1", "P2"]
    # The same settings given to heatmap_score.py directly.
    if script.startswith("fprop"):
        flags = ["--fprop-mode", "--img-size", "64", "48", "--no-img-scale", "--rescale-factor",
                 "0.003891", "--no-equalize-hist", "--featurewise-mean", "52.18",
                 "--avg-pool-size", "2", "2"]
    else:
        flags = ["--img-height", "60", "--img-scale", "255", "--no-equalize-hist",
                 "--featurewise-mean", "59.6", "--patch-size", "16", "--stride", "8",
                 "--batch-size", "16"]
    want_path = tmp_path / "direct.npz"
    assert hs.main([str(imgs), str(model), "--pat-csv", str(d / "pat.csv"), "--pat-list",
                    str(d / "patient_test.txt"), "--out", str(want_path)] + flags) == 0
    want = _npz(want_path)
    assert sorted(got) == sorted(want)
    for k in want:
        if k == "meta":
            continue
        if want[k].dtype.kind == "f":
            np.testing.assert_allclose(got[k], want[k], atol=1e-6, err_msg=k)
        else:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert got["hm_0"].ndim == 3 and got["hm_0"].shape[-1] == 3
