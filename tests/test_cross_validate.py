"""mias_train/cross_validate.py: folds by woman, the clustered bootstrap, and a --quick run
of the whole chain on a handful of mini-MIAS images."""
import json

import numpy as np
import pandas as pd
import pytest

from mias_train import cross_validate as cv
from mias_train import cv_baselines, cv_chain, cv_report, cv_split


def _strata(n0=20, n1=12, n2=9):
    s = {f"W{i:03d}": 0 for i in range(n0)}
    s.update({f"W{100 + i:03d}": 1 for i in range(n1)})
    s.update({f"W{200 + i:03d}": 2 for i in range(n2)})
    return s


def test_folds_partition_women_stratified_and_seeded():
    s = _strata()
    f = cv_split.assign_folds(s, 5, seed=3)
    assert set(f) == set(s) and set(f.values()) == set(range(5))
    sizes = np.bincount(list(f.values()))
    assert sizes.max() - sizes.min() <= 1
    for stratum in (0, 1, 2):       # every stratum is spread over the folds
        per = np.bincount([f[w] for w in s if s[w] == stratum], minlength=5)
        assert per.max() - per.min() <= 1
    assert cv_split.assign_folds(s, 5, seed=3) == f
    assert cv_split.assign_folds(s, 5, seed=4) != f


def test_inner_validation_takes_every_class_from_training_women_only():
    s = _strata()
    train = [w for w in sorted(s) if int(w[1:]) % 3]      # some subset
    val = cv_split.inner_validation(s, train, 0.2, seed=1)
    assert val < set(train)
    assert {s[w] for w in val} == {0, 1, 2}
    assert len(val) == sum(max(1, round(0.2 * sum(s[w] == k for w in train))) for k in (0, 1, 2))


def test_pooled_figures_resample_women_and_keep_four_digits():
    """The pooled figures are dm_metrics' bootstrap over whole women (or images), as
    summary.json records them; two images of one woman move together."""
    import dm_metrics
    rng = np.random.default_rng(0)
    woman = np.repeat([f"W{i:03d}" for i in range(40)], 2)
    y = np.repeat(np.arange(40) % 2, 2).astype(bool)
    s = y + rng.normal(0, 1.0, 80)
    r = cv_chain.chain_bootstrap(y, s, woman, n_boot=300, seed=1)
    ref = dm_metrics.bootstrap_auroc(y, s, 300, 1, groups=woman)
    assert (r["auroc"], r["ci_low"], r["ci_high"]) == tuple(
        round(ref[k], 4) for k in ("auroc", "ci_low", "ci_high"))
    assert (r["n"], r["n_pos"], r["n_groups"], r["n_boot"], r["n_valid"]) == (80, 40, 40, 300, 300)
    assert ref != dm_metrics.bootstrap_auroc(y, s, 300, 1)      # not the case bootstrap


def test_baseline_direction_is_chosen_on_training_data():
    y = np.array([0, 0, 1, 1])
    assert cv_baselines.oriented(y, [1.0, 2.0, 3.0, 4.0]) == 1.0
    assert cv_baselines.oriented(y, [4.0, 3.0, 2.0, 1.0]) == -1.0


@pytest.mark.parametrize("argv, problem", [
    (["--folds", "1"], "--folds 1: need at least 2 folds"),
    (["--report-only"], "no summary.json of a finished run"),
])
def test_unusable_flags_are_one_line_and_write_nothing(argv, problem, tmp_path, caplog):
    (tmp_path / "mias").mkdir()
    (tmp_path / "mias" / "Info.txt").write_text("mdb001 G CIRC B 535 425 197\n")
    out = tmp_path / "cv"
    assert cv.main([str(tmp_path / "mias"), "--out", str(out), *argv]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and problem in errors[0] and "\n" not in errors[0]
    assert not out.exists()


def test_trainer_configs_are_built_from_values_not_argv(tmp_path):
    """The fold's trainer configs: the run's flags, the chain's fixed settings."""
    args = cv.build_parser().parse_args(["m", "--image-balance", "--top-depths", "8", "16", "4"])
    p = cv_chain.patch_config(tmp_path, tmp_path / "p.keras", args, 118.81234)
    assert (p.train_dir, p.use_pretrained, p.nb_epoch, p.es_patience) == (
        str(tmp_path / "train"), False, args.patch_epochs, args.patch_epochs)
    assert p.featurewise_mean == 118.8123 and p.class_list == cv_split.PATCH_CLASSES
    assert p.img_size == [64, 64] and p.batch_size == 128 and p.best_model == str(tmp_path / "p.keras")
    i = cv_chain.image_config(tmp_path, tmp_path / "p.keras", tmp_path / "i.keras", args, 54.63)
    assert (i.nb_epoch, i.all_layer_epochs, i.es_patience) == (2, 14, 14)
    assert i.top_depths == [8, 16, 4] and i.top_repetitions == [1, 1, 1]
    assert i.auto_batch_balance is True and i.augmentation is False
    assert i.patch_model_state == str(tmp_path / "p.keras") and i.class_list == cv_split.IMAGE_CLASSES


def test_quick_run_end_to_end(shared_data, tmp_path, capsys):
    mias = shared_data / "mias"
    if not (mias / "Info.txt").is_file():
        pytest.skip("mini-MIAS not in the shared data")
    out = tmp_path / "cv"
    assert cv.main([str(mias), "--out", str(out), "--quick", "--folds", "2"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(last)
    assert summary == json.loads((out / "summary.json").read_text())

    assert summary["n_women"] == 12 and summary["n_images"] == 24
    folds = summary["folds"]
    assert [f["fold"] for f in folds] == [0, 1]
    tests = [set(f["test_women"]) for f in folds]
    assert not tests[0] & tests[1]
    assert tests[0] | tests[1] == set(folds[0]["train_women"]) | tests[0]
    for f in folds:
        assert not set(f["test_women"]) & set(f["train_women"])
        assert set(f["val_women"]) < set(f["train_women"])
        # two epochs per learning curve (patch; whole image over its two stages): lines
        hp, hi = f["patch_history"], f["image_history"]
        assert hp["epoch"] == [1, 2] and len(hp["loss"]) == len(hp["val_accuracy"]) == 2
        assert hi["epoch"] == [1, 2] and hi["stage"] == [1, 2] and len(hi["val_auroc"]) == 2
        # the whole-image stage centres with the trunk's own mean (a patch mean), not the
        # whole images' far darker one
        import dm_modelfile
        fd = out / f"fold{f['fold']}"
        trunk = dm_modelfile.read_model_meta(fd / "patch_model.keras").recipe
        image = dm_modelfile.read_model_meta(fd / "image_model.keras").recipe
        assert image.featurewise_mean == pytest.approx(trunk.featurewise_mean, abs=1e-3)
        assert f["image_mean"] == pytest.approx(trunk.featurewise_mean, abs=1e-3)
        assert "image_train_auroc_abnormal" in f and "image_train_auroc_malignant" in f

    images = pd.read_csv(out / "oof_images.csv")
    assert len(images) == 24 and images["image_id"].is_unique
    assert (images.groupby("woman")["fold"].nunique() == 1).all()    # both breasts, one fold
    assert images.groupby("woman").size().eq(2).all()
    for f in folds:
        assert set(images.loc[images["fold"] == f["fold"], "woman"]) == set(f["test_women"])
    patches = pd.read_csv(out / "oof_patches.csv")
    assert set(patches["img_id"].str.split("_").str[0]) <= set(images["woman"])
    assert (patches.groupby("img_id")["fold"].nunique() == 1).all()

    for name in ("patch_lesion_vs_background", "image_abnormal_vs_normal",
                 "image_malignant_vs_rest"):
        for kind, r in summary["pooled"][name].items():
            assert 0.0 <= r["ci_low"] <= r["auroc"] <= r["ci_high"] <= 1.0, (name, kind)
    assert summary["pooled"]["image_abnormal_vs_normal"]["network"]["n"] == 24
    conf = np.array(summary["patch_confusion"]["rows_true_cols_pred"])
    assert conf.shape == (3, 3) and conf.sum() == len(patches)
    assert set(summary["goals"]) == {"patch_auroc_ge_0_90", "image_abnormal_auroc_ge_0_75",
                                     "image_abnormal_ci_low_gt_0_6"}
    for key in ("roc_abnormal", "roc_malignant", "roc_patches", "learning_curves"):
        assert (out / "figures" / f"{key}.png").stat().st_size > 1000
        assert summary["files"][key] == str(out / "figures" / f"{key}.png")
    # every output of a full run, the lesion overlay and the localisation included
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    for name in ("oof_images_heatmap.csv", "women_all.txt", "figures/overlay.png",
                 "figures/roc_abnormal_pr.png", "figures/roc_malignant_pr.png",
                 "figures/roc_patches_pr.png", "localisation/localisation.json",
                 "localisation/localisation.png", "fold0/patch_model.keras",
                 "fold0/image_model.keras", "fold1/patch_model.keras", "fold1/image_model.keras",
                 "fold1/patch_model.history.csv", "fold1/image_model.history.csv"):
        assert name in written, name
    assert summary["files"]["overlay"]["path"] == str(out / "figures" / "overlay.png")
    import cv2
    curves = cv2.imread(str(out / "figures" / "learning_curves.png")).astype(int)
    coloured = (curves.max(-1) - curves.min(-1)) > 80
    w = curves.shape[1]
    for panel in range(3):                          # no empty panel
        assert coloured[:, panel * w // 3:(panel + 1) * w // 3].sum() > 100, panel
    d = summary["diagnostics"]
    assert d["patch_lesion_vs_hard_negatives"]["n_lesion_patches"] > 0    # hns sampled
    n_lesion = int((patches["label"] > 0).sum())
    assert d["patch_lesion_vs_random_background"]["n_lesion_patches"] == n_lesion
    assert sum(v["n_lesion_patches"] for v in d["patch_by_class"].values()) == n_lesion
    assert sum(v["n_lesion_patches"] for v in d["patch_by_radius_at_1024px"].values() if v) \
        == n_lesion          # every lesion patch is traced back to its Info.txt radius
    hm = summary["image_score_from_patch_heatmap_max"]
    assert hm["abnormal_vs_normal"]["n"] == 24 and hm["malignant_vs_rest"]["n_pos"] == \
        summary["pooled"]["image_malignant_vs_rest"]["network"]["n_pos"]
    for task, r in summary["null_learner"].items():
        assert r["q05"] <= r["mean"] <= r["q95"] and 0.0 <= r["share_at_or_below"] <= 1.0, task
    assert summary["wall_s"] > 0

    # --report-only redoes the steps after training, also on a run recorded before --img-size
    # took H W (one number in its summary)
    recorded = json.loads((out / "summary.json").read_text())
    recorded["config"]["img_size"] = 128
    (out / "summary.json").write_text(json.dumps(recorded))
    capsys.readouterr()
    assert cv.main([str(mias), "--out", str(out), "--report-only"]) == 0
    redone = json.loads((out / "summary.json").read_text())
    assert redone["files"]["overlay"]["path"] == str(out / "figures" / "overlay.png")
    assert redone["null_learner"].keys() == summary["null_learner"].keys()
    assert redone["localisation"] and redone["diagnostics"]


def test_null_learner_brackets_chance_and_ranks_the_network():
    rng = np.random.default_rng(0)
    label = rng.permutation(np.r_[np.zeros(120, int), np.ones(48, int), np.full(32, 2)])
    I = pd.DataFrame(dict(fold=np.arange(200) % 5, label=label))
    I["p_normal"] = np.where(label > 0, 0.1, 0.9)          # a perfect abnormal score
    I["p_malignant"] = np.where(label == 2, 0.0, 1.0)      # a perfectly inverted one
    r = cv_baselines.null_learner(I, n_rep=30, seed=1)
    for task in ("abnormal_vs_normal", "malignant_vs_rest"):
        assert 0.3 < r[task]["q05"] < 0.5 < r[task]["q95"] < 0.7 and r[task]["n_rep"] == 30
    assert r["abnormal_vs_normal"]["network"] == 1.0
    assert r["abnormal_vs_normal"]["share_at_or_below"] == 1.0
    assert r["malignant_vs_rest"]["network"] == 0.0
    assert r["malignant_vs_rest"]["share_at_or_below"] == 0.0
    assert cv_baselines.null_learner(I, n_rep=30, seed=1) == r                 # seeded


def test_learning_curves_of_one_epoch_are_drawn(tmp_path):
    """After one epoch every panel shows its point (a one-point line alone is invisible)."""
    import cv2
    h = {"epoch": [1], "loss": [1.0], "val_loss": [1.1], "val_accuracy": [0.4]}
    folds = [dict(fold=0, patch_history=h, image_history={"epoch": [1], "val_auroc": [0.6]})]
    path = tmp_path / "lc.png"
    cv_report.plot_learning_curves(folds, path)
    img = cv2.imread(str(path)).astype(int)
    coloured = (img.max(-1) - img.min(-1)) > 80          # the curves' colour, not axes or text
    w = img.shape[1]
    for panel in (0, 2):                                 # (panel 1 also has the legend)
        assert coloured[:, panel * w // 3:(panel + 1) * w // 3].sum() > 10, panel


def test_an_unreadable_image_is_one_line_naming_it(tmp_path):
    from dm_errors import InputError
    bad = tmp_path / "mdb001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(InputError, match="mdb001.png") as e:
        cv_baselines.grey_mean(str(bad), breast_only=True)
    assert "\n" not in str(e.value)
