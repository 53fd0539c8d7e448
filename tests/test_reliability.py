"""Reliability: a killed run resumes; bad input gets one line and changes no output file."""
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import dm_keras_ext
from synth import write_class_folders

REPO = pathlib.Path(__file__).resolve().parents[1]


def _patch_cmd(data, out, epochs=("2", "2", "2")):
    return [sys.executable, str(REPO / "patch_clf_train.py"), str(data["train"]),
            str(data["val"]), str(data["test"]), "--net", "yaroslav", "--img-size", "64", "64",
            "--rescale-factor", "0.003891", "--featurewise-mean", "50", "--no-equalize-hist",
            "--batch-size", "8", "--train-bs-multiplier", "1", "--optimizer", "sgd",
            "--init-learningrate", "0.001", "--top-layer-multiplier", "1",
            "--all-layer-multiplier", "1", "--augmentation", "--nb-epoch", epochs[0],
            "--top-layer-epochs", epochs[1], "--all-layer-epochs", epochs[2],
            "--best-model", str(out / "patch.keras")]


def _history(out):
    rows = (out / "patch.history.csv").read_text().strip().splitlines()
    header = rows[0].split(",")
    return [dict(zip(header, map(float, r.split(",")))) for r in rows[1:]]


def test_sigkill_at_several_moments_then_resume(tmp_path):
    data = write_class_folders(tmp_path / "d", ["background", "malignant", "benign"], 6, (64, 64))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO), RANDOM_SEED="99")
    # the uninterrupted reference run
    ref = tmp_path / "ref"
    subprocess.run(_patch_cmd(data, ref), env=env, check=True, capture_output=True, timeout=600)
    reference = _history(ref)
    assert len(reference) == 6

    out = tmp_path / "run"
    cmd = _patch_cmd(data, out)
    kills = 0
    for wait_rows, extra in ((1, 0.3), (3, 1.0), (4, 0.0)):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        csv = out / "patch.history.csv"
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if csv.exists() and len(csv.read_text().strip().splitlines()) - 1 >= wait_rows:
                break
            time.sleep(0.1)
        time.sleep(extra)                       # mid-epoch, or right at an epoch boundary
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        # after every kill the best model file is complete and loadable
        dm_keras_ext.load_model(out / "patch.keras")
    assert kills >= 2
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "resuming from" in done.stdout
    history = _history(out)
    assert [int(r["epoch"]) for r in history] == list(range(6))   # every epoch exactly once
    for a, b in zip(history, reference):                            # as if never interrupted
        for k in ("loss", "val_loss", "accuracy"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), (k, a, b)
    assert not (out / "patch.last.keras").exists()                 # completed: cleaned up
