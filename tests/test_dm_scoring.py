"""dm_scoring, dm_inputs, dm_heatmaps: TTA, model averaging, recipes from files, heatmaps, Grad-CAM, overlays."""
import cv2
import numpy as np
import pytest
from tiny_models import (IMAGE_RECIPE, IMG, PATCH, PATCH_RECIPE, mammogram, save, tiny_image_model,
                         tiny_patch_model, write_images)

import dm_heatmaps
import dm_inputs
import dm_overlay
import dm_pixels
import dm_recipe
import dm_scoring
import dm_sweep


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    patch = tiny_patch_model()
    return dict(patch=save(patch, d / "patch.keras", "patch"),
                image1=save(tiny_image_model(patch, seed=2), d / "image1.keras", "image"),
                image2=save(tiny_image_model(patch, seed=3), d / "image2.keras", "image"),
                dir=d)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("imgs"), 5)


def _inputs(paths, recipe):
    return np.stack([dm_recipe.preprocess(dm_pixels.read_image(p), recipe) for p in paths])


def test_tta_is_mean_of_four_flips(saved, images):
    m = dm_scoring.load_models([str(saved["image1"])])[0]
    x = _inputs(images, m.recipe())
    flips = [x, x[:, :, ::-1], x[:, ::-1, :], x[:, ::-1, ::-1]]
    each = [m.model.predict(f, verbose=0) for f in flips]
    assert not np.allclose(each[0], each[1], atol=1e-4)      # flips matter for this model
    got = dm_scoring.score_paths([m], images, batch_size=2, tta=True)
    np.testing.assert_allclose(got, np.mean(each, axis=0), atol=1e-5)
    plain = dm_scoring.score_paths([m], images, batch_size=3)
    np.testing.assert_allclose(plain, each[0], atol=1e-5)


def test_scoring_traces_once_for_all_batch_sizes_and_tta_is_one_call(saved, images):
    m = dm_scoring.load_models([str(saved["image1"])])[0]
    dm_scoring.score_paths([m], images, batch_size=2)                  # batches of 2, 2 and 1
    dm_scoring.score_paths([m], images[:3], batch_size=3)
    dm_scoring.score_paths([m], images, batch_size=2, tta=True)
    forwards = list(m.model.__dict__["_dm_forward"].values())
    assert len(forwards) == 2                                    # plain and TTA
    assert [f.experimental_get_tracing_count() for f in forwards] == [1, 1]
    calls = []
    real_call = type(m.model).__call__

    class Counting(type(m.model)):
        def __call__(self, *a, **k):
            calls.append(tuple(a[0].shape))
            return real_call(self, *a, **k)
    m.model.__class__ = Counting
    try:
        m.model.__dict__.pop("_dm_forward")
        dm_scoring.score_paths([m], images, batch_size=2, tta=True)
    finally:
        m.model.__class__ = Counting.__mro__[1]
    assert [c[0] for c in calls] == [None]      # traced once: the four flips as one batch


def test_model_average_is_mean_of_outputs(saved, images):
    ms = dm_scoring.load_models([str(saved["image1"]), str(saved["image2"])])
    x = _inputs(images, IMAGE_RECIPE)
    outs = [m.model.predict(x, verbose=0) for m in ms]
    assert not np.allclose(outs[0], outs[1], atol=1e-4)
    np.testing.assert_allclose(dm_scoring.score_paths(ms, images, batch_size=2),
                               (outs[0] + outs[1]) / 2, atol=1e-5)


def test_recipe_read_from_file_and_overridden(saved, images):
    m = dm_scoring.load_models([str(saved["image1"])])[0]
    assert m.recipe() == IMAGE_RECIPE and m.class_list == ("neg", "pos")
    # the model's input is fixed at 64x48: another size is refused (issue 23), unless the
    # network is rebuilt at that size (fprop heatmaps)
    with pytest.raises(dm_inputs.InferenceError, match="takes 64x48 images only.*--img-size 32 24"):
        m.recipe(img_size=[32, 24])
    r = m.recipe(featurewise_mean=10.0, img_size=[32, 24], fixed_input=False)
    assert r.featurewise_mean == 10.0 and r.featurewise_center and r.img_size == (32, 24)
    with pytest.raises(dm_inputs.InferenceError, match="positive"):
        m.recipe(img_size=[0, 0], fixed_input=False)
    assert r.rescale_factor == IMAGE_RECIPE.rescale_factor
    got = dm_scoring.score_paths([m], images[:2], overrides=dict(featurewise_mean=10.0))
    want = m.model.predict(_inputs(images[:2], dm_recipe.apply_overrides(IMAGE_RECIPE, featurewise_mean=10.0)),
                           verbose=0)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_models_must_agree_on_classes(saved):
    ms = dm_scoring.load_models([str(saved["image1"]), str(saved["patch"])])
    with pytest.raises(dm_inputs.InferenceError, match="outputs"):
        dm_scoring.common_class_list(ms)


def test_sweep_grid():
    assert dm_sweep.sweep_grid((40, 36), 16, 4) == (7, 6, 0, 0)
    assert dm_sweep.sweep_grid((43, 38), 16, 4) == (7, 6, 1, 1)     # centred: 3 and 2 spare pixels
    assert dm_sweep.sweep_grid((16, 16), 16, 8) == (1, 1, 0, 0)
    with pytest.raises(dm_sweep.SweepError, match="smaller than the patch"):
        dm_sweep.sweep_grid((10, 40), 16, 4)


@pytest.mark.parametrize("segment", [False, True])
def test_sliding_window_equals_patches_one_by_one(segment):
    model = tiny_patch_model()
    img = mammogram((50, 40), seed=3)
    stride = 6
    hm = dm_heatmaps.sliding_window_heatmap(model, img, PATCH_RECIPE, PATCH, stride, batch_size=7,
                                    segment=segment, pad=True)
    rows, cols, _ = hm.probs.shape
    h, w = hm.image.shape
    assert (rows, cols) == ((h + 2 * (PATCH // 2) - PATCH) // stride + 1,
                            (w + 2 * (PATCH // 2) - PATCH) // stride + 1)
    padded = np.pad(hm.image, PATCH // 2)
    for r in range(rows):
        for c in range(cols):
            cy = hm.centre0[0] + r * stride + PATCH // 2      # centre in padded coordinates
            cx = hm.centre0[1] + c * stride + PATCH // 2
            patch = padded[cy - PATCH // 2:cy + PATCH // 2, cx - PATCH // 2:cx + PATCH // 2]
            one = model.predict_on_batch(dm_sweep.prepare_patch(patch, PATCH_RECIPE)[None])[0]
            np.testing.assert_allclose(hm.probs[r, c], one, atol=1e-5)
    if segment:
        assert hm.bbox is not None and hm.image.shape == (hm.bbox[3], hm.bbox[2])
        assert hm.image.shape[1] < 40          # the dark right side was cropped away


@pytest.mark.parametrize("pool,strides,grid", [((1, 1), (1, 1), (16, 12)),
                                               ((4, 4), (1, 1), (13, 9)),
                                               ((4, 4), (2, 2), (7, 5))])
def test_fprop_grid_size(pool, strides, grid):
    patch = tiny_patch_model()
    hm_model = dm_heatmaps.fprop_model(patch, IMG, pool, strides)
    assert dm_heatmaps.fprop_grid((IMG[0] // 4, IMG[1] // 4), pool, strides) == grid
    out = hm_model.predict(np.zeros((1,) + IMG + (1,), np.float32), verbose=0)
    assert out.shape == (1,) + grid + (3,)
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=1e-5)


def test_fprop_cell_is_patch_dense_on_pooled_features():
    patch = tiny_patch_model()
    x = np.random.default_rng(0).normal(size=(1,) + IMG + (1,)).astype(np.float32)
    out = dm_heatmaps.fprop_model(patch, IMG, (4, 4), (2, 2)).predict(x, verbose=0)
    feat = patch.get_layer("patch_trunk").predict(x, verbose=0)[0]
    w, b = patch.get_layer("patch_clf").get_weights()
    z = feat[2:6, 4:8].mean(axis=(0, 1)) @ w + b            # cell (1, 2)
    np.testing.assert_allclose(out[0, 1, 2], np.exp(z) / np.exp(z).sum(), atol=1e-5)


def test_fprop_whole_image_model_needs_patch_dense():
    patch = tiny_patch_model()
    image = tiny_image_model(patch)
    with pytest.raises(dm_inputs.InferenceError, match="patch model"):
        dm_heatmaps.fprop_model(image, IMG, (2, 2), (1, 1))
    hm = dm_heatmaps.fprop_model(image, IMG, (2, 2), (1, 1), patch_model=patch)
    assert hm.output.shape[1:] == (15, 11, 3)
    with_hm = tiny_image_model(patch, add_heatmap=True, avg_pool_size=(2, 2), hm_pool_size=(2, 2))
    assert dm_heatmaps.fprop_model(with_hm, IMG, (2, 2), (1, 1)).output.shape[1:] == (15, 11, 3)


def test_grad_cam_shape_and_range(saved, images):
    m = dm_scoring.load_models([str(saved["image1"])])[0]
    x = _inputs(images[:2], m.recipe())
    cam = dm_heatmaps.grad_cam(m.model, x, class_index=1)
    assert cam.shape == (2, IMG[0] // 4, IMG[1] // 4)
    assert np.all(np.isfinite(cam)) and cam.min() >= 0 and cam.max() <= 1
    assert np.all((cam.reshape(2, -1).max(1) == 1) | (cam.reshape(2, -1).max(1) == 0))


def test_overlay_png_written(tmp_path):
    grey = mammogram((90, 70))
    heat = np.zeros((6, 5), np.float32)
    heat[1, 1] = 1.0
    ov = dm_overlay.overlay_heatmap(grey, dm_overlay.place_heatmap(heat, grey.shape))
    out = tmp_path / "o" / "overlay.png"
    dm_pixels.write_png(str(out), ov)
    back = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert back.shape == (90, 70, 3) and out.stat().st_size > 1000
    assert not np.array_equal(back[..., 0], back[..., 2])     # coloured, not grey
    placed = dm_overlay.place_heatmap(np.ones((3, 2)), (40, 30), centre0=(10, 8), step=5)
    assert np.isnan(placed[0, 0]) and placed[10, 8] == 1.0 and np.isfinite(placed).sum() == 15 * 10
