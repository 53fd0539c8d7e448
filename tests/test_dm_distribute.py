"""Data-parallel training across processes (MultiWorkerMirroredStrategy through TF_CONFIG).

The fast tests check the chief/scratch rules; the slow ones start two real workers on
loopback ports, each a separate `patch_clf_train.py` / `image_clf_train.py` process, and
compare them with each other and with a one-worker run of the same global batch.
"""
import csv
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import dm_distribute
import dm_flags
from synth import write_class_folders
import dm_modelfile

REPO = pathlib.Path(__file__).resolve().parents[1]


def _tf_config(monkeypatch, cluster, kind, index):
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster,
                                                "task": {"type": kind, "index": index}}))


def test_chief_is_the_chief_task_or_worker_zero(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert dm_distribute.is_chief() and not dm_distribute.is_multi_worker()
    two = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    _tf_config(monkeypatch, two, "worker", 0)
    assert dm_distribute.is_multi_worker() and dm_distribute.is_chief()
    _tf_config(monkeypatch, two, "worker", 1)
    assert not dm_distribute.is_chief()
    with_chief = {"chief": ["127.0.0.1:0"], "worker": ["127.0.0.1:1"]}
    _tf_config(monkeypatch, with_chief, "worker", 0)
    assert not dm_distribute.is_chief()
    _tf_config(monkeypatch, with_chief, "chief", 0)
    assert dm_distribute.is_chief()


def test_other_workers_write_only_to_a_scratch_folder(monkeypatch, tmp_path):
    argv = ["t", "v", "s", "--best-model", str(tmp_path / "out" / "best.keras"),
            "--final-model", str(tmp_path / "out" / "final.keras"),
            "--history-csv", str(tmp_path / "logs" / "h.csv"), "--tensorboard", "tb"]
    cfg = dm_flags.parse("patch", argv)
    two = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    _tf_config(monkeypatch, two, "worker", 0)
    assert dm_distribute.worker_config(cfg) is cfg          # the chief writes where asked
    _tf_config(monkeypatch, two, "worker", 1)
    moved = dm_distribute.worker_config(cfg)
    scratch = tmp_path / "out" / ".worker1-scratch"
    assert moved.best_model == str(scratch / "best.keras")
    assert moved.final_model == str(scratch / "final.keras")
    assert moved.history_csv == str(scratch / "h.csv")
    assert moved.tensorboard is None
    assert scratch.is_dir()
    dm_distribute.clean_scratch(cfg)
    assert not scratch.exists() and (tmp_path / "out").is_dir()


# ----------------------------------------------------------------- two real workers (slow)
def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


KEEP_SCRATCH = ("import sys, dm_distribute; dm_distribute.clean_scratch = lambda cfg: None; "
                "import {tool}; sys.exit({tool}.main(sys.argv[1:]))")


def _start(tool, argv, ports, index, log, keep_scratch=False):
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2",
               CUDA_VISIBLE_DEVICES="")
    if ports:
        env["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                       "task": {"type": "worker", "index": index}})
    else:
        env.pop("TF_CONFIG", None)
    cmd = ([sys.executable, "-c", KEEP_SCRATCH.format(tool=tool), *argv] if keep_scratch
           else [sys.executable, str(REPO / f"{tool}.py"), *argv])
    return subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            cwd=REPO)


def _run_workers(tool, argv_for, tmp, tag, keep_scratch=False, timeout=900):
    ports = _free_ports(2)
    procs = [_start(tool, argv_for(i), ports, i, tmp / f"{tag}.w{i}.log", keep_scratch)
             for i in range(2)]
    rcs = [p.wait(timeout=timeout) for p in procs]
    logs = [(tmp / f"{tag}.w{i}.log").read_text() for i in range(2)]
    return rcs, logs


def _history(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _weights(path):
    return dm_modelfile.load_model(path).get_weights()


PATCH = ["--net", "yaroslav", "--img-size", "64", "64", "--rescale-factor", "0.003891",
         "--featurewise-mean", "50", "--no-equalize-hist", "--batch-size", "8",
         "--train-bs-multiplier", "1", "--optimizer", "adam", "--init-learningrate", "0.001",
         "--nb-epoch", "2", "--top-layer-epochs", "3", "--all-layer-epochs", "4",
         "--augmentation", "--seed", "5"]


@pytest.mark.slow
def test_two_workers_train_the_patch_classifier_like_one(tmp_path):
    d = write_class_folders(tmp_path / "data", ["background", "malignant", "benign"], 8,
                            (64, 64), seed=1)
    dirs = [str(d["train"]), str(d["val"]), str(d["test"])]
    out = tmp_path / "two"

    rcs, logs = _run_workers("patch_clf_train", lambda i: [
        *dirs, *PATCH, "--best-model", str(out / "best.keras"),
        "--final-model", str(out / "final.keras")], tmp_path, "two", keep_scratch=True)
    assert rcs == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "multi-worker training: worker 0 of 2 replicas in sync (chief)" in logs[0]
    # The chief's files are where the user asked; the other worker's only in its scratch.
    assert sorted(p.name for p in out.iterdir()) == [
        ".worker1-scratch", "best.history.csv", "best.keras", "final.keras"]
    scratch = out / ".worker1-scratch"
    for name in ("best.keras", "final.keras"):
        a, b = _weights(out / name), _weights(scratch / name)
        assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b)), name
    two = _history(out / "best.history.csv")
    assert [int(r["epoch"]) for r in two] == [1, 2, 3, 4]            # 3 stages, final epochs
    assert two == _history(scratch / "best.history.csv")               # same logs everywhere

    one_dir = tmp_path / "one"
    p = _start("patch_clf_train", [*dirs, *PATCH, "--best-model", str(one_dir / "best.keras")],
               None, 0, tmp_path / "one.log")
    assert p.wait(timeout=900) == 0, (tmp_path / "one.log").read_text()[-3000:]
    one = _history(one_dir / "best.history.csv")
    for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
        np.testing.assert_allclose([float(r[key]) for r in two], [float(r[key]) for r in one],
                                   rtol=2e-2, atol=2e-3, err_msg=key)


IMAGE = ["--patch-net", "yaroslav", "--kept-layer-idx", "-3", "--img-size", "256", "192",
         "--rescale-factor", "0.003891", "--featurewise-mean", "50", "--batch-size", "4",
         "--train-bs-multiplier", "1", "--block-type", "vgg", "--top-depths", "16",
         "--top-repetitions", "1", "--nb-epoch", "1", "--all-layer-epochs", "6",
         "--optimizer", "adam", "--augmentation", "--seed", "3", "--class-list", "neg", "pos"]


@pytest.mark.slow
def test_killed_worker_run_resumes_from_the_last_checkpoint(tmp_path):
    import patch_clf_train
    patch = tmp_path / "patch.keras"
    cfg = dm_flags.parse("patch", ["t", "v", "s", "--net", "yaroslav", "--img-size", "64", "64",
                                   "--class-list", "background", "malignant", "benign"])
    dm_modelfile.save_model(patch_clf_train.build_patch_model(cfg), patch)
    d = write_class_folders(tmp_path / "data", ["neg", "pos"], 6, (256, 192), seed=2)
    out = tmp_path / "out"
    argv = [str(d["train"]), str(d["val"]), str(d["test"]), "--patch-model-state", str(patch),
            *IMAGE, "--best-model", str(out / "best.keras")]

    ports = _free_ports(2)
    procs = [_start("image_clf_train", argv, ports, i, tmp_path / f"a.w{i}.log")
             for i in range(2)]
    history = out / "best.history.csv"
    deadline = time.time() + 600
    while time.time() < deadline and not (history.exists() and len(_history(history)) >= 2):
        time.sleep(0.5)
    assert history.exists(), (tmp_path / "a.w0.log").read_text()[-3000:]
    time.sleep(1.0)                                     # into the next epoch
    procs[1].send_signal(signal.SIGKILL)
    assert procs[1].wait(timeout=60) == -signal.SIGKILL
    assert procs[0].wait(timeout=300) != 0              # the chief stops when its peer dies
    done_before = len(_history(history))
    assert (out / "best.last.keras").exists()
    kept = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    # A worker that cannot see the chief's checkpoint (as on a machine without the shared
    # output folder) would start afresh: both stop with one line, nothing is touched.
    other = str(tmp_path / "elsewhere" / "best.keras")
    rcs, logs = _run_workers("image_clf_train", lambda i: argv if i == 0 else
                             [*argv, "--best-model", other], tmp_path, "c")
    assert rcs == [2, 2], logs[0][-3000:] + logs[1][-3000:]
    for text in logs:
        line = [l for l in text.splitlines() if "image_clf_train: error:" in l]
        assert len(line) == 1 and "do not see the same last checkpoint" in line[0], text[-3000:]
        assert "task 1: none" in line[0] and "Traceback" not in text
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == kept

    # The killed worker's own checkpoint may lag the chief's by an epoch (as in a CI run
    # where it died while saving); every worker resumes from the chief's, so drop it.
    (out / ".worker1-scratch" / "best.last.keras").unlink(missing_ok=True)
    rcs, logs = _run_workers("image_clf_train", lambda i: argv, tmp_path, "b")
    assert rcs == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    # Both resume from the same last completed epoch (the epoch being finished when the
    # peer died may or may not have been checkpointed): no later than the history showed.
    done = [re.search(r"resuming from .*: epochs 1-(\d+) are done", t) for t in logs]
    assert all(done), logs[0][-3000:]
    assert done[0].group(1) == done[1].group(1) and 1 <= int(done[0].group(1)) <= done_before
    rows = _history(history)
    assert [int(r["epoch"]) for r in rows] == list(range(1, 7))     # no epoch twice or lost
    assert not (out / ".worker1-scratch").exists()                  # the worker cleaned up
    assert not (out / "best.last.keras").exists()
    assert dm_modelfile.load_model(out / "best.keras").output_shape[-1] == 2
