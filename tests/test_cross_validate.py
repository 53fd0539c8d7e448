"""mias_train/cross_validate.py: folds by woman, the clustered bootstrap, and a --quick run
of the whole chain on a handful of mini-MIAS images."""
import itertools
import json
import pathlib

import numpy as np
import pandas as pd
import pytest

from mias_train import cross_validate as cv
from mias_train import cv_baselines, cv_chain, cv_report, cv_split

REPO = pathlib.Path(cv.__file__).resolve().parents[1]


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
    (["--val-frac", "1"], "--val-frac 1.0: need a fraction in (0, 1)"),
    (["--quick", "--max-women", "1"], "--max-women 1: need at least one woman per fold (2)"),
    (["--image-epochs", "0", "0"], "--image-epochs 0 0: need stage lengths >= 0"),
    (["--nb-hns", "30"], "--nb-hns at most --nb-bkg"),
    (["--mias", "missing"], "missing"),          # the folder is named
    (["--out", "used"], "used: not empty and not a cross_validate folder"),
])
def test_unusable_flags_are_one_line_and_write_nothing(argv, problem, tmp_path, caplog):
    (tmp_path / "mias").mkdir()
    (tmp_path / "mias" / "Info.txt").write_text("mdb001 G CIRC B 535 425 197\n")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    mias, out = str(tmp_path / "mias"), tmp_path / "cv"
    if argv[0] == "--mias":
        mias, argv = str(tmp_path / argv[1]), []
    elif argv[0] == "--out":
        out, argv = tmp_path / argv[1], []
    before = sorted(tmp_path.rglob("*"))
    assert cv.main([mias, "--out", str(out), *argv]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and problem in errors[0] and "\n" not in errors[0]
    assert sorted(tmp_path.rglob("*")) == before
    assert (tmp_path / "used" / "notes.txt").read_text() == "mine"


def test_refusals_come_before_tensorflow_loads(tmp_path):
    """A bad flag or a used output folder is refused before TensorFlow is imported (the
    refusal takes under a second instead of TensorFlow's start-up; docs/mias.md)."""
    import subprocess
    import sys
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("")
    code = ("import sys; from mias_train import cross_validate as cv; "
            "rc = cv.main(sys.argv[1:]); print(rc, 'tensorflow' in sys.modules)")
    for argv in (["--folds", "1"], ["--out", str(tmp_path / "used")],
                 ["--report-only", "--out", str(tmp_path / "none")]):
        r = subprocess.run([sys.executable, "-c", code, str(tmp_path), *argv],
                           capture_output=True, text=True, cwd=REPO,
                           timeout=120)
        assert r.stdout.split()[-2:] == ["2", "False"], (argv, r.stdout, r.stderr)


def test_quick_replaces_only_settings_left_at_their_defaults():
    args = cv.apply_quick(cv.build_parser().parse_args(["m", "--quick", "--patch-size", "48",
                                                        "--folds", "3"]))
    assert (args.patch_size, args.folds) == (48, 3)               # given: kept
    assert (args.img_size, args.n_boot, args.null_reps, args.eager) == ([128, 128], 100, 5, True)
    full = cv.apply_quick(cv.build_parser().parse_args(["m"]))
    assert (full.img_size, full.null_reps, full.eager) == ([512, 512], 200, False)
    assert set(cv.QUICK) <= set(vars(full))                         # every entry is a setting


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


def _woman(image_stem: str) -> str:
    """mini-MIAS pairs its images by woman: mdb001 and mdb002 are woman W001."""
    return f"W{(int(image_stem[3:6]) + 1) // 2:03d}"


def women_on_disk(fold_dir) -> dict[str, set[str]]:
    """The women whose images (by file name) or patches (by their file name's woman id) a
    fold's class folders hold, per split."""
    return {split: {_woman(p.stem) for p in (fold_dir / "images" / split).rglob("*.png")}
            | {p.name.split("_")[0] for p in (fold_dir / "patches" / split).rglob("*.png")}
            for split in ("train", "val", "test")}


def images_women(out) -> set[str]:
    return {_woman(p.stem) for p in (out / "data" / "full_images").glob("*.png")}


def test_a_fold_s_folders_hold_each_woman_in_her_split_only(tmp_path):
    """lay_out_fold puts every image and patch of a woman in her split of the fold (both
    breasts together) and a test woman's nowhere else."""
    ids = [f"mdb{i:03d}" for i in range(1, 25)]
    info = pd.DataFrame(dict(image_id=ids, severity=["M" if i % 7 == 0 else "" for i in range(24)],
                             cls=["NORM" if i % 3 else "CIRC" for i in range(24)]))
    c = cv_split.cohort(info, _woman, folds=3, max_women=None, seed=5)
    img_path, rows = {}, []
    for i in ids:
        img_path[i] = tmp_path / "src" / f"{i}.png"
        img_path[i].parent.mkdir(exist_ok=True)
        img_path[i].write_bytes(b"")
        for cls in ("background", "benign"):
            name = f"{_woman(i)}_{i}_MLO_{cls}.png"
            (tmp_path / "src" / name).write_bytes(b"")
            rows.append(dict(path=str(tmp_path / "src" / name), patient_id=_woman(i), name=name,
                             **{"class": cls}))
    pidx = pd.DataFrame(rows)
    for k in range(3):
        test_w, val_w, train_w, split_of = c.fold_split(k, 0.25, seed=5)
        fd = tmp_path / f"fold{k}"
        cv_split.lay_out_fold(fd, split_of, img_path, c.image_class, c.woman_of, pidx)
        seen = women_on_disk(fd)
        assert seen == {"test": set(test_w), "val": set(val_w), "train": set(train_w) - val_w}
        assert sum(1 for _ in (fd / "images").rglob("*.png")) == 24
        assert sum(1 for _ in (fd / "patches").rglob("*.png")) == 48
        for i in ids:     # in its class folder
            assert (fd / "images" / split_of[_woman(i)] / c.image_class[i] / f"{i}.png").exists()


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
    # what each fold's trainers read (its folders on disk), by the women of Info.txt's
    # pairing rule (mdb001 + mdb002: woman 1): a fold's test women, and only they, are in
    # its test folders, and nowhere in its training or validation folders
    assert set(folds[0]["test_women"]) | set(folds[1]["test_women"]) == set(images_women(out))
    for f in folds:
        seen = women_on_disk(out / f"fold{f['fold']}")
        assert seen["test"] == set(f["test_women"]) and seen["val"] == set(f["val_women"])
        assert not seen["test"] & (seen["train"] | seen["val"]) and not seen["val"] & seen["train"]
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
        # one round of hard-negative mining: windows of the fold's training and validation
        # women only, in their background folders; round 1 mined with round 0's model, and
        # its own model is the fold's patch model afterwards (the image stage's trunk)
        r0, r1 = f["patch_rounds"]
        assert (r0["round"], r0["mined_train"], r1["round"]) == (0, 0, 1)
        mined = {s: sorted((fd / "patches" / s).rglob("*_mined1_*.png")) for s in ("train", "val", "test")}
        assert 0 < len(mined["train"]) == r1["mined_train"] and 0 < len(mined["val"]) == r1["mined_val"]
        assert mined["test"] == [] and not list((fd / "patches").rglob("*_mined_*"))
        assert {p.name.split("_")[0] for p in mined["train"]} <= set(f["train_women"]) - set(f["val_women"])
        assert {p.name.split("_")[0] for p in mined["val"]} <= set(f["val_women"])
        assert {p.parent.name for s in mined.values() for p in s} == {"background"}
        assert r1["n_train_patches"] == r0["n_train_patches"] + r1["mined_train"]
        stamp = json.loads((fd / "mined" / "r1" / "train" / ".dm_run.json").read_text())
        assert stamp["config"]["mine_model"] == str(fd / "patch_model_r0.keras")
        final = (fd / "patch_model.keras").read_bytes()
        assert final == (fd / "patch_model_r1.keras").read_bytes() != (fd / "patch_model_r0.keras").read_bytes()
        assert f["image_mean"] == pytest.approx(r1["patch_mean"], abs=1e-3) != r0["patch_mean"]
        assert f["patch_best_val_accuracy"] == r1["best_val_accuracy"]
        unmined = [q for q in (fd / "patches" / "val").rglob("*.png") if "_mined" not in q.name]
        assert r0["n_val_unmined"] == r1["n_val_unmined"] == len(unmined)   # one set, all rounds
        assert all(0 <= r["val_auroc_unmined"] <= 1 for r in (r0, r1))

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
    # the figures the summary names are there, readable and each its own
    import cv2
    figures = {key: cv2.imread(summary["files"][key]) for key in (
        "roc_abnormal", "roc_malignant", "roc_patches", "learning_curves")}
    figures["overlay"] = cv2.imread(summary["files"]["overlay"]["path"])
    for key, fig in figures.items():
        assert fig is not None and min(fig.shape[:2]) >= 300, key
    for a, b in itertools.combinations(figures, 2):
        assert figures[a].shape != figures[b].shape or (figures[a] != figures[b]).any(), (a, b)
    assert figures["overlay"].shape[1] >= 500      # a figure, not a 128-px thumbnail
    # every output of a full run, the lesion overlay and the localisation included
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    for name in ("oof_images_heatmap.csv", "women_all.txt", "figures/overlay.png",
                 "figures/roc_abnormal_pr.png", "figures/roc_malignant_pr.png",
                 "figures/roc_patches_pr.png", "localisation/localisation.json",
                 "localisation/localisation.png", "fold0/patch_model.keras",
                 "fold0/image_model.keras", "fold1/patch_model.keras", "fold1/image_model.keras",
                 "fold1/patch_model.history.csv", "fold1/image_model.history.csv"):
        assert name in written, name
    curves = figures["learning_curves"].astype(int)
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
    # and before --quick's settings without a flag were recorded
    recorded = json.loads((out / "summary.json").read_text())
    recorded["config"]["img_size"] = 128
    assert (recorded["config"]["null_reps"], recorded["config"]["eager"]) == (5, True)
    del recorded["config"]["null_reps"], recorded["config"]["eager"]
    (out / "summary.json").write_text(json.dumps(recorded))
    capsys.readouterr()
    assert cv.main([str(mias), "--out", str(out), "--report-only"]) == 0
    redone = json.loads((out / "summary.json").read_text())
    assert redone["files"]["overlay"] == summary["files"]["overlay"]
    assert (cv2.imread(redone["files"]["overlay"]["path"]) == figures["overlay"]).all()
    assert redone["null_learner"] == summary["null_learner"]      # seeded, 5 refits again
    assert {r["n_rep"] for r in redone["null_learner"].values()} == {5}
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


def test_lesion_circles_scale_by_height_and_width_apart():
    """Info.txt's circle (x 512, y 256 from the bottom, radius 100 at 1024 x 1024) on a
    128 x 256 image: centre (128, 96), semi-axes 25 across and 12.5 down (prepare_mias
    draws the mask the same way)."""
    from mias_train import prepare_mias
    rows = pd.DataFrame(dict(x=[512.0], y=[256.0], radius=[100.0]))
    e = cv_report.lesion_ellipses(rows, (128, 256))
    assert e == [(128.0, 96.0, 25.0, 12.5)]
    assert cv_report.in_lesion(96 + 12, 128, e) and not cv_report.in_lesion(96 + 14, 128, e)
    assert cv_report.in_lesion(96, 128 + 24, e) and not cv_report.in_lesion(96, 128 + 26, e)
    mask = prepare_mias.circle_mask((128, 256), 512.0, 256.0, 100.0) > 0
    rr, cc = np.nonzero(mask)
    inside = np.array([cv_report.in_lesion(r, c, e) for r, c in np.ndindex(mask.shape)])
    assert (inside.reshape(mask.shape) != mask).sum() < 0.05 * mask.sum()   # edge pixels
    assert abs(rr.max() - rr.min() - 25) <= 1 and abs(cc.max() - cc.min() - 50) <= 1


def test_the_overlay_is_a_titled_figure_with_a_colour_bar(tmp_path):
    """The lesion map over the image, large enough to read, with a title, a colour bar of
    the score 0-1, and each lesion's outline at its own scale across and down."""
    import cv2
    img = np.tile(np.linspace(0, 255, 256, dtype=np.float32), (128, 1))
    heat = np.full((128, 256), np.nan, np.float32)
    heat[20:110, 30:230] = np.linspace(0, 1, 200, dtype=np.float32)
    e = [(100.0, 60.0, 30.0, 15.0)]
    fig = cv_report.overlay_figure(img, heat, e, (60, 100), "mdb001, fold 0")
    try:
        main, bar = fig.axes
        assert main.get_title() == "mdb001, fold 0" and bar.get_ylim() == (0.0, 1.0)
        assert "1 - p(background)" in bar.get_ylabel()
        (ell,) = main.patches
        assert (ell.center, ell.width, ell.height) == ((100.0, 60.0), 60.0, 30.0)
        fig.savefig(tmp_path / "o.png", dpi=100)
    finally:
        import matplotlib.pyplot as plt
        plt.close(fig)
    png = cv2.imread(str(tmp_path / "o.png"))
    assert png.shape[1] >= 500 and png.shape[0] >= 250


def test_an_unreadable_image_is_one_line_naming_it(tmp_path):
    from dm_errors import InputError
    bad = tmp_path / "mdb001.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(InputError, match="mdb001.png") as e:
        cv_baselines.grey_mean(str(bad), breast_only=True)
    assert "\n" not in str(e.value)


def _val_auc(T, k, col, task):
    from dm_metrics import auroc
    V = T[(T["part"] == "val") & (T["fold"] == k)]
    y = (V["label"] > 0) if task == "abnormal_vs_normal" else (V["label"] == 2)
    ok = V[col].notna()
    y, s = y[ok].to_numpy(), V.loc[ok, col].to_numpy()
    return auroc(y, s) if 0 < y.sum() < len(y) else -1.0


def test_quick_bilateral_run_on_another_run_s_patch_models(shared_data, tmp_path, capsys):
    """--patch-models-from reuses a finished run's patch models (byte for byte), the
    bilateral whole-image model trains on pairs, --compare-with gives paired differences,
    and each fold's multiple-instance readout is the one best on its inner validation."""
    mias = shared_data / "mias"
    if not (mias / "Info.txt").is_file():
        pytest.skip("mini-MIAS not in the shared data")
    base = tmp_path / "base"
    quick = ["--quick"]
    assert cv.main([str(mias), "--out", str(base), *quick]) == 0
    out = tmp_path / "bi"
    assert cv.main([str(mias), "--out", str(out), *quick, "--bilateral",
                    "--patch-models-from", str(base), "--compare-with", str(base)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    import dm_modelfile
    for k in (0, 1):
        assert (out / f"fold{k}" / "patch_model.keras").read_bytes() == \
            (base / f"fold{k}" / "patch_model.keras").read_bytes()
        meta = dm_modelfile.read_model_meta(out / f"fold{k}" / "image_model.keras")
        assert meta.extra["bilateral"] is True
    pairs = (out / "data" / "pairs.csv").read_text().splitlines()
    assert len(pairs) == 1 + 12 and pairs[0] == "path,other_path"
    comp = summary["compared_with"]
    assert comp["n_images"] == 24 and comp["run"] == str(base)
    b = json.loads((base / "summary.json").read_text())["pooled"]
    me = summary["pooled"]["image_abnormal_vs_normal"]["network"]["auroc"]
    assert comp["abnormal_vs_normal"]["difference"] == pytest.approx(
        me - b["image_abnormal_vs_normal"]["network"]["auroc"], abs=2e-4)
    T = pd.read_csv(out / "oof_readouts.csv")
    assert set(T["part"]) == {"test", "val"} and (T[T["part"] == "test"]["image_id"]).is_unique
    for task, r in summary["mil_readouts"].items():
        for k, col in r["chosen_per_fold"].items():
            aucs = {c: _val_auc(T, int(k), c, task) for c in r["every_candidate_pooled"]}
            assert aucs[col] == max(aucs.values()), (task, k)
        assert 0 <= r["image_level"]["auroc"] <= 1 and "difference" in r["minus_network"]
        assert r["woman_level"]["n_groups"] == 12
    # the bilateral readout is the readout minus the other breast's, in the same fold
    t = T[(T["fold"] == 0) & (T["part"] == "test")].set_index("image_id")
    a, o = sorted(t.index)[:2]
    assert t.at[a, "bi_les_top2"] == pytest.approx(t.at[a, "les_top2"] - t.at[o, "les_top2"])
    assert summary["network_by_woman"]["abnormal_vs_normal"]["n_groups"] == 12
    # a run whose patch settings differ cannot lend its patch models
    rc = cv.main([str(mias), "--out", str(tmp_path / "x"), *quick, "--patch-size", "48",
                  "--patch-models-from", str(base)])
    assert rc == 2 and "patch_size differ" in capsys.readouterr().err
    # the ablation table of docs/mias.md reads these summaries
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "mias_ablation", pathlib.Path(__file__).parents[1] / "benchmarks" / "mias_ablation.py")
    ab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ab)
    text = ab.main([f"today={base}", "--readouts", f"readouts={base}", "--after", f"bi={out}"])
    rows = [r for r in text.splitlines() if r.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows[1:]] == ["| today", "| readouts", "| bi"]
    bi_row = rows[-1]
    a = summary["pooled"]["image_abnormal_vs_normal"]["network"]
    assert f"{a['auroc']:.3f} ({a['ci_low']:.3f}-{a['ci_high']:.3f})" in bi_row
    assert f"{comp['abnormal_vs_normal']['difference']:+.3f}" in bi_row
    assert "breast grey level" in text
    g = summary["mil_readouts"]["abnormal_vs_normal"]["bilateral_minus_one_view"]
    assert all(c.startswith("bi_") for c in g["chosen_bilateral"].values())
    assert not any(c.startswith("bi_") for c in g["chosen_one_view"].values())
    assert "readouts: bilateral minus one-view readout" in text and f"{g['difference']:+.3f}" in text
    mm = summary["mil_readouts"]["malignant_vs_rest"]["minus_map_max"]
    assert "lesion map's maximum, paired: abnormal" in text and f"{mm['difference']:+.3f}" in text
