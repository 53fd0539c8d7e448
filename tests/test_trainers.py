"""The two trainers: flags of every shipped script, the full 3+2-stage path via the CLIs,
per-stage weight decay and dropout, seeded reproducibility, data-parallel training."""
import logging
import os
import pathlib
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

import dm_flags
import dm_train
import image_clf_train
import patch_clf_train
from synth import write_class_folders
import dm_dataset
import dm_listing
import dm_callbacks
import dm_modelfile
import dm_patch_nets
import dm_stages

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = sorted(REPO.glob("ddsm_train/*.sh")) + sorted(REPO.glob("inbreast_train/*.sh"))


def _command_lines(text: str):
    """(kind, argv) of each trainer command in a shell script or README code block."""
    joined = re.sub(r"\\\n", " ", text)
    variables = dict(re.findall(r'^([A-Z_]+)="([^"$]*)"', text, flags=re.M))
    # Values the README computes ($(featurewise_mean.py ...)) get example values here.
    variables.update({k: v for k, v in (("RESCALE", "0.003891"), ("MEAN", "44.33"))
                      if re.search(rf"^{k}=\$\(", text, flags=re.M)})
    for line in joined.splitlines():
        m = re.search(r"(patch_clf_train|image_clf_train)\.py\"?\s+(.*)$", line)
        if not m:
            continue
        args = m.group(2)
        for k, v in variables.items():
            args = args.replace(f'"${k}"', shlex.quote(v)).replace(f"${k}", shlex.quote(v))
        yield ("patch" if m.group(1).startswith("patch") else "image"), shlex.split(args)


def test_every_script_and_the_readme_command_parse():
    found = []
    for path in SCRIPTS + [REPO / "README.md"] + sorted(REPO.glob("docs/*.md")):
        text = path.read_text()
        if path.suffix == ".md":   # only the code blocks of the README and docs are commands
            text = "\n".join(re.findall(r"```bash\n(.*?)```", text, flags=re.S))
        for kind, argv in _command_lines(text):
            argv = [a for a in argv if a != "..."]
            cfg = dm_flags.parse(kind, argv)   # SystemExit on any unknown flag
            assert len([a for a in argv if not a.startswith("-")]) >= 3
            found.append((path.name, kind, cfg))
    names = {f[0] for f in found}
    assert {"train_patch_clf_im4096_256_3Cls.sh", "train_image_clf_im1152.sh",
            "train_image_clf_inbreast.sh", "README.md"} <= names
    readme = [c for n, k, c in found if n == "README.md" and k == "image" and c.resume_from][0]
    assert readme.nb_epoch == 0 and readme.featurewise_mean == 44.33
    assert readme.rescale_factor == pytest.approx(0.003891) and readme.patch_model_state is None


def test_scripts_are_strict_and_location_independent():
    for path in SCRIPTS:
        text = path.read_text()
        assert "set -euo pipefail" in text and 'REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.."' in text


def test_image_trainer_needs_exactly_one_model_source(capsys):
    with pytest.raises(SystemExit):
        dm_flags.parse("image", ["a", "b", "c"])
    with pytest.raises(SystemExit):
        dm_flags.parse("image", ["a", "b", "c", "--patch-model-state", "p", "--resume-from", "r"])
    assert "exactly one of" in capsys.readouterr().err


def test_config_is_frozen_and_seed_from_env(monkeypatch):
    monkeypatch.setenv("RANDOM_SEED", "777")
    cfg = dm_flags.parse("patch", ["a", "b", "c"])
    assert cfg.seed == 777 and cfg.class_list == ["background", "malignant", "benign"]
    with pytest.raises(Exception):
        cfg.nb_epoch = 3


# ------------------------------------------------------------------ end to end
PATCH_FLAGS = ["--net", "yaroslav", "--img-size", "64", "64", "--rescale-factor", "0.003891",
               "--featurewise-mean", "50", "--no-equalize-hist", "--batch-size", "8",
               "--train-bs-multiplier", "1", "--optimizer", "adam", "--init-learningrate", "0.001"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A patch model through all 3 stages, then a whole-image model through both."""
    d = tmp_path_factory.mktemp("train")
    p = write_class_folders(d / "patches", ["background", "malignant", "benign"], 6, (64, 64))
    patch_model = d / "patch.keras"
    patch_res = patch_clf_train.run(dm_flags.parse("patch", [
        str(p["train"]), str(p["val"]), str(p["test"]), *PATCH_FLAGS, "--nb-epoch", "1",
        "--top-layer-epochs", "2", "--all-layer-epochs", "3", "--augmentation",
        "--best-model", str(patch_model)]))
    i = write_class_folders(d / "images", ["neg", "pos"], 6, (256, 192), seed=1)
    image_model = d / "image.h5"
    image_res = image_clf_train.run(dm_flags.parse("image", [
        str(i["train"]), str(i["val"]), str(i["test"]), "--patch-model-state", str(patch_model),
        "--patch-net", "yaroslav", "--kept-layer-idx", "-3", "--img-size", "256", "192",
        "--rescale-factor", "0.003891", "--featurewise-mean", "50", "--batch-size", "4",
        "--train-bs-multiplier", "1", "--block-type", "vgg", "--top-depths", "16",
        "--top-repetitions", "1", "--nb-epoch", "1", "--all-layer-epochs", "2",
        "--optimizer", "adam", "--test-augment", "--best-model", str(image_model),
        "--final-model", str(d / "final.keras")]))
    return dict(dir=d, patch=p, images=i, patch_model=patch_model, patch_res=patch_res,
                image_model=image_model, image_res=image_res)


def test_patch_training_runs_three_stages(trained):
    h = trained["patch_res"]["history"]
    assert h["stage"] == [1, 2, 3] and h["epoch"] == [1, 2, 3]
    assert trained["patch_model"].is_file()
    meta = dm_modelfile.read_model_meta(trained["patch_model"])
    assert meta.kind == "patch" and meta.class_list == ("background", "malignant", "benign")
    assert meta.recipe.channels == 1 and meta.recipe.img_size == (64, 64)
    assert meta.recipe.input_bits == 16      # the training PNGs' depth, checked at prediction
    csv = trained["patch_model"].with_suffix("").as_posix() + ".history.csv"
    rows = open(csv).read().strip().splitlines()
    assert len(rows) == 4 and rows[0].startswith("epoch")
    # The CSV counts epochs from 1, like the console and the returned history.
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]
    # The 3-class report adds the lesion-vs-background AUROC (1 - p(background)).
    res = trained["patch_res"]
    from sklearn.metrics import roc_auc_score
    y = res["test_labels"] != 0
    assert res["test_auroc_lesion"] == pytest.approx(
        roc_auc_score(y, 1 - res["test_probs"][:, 0]))


def test_image_training_best_model_reproduces_predictions_and_auroc(trained):
    res = trained["image_res"]
    assert res["history"]["stage"] == [1, 2]
    assert "val_auroc" in res["history"]
    path = trained["image_model"]
    meta = dm_modelfile.read_model_meta(path)
    assert meta.kind == "image" and meta.class_list == ("neg", "pos")
    model = dm_modelfile.load_model(path)
    paths, labels = dm_listing.list_class_folders(trained["images"]["test"], meta.class_list)
    ds = dm_dataset.make_dataset(paths, labels, meta.recipe, 2, 4, training=False)
    probs = model.predict(ds.map(lambda x, y: x), verbose=0)
    np.testing.assert_array_equal(probs, res["test_probs"])
    assert res["test_auroc"] == dm_callbacks.mean_auroc(labels, probs)
    assert 0.0 <= res["test_auroc_tta"] <= 1.0
    assert (trained["dir"] / "final.keras").is_file()


def test_cli_prints_test_auroc(trained, caplog):
    i = trained["images"]
    with caplog.at_level(logging.INFO):
        rc = image_clf_train.main([
            str(i["train"]), str(i["val"]), str(i["test"]), "--resume-from",
            str(trained["image_model"]), "--img-size", "256", "192", "--rescale-factor",
            "0.003891", "--featurewise-mean", "50", "--batch-size", "4", "--nb-epoch", "0",
            "--all-layer-epochs", "1", "--optimizer", "adam", "--best-model", "NOSAVE",
            "--history-csv", str(trained["dir"] / "h.csv")])
    assert rc == 0
    line = [r.getMessage() for r in caplog.records if "AUROC on test set" in r.getMessage()]
    assert line and re.match(r"AUROC on test set: \d\.\d{4}$", line[0])
    msgs = [r.getMessage() for r in caplog.records]
    assert any("the best model is chosen by validation AUROC" in m for m in msgs)


def test_one_class_validation_set_is_refused(trained, tmp_path, caplog):
    i = trained["images"]
    val = tmp_path / "val"
    (val / "neg").mkdir(parents=True)
    (val / "pos").mkdir()
    for f in sorted((i["val"] / "neg").glob("*.png"))[:2]:
        (val / "neg" / f.name).write_bytes(f.read_bytes())
    rc = image_clf_train.main([str(i["train"]), str(val), str(i["test"]), "--resume-from",
                               str(trained["image_model"]), "--img-size", "256", "192",
                               "--nb-epoch", "0", "--all-layer-epochs", "1",
                               "--best-model", "NOSAVE"])
    assert rc == 2
    assert any("validation set has only class ['neg']" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ stages
def test_stage2_weight_decay_and_dropout_take_effect():
    import dm_resnet
    patch = dm_patch_nets.get_dl_model("yaroslav", nb_class=3, use_pretrained=False,
                                      img_size=(64, 64))[0]
    model, _ = dm_resnet.add_top_layers(patch, (128, 128), block_type="vgg", depths=[8],
                                        repetitions=[1], weight_decay=0.01, dropout=0.1)
    cfg = dict(nb_epoch=1, all_layer_epochs=1, init_lr=0.01, all_layer_multiplier=0.1,
               weight_decay=0.01, weight_decay2=0.04, hidden_dropout=0.1, hidden_dropout2=0.6)
    s1, s2 = dm_stages.image_stage_list(**cfg)
    dm_stages.compile_for_stage(model, s1, "sgd")
    reg1 = dm_stages.regularization_loss(model)
    dropout1 = [l.rate for l in model.layers if l.__class__.__name__ == "Dropout"]
    dm_stages.compile_for_stage(model, s2, "sgd")
    reg2 = dm_stages.regularization_loss(model)
    dropout2 = [l.rate for l in model.layers if l.__class__.__name__ == "Dropout"]
    assert reg2 / reg1 == pytest.approx(0.04 / 0.01, rel=1e-5)
    assert set(dropout1) == {0.1} and set(dropout2) == {0.6}
    assert s2.lr == pytest.approx(0.001)
    # the stage-2 values are what the compiled training graph uses
    x = np.random.default_rng(0).normal(size=(4, 128, 128, 1)).astype("float32")
    y = np.eye(2)[[0, 1, 0, 1]].astype("float32")
    logs = model.train_on_batch(x, y, return_dict=True)
    assert np.isfinite(logs["loss"])
    assert dm_stages.regularization_loss(model) > reg1   # the stage-2 factor, after a step
    cfg_after = model.get_layer(index=-1).get_config()["kernel_regularizer"]["config"]["l2"]
    assert cfg_after == pytest.approx(0.04)


def test_trunk_is_frozen_by_name_in_stage_one():
    patch = dm_patch_nets.get_dl_model("vgg16", nb_class=3, use_pretrained=False,
                                      img_size=(32, 32))[0]
    trunk = patch.get_layer("patch_trunk")
    top = dm_patch_nets.default_top_layer_nb(trunk, "vgg16")
    stages = [dm_stages.Stage("a", 1, .1, 0, 0, "head"),
              dm_stages.Stage("b", 1, .1, 0, 0, "top", top),
              dm_stages.Stage("c", 1, .1, 0, 0, "all")]
    counts = []
    for s in stages:
        dm_stages.set_trainable(patch, s)
        counts.append(sum(l.trainable for l in trunk.layers))
    assert counts == [0, len(trunk.layers) - top, len(trunk.layers)]
    assert trunk.layers[top].name == "block5_conv1"


def test_optimisers_by_name():
    names = ["sgd", "rmsprop", "adagrad", "adadelta", "adamax", "adam", "nadam"]
    opts = [dm_stages.create_optimizer(n, 0.01) for n in names]
    assert opts[0].nesterov and opts[0].momentum == pytest.approx(0.9)
    # rmsprop and adagrad: the Keras 2.0.8 updates (dm_layers.RMSprop208, Adagrad208)
    assert [type(o).__name__.lower().removesuffix("208") for o in opts] == names
    with pytest.raises(ValueError, match="unknown optimizer"):
        dm_stages.create_optimizer("lion", 0.1)


def test_auroc_one_class_is_nan_not_zero(caplog):
    assert np.isnan(dm_callbacks.mean_auroc([1, 1, 1], np.full((3, 2), 0.5)))
    assert "undefined" in caplog.text
    assert dm_callbacks.mean_auroc([0, 1], [[0.9, 0.1], [0.2, 0.8]]) == 1.0


# ------------------------------------------------------------------ reproducibility, scale
def _short_patch_run(d, tag):
    p = write_class_folders(d / "p", ["background", "malignant", "benign"], 4, (64, 64))
    return patch_clf_train.run(dm_flags.parse("patch", [
        str(p["train"]), str(p["val"]), str(p["test"]), *PATCH_FLAGS, "--no-use-pretrained",
        "--nb-epoch", "2", "--augmentation", "--best-model", str(d / f"{tag}.keras")]))




def test_two_replicas_under_mirrored_strategy(tmp_path):
    """2 training steps on 2 logical CPU devices, in a fresh process."""
    p = write_class_folders(tmp_path / "p", ["neg", "pos"], 4, (64, 64))
    code = f"""
import sys, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, {str(REPO)!r})
import patch_clf_train
sys.exit(patch_clf_train.main({[str(p['train']), str(p['val']), str(p['test']), *PATCH_FLAGS,
    '--class-list', 'neg', 'pos', '--no-use-pretrained', '--nb-epoch', '1', '--batch-size', '4',
    '--distribute', '--best-model', str(tmp_path / 'm.keras')]!r}))
"""
    # No GPU visible: a visible one would be the strategy's one device instead of the CPUs.
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "data-parallel training on 2 replicas" in out.stdout
    assert re.search(r"^2/2 ", out.stdout, flags=re.M)   # 8 images / batch 4 = 2 steps


# ------------------------------------------------------------------ issue 12: logs, flags, lock
def test_flags_that_do_nothing_are_named():
    import dm_train
    cfg = dm_flags.parse("patch", ["a", "b", "c", "--no-use-pretrained", "--top-layer-epochs",
                                   "3", "--all-layer-epochs", "4", "--optimizer", "adam",
                                   "--lr-patience", "2"])
    lines = dm_train.useless_flags(cfg, "patch")
    assert any(l.startswith("--top-layer-epochs does nothing") for l in lines)
    assert any(l.startswith("--all-layer-epochs does nothing") for l in lines)
    assert any(l.startswith("--lr-patience does nothing") for l in lines)
    cfg = dm_flags.parse("image", ["a", "b", "c", "--resume-from", "m.keras",
                                   "--neg-cls-weight", "2", "--no-auto-batch-balance"])
    assert [l for l in dm_train.useless_flags(cfg, "image")
            if l.startswith("--neg-cls-weight does nothing")]
    # Defaults alone never warn.
    assert dm_train.useless_flags(dm_flags.parse("patch", ["a", "b", "c"]), "patch") == []


def test_accuracy_at_the_majority_rate_is_flagged():
    import dm_train
    line = dm_train.accuracy_line(0.75, [0, 0, 0, 1], ["neg", "pos"])
    assert "majority-class rate of 'neg'" in line
    assert "majority" not in dm_train.accuracy_line(0.5, [0, 0, 0, 1], ["neg", "pos"])


def test_second_run_on_the_same_best_model_is_refused(trained, tmp_path, caplog):
    import dm_train
    best = tmp_path / "best.keras"
    i = trained["images"]
    argv = [str(i["train"]), str(i["val"]), str(i["test"]), "--resume-from",
            str(trained["image_model"]), "--img-size", "256", "192", "--nb-epoch", "0",
            "--all-layer-epochs", "1", "--best-model", str(best)]
    with dm_train.RunLock(str(best)):
        assert image_clf_train.main(argv) == 2
    assert any("another run is writing this best model" in r.getMessage()
               for r in caplog.records)
    # A lock file left by a killed run (no process holds it) does not block.
    (tmp_path / "best.keras.lock").write_text("pid 999999\n")
    with dm_train.RunLock(str(best)) as lock:
        assert lock.fd is not None
    assert not (tmp_path / "best.keras.lock").exists()


# The one-dash aliases the original's two trainers declared, with the long flag each stands for.
_ORIGINAL_SHORT = {
    "both": {"-bs": "--batch-size", "-bm": "--best-model", "-esp": "--es-patience",
             "-fm": "--final-model", "-hd": "--hidden-dropout", "-hd2": "--hidden-dropout2",
             "-ic": "--img-scale", "-nic": "--no-img-scale", "-is": "--img-size",
             "-ilr": "--init-learningrate", "-lrp": "--lr-patience", "-ne": "--nb-epoch",
             "-wd": "--weight-decay", "-wd2": "--weight-decay2"},
    "patch": {"-ics": "--init-conv-stride", "-ifs": "--init-filter-size", "-id": "--inp-dropout",
              "-mps": "--max-pooling-size", "-mpr": "--max-pooling-stride",
              "-nif": "--nb-init-filter"},
}


@pytest.mark.parametrize("kind", ["patch", "image"])
def test_original_short_flag_aliases(kind):
    parser = dm_flags.build_parser(kind)
    by_flag = {o: a for a in parser._actions for o in a.option_strings}
    aliases = dict(_ORIGINAL_SHORT["both"], **(_ORIGINAL_SHORT["patch"] if kind == "patch" else {}))
    for short, long in aliases.items():
        assert short in by_flag, short
        assert by_flag[short] is by_flag[long], (short, long)
    extra = ["--patch-model-state", "p"] if kind == "image" else []
    cfg = dm_flags.parse(kind, ["a", "b", "c", *extra, "-ic", "4095", "-nic"])
    assert cfg.img_scale is None
    assert dm_flags.parse(kind, ["a", "b", "c", *extra, "-ic", "4095"]).img_scale == 4095.0


def test_two_seeded_runs_are_bit_identical_even_with_the_cpu_loaded(tmp_path, monkeypatch):
    """One machine, the same seed: the same history and the same predictions to the last
    bit, whether or not other processes load the CPU (the thread pools and tf.data keep
    their order whatever the scheduling)."""
    monkeypatch.setenv("RANDOM_SEED", "4321")
    quiet = _short_patch_run(tmp_path / "quiet", "m")
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3)]
    try:
        loaded = _short_patch_run(tmp_path / "loaded", "m")
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert quiet["history"] == loaded["history"] and len(quiet["history"]["loss"]) == 2
    np.testing.assert_array_equal(quiet["test_probs"], loaded["test_probs"])


@pytest.mark.parametrize("kind", ["patch", "image"])
def test_deterministic_ops_are_on_by_default_and_can_be_turned_off(kind):
    """The trainers turn TensorFlow's deterministic ops on unless told (docs/training.md)."""
    from tensorflow.python.framework import config as tf_config
    extra = ["--patch-model-state", "p"] if kind == "image" else []
    assert dm_flags.parse(kind, ["a", "b", "c", *extra]).deterministic is True
    assert dm_flags.parse(kind, ["a", "b", "c", *extra, "--no-deterministic"]).deterministic is False
    try:
        dm_train.setup_runtime(1, None, None, deterministic=False)
        assert not tf_config.is_op_determinism_enabled()
        dm_train.setup_runtime(1, None, None)
        assert tf_config.is_op_determinism_enabled()
    finally:
        dm_train.setup_runtime(1, None, None)


@pytest.mark.parametrize("tool", ["patch", "image", "end2end", "sampler", "prepare_mias",
                                  "prepare_inbreast", "prepare_cbis_ddsm", "dm_synthetic",
                                  "cross_validate"])
@pytest.mark.parametrize("size", [["0", "0"], ["288", "-1"]])
def test_non_positive_img_size_is_refused_at_flag_parsing(tool, size, capsys):
    import dm_end2end
    from ddsm_train import prepare_cbis_ddsm, sample_patches_combined
    from inbreast_train import prepare_inbreast
    from mias_train import cross_validate, prepare_mias
    import dm_synthetic
    parse = {
        "patch": lambda a: dm_flags.parse("patch", ["a", "b", "c", *a]),
        "image": lambda a: dm_flags.parse("image", ["a", "b", "c", "--resume-from", "m", *a]),
        "end2end": dm_end2end.build_parser().parse_args,
        "sampler": lambda a: sample_patches_combined.main(["r", "m", "p", "f", "o", *a]),
        "prepare_mias": lambda a: prepare_mias.main(["src", "out", *a]),
        "prepare_inbreast": lambda a: prepare_inbreast.main(["src", "x.csv", "out", *a]),
        "prepare_cbis_ddsm": lambda a: prepare_cbis_ddsm.main(["src", "csv", "out", *a]),
        "dm_synthetic": lambda a: dm_synthetic.main(["out", *a]),
        "cross_validate": lambda a: cross_validate.build_parser().parse_args(a),
    }[tool]
    argv = ["--img-size", *size]
    with pytest.raises(SystemExit) as e:
        parse(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "sizes must be positive" in err and "argument --" in err, err


@pytest.mark.parametrize("kind", ["patch", "image"])
def test_nosave_becomes_none_where_flags_are_parsed(kind):
    extra = ["--patch-model-state", "p"] if kind == "image" else []
    cfg = dm_flags.parse(kind, ["a", "b", "c", *extra, "--best-model", "NOSAVE"])
    assert cfg.best_model is None and cfg.final_model is None
    cfg = dm_flags.config(kind, "a", "b", "c", best_model="NOSAVE", final_model="f.keras",
                          **({"patch_model_state": "p"} if kind == "image" else {}))
    assert cfg.best_model is None and cfg.final_model == "f.keras"


# ------------------------------------------------------------------ issue 31

@pytest.mark.parametrize("kind,argv,words", [
    ("image", ["--all-layer-epochs", "-3"], "--all-layer-epochs: -3: must be a whole number >= 0"),
    ("patch", ["--nb-epoch", "-1"], "-ne: -1: must be a whole number >= 0"),
    ("patch", ["--batch-size", "0"], "--batch-size/-bs: 0: must be a whole number >= 1"),
    ("image", ["--init-learningrate", "0"], "-ilr: 0: must be a finite number > 0"),
    ("image", ["--hidden-dropout", "1"], "-hd: 1: must be a finite number >= 0 and < 1"),
    ("patch", ["--weight-decay", "nan"], "-wd: nan: must be a finite number >= 0"),
    ("image", ["--top-depths", "512", "0"], "--top-depths: 0: must be a whole number >= 1"),
    ("patch", ["--rescale-factor", "0"], "--rescale-factor: 0: must be a finite number > 0"),
    ("patch", ["--seed", "-1"], "--seed: -1: must be a whole number >= 0 and <= 4294967295"),
])
def test_impossible_numbers_stop_at_flag_parsing(kind, argv, words, capsys):
    """Issue 31: `--all-layer-epochs -3` exited 0 after "training" nothing."""
    extra = ["--patch-model-state", "p.keras"] if kind == "image" else []
    with pytest.raises(SystemExit) as e:
        dm_flags.parse(kind, ["a", "b", "c", *extra, *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 2 and words in err[1], err


def test_a_run_never_writes_over_the_model_it_starts_from(tmp_path):
    """`--resume-from M --best-model M` (or the last-epoch checkpoint, or a link to M)
    would replace the model being finetuned: refused in one line before TensorFlow."""
    i = write_class_folders(tmp_path / "images", ["neg", "pos"], 2, (32, 24))
    model = tmp_path / "m.keras"
    model.write_bytes(b"a model file")
    (tmp_path / "link.keras").symlink_to(model)
    dirs = [str(i["train"]), str(i["val"]), str(i["test"])]
    code = ("import sys, image_clf_train\n"
            "rc = image_clf_train.main({argv!r})\n"
            "print('TF' if 'tensorflow' in sys.modules else 'noTF', rc)\n")
    repo = pathlib.Path(__file__).resolve().parents[1]
    for flags, words in (
            (["--best-model", str(model)], "(--best-model) is the --resume-from"),
            (["--best-model", str(tmp_path / "m.last.keras"), "--resume-from",
              str(tmp_path / "m.last.keras")], "(--best-model) is the --resume-from"),
            (["--final-model", str(tmp_path / "link.keras")], "(--final-model) is the "
                                                               "--resume-from"),
            (["--best-model", str(tmp_path / "b.keras"), "--history-csv", dirs[0]],
             "(--history-csv) is the TRAIN_DIR")):
        argv = dirs + ["--resume-from", str(model), *flags]
        if flags[-2] == "--resume-from":
            (tmp_path / "m.last.keras").write_bytes(b"a model file")
            argv = dirs + flags
        r = subprocess.run([sys.executable, "-c", code.format(argv=argv)], cwd=repo,
                           capture_output=True, text=True, timeout=300)
        assert r.stdout.strip().endswith("noTF 2"), (flags, r.stdout, r.stderr)
        assert "image_clf_train: error: " in r.stderr and words in r.stderr, r.stderr
    assert model.read_bytes() == b"a model file"


def test_a_missing_published_checkpoint_says_how_it_is_made(tmp_path, caplog):
    i = write_class_folders(tmp_path / "images", ["neg", "pos"], 2, (32, 24))
    rc = image_clf_train.main([str(i["train"]), str(i["val"]), str(i["test"]),
                               "--resume-from", "ddsm_vgg16.keras"])
    assert rc == 2
    err = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert err == ["error: ddsm_vgg16.keras: model file not found (--resume-from); a published "
                   "checkpoint is downloaded first (the .h5 links: docs/original.md), then "
                   "converted: python convert_checkpoint.py DOWNLOADED.h5 ddsm_vgg16.keras "
                   "--dataset ddsm"]


def test_renamed_classes_are_said(trained, tmp_path):
    """Issue 31: `--class-list benign malignant` resuming a `neg pos` model said nothing."""
    i = trained["images"]
    dirs = [i["train"], i["val"], i["test"]]
    cfg = dm_flags.config("image", *dirs, resume_from=str(trained["image_model"]),
                          class_list=["benign", "malignant"])
    assert dm_train.renamed_classes(cfg) == [
        f"{trained['image_model']} was trained with classes neg pos; --class-list benign "
        "malignant renames its outputs in order (neg -> benign, pos -> malignant); give "
        "--class-list neg pos to keep its names"]
    same = dm_flags.config("image", *dirs, resume_from=str(trained["image_model"]))
    assert dm_train.renamed_classes(same) == []
    other = dm_flags.config("image", *dirs, patch_model_state=str(trained["patch_model"]),
                            class_list=["benign", "malignant"])
    assert dm_train.renamed_classes(other) == []       # a new model: nothing is renamed


def test_jit_compile_without_no_deterministic_is_refused_before_training(tmp_path, capsys):
    """Keras turns XLA off under TensorFlow's deterministic ops (the trainers' default), so
    --jit-compile alone would silently do nothing: refused in one line, nothing written."""
    p = write_class_folders(tmp_path / "p", ["background", "malignant", "benign"], 1, (16, 16))
    argv = [str(p["train"]), str(p["val"]), str(p["test"]), "--best-model",
            str(tmp_path / "m.keras"), "--jit-compile"]
    assert patch_clf_train.main(argv) == 2
    assert "--jit-compile needs --no-deterministic" in capsys.readouterr().err
    assert not (tmp_path / "m.keras").exists()
    cfg = dm_flags.parse("patch", argv + ["--no-deterministic"])
    dm_flags.check_run(cfg)            # the pair is accepted
