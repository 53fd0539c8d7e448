"""Patch sampler: overlap rules hold for every patch; seeded; worker count doesn't matter."""
from __future__ import annotations

import pathlib
import sys

import cv2
import numpy as np
import pandas as pd
import pytest
from numpy.random import RandomState

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import dm_synthetic as syn  # noqa: E402
from ddsm_train import sample_patches_combined as spc  # noqa: E402
from dm_roi import patch_roi_overlap  # noqa: E402
from dm_recipe import resize_mask  # noqa: E402
from dm_sweep import add_img_margins, crop_img, segment_breast  # noqa: E402
import dm_pixels  # noqa: E402
from dm_recipe_utils import RUN_STAMP  # noqa: E402

PS = 32


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    syn.generate_dataset(out, n_patients=14, img_size=(160, 128), seed=3, lesion_fraction=1.0,
                         malignant_fraction=0.5, calc_fraction=0.4)
    return out


def _argv(synth, out, *extra):
    return [str(synth / "roi_mask_path.csv"), str(synth / "roi_masks"), str(synth / "patients_trainval.txt"),
            str(synth / "full_images"), str(out / "train"), str(out / "val"), "--target-size", "160", "128",
            "--patch-size", str(PS), "--nb-abn", "6", "--nb-bkg", "6", "--nb-hns", "3", "--val-size", "0.25",
            "--no-verbose", *extra]


def _padded(synth, img_id, roi, ps=PS):
    """Rebuild the sampler's pixel grid: segmented, cropped, padded image and masks."""
    img = cv2.imread(str(synth / "full_images" / f"{img_id}.png"), cv2.IMREAD_UNCHANGED)
    seg, bbox = segment_breast(img)
    masks = {}
    for r in roi[roi["full_img_file"] == f"{img_id}.png"].itertuples():
        m = cv2.imread(str(synth / "roi_masks" / r.roi_mask_file), cv2.IMREAD_UNCHANGED)
        m = crop_img(resize_mask(m, img.shape), bbox)
        masks[f"{r.type}{r.abn_num}"] = add_img_margins((m > 0).astype(np.uint8), ps // 2)
    return add_img_margins(seg, ps // 2), masks, bbox


def test_every_patch_meets_its_overlap_rule(synth, tmp_path):
    s = spc.main(_argv(synth, tmp_path))
    assert s["skipped"] == []
    roi = pd.read_csv(synth / "roi_mask_path.csv", dtype=str)
    n_checked = {"roi": 0, "bkg": 0, "hns": 0}
    for split in ("train", "val"):
        idx = pd.read_csv(tmp_path / split / "patch_index.csv", dtype={"abn": str}, keep_default_na=False)
        assert len(idx) == sum(v for k, v in s[split].items() if k not in ("images", "patients"))
        for img_id, g in idx.groupby("img_id"):
            img, masks, bbox = _padded(synth, img_id, roi)
            assert (g["crop_x"] == bbox[0]).all() and (g["crop_y"] == bbox[1]).all()
            for r in g.itertuples():
                patch = cv2.imread(str(tmp_path / split / r.file), cv2.IMREAD_UNCHANGED)
                assert patch.shape == (PS, PS) and patch.dtype == np.uint16
                y0, x0 = r.y - PS // 2, r.x - PS // 2
                np.testing.assert_array_equal(patch, img[y0:y0 + PS, x0:x0 + PS])
                if r.kind == "roi":
                    fr, fp = patch_roi_overlap((r.x, r.y), PS, masks[r.abn])
                    assert fr > r.cutoff or fp > r.cutoff
                    assert r.cutoff <= 0.75 and r.file.split("/")[0] in ("calc_mal", "calc_ben", "mass_mal",
                                                                          "mass_ben")
                else:
                    for m in masks.values():
                        fr, fp = patch_roi_overlap((r.x, r.y), PS, m)
                        assert fr <= 0.35 and fp <= 0.35
                    assert r.file.startswith("background/")
                n_checked[r.kind] += 1
    trainval = set((synth / "patients_trainval.txt").read_text().split())
    assert n_checked["roi"] == 6 * roi["patient_id"].isin(trainval).sum() and n_checked["bkg"] > 0 and n_checked["hns"] > 0
    # per image: nb_bkg background patches in total, hard negatives first
    train_idx = pd.read_csv(tmp_path / "train" / "patch_index.csv")
    bk = train_idx[train_idx["kind"] != "roi"].groupby("img_id").size()
    assert (bk == 6).all()
    # patient-level split, written like the original
    tr = set((tmp_path / "train" / "pat_lst.txt").read_text().split())
    va = set((tmp_path / "val" / "pat_lst.txt").read_text().split())
    assert tr and va and not tr & va
    assert tr | va == trainval & set(roi["patient_id"])


def test_same_seed_same_patches_any_worker_count(synth, tmp_path):
    a = spc.main(_argv(synth, tmp_path / "a", "--seed", "9", "--nb-workers", "1"))
    b = spc.main(_argv(synth, tmp_path / "b", "--seed", "9", "--nb-workers", "2"))
    spc.main(_argv(synth, tmp_path / "c", "--seed", "10"))
    assert a == b
    for split in ("train", "val"):
        ia = pd.read_csv(tmp_path / "a" / split / "patch_index.csv")
        ib = pd.read_csv(tmp_path / "b" / split / "patch_index.csv")
        pd.testing.assert_frame_equal(ia, ib)
        for f in ia["file"]:
            assert (tmp_path / "a" / split / f).read_bytes() == (tmp_path / "b" / split / f).read_bytes()
    ic = pd.read_csv(tmp_path / "c" / "train" / "patch_index.csv")
    ia = pd.read_csv(tmp_path / "a" / "train" / "patch_index.csv")
    assert not (len(ia) == len(ic) and (ia[["x", "y"]].values == ic[["x", "y"]].values).all())


def test_three_class_layout_val_list_and_cutoff_fallback(synth, tmp_path):
    val = tmp_path / "val.txt"
    val.write_text("S_00002\nS_00005\n")
    s = spc.main(_argv(synth, tmp_path, "--class-layout", "3class", "--val-list", str(val),
                       "--pos-cutoff", "0.999", "--max-tries", "20", "--nb-hns", "0"))
    assert set(k for k in s["train"] if k not in ("images", "patients")) == {"background", "malignant", "benign"}
    assert (tmp_path / "val" / "pat_lst.txt").read_text().split() == ["S_00002", "S_00005"]
    idx = pd.read_csv(tmp_path / "train" / "patch_index.csv")
    roi = idx[idx["kind"] == "roi"]
    assert (roi["cutoff"] < 0.999).any()  # the cutoff was lowered by 0.05 steps when needed
    steps = (0.999 - roi["cutoff"]) / 0.05
    assert np.allclose(steps, np.round(steps), atol=1e-3)
    assert (idx["kind"] != "hns").all()


def test_background_from_normal_images(tmp_path_factory, tmp_path):
    out = tmp_path_factory.mktemp("syn_normal")
    syn.generate_dataset(out, n_patients=6, img_size=(128, 96), seed=4, lesion_fraction=0.5)
    images = pd.read_csv(out / "images.csv", dtype=str)
    roi = pd.read_csv(out / "roi_mask_path.csv", dtype=str)
    normal = set(images.full_img_file) - set(roi.full_img_file)
    assert normal
    argv = _argv(out, tmp_path, "--val-size", "0", "--images-csv", str(out / "images.csv"))
    argv[argv.index("--target-size") + 1:argv.index("--target-size") + 3] = ["128", "96"]
    s = spc.main(argv)
    idx = pd.read_csv(tmp_path / "train" / "patch_index.csv")
    trainval = set((out / "patients_trainval.txt").read_text().split())
    expect = images[images.patient_id.isin(trainval)]
    assert s["train"]["images"] == len(expect)
    from_normal = idx[idx.img_id.isin({f.removesuffix(".png") for f in normal})]
    assert len(from_normal) and (from_normal["kind"] != "roi").all()


def test_errors_are_reported_not_fatal(synth, tmp_path):
    # a table pointing at one missing image: the others are sampled, the broken one reported
    roi = pd.read_csv(synth / "roi_mask_path.csv", dtype=str)
    roi.loc[0, "full_img_file"] = "missing.png"
    bad = tmp_path / "roi.csv"
    roi.to_csv(bad, index=False)
    argv = _argv(synth, tmp_path)
    argv[0] = str(bad)
    s = spc.main(argv + ["--val-size", "0"])
    assert len(s["skipped"]) == 1 and "missing.png" in s["skipped"][0]
    assert s["train"]["images"] > 1
    with pytest.raises(ValueError, match="missing column"):
        pd.DataFrame({"patient_id": ["x"]}).to_csv(tmp_path / "t.csv", index=False)
        spc.read_roi_table(tmp_path / "t.csv")
    with pytest.raises(FileNotFoundError):
        spc.read_roi_table(tmp_path / "nope.csv")


def test_defaults_match_the_original():
    a = spc.build_parser().parse_args(["r", "m", "p", "f", "t", "v"])
    assert (a.target_height, a.target_width, a.segment_breast, a.patch_size, a.nb_bkg, a.nb_abn, a.nb_hns,
            a.pos_cutoff, a.neg_cutoff, a.val_size) == (None, None, True, 256, 30, 30, 15, .75, .35, .1)
    assert spc.resolve_size(a) == (None, 4096)      # no recipe layout.json: the original's 4096


def test_native_size_recipe_images_are_not_resized(tmp_path):
    import json
    (tmp_path / "full_images").mkdir()
    (tmp_path / "layout.json").write_text(json.dumps({"img_size": None, "target_height": None}))
    a = spc.build_parser().parse_args(["r", "m", "p", str(tmp_path / "full_images"), "t"])
    assert spc.resolve_size(a) == (None, None)
    assert (a.bkg_dir, a.calc_pos_dir, a.calc_neg_dir, a.mass_pos_dir, a.mass_neg_dir) == (
        "background", "calc_mal", "calc_ben", "mass_mal", "mass_ben")
    assert spc.const_filename("P_1", "LEFT", "CC", "d", "calc", 2) == "d/Calc-Training_P_1_LEFT_CC_2.png"


# ------------------------------------------------------------------ issue 12.3, 12.12, 12.16
def test_recipe_images_are_sampled_at_their_own_size(synth, tmp_path, caplog):
    import logging
    argv = _argv(synth, tmp_path, "--val-size", "0")
    i = argv.index("--target-size")
    del argv[i:i + 3]                                   # no size flag: layout.json says 160x128
    with caplog.at_level(logging.INFO):
        s = spc.main(argv)
    assert any("prepared at 160x128" in r.getMessage() for r in caplog.records)
    assert not any("UPSCALED" in r.getMessage() for r in caplog.records)
    assert "upscaled" not in s
    idx = pd.read_csv(tmp_path / "train" / "patch_index.csv")
    # patch centres on the 160-px grid (padded by half a patch), not on a 4096-px one
    assert idx["y"].max() < 160 + PS


def test_upscaling_beyond_2x_is_warned(synth, tmp_path, caplog):
    import logging
    argv = _argv(synth, tmp_path, "--val-size", "0", "--nb-abn", "1", "--nb-bkg", "1",
                 "--nb-hns", "0")
    i = argv.index("--target-size")
    argv[i:i + 3] = ["--img-height", "400"]             # 160 px -> 400 px: 2.5x
    with caplog.at_level(logging.INFO):
        s = spc.main(argv)
    warn = [r.getMessage() for r in caplog.records if "UPSCALED" in r.getMessage()]
    assert len(warn) == 1 and "2.5x" in warn[0] and s["upscaled"] == s["train"]["images"]


def test_test_split_needs_no_validation_folder(synth, tmp_path):
    pats = (synth / "patients_trainval.txt").read_text().split()[:3]
    (tmp_path / "patients_test.txt").write_text("\n".join(pats + ["NOBODY"]) + "\n")
    argv = _argv(synth, tmp_path)
    argv[2] = str(tmp_path / "patients_test.txt")
    del argv[5]                                         # no VAL_OUT_DIR
    s = spc.main(argv)
    assert "test" in s and "train" not in s and "val" not in s
    assert not (tmp_path / "val").exists()
    idx = pd.read_csv(tmp_path / "train" / "patch_index.csv", dtype=str)
    assert s["test"]["patients"] == idx["patient_id"].nunique() <= 3


def test_images_without_a_side_are_told_apart_by_file():
    roi = pd.DataFrame({"patient_id": ["W001", "W001"], "side": ["", ""], "view": ["MLO", "MLO"],
                        "abn_num": [1, 1], "pathology": ["BENIGN", "MALIGNANT"],
                        "type": ["mass", "mass"], "full_img_file": ["mdb001.png", "mdb002.png"],
                        "roi_mask_file": ["a.png", "b.png"]})
    tasks = spc.build_tasks(roi, ["W001"], "m", "f", "out")
    assert [t.img_id for t in tasks] == ["W001_mdb001_MLO", "W001_mdb002_MLO"]
    assert [t.full_path for t in tasks] == ["f/mdb001.png", "f/mdb002.png"]


def test_aliases_and_help():
    import dm_cli
    p = spc.build_parser()
    a = p.parse_args(["r", "m", "p", "f", "t", "--img-size", "10", "8", "--no-segment"])
    assert a.target_size == [10, 8] and a.segment_breast is False
    assert p.parse_args(["r", "m", "p", "f", "t", "--img-height", "99"]).target_height == 99
    assert dm_cli.actions_without_help(p) == []


def test_a_broken_image_is_skipped_but_a_bug_is_raised(monkeypatch):
    """One unreadable image is listed and the run goes on; an internal error is not hidden
    as a skipped image."""
    task = spc.ImageTask("P1", "P1_LEFT_CC", "/nowhere/P1_LEFT_CC.png", (), "/tmp/out")

    def unreadable(task, opts):
        raise dm_pixels.ImageReadError(f"{task.full_path}: not an image")
    monkeypatch.setattr(spc, "process_image", unreadable)
    res = spc._worker((task, {}))
    assert res["records"] == [] and res["errors"] == [
        "/nowhere/P1_LEFT_CC.png: ImageReadError: /nowhere/P1_LEFT_CC.png: not an image"]

    def bug(task, opts):
        raise ValueError("an internal bug")
    monkeypatch.setattr(spc, "process_image", bug)
    with pytest.raises(ValueError, match="an internal bug"):
        spc._worker((task, {}))


# ------------------------------------------------------------------ the original's rules (docs/fidelity.md)
def _original_positions(shape, first_mask, nb_abn, nb_bkg, pos_cutoff=.75, neg_cutoff=.35):
    """The original's `sample_patches` draws for one image, replayed: `RandomState(12345)`
    restarted per call, ROI centres in the largest contour's box of the FIRST abnormality's
    mask (`nb_abn == 1`: its centroid, untested), then background centres checked against
    that mask only. Returns (roi centres, background centres)."""
    half = PS // 2
    contours, _ = cv2.findContours(first_mask.astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    c = contours[int(np.argmax([cv2.contourArea(c) for c in contours]))]
    rx, ry, rw, rh = cv2.boundingRect(c)
    m = cv2.moments(c)
    centroid = (int(m["m10"] / m["m00"]), int(m["m01"] / m["m00"]))
    hit = lambda xy, cut: any(v > cut for v in patch_roi_overlap(xy, PS, first_mask))  # noqa: E731
    rng = RandomState(12345)
    roi, bkg, tries = [], [], 0
    while len(roi) < nb_abn:
        if nb_abn > 1:
            xy = (rng.randint(rx, rx + rw), rng.randint(ry, ry + rh))
            tries += 1
            if tries >= 1000:
                pos_cutoff, tries = pos_cutoff - .05, 0
        else:
            xy = centroid
        if nb_abn == 1 or hit(xy, pos_cutoff):
            roi.append(xy)
            tries = 0
    while len(bkg) < nb_bkg:
        xy = (rng.randint(half, shape[1] - half), rng.randint(half, shape[0] - half))
        if not hit(xy, neg_cutoff):
            bkg.append(xy)
    return roi, bkg


def test_negatives_avoid_every_lesion_where_the_original_checked_the_first_only(synth, tmp_path):
    """On a test image with two lesions, the original's rule lets background patches
    overlap the second lesion (docs/fidelity.md gives the figures); here no negative
    overlaps any lesion beyond --neg-cutoff."""
    roi = pd.read_csv(synth / "roi_mask_path.csv", dtype=str)
    img_id = "S_00006_LEFT_CC"
    img, masks, _ = _padded(synth, img_id, roi)
    first, second = (masks[k] for k in sorted(masks, key=lambda k: int(k[-1])))
    _, bkg = _original_positions(img.shape, first, nb_abn=30, nb_bkg=40)
    over = [patch_roi_overlap(xy, PS, second) for xy in bkg]
    touching = sum(fr > 0 for fr, _ in over)
    beyond = sum(fr > .35 or fp > .35 for fr, fp in over)
    assert (touching, beyond) == (12, 3)          # the figures of docs/fidelity.md
    spc.main(_argv(synth, tmp_path, "--val-size", "0", "--nb-bkg", "40", "--nb-hns", "0"))
    idx = pd.read_csv(tmp_path / "train" / "patch_index.csv")
    here = idx[(idx.img_id == img_id) & (idx.kind == "bkg")]
    assert len(here) == 40
    for xy in zip(here.x, here.y):
        for m in (first, second):
            assert not any(v > .35 for v in patch_roi_overlap(xy, PS, m))


def test_one_patch_per_lesion_is_drawn_and_tested_like_the_others(synth, tmp_path):
    """--nb-abn 1: the original took the centroid of the largest contour, untested;
    here the one patch is drawn in the box and meets the overlap rule like any other."""
    spc.main(_argv(synth, tmp_path, "--val-size", "0", "--nb-abn", "1", "--nb-bkg", "1",
                   "--nb-hns", "0"))
    roi = pd.read_csv(synth / "roi_mask_path.csv", dtype=str)
    idx = pd.read_csv(tmp_path / "train" / "patch_index.csv", dtype={"abn": str}, keep_default_na=False)
    lesions = idx[idx.kind == "roi"]
    assert len(lesions) == roi.patient_id.isin(set(idx.patient_id)).sum()
    centred = 0
    for r in lesions.itertuples():
        _, masks, _ = _padded(synth, r.img_id, roi)
        fr, fp = patch_roi_overlap((r.x, r.y), PS, masks[r.abn])
        assert fr > .75 or fp > .75
        centred += (r.x, r.y) == _original_positions((10 ** 4, 10 ** 4), masks[r.abn], 1, 0)[0][0]
    assert centred < len(lesions)                 # not the original's centroid


def test_lesion_masks_keep_their_area_when_resized(tmp_path):
    """Masks are resized linearly and cut at half (`dm_recipe.resize_mask`); the
    original's cubic resize counted every value above 0, growing each lesion by its
    boundary ring (docs/fidelity.md)."""
    m = np.zeros((1024, 1024), np.uint8)
    cv2.circle(m, (500, 400), 41, 255, -1)        # mini-MIAS's median lesion radius
    cv2.imwrite(str(tmp_path / "m.png"), m)
    for size in (256, 512, 1152):
        area = np.pi * (41 * size / 1024) ** 2
        here = spc.read_resized_mask(str(tmp_path / "m.png"), (size, size))
        assert set(np.unique(here)) == {0, 255}
        assert abs(np.count_nonzero(here) / area - 1) < 0.02
        cubic = cv2.resize(m, (size, size), interpolation=cv2.INTER_CUBIC)
        assert np.count_nonzero(cubic) > np.count_nonzero(here)


# ------------------------------------------------------------------ mined hard negatives (issue 32)
def _mine_argv(synth, out, *extra):
    return _argv(synth, out, "--patch-size", "16", *extra)


@pytest.fixture(scope="module")
def tiny_patch_file(tmp_path_factory):
    """A 16-px patch model whose lesion score rises with brightness: the lesions (bright)
    score highest, so mining must pass them over."""
    from test_dm_hardneg import brightness_model, save
    return save(brightness_model(1.0), tmp_path_factory.mktemp("m") / "p.keras")


def test_mined_hard_negatives_are_added_and_nothing_else_changes(synth, tmp_path, tiny_patch_file):
    """--mine-model/--nb-mined: per image K more background patches (kind mined, with their
    score): negatives, inside the breast, half a patch apart, the windows the model scored;
    every other patch, and the index without them, exactly as without mining."""
    import json
    import dm_hardneg
    from dm_sweep import prepare_patch
    plain = spc.main(_mine_argv(synth, tmp_path / "a"))
    mined = spc.main(_mine_argv(synth, tmp_path / "b", "--mine-model", tiny_patch_file,
                                "--nb-mined", "3", "--nb-workers", "2"))
    scorer = dm_hardneg.load_patch_scorer(tiny_patch_file, 16)
    roi = pd.read_csv(synth / "roi_mask_path.csv", dtype=str)
    for split in ("train", "val"):
        a = pd.read_csv(tmp_path / "a" / split / "patch_index.csv", dtype={"abn": str}, keep_default_na=False)
        b = pd.read_csv(tmp_path / "b" / split / "patch_index.csv", dtype={"abn": str}, keep_default_na=False)
        m = b[b["kind"] == "mined"]
        others = b[b["kind"] != "mined"].drop(columns="score").reset_index(drop=True)
        pd.testing.assert_frame_equal(others, a)
        assert (b.loc[b["kind"] != "mined", "score"] == "").all()
        for f in a["file"]:
            assert (tmp_path / "a" / split / f).read_bytes() == (tmp_path / "b" / split / f).read_bytes()
        assert mined[split]["mined"] == len(m) == 3 * a["img_id"].nunique()
        assert mined[split]["background"] == plain[split]["background"] + len(m)
        assert (m["class"] == "background").all() and (m["cutoff"] == 0.35).all()
        for img_id, g in m.groupby("img_id"):
            img, masks, bbox = _padded(synth, img_id, roi, ps=16)
            assert list(g["score"].astype(float)) == sorted(g["score"].astype(float), reverse=True)
            for r in g.itertuples():
                patch = cv2.imread(str(tmp_path / "b" / split / r.file), cv2.IMREAD_UNCHANGED)
                np.testing.assert_array_equal(patch, img[r.y - 8:r.y + 8, r.x - 8:r.x + 8])
                assert (r.crop_x, r.crop_y) == bbox[:2] and patch.min() > 0   # breast only
                for mask in masks.values():
                    assert max(patch_roi_overlap((r.x, r.y), 16, mask)) <= 0.35
                p = scorer.model.predict(prepare_patch(patch, scorer.recipe)[None], verbose=0)[0]
                assert float(r.score) == pytest.approx(1 - p[0], abs=1e-5)
            xy = g[["x", "y"]].values
            for i in range(len(xy)):
                for j in range(i):
                    assert np.abs(xy[i] - xy[j]).max() >= 8
    # the folder records the mining; a folder sampled without it records nothing new
    stamp = lambda d: json.loads((tmp_path / d / "train" / RUN_STAMP).read_text())  # noqa: E731
    assert stamp("b")["config"]["nb_mined"] == 3 and "mine_model" not in stamp("a")["config"]


@pytest.mark.parametrize("extra, problem", [
    (["--nb-mined", "3"], "--nb-mined 3: needs --mine-model"),
    (["--mine-model", "MODEL"], "needs --nb-mined N >= 1"),
    (["--mine-model", "MODEL", "--nb-mined", "2", "--patch-size", "32"],
     "trained on 16x16 patches, the sampler cuts 32x32"),
])
def test_mining_flags_are_refused_before_anything_is_written(synth, tmp_path, tiny_patch_file,
                                                             extra, problem):
    from dm_errors import InputError
    extra = [tiny_patch_file if e == "MODEL" else e for e in extra]
    with pytest.raises(InputError, match=problem):
        spc.main(_mine_argv(synth, tmp_path, *extra))
    assert list(tmp_path.iterdir()) == []
