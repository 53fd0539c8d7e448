"""One image path: the patch sampler and the recipes read, decode and resize images and masks
exactly as the training recipe does (dm_image), for PNG and DICOM inputs at odd sizes."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from ddsm_train import sample_patches_combined as sampler
from recipe_helpers import write_dicom
import dm_dataset
import dm_pixels
import dm_recipe

# 151x101 at height 97: width 64.88, which the old sampler rounded to 65 where training's
# resize truncates to 64.
SHAPE = (151, 101)


def _image(rng) -> np.ndarray:
    return rng.integers(200, 4000, size=SHAPE).astype(np.uint16)


def _mask() -> np.ndarray:
    m = np.zeros(SHAPE, np.uint8)
    m[40:77, 23:58] = 255
    return m


@pytest.fixture(params=["png16", "dicom_rescaled_monochrome1"])
def files(request, tmp_path):
    rng = np.random.default_rng(3)
    img, mask = _image(rng), _mask()
    if request.param == "png16":
        dm_pixels.write_png(tmp_path / "full.png", img)
        full = tmp_path / "full.png"
    else:   # a modality rescale and MONOCHROME1: both were ignored by the old sampler reader
        full = tmp_path / "full.dcm"
        write_dicom(full, img, photometric="MONOCHROME1", slope=2, intercept=-100,
                    bits_stored=12)
    dm_pixels.write_png(tmp_path / "mask.png", mask)
    return str(full), str(tmp_path / "mask.png")


@pytest.mark.parametrize("size", [dict(target_size=(97, 63), target_height=None),
                                  dict(target_size=None, target_height=97),
                                  dict(target_size=None, target_height=None)])
def test_sampler_image_and_mask_equal_the_training_recipe(files, size):
    full, mask = files
    recipe = dm_recipe.Recipe(img_size=size["target_size"],
                             target_height=size["target_height"])
    trained = dm_dataset.load_images([full], recipe, num_workers=1)[0]     # what training caches
    sampled, orig_h = sampler.read_resized(full, size)
    assert orig_h == SHAPE[0]
    assert sampled.dtype == trained.dtype and sampled.shape == trained.shape
    np.testing.assert_array_equal(sampled, trained)
    if size["target_height"] == 97:
        assert sampled.shape == (97, 64)        # truncated, as training does
    raw = dm_pixels.read_image(full)
    # and both are the cubic resize of the decoded image (docs/method.md, step 2), worked
    # out here without dm_recipe: a change to the one resize shows, not only a difference
    h, w = sampled.shape
    np.testing.assert_array_equal(trained, raw if (h, w) == raw.shape else
                                  cv2.resize(raw, (w, h), interpolation=cv2.INTER_CUBIC))
    if full.endswith(".dcm"):                   # the rescale and the inversion were applied
        hi = 4095 * 2 - 100
        np.testing.assert_array_equal(raw, (hi - 100) - (_image(np.random.default_rng(3)) * 2 - 100))
    m = sampler.read_resized_mask(mask, sampled.shape)
    assert m.shape == sampled.shape and set(np.unique(m)) == {0, 255}
    np.testing.assert_array_equal(m, dm_recipe.resize_mask(dm_pixels.read_image(mask),
                                                          dm_recipe.target_shape(SHAPE, recipe)))
