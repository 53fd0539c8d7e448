"""dm_hardneg: mined windows are negatives inside the breast, spaced, sorted, K of them, the
windows the model scored, in the sampler's frame; unusable models are refused."""
from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest

import dm_hardneg
import dm_modelfile
from dm_modelfile import ModelMeta
from dm_recipe import Recipe
from dm_roi import extract_patch, frame_image, frame_mask, patch_roi_overlap
from dm_sweep import prepare_patch

PS = 16                       # patch side; the sweep's stride is 4, the suppression 8 px
HALF = PS // 2
CLASSES = ("background", "malignant", "benign")
RECIPE = Recipe(img_size=(PS, PS), rescale_factor=1 / 65535, channels=1)
LESION = (30, 22, 6)          # (y, x, radius) of the planted lesion, with a mask
DENSE = (62, 24, 6)           # a bright disc without a mask: dense tissue


def brightness_model(sign: float, size: int = PS) -> keras.Model:
    """A patch classifier whose lesion score 1 - p(background) rises with the patch's mean
    grey level (sign +1) or falls with it (sign -1): which windows win is then known."""
    inp = keras.Input((size, size, 1))
    x = keras.layers.GlobalAveragePooling2D()(inp)
    dense = keras.layers.Dense(3, activation="softmax")
    model = keras.Model(inp, dense(x))
    dense.set_weights([np.array([[-10.0 * sign, 10.0 * sign, 0.0]], np.float32),
                       np.array([5.0 * sign, -5.0 * sign, -20.0], np.float32)])
    return model


def save(model: keras.Model, path, classes=CLASSES, kind="patch", size: int = PS):
    dm_modelfile.save_model(model, path, ModelMeta(classes, Recipe(img_size=(size, size),
                                                                   rescale_factor=1 / 65535,
                                                                   channels=1), kind=kind))
    return str(path)


def disc(shape, y, x, r) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - y) ** 2 + (xx - x) ** 2 <= r * r


def mammogram(shape=(96, 72), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """16-bit grey: a half-ellipse breast on the left edge (every pixel of it >= 15000) on a
    black film, a bright lesion (returned as its 0/255 mask) and a bright dense disc."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    breast = ((yy - h / 2) / (h * 0.45)) ** 2 + (xx / (w * 0.8)) ** 2 <= 1
    img = np.where(breast, rng.normal(20000, 1500, shape).clip(15000, 25000), 0)
    img[disc(shape, *LESION)] = 60000
    img[disc(shape, *DENSE)] = 50000
    mask = (disc(shape, *LESION) * 255).astype(np.uint8)
    return img.astype(np.uint16), mask


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("hnm_models")
    return {"bright": dm_hardneg.load_patch_scorer(save(brightness_model(1.0), d / "b.keras"), PS),
            "dark": dm_hardneg.load_patch_scorer(save(brightness_model(-1.0), d / "d.keras"), PS)}


def framed(img, mask):
    f, bbox = frame_image(img, PS)
    return f, frame_mask(mask, bbox, PS), bbox


def model_score(scorer, patch) -> float:
    """1 - p(background) of the model on one patch, cut and prepared as in training."""
    p = scorer.model.predict(prepare_patch(patch, scorer.recipe)[None], verbose=0)[0]
    return float(1.0 - p[0])


def test_picked_windows_are_negatives_though_the_lesion_scores_highest(models):
    img, mask = mammogram()
    f, fmask, _ = framed(img, mask)
    top_unmasked = dm_hardneg.mine_framed(models["bright"], f, [], 1)[0]
    fr, fp = patch_roi_overlap((top_unmasked.x, top_unmasked.y), PS, fmask)
    assert max(fr, fp) > 0.35                 # without its mask, the lesion wins
    picked, _ = dm_hardneg.mine_image(models["bright"], img, [mask], 4)
    assert len(picked) == 4
    for m in picked:
        fr, fp = patch_roi_overlap((m.x, m.y), PS, fmask)
        assert fr <= 0.35 and fp <= 0.35, m
    # the dense disc (no mask) is the brightest negative: the first pick covers its centre
    _, _, bbox = framed(img, mask)
    cy, cx = DENSE[0] - bbox[1] + HALF, DENSE[1] - bbox[0] + HALF
    assert abs(picked[0].y - cy) < HALF and abs(picked[0].x - cx) < HALF


def test_picked_windows_lie_wholly_inside_the_breast(models):
    """The dark model scores the black film highest; yet every picked window is breast."""
    img, mask = mammogram()
    f, fmask, _ = framed(img, mask)
    picked = dm_hardneg.mine_framed(models["dark"], f, [fmask], 6)
    assert len(picked) == 6
    film = model_score(models["dark"], np.zeros((PS, PS), np.uint16))
    for m in picked:
        assert extract_patch(f, (m.x, m.y), PS).min() >= 15000, m      # no film pixel
        assert m.score < film                                          # the film would win


def test_picks_are_spaced_sorted_k_and_deterministic(models):
    img, mask = mammogram()
    f, fmask, _ = framed(img, mask)
    picked = dm_hardneg.mine_framed(models["bright"], f, [fmask], 8)
    assert len(picked) == 8
    assert [m.score for m in picked] == sorted((m.score for m in picked), reverse=True)
    for a, b in itertools.combinations(picked, 2):
        assert max(abs(a.x - b.x), abs(a.y - b.y)) >= HALF, (a, b)
    # each score is the model's on the very window the sampler cuts at that centre
    for m in picked:
        assert m.score == pytest.approx(model_score(models["bright"],
                                                    extract_patch(f, (m.x, m.y), PS)), abs=1e-5)
    assert dm_hardneg.mine_framed(models["bright"], f, [fmask], 8) == picked
    assert dm_hardneg.mine_framed(models["bright"], f, [fmask], 0) == []
    every = dm_hardneg.mine_framed(models["bright"], f, [fmask], 10_000)
    assert 8 < len(every) < 10_000 and every[:8] == picked


def test_mine_image_gives_centres_in_the_sampler_s_frame(models):
    """mine_image crops to the breast and pads as the sampler does: a centre (x, y) cuts
    the window of the full image at (x - patch + crop x, y - patch + crop y)."""
    img, mask = mammogram()
    picked, bbox = dm_hardneg.mine_image(models["bright"], img, [mask], 5)
    f, fmask, box = framed(img, mask)
    assert bbox == box and picked == dm_hardneg.mine_framed(models["bright"], f, [fmask], 5)
    for m in picked:
        y0, x0 = m.y - PS + bbox[1], m.x - PS + bbox[0]
        np.testing.assert_array_equal(extract_patch(f, (m.x, m.y), PS), img[y0:y0 + PS, x0:x0 + PS])
    whole, box = dm_hardneg.mine_image(models["bright"], img, [mask], 5, segment=False)
    assert box == (0, 0, img.shape[1], img.shape[0]) and len(whole) == 5
    padded = frame_image(img, PS, segment=False)[0]
    for m in whole:                                    # no crop: only the half-patch margin
        y0, x0 = m.y - PS, m.x - PS
        np.testing.assert_array_equal(extract_patch(padded, (m.x, m.y), PS), img[y0:y0 + PS, x0:x0 + PS])


def test_pick_windows_greedy_rule_by_hand():
    """4 x 4 centres 2 px apart, patch 8 (suppression 4 px): ties go in row-major order, a
    window within 4 px in both axes of a kept one is passed over, as is a forbidden one or
    one overlapping the lesion mask (worked through by hand)."""
    ys = xs = np.array([4, 6, 8, 10])
    scores = np.ones((4, 4))
    scores[3, 3] = 2.0                                  # the best: (x 10, y 10)
    allowed = np.ones((4, 4), bool)
    allowed[0, 2] = False                               # (x 8, y 4) forbidden
    mask = np.zeros((20, 20), np.uint8)
    mask[8:12, 0:4] = 1                                 # the windows at x 4 or 6, y 8 or 10
    pick = dm_hardneg.pick_windows
    got = pick(scores, ys, xs, allowed, [mask], 8, 10, 0.35)
    assert [(m.x, m.y, m.score) for m in got] == [(10, 10, 2.0), (4, 4, 1.0), (10, 4, 1.0)]
    assert [(m.x, m.y) for m in pick(scores, ys, xs, allowed, [], 8, 10, 0.35)] == [
        (10, 10), (4, 4), (10, 4), (4, 8)]              # unmasked, (x 4, y 8) is free
    assert [(m.x, m.y) for m in pick(scores, ys, xs, np.ones((4, 4), bool), [mask], 8, 10,
                                     0.35)] == [(10, 10), (4, 4), (8, 4)]
    assert [(m.x, m.y) for m in pick(scores, ys, xs, allowed, [mask], 8, 2, 0.35)] == [
        (10, 10), (4, 4)]
    assert pick(scores, ys, xs, allowed, [mask], 8, 0, 0.35) == []


def test_models_that_cannot_mine_are_refused_in_one_line(tmp_path):
    wrong_size = save(brightness_model(1.0, size=24), tmp_path / "p24.keras", size=24)
    image = save(brightness_model(1.0), tmp_path / "img.keras", kind="image")
    other = save(brightness_model(1.0), tmp_path / "o.keras", classes=("malignant", "background", "benign"))
    for path, problem in ((wrong_size, "trained on 24x24 patches, the sampler cuts 16x16"),
                          (image, "a whole-image model"), (other, "class 0 is 'malignant'")):
        with pytest.raises(dm_hardneg.MiningError, match=problem) as e:
            dm_hardneg.load_patch_scorer(path, PS)
        assert "\n" not in str(e.value) and path in str(e.value)
