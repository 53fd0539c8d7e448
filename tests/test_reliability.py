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

from synth import write_class_folders
import dm_modelfile
import dm_patch_nets

REPO = pathlib.Path(__file__).resolve().parents[1]


def _patch_cmd(data, out, epochs=("2", "4", "6")):   # final epoch numbers
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
        dm_modelfile.load_model(out / "patch.keras")
    assert kills >= 2
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "resuming from" in done.stdout and "continuing at epoch" in done.stdout
    history = _history(out)
    assert [int(r["epoch"]) for r in history] == list(range(1, 7))  # every epoch exactly once
    for a, b in zip(history, reference):                            # as if never interrupted
        for k in ("loss", "val_loss", "accuracy"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), (k, a, b)
    assert not (out / "patch.last.keras").exists()                 # completed: cleaned up


@pytest.mark.slow
def test_ctrl_c_one_line_exit_130_then_the_same_command_resumes(tmp_path):
    """A real SIGINT (Ctrl-C) in the middle of training: no traceback, one line saying
    where it stopped and how to resume, exit status 130; the same command resumes."""
    data = write_class_folders(tmp_path / "d", ["background", "malignant", "benign"], 6, (64, 64))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO), RANDOM_SEED="99")
    out = tmp_path / "run"
    cmd = _patch_cmd(data, out, epochs=("2", "4", "30"))
    # as from a terminal: SIGINT not inherited as ignored (a background shell job ignores it)
    default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=default_sigint)
    csv = out / "patch.history.csv"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if csv.exists() and len(csv.read_text().strip().splitlines()) - 1 >= 2:
            break
        time.sleep(0.1)
    time.sleep(0.5)
    assert proc.poll() is None, "training ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, (stdout[-2000:], stderr[-2000:])
    assert "Traceback" not in stdout + stderr and "KeyboardInterrupt" not in stdout + stderr
    lines = [l for l in (stdout + stderr).splitlines() if "interrupted" in l]
    assert len(lines) == 1, lines
    m = re.search(r"patch_clf_train: interrupted at epoch (\d+); rerun the same command to "
                  r"resume$", lines[0])
    assert m and int(m.group(1)) >= 2, lines[0]     # the epoch in progress (or ending)
    resumed = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, preexec_fn=default_sigint)
    deadline = time.time() + 300
    first = ""
    while time.time() < deadline and "resuming from" not in first:
        line = resumed.stdout.readline()
        if not line:
            break
        first += line
    resumed.send_signal(signal.SIGINT)
    resumed.communicate(timeout=120)
    assert "resuming from" in first and "continuing at epoch" in first, first[-2000:]


# ------------------------------------------------------------------ bad input, table-driven
def _write_png(path, arr):
    import cv2
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), arr)


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A valid image set, a patch model and a whole-image model to break things around."""
    import dm_resnet
    d = tmp_path_factory.mktemp("good")
    data = write_class_folders(d / "img", ["neg", "pos"], 3, (128, 128))
    patch = dm_patch_nets.get_dl_model("yaroslav", nb_class=2, use_pretrained=False,
                                      img_size=(64, 64))[0]
    recipe = __import__("dm_recipe").Recipe(img_size=(64, 64), channels=1)
    dm_modelfile.save_model(patch, d / "patch.keras",
                            dm_modelfile.ModelMeta(("neg", "pos"), recipe, kind="patch"))
    image, _ = dm_resnet.add_top_layers(patch, (128, 128), block_type="vgg", depths=[8],
                                        repetitions=[1])
    dm_modelfile.save_model(image, d / "image.keras",
                            dm_modelfile.ModelMeta(("neg", "pos"), recipe, kind="image"))
    return d, data


def _copy_tree(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def _case_missing_train(d, data, w):
    return [str(w / "nope"), str(data["val"]), str(data["test"])], "dataset folder not found"


def _case_missing_class(d, data, w):
    t = _copy_tree(data["train"], w / "train")
    import shutil
    shutil.rmtree(t / "pos")
    return [str(t), str(data["val"]), str(data["test"])], "class folder 'pos' not found"


def _case_empty_set(d, data, w):
    for c in ("neg", "pos"):
        (w / "empty" / c).mkdir(parents=True)
    return [str(data["train"]), str(w / "empty"), str(data["test"])], "no images"


def _case_zero_byte(d, data, w):
    t = _copy_tree(data["train"], w / "train")
    (t / "neg" / "zero.png").write_bytes(b"")
    return [str(t), str(data["val"]), str(data["test"])], "zero.png: empty file (0 bytes)"


def _case_not_an_image(d, data, w):
    t = _copy_tree(data["train"], w / "train")
    (t / "pos" / "notes.png").write_bytes(b"this is not an image at all")
    return [str(t), str(data["val"]), str(data["test"])], "notes.png: not a PNG"


def _case_truncated(d, data, w):
    t = _copy_tree(data["train"], w / "train")
    f = sorted((t / "pos").glob("*.png"))[0]
    f.write_bytes(f.read_bytes()[:300])
    return [str(t), str(data["val"]), str(data["test"])], f"{f.name}: truncated PNG"


def _case_mixed_bits(d, data, w):
    t = _copy_tree(data["train"], w / "train")
    _write_png(t / "neg" / "eight.png", np.full((128, 128), 100, np.uint8))
    return ([str(t), str(data["val"]), str(data["test"]), "--rescale-factor", "0.003891"],
            "16-bit image among 8-bit ones")


def _case_dicom_without_pixels(d, data, w):
    from recipe_helpers import write_dicom
    t = _copy_tree(data["train"], w / "train")
    write_dicom(t / "neg" / "nopix.dcm", np.zeros((128, 128), np.uint16), pixels=False)
    return [str(t), str(data["val"]), str(data["test"])], "nopix.dcm: DICOM without pixel data"


def _case_img_size_too_small(d, data, w):
    return ([str(data["train"]), str(data["val"]), str(data["test"]), "--img-size", "64", "64"],
            "too small for these top layers")


def _case_one_class_val(d, data, w):
    v = _copy_tree(data["val"], w / "val")
    for f in (v / "pos").glob("*.png"):
        f.unlink()
    return [str(data["train"]), str(v), str(data["test"])], "validation set has only class ['neg']"


def _case_patch_model_as_whole_image(d, data, w):
    return ([str(data["train"]), str(data["val"]), str(data["test"]), "--resume-from",
             str(d / "patch.keras")], "this is a patch model, but --resume-from takes a image")


def _case_whole_image_as_patch_model(d, data, w):
    return ([str(data["train"]), str(data["val"]), str(data["test"]), "--patch-model-state",
             str(d / "image.keras")], "this is a image model, but --patch-model-state")


def _case_nan_loss(d, data, w):
    return ([str(data["train"]), str(data["val"]), str(data["test"]), "--optimizer", "sgd",
             "--init-learningrate", "1e30"], "training loss became NaN at epoch 1")


def _case_resume_at_a_size_the_model_cannot_take(d, data, w):
    # refused before any image is decoded (the folders are only listed first, before
    # TensorFlow loads: a missing one is refused even earlier, see _case_missing_train)
    return ([str(data["train"]), str(data["val"]), str(data["test"]), "--resume-from",
             str(d / "image.keras"), "--img-size", "96", "96"],
            "this model takes 128x128 images (its input size is fixed)")


CASES = [_case_resume_at_a_size_the_model_cannot_take, _case_missing_train, _case_missing_class, _case_empty_set, _case_zero_byte,
         _case_not_an_image, _case_truncated, _case_mixed_bits, _case_dicom_without_pixels,
         _case_img_size_too_small, _case_one_class_val, _case_patch_model_as_whole_image,
         _case_whole_image_as_patch_model, _case_nan_loss]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[6:] for c in CASES])
def test_bad_input_one_line_error_and_outputs_untouched(case, good, tmp_path, caplog):
    import image_clf_train
    d, data = good
    argv, expected = case(d, data, tmp_path)
    if not any(a in argv for a in ("--resume-from", "--patch-model-state")):
        argv += ["--patch-model-state", str(d / "patch.keras")]
    if "--img-size" not in argv:
        argv += ["--img-size", "128", "128"]
    best = tmp_path / "out" / "best.keras"
    best.parent.mkdir()
    best.write_bytes(b"an earlier result that must survive")
    before = best.read_bytes()
    argv += ["--block-type", "vgg", "--top-depths", "8", "--top-repetitions", "1",
             "--nb-epoch", "1", "--all-layer-epochs", "0", "--batch-size", "2",
             "--train-bs-multiplier", "1", "--best-model", str(best), "--final-model",
             str(tmp_path / "out" / "final.keras")]
    rc = image_clf_train.main(argv)
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert rc == 2
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert expected in errors[0], errors[0]
    assert best.read_bytes() == before
    assert not (tmp_path / "out" / "final.keras").exists()
