"""Localisation figures on synthetic images with known masks (no TensorFlow needed)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import dm_localisation as loc
import dm_localisation_metrics as metrics
import dm_synthetic as syn
from ddsm_train.heatmap_score import Item, save_heatmaps
import dm_pixels

H, W = 96, 80


def disc(shape, cy, cx, r):
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def toy_case(lesions=((40, 30, 6),)):
    """A bright ellipse 'breast' on black with disc lesions (row, col, radius)."""
    img = np.zeros((H, W), np.uint16)
    yy, xx = np.ogrid[:H, :W]
    img[((yy - H / 2) / 44) ** 2 + (xx / 70) ** 2 <= 1] = 20000
    masks = [disc((H, W), *les) for les in lesions]
    for m in masks:
        img[m] = 30000
    return metrics.make_case("toy.png", img, [m.astype(np.uint8) * 255 for m in masks])


def bump(cy, cx, sigma=4.0):
    yy, xx = np.mgrid[:H, :W].astype(np.float32)
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))


SET = metrics.Settings(pixel_mm=(1.0, 1.0), tolerance_mm=0.0, n_boot=500, seed=1)


def test_map_peaked_on_lesion_scores_1_and_away_scores_0():
    c = toy_case()
    on, _ = metrics.evaluate([c], [bump(40, 30)], SET)
    off, _ = metrics.evaluate([c], [bump(70, 20)], SET)
    assert on["pointing_game"] == 1.0 and off["pointing_game"] == 0.0
    assert on["mass_fraction"] > off["mass_fraction"]
    # the brightest-pixel baseline finds the bright lesion; chance is small
    assert on["pointing_game_brightest"] == 1.0 and on["pointing_game_chance"] < 0.1


def test_chance_equals_area_ratio():
    c = toy_case(((40, 30, 6), (20, 20, 3)))
    summ, recs = metrics.evaluate([c], [bump(40, 30)], SET)
    ratio = (c.union & c.breast).sum() / c.breast.sum()
    assert summ["pointing_game_chance"] == pytest.approx(ratio, abs=1e-4)
    assert recs[0]["hit_chance"] == pytest.approx(ratio)
    assert summ["mass_fraction_chance"] == pytest.approx(ratio, abs=1e-4)
    # a uniform map puts the area ratio of its mass in the lesions
    assert metrics.mass_fraction(np.ones((H, W), np.float32), c.union, c.breast) == pytest.approx(ratio)


def test_tolerance_dilation():
    c = toy_case(((40, 30, 5),))
    heat = bump(40, 39)                                     # peak 4 px beyond the edge
    for tol, hit in ((0.0, 0.0), (3.0, 0.0), (4.0, 1.0), (6.0, 1.0)):
        s = metrics.Settings(pixel_mm=(1.0, 1.0), tolerance_mm=tol, n_boot=10)
        assert metrics.evaluate([c], [heat], s)[0]["pointing_game"] == hit, tol
    # the same in mm at 0.5 mm pixels: 2 mm is 4 px
    s = metrics.Settings(pixel_mm=(0.5, 0.5), tolerance_mm=2.0, n_boot=10)
    assert metrics.evaluate([c], [heat], s)[0]["pointing_game"] == 1.0
    d = metrics.dilate(c.lesions[0], (3, 3))
    assert d.sum() > c.lesions[0].sum() and (d >= c.lesions[0]).all()
    assert metrics.dilate(c.lesions[0], (0, 0)).sum() == c.lesions[0].sum()


def test_ties_count_as_a_random_pick_and_outside_breast_is_ignored():
    c = toy_case(((40, 30, 4),))
    heat = np.zeros((H, W), np.float32)
    heat[40, 30] = heat[70, 30] = 1.0                       # two equal maxima, one inside
    heat[2, 78] = 5.0                                       # outside the breast: ignored
    assert metrics.pointing_hit(heat, c.union, c.breast) == 0.5
    heat[40, 30] = np.nan                                   # no value there: the other wins
    assert metrics.pointing_hit(heat, c.union, c.breast) == 0.0


def test_bootstrap_interval_contains_point_estimate():
    rng = np.random.default_rng(0)
    cases, maps = [], []
    for i in range(20):
        cy, cx = 30 + int(rng.integers(0, 30)), 20 + int(rng.integers(0, 25))
        cases.append(toy_case(((cy, cx, 5),)))
        maps.append(bump(cy, cx) if i % 4 else bump(80, 10))
    summ, _ = metrics.evaluate(cases, maps, SET)
    lo, hi = summ["pointing_game_ci"]
    assert summ["pointing_game"] == 0.75 and lo <= 0.75 <= hi and lo < hi
    for k in ("mass_fraction", "pointing_game_chance", "pointing_game_brightest"):
        assert summ[f"{k}_ci"][0] <= summ[k] <= summ[f"{k}_ci"][1]
    ci = metrics.bootstrap_means({"a": np.r_[np.ones(5), np.zeros(5)]}, 300, seed=3)
    assert ci == metrics.bootstrap_means({"a": np.r_[np.ones(5), np.zeros(5)]}, 300, seed=3)


def test_topk_and_dice():
    c = toy_case(((30, 25, 5), (65, 25, 5)))
    both = bump(30, 25) + 0.9 * bump(65, 25)
    one = bump(30, 25) + 0.9 * bump(33, 28)
    sep = (10.0, 10.0)
    targets = c.lesions
    assert metrics.topk_found(both, targets, c.breast, sep) == 1.0
    assert metrics.topk_found(one, targets, c.breast, sep) == 0.5
    assert 0 < metrics.topk_chance(targets, c.breast) < 0.2
    summ, _ = metrics.evaluate([c], [both], SET, val_cases=[c], val_maps=[both])
    assert summ["topk_found"] == 1.0 and summ["n_multi_lesion_images"] == 1
    assert summ["dice"] > 0.5 and 0 < summ["dice_threshold"] < 1
    assert summ["dice_chance"] < 0.2
    # without validation maps Dice is not reported
    assert metrics.evaluate([c], [both], SET)[0]["dice"] is None


def test_pixel_size_sources(tmp_path):
    assert metrics.pixel_size_mm(None, (288, 224))[0] == (240 / 288, 240 / 288)
    assert metrics.pixel_size_mm(None, (288, 224), 0.1) == ((0.1, 0.1), "given")
    (tmp_path / "mias_info.csv").write_text("x\n")
    (px, src) = metrics.pixel_size_mm(tmp_path, (512, 256))
    assert px == (0.4, 0.8) and src == "mini-MIAS"
    with pytest.raises(metrics.LocalisationError):
        metrics.pixel_size_mm(None, (10, 10), -1.0)


def test_maps_are_placed_where_the_cells_looked():
    """A sliding-window cell, a Grad-CAM cell and an fprop window land on their own
    pixels of the source image (also when the source is twice the scored size)."""
    src = np.zeros((2 * H, 2 * W), np.uint16)
    hm = np.zeros((5, 4, 2), np.float32)
    hm[..., 0] = 1.0
    hm[2, 1, 0] = 0.0                                       # lesion score 1 at cell (2, 1)
    meta = dict(mode="sliding", img_size=[H, W], img_height=None, stride=8,
                centre0=[[10, 12]], bbox=[[4, 6, 60, 80]], segment=True)
    m = loc.map_on_source(hm, meta, 0, src)
    r, c = np.unravel_index(np.nanargmax(m), m.shape)
    # scored-image centre (6 + 10 + 2*8, 4 + 12 + 1*8) = (32, 24) -> source (64.5, 48.5)
    assert abs(r - 64.5) <= 1 and abs(c - 48.5) <= 1
    cam = np.zeros((3, 4), np.float32)
    cam[1, 2] = 1.0
    g = loc.map_on_source(cam, dict(mode="gradcam", recipe=dict(img_size=[H, W])), 0, src)
    r, c = np.unravel_index(np.argmax(g), g.shape)
    assert abs(r - H) <= 1 and abs(c - 2.5 * W / 2) <= 1   # centre of cell (1, 2)
    meta = dict(mode="gradcam", recipe=dict(img_size=[H, W]), cell_offset=[-8.0, 4.0])
    g = loc.map_on_source(cam, meta, 0, src)                # measured receptive-field centres
    r, c = np.unravel_index(np.nanargmax(g), g.shape)
    assert abs(r - (H - 16)) <= 1 and abs(c - (2.5 * W / 2 + 8)) <= 1
    fp = np.zeros((3, 3, 2), np.float32)
    fp[..., 0] = 1.0
    fp[1, 1, 0] = 0.0
    meta = dict(mode="fprop", recipe=dict(img_size=[H, W]), feature_map=[7, 5],
                avg_pool_size=[5, 3], hm_strides=[1, 1])
    f = loc.map_on_source(fp, meta, 0, src)
    r, c = np.unravel_index(np.nanargmax(f), f.shape)
    # window rows 1..5 of 7 (96/7 px each) -> centre 48 px; cols 1..3 of 5 (16 px) -> 40 px
    assert abs(r - 2 * 48) <= 1 and abs(c - 2 * 40) <= 1


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A synthetic recipe folder and a Grad-CAM-like .npz peaked on each image's lesions."""
    d = tmp_path_factory.mktemp("loc")
    data = d / "data"
    syn.generate_dataset(data, n_patients=8, img_size=(96, 80), seed=3, lesion_fraction=0.9)
    import pandas as pd
    rois = pd.read_csv(data / "roi_mask_path.csv")
    files = sorted(set(rois["full_img_file"]))
    items, maps = [], []
    for i, f in enumerate(files):
        first = rois[rois["full_img_file"] == f]["roi_mask_file"].iloc[0]
        cy, cx = np.argwhere(dm_pixels.read_image(data / "roi_masks" / first) > 0).mean(0)
        cam = np.zeros((12, 10), np.float32)
        cam[int(cy // 8), int(cx // 8)] = 1.0
        if i == 0:                                          # one deliberate miss
            cam[:] = 0
            cam[0, 0] = 1.0
        items.append(Item(str(data / "full_images" / f), f[:7], "LEFT", "CC"))
        maps.append(cam)
    meta = dict(mode="gradcam", recipe=dict(img_size=[96, 80]), class_list=["neg", "pos"])
    save_heatmaps(str(d / "gradcam.npz"), items, maps, meta)
    return d, len(files)


def test_lesion_images_are_a_split_s_images_with_masks_in_list_order(tiny_folder):
    """Worked out here from the recipe's two tables: each split's images (images.csv, in
    its order) that have a row in roi_mask_path.csv."""
    import pandas as pd
    data = tiny_folder[0] / "data"
    images = pd.read_csv(data / "images.csv", dtype=str)
    with_mask = set(pd.read_csv(data / "roi_mask_path.csv", dtype=str)["full_img_file"])
    found = 0
    for split in ("train", "val", "test"):
        want = [f for f, s in zip(images["full_img_file"], images["split"])
                if s == split and f in with_mask]
        got = loc.lesion_images(data, split)
        assert [p.rsplit("/", 1)[-1] for p in got] == want, split
        assert all(dm_pixels.read_image(p).shape == (H, W) for p in got)
        found += len(got)
    assert 0 < found < len(images)          # some images have no lesion
    assert loc.lesion_images(data, "no such split") == []


def test_cli_end_to_end(tiny_folder):
    d, n = tiny_folder
    out = d / "out"
    r = subprocess.run([sys.executable, "dm_localisation.py", str(d / "data"),
                        str(d / "gradcam.npz"), "--out", str(out), "--n-boot", "200",
                        "--val-heatmaps", str(d / "gradcam.npz")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr + r.stdout
    s = json.loads((out / "localisation.json").read_text())
    g = s["gradcam"]
    for k in ("pointing_game", "pointing_game_ci", "pointing_game_chance",
              "pointing_game_brightest", "mass_fraction", "dice", "dice_threshold"):
        assert k in g, k
    assert g["n_images"] == n
    assert g["pointing_game"] == pytest.approx((n - 1) / n, abs=1e-3)
    assert g["pointing_game_ci"][0] <= g["pointing_game"] <= g["pointing_game_ci"][1]
    assert s["settings"]["pixel_size_from"].startswith("nominal")
    assert (out / "localisation.png").stat().st_size > 1000
    assert len((out / "localisation_images.csv").read_text().splitlines()) == n + 1


@pytest.mark.parametrize("bad", ["missing_npz", "not_recipe", "bad_npz"])
def test_bad_input_one_line_exit_2(tiny_folder, tmp_path, bad):
    d, _ = tiny_folder
    npz, data = str(d / "gradcam.npz"), str(d / "data")
    if bad == "missing_npz":
        npz = str(tmp_path / "nope.npz")
    elif bad == "not_recipe":
        data = str(tmp_path)
    else:
        np.savez(tmp_path / "x.npz", a=np.zeros(3))
        npz = str(tmp_path / "x.npz")
    r = subprocess.run([sys.executable, "dm_localisation.py", data, npz, "--out",
                        str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2
    err = [l for l in (r.stdout + r.stderr).splitlines() if "error" in l]
    assert len(err) == 1 and "dm_localisation: error:" in err[0]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "o" / "localisation.json").exists()


def test_report_gets_a_localisation_section(tiny_folder, tmp_path):
    d, n = tiny_folder
    index = tmp_path / "report" / "index.html"
    index.parent.mkdir()
    index.write_text("<html><body><h2>Summary</h2><h2>Cases behind the numbers</h2></body></html>")
    for _ in range(2):                                      # a second run replaces the section
        loc.localise(str(d / "data"), [str(d / "gradcam.npz")], n_boot=50,
                     out=str(tmp_path / "loc"), report=str(index))
    page = index.read_text()
    assert page.count("<h2>Localisation</h2>") == 1
    assert page.index("Localisation") < page.index("Cases behind the numbers")
    assert "<td>gradcam</td>" in page and "../loc/localisation.png" in page
    with pytest.raises(metrics.LocalisationError, match="report not found"):
        loc.localise(str(d / "data"), [str(d / "gradcam.npz")], report=str(tmp_path / "no.html"))


@pytest.mark.parametrize("flag,value,want", [
    ("--tolerance-mm", "-1", ">= 0"), ("--pixel-size-mm", "0", "> 0"),
    ("--peak-separation-mm", "nan", "finite"), ("--n-boot", "0", ">= 1")])
def test_impossible_numbers_stop_at_flag_parsing(tiny_folder, capsys, monkeypatch, flag, value,
                                                 want):
    d, _ = tiny_folder
    monkeypatch.setattr(loc, "localise", lambda *a, **k: pytest.fail("localise ran"))
    with pytest.raises(SystemExit) as e:
        loc.main([str(d / "data"), str(d / "gradcam.npz"), flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: {value}: must be a" in err and want in err


def test_an_out_that_would_replace_an_input_is_refused_before_any_work(tiny_folder, tmp_path,
                                                                      caplog, monkeypatch):
    """--out the recipe folder itself, or a folder where a heatmap file has the name of one
    of the outputs: one line, exit 2, the inputs untouched, nothing localised."""
    d, _ = tiny_folder
    monkeypatch.setattr(loc, "localise", lambda *a, **k: pytest.fail("localise ran"))
    data, npz = d / "data", d / "gradcam.npz"
    before = sorted(p.name for p in data.iterdir())
    assert loc.main([str(data), str(npz), "--out", str(data)]) == 2
    assert sorted(p.name for p in data.iterdir()) == before
    named = tmp_path / "out" / loc.OUTPUT_FILES["summary"]
    named.parent.mkdir()
    named.write_bytes(npz.read_bytes())
    assert loc.main([str(data), str(named), "--out", str(tmp_path / "out")]) == 2
    assert named.read_bytes() == npz.read_bytes()
    assert loc.main([str(data), str(npz), "--val-heatmaps", str(tmp_path / "no.npz"),
                     "--out", str(tmp_path / "o2")]) == 2
    assert not (tmp_path / "o2").exists()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 3
    assert f"{data} (--out) is the DATA_DIR" in errors[0]
    assert f"{named} (--out) is the heatmap file" in errors[1]
    assert "no.npz: heatmap file not found" in errors[2]
