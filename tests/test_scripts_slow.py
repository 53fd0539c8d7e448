"""The three original training scripts, end to end on tiny data (slow).

Each shell script runs as shipped, with its path variables pointed at tiny local data and
size overrides appended (a small `--img-size`; for the whole-image script 16-filter top
blocks instead of 512), so it takes minutes on a CPU; every epoch flag is the script's. The epochs
each run trained are checked against the original's schedule: Keras 2.0.8's
`fit(epochs=<flag>, initial_epoch=<epochs so far>)` per stage, with its early stopping
(reset every stage, stopping after `--es-patience` + 1 epochs without progress), replayed
on the run's own validation losses.
"""
import csv
import os
import pathlib
import re
import stat
import subprocess
import sys

import pytest

from synth import write_class_folders

REPO = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def keras208_schedule(val_losses, stage_ends, patience):
    """The 0-based epochs a Keras 2.0.8 run of these stages records, given the validation
    loss of each epoch it ran (in order)."""
    epochs, done, it = [], 0, iter(val_losses)
    for end in stage_ends:
        best, wait = float("inf"), 0          # EarlyStopping.on_train_begin
        for epoch in range(done, end):
            try:
                v = next(it)
            except StopIteration:
                return epochs
            epochs.append(epoch)
            done = epoch + 1
            if v < best:
                best, wait = v, 0
            else:
                if wait >= patience:
                    break
                wait += 1
    return epochs


def _history(path):
    """0-based epochs (the history CSV counts from 1, as the console) and val losses."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return [int(r["epoch"]) - 1 for r in rows], [float(r["val_loss"]) for r in rows]


def _flag(text, name, n=1):
    text = text[text.index('"$PYTHON"'):]   # the command, not the comments
    m = re.search(rf"--{name}((?:\s+[^\s\\-][^\s\\]*){{{n}}})", text)
    vals = m.group(1).split()
    return [int(v) if v.lstrip("-").isdigit() else v for v in vals]


def _run_script(script, variables, override, env, tmp):
    """Run a copy of `script` with its variables replaced; `override` appended to the
    trainer's command line (through the PYTHON wrapper the scripts honour)."""
    text = (REPO / script).read_text()
    for k, v in variables.items():
        text, n = re.subn(rf'^{k}=".*"$', f'{k}="{v}"', text, flags=re.M)
        assert n == 1, (script, k)
    text = text.replace('REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"', f'REPO="{REPO}"')
    copy = tmp / pathlib.Path(script).name
    copy.write_text(text)
    wrapper = tmp / f"py_{copy.stem}"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@" {" ".join(override)}\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    done = subprocess.run(["bash", str(copy)], env=dict(env, PYTHON=str(wrapper)),
                          capture_output=True, text=True, timeout=1200, cwd=tmp)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return text, done.stdout


def _random_imagenet_weights(keras_home):
    """A ResNet50 'notop' weights file with random values where --use-pretrained looks."""
    import h5py
    import keras
    from keras.src.legacy.saving import legacy_h5_format
    models = keras_home / "models"
    models.mkdir(parents=True)
    base = keras.applications.ResNet50(include_top=False, weights=None)
    with h5py.File(models / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, base)


def test_the_three_training_scripts_run_with_the_original_epoch_counts(tmp_path):
    _random_imagenet_weights(tmp_path / "keras_home")
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2", RANDOM_SEED="7",
               KERAS_HOME=str(tmp_path / "keras_home"), NUM_CPU_CORES="2")

    # 1. patch classifier: --nb-epoch 1 --top-layer-epochs 5 --all-layer-epochs 15
    patches = write_class_folders(tmp_path / "patches", ["background", "malignant", "benign"],
                                  2, (64, 64), seed=1)
    patch_best = tmp_path / "patch_best.keras"
    text, _ = _run_script("ddsm_train/train_patch_clf_im4096_256_3Cls.sh", dict(
        TRAIN_DIR=patches["train"], VAL_DIR=patches["val"], TEST_DIR=patches["test"],
        BEST_MODEL=patch_best), ["--img-size", "64", "64"], env, tmp_path)
    ends = [_flag(text, n)[0] for n in ("nb-epoch", "top-layer-epochs", "all-layer-epochs")]
    assert ends == [1, 5, 15]
    epochs, losses = _history(tmp_path / "patch_best.history.csv")
    assert epochs == keras208_schedule(losses, ends, _flag(text, "es-patience")[0])
    assert epochs[-1] < 15 and len(epochs) <= 15        # never 1 + 5 + 15 = 21
    assert patch_best.is_file()

    # 2. whole-image classifier: --nb-epoch 1 --all-layer-epochs 2 -> 2 epochs, not 3
    images = write_class_folders(tmp_path / "images", ["neg", "pos"], 2, (128, 96), seed=2)
    image_best = tmp_path / "image_best.keras"
    text, _ = _run_script("ddsm_train/train_image_clf_im1152.sh", dict(
        TRAIN_DIR=images["train"], VAL_DIR=images["val"], TEST_DIR=images["test"],
        PATCH_STATE=patch_best, BEST_MODEL=image_best),
        ["--img-size", "128", "96", "--top-depths", "16", "16"], env, tmp_path)
    ends = [_flag(text, "nb-epoch")[0], _flag(text, "all-layer-epochs")[0]]
    epochs, losses = _history(tmp_path / "image_best.history.csv")
    assert ends == [1, 2] and epochs == keras208_schedule(losses, ends, 10) == [0, 1]
    assert image_best.is_file()

    # 3. INbreast transfer from that model: --nb-epoch 0 --all-layer-epochs 50, patience 10
    inbreast_best = tmp_path / "inbreast_best.keras"
    text, out = _run_script("ddsm_train/train_image_clf_inbreast.sh", dict(
        TRAIN_DIR=images["train"], VAL_DIR=images["val"], TEST_DIR=images["test"],
        RESUME_FROM=image_best, BEST_MODEL=inbreast_best), ["--img-size", "128", "96"],
        env, tmp_path)
    ends = [_flag(text, "nb-epoch")[0], _flag(text, "all-layer-epochs")[0]]
    epochs, losses = _history(tmp_path / "inbreast_best.history.csv")
    assert ends == [0, 50]
    assert epochs == keras208_schedule(losses, ends, _flag(text, "es-patience")[0])
    assert epochs[0] == 0 and len(epochs) >= 11      # patience 10: at least 11 epochs
    assert "AUROC on test set" in out
