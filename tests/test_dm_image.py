"""dm_image: readers, the preprocessing recipe, augmentation geometry, listing and tf.data pipelines."""
from __future__ import annotations

import math
import os

import cv2
import numpy as np
import pytest

import dm_augment
import dm_dataset
import dm_listing
import dm_pixels
import dm_recipe
from recipe_helpers import write_dicom

RNG = np.random.default_rng(7)


def _png(path, arr):
    assert cv2.imwrite(str(path), arr)
    return str(path)


def _dicom(path, arr, photometric="MONOCHROME2", slope=None, intercept=None, pixels=True,
           bits_stored=12):
    """16-bit DICOM with 12 stored bits by default (as mammography DICOMs have)."""
    return write_dicom(path, np.asarray(arr).astype(np.uint16), photometric, slope, intercept,
                       pixels, bits_stored)


# ------------------------------------------------------------------ reading

def test_read_png_8_and_16_bit_exact(tmp_path):
    a8 = RNG.integers(0, 256, (20, 30), dtype=np.uint8)
    a16 = RNG.integers(0, 65536, (20, 30), dtype=np.uint16)
    r8 = dm_pixels.read_image(_png(tmp_path / "a.png", a8))
    r16 = dm_pixels.read_image(_png(tmp_path / "B.PNG", a16))          # upper-case extension
    assert r8.dtype == np.uint8 and np.array_equal(r8, a8)
    assert r16.dtype == np.uint16 and np.array_equal(r16, a16)
    bmp = dm_pixels.read_image(_png(tmp_path / "c.BMP", a8))
    assert np.array_equal(bmp, a8)


def test_read_colour_png_becomes_grey(tmp_path):
    col = RNG.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    r = dm_pixels.read_image(_png(tmp_path / "c.png", col))
    assert r.shape == (10, 12) and r.dtype == np.uint8
    assert np.array_equal(r, cv2.cvtColor(col, cv2.COLOR_BGR2GRAY))


def test_read_errors_are_clear(tmp_path):
    with pytest.raises(dm_pixels.ImageReadError, match=r"nope\.png: file not found"):
        dm_pixels.read_image(tmp_path / "nope.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(dm_pixels.ImageReadError, match=r"empty\.png: empty file"):
        dm_pixels.read_image(tmp_path / "empty.png")
    p = _png(tmp_path / "t.png", RNG.integers(0, 65536, (64, 64), dtype=np.uint16))
    data = open(p, "rb").read()
    open(p, "wb").write(data[: len(data) // 2])
    with pytest.raises(dm_pixels.ImageReadError, match=r"t\.png: cannot decode image"):
        dm_pixels.read_image(p)
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    with pytest.raises(dm_pixels.ImageReadError, match="junk.jpg"):
        dm_pixels.read_image(tmp_path / "junk.jpg")
    assert issubclass(dm_pixels.ImageReadError, ValueError)


def test_read_dicom_monochrome2_and_rescale(tmp_path):
    arr = RNG.integers(0, 4096, (16, 12)).astype(np.uint16)
    r = dm_pixels.read_image(_dicom(tmp_path / "a.dcm", arr))
    assert r.dtype == np.uint16 and np.array_equal(r, arr)
    r = dm_pixels.read_image(_dicom(tmp_path / "b.DCM", arr, slope=2, intercept=10))
    assert r.dtype == np.uint16 and np.array_equal(r, arr.astype(np.int64) * 2 + 10)
    r = dm_pixels.read_image(_dicom(tmp_path / "c.dicom", arr, slope=0.5, intercept=-1024))
    assert r.dtype == np.float32
    np.testing.assert_array_equal(r, (arr * 0.5 - 1024).astype(np.float32))


def test_read_dicom_monochrome1_inverted(tmp_path):
    arr = RNG.integers(0, 4096, (16, 12)).astype(np.uint16)
    arr[0, 0], arr[0, 1] = 0, 4095
    r = dm_pixels.read_image(_dicom(tmp_path / "m1.dcm", arr, photometric="MONOCHROME1"))
    assert r.dtype == np.uint16
    assert np.array_equal(r, 4095 - arr)          # 12 bits stored: bright = dense
    assert r[0, 0] == 4095 and r[0, 1] == 0
    r = dm_pixels.read_image(_dicom(tmp_path / "m1r.dcm", arr, photometric="MONOCHROME1",
                            slope=2, intercept=100))
    # range [100, 8290] -> x' = 100 + 8290 - (2 a + 100) = 8290 - 2 a
    assert np.array_equal(r, 8290 - 2 * arr.astype(np.int64))


def test_read_dicom_detected_by_preamble_and_no_pixel_data(tmp_path):
    arr = RNG.integers(0, 4096, (8, 8)).astype(np.uint16)
    p = _dicom(tmp_path / "x.dcm", arr)
    os.rename(p, tmp_path / "noext")
    assert np.array_equal(dm_pixels.read_image(tmp_path / "noext"), arr)
    p = _dicom(tmp_path / "nopix.dcm", arr, pixels=False)
    with pytest.raises(dm_pixels.ImageReadError, match=r"nopix\.dcm: DICOM file has no pixel data"):
        dm_pixels.read_image(p)


# ------------------------------------------------------------------ recipe

def test_resize_cubic_and_target_height():
    a = RNG.integers(0, 65536, (64, 48), dtype=np.uint16)
    r = dm_recipe.resize(a, dm_recipe.Recipe(img_size=(32, 20)))
    assert r.dtype == np.uint16 and r.shape == (32, 20)
    assert np.array_equal(r, cv2.resize(a, (20, 32), interpolation=cv2.INTER_CUBIC))
    r = dm_recipe.resize(a, dm_recipe.Recipe(img_size=None, target_height=32))
    assert r.shape == (32, 24)                       # aspect kept, int(32/64*48)
    assert dm_recipe.resize(a, dm_recipe.Recipe(img_size=(64, 48))) is a      # no-op when already that size
    assert dm_recipe.target_shape((100, 77), dm_recipe.Recipe(img_size=None, target_height=30)) == (30, 23)


def test_grey_steps_scale_rescale_equalize():
    a = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    x = dm_recipe.grey_steps(a, dm_recipe.Recipe(img_size=None, img_scale=255.0))
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, np.float32([[0, 63.75], [127.5, 255]]))
    z = dm_recipe.grey_steps(np.zeros((2, 2), np.uint16), dm_recipe.Recipe(img_size=None, img_scale=255.0))
    assert np.all(z == 0)                             # a black image stays black
    x = dm_recipe.grey_steps(np.array([[0, 65535]], np.uint16),
                     dm_recipe.Recipe(img_size=None, rescale_factor=255 / 65535))
    np.testing.assert_allclose(x, [[0, 255]], rtol=1e-6)
    # equalisation on the 8-bit cast, like cv2.equalizeHist(img.astype('uint8'))
    b = RNG.integers(0, 200, (16, 16)).astype(np.uint16)
    x = dm_recipe.grey_steps(b, dm_recipe.Recipe(img_size=None, equalize_hist=True))
    np.testing.assert_array_equal(x, cv2.equalizeHist(b.astype(np.uint8)).astype(np.float32))


def test_preprocess_full_order_channels_and_centre():
    a = RNG.integers(0, 65536, (40, 30), dtype=np.uint16)
    rec = dm_recipe.Recipe(img_size=(20, 16), img_scale=1000.0, rescale_factor=0.25, equalize_hist=True,
                   channels=3, featurewise_center=True, featurewise_mean=52.18)
    r = cv2.resize(a, (16, 20), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    r *= np.float32(1000.0 / float(r.max()))
    r *= np.float32(0.25)
    r = cv2.equalizeHist(r.astype(np.uint8)).astype(np.float32) - np.float32(52.18)
    x = dm_recipe.preprocess(a, rec)
    assert x.shape == (20, 16, 3) and x.dtype == np.float32
    for c in range(3):
        np.testing.assert_array_equal(x[:, :, c], r)
    x1 = dm_recipe.preprocess(a, dm_recipe.Recipe(img_size=(20, 16), channels=1))
    assert x1.shape == (20, 16, 1)


def test_recipe_and_augment_round_trip():
    rec = dm_recipe.Recipe(img_size=(8, 6), rescale_factor=0.5, channels=1)
    assert dm_recipe.Recipe.from_json(rec.to_json()) == rec
    aug = dm_augment.Augment(zoom_range=[0.9, 1.1])
    assert aug.zoom_range == (0.9, 1.1) and dm_augment.Augment.from_dict(aug.to_dict()) == aug
    with pytest.raises(ValueError):
        dm_augment.Augment(fill_mode="constant")


# ------------------------------------------------------------------ augmentation geometry

@pytest.mark.parametrize("fn", [dm_augment.augment_numpy, dm_augment.augment_reference])
@pytest.mark.parametrize("interp", ["nearest", "bilinear"])
def test_flips_map_pixels(fn, interp):
    x = RNG.random((9, 12)).astype(np.float32)
    h = fn(x, dm_augment.AugParams(flip_h=True), interp)
    v = fn(x, dm_augment.AugParams(flip_v=True), interp)
    hv = fn(x, dm_augment.AugParams(flip_h=True, flip_v=True), interp)
    i, j = 2, 3
    assert h[i, j] == x[i, 12 - 1 - j] and v[i, j] == x[9 - 1 - i, j]
    np.testing.assert_array_equal(h, x[:, ::-1])
    np.testing.assert_array_equal(v, x[::-1, :])
    np.testing.assert_array_equal(hv, x[::-1, ::-1])


@pytest.mark.parametrize("fn", [dm_augment.augment_numpy, dm_augment.augment_reference])
@pytest.mark.parametrize("n", [33, 32])
def test_rotation_90_about_centre(fn, n):
    x = RNG.random((n, n)).astype(np.float32)
    y = fn(x, dm_augment.AugParams(theta=90.0), "nearest")
    # out(p) = x(c + R(p - c)): a quarter turn clockwise about the exact centre
    np.testing.assert_array_equal(y, np.rot90(x, k=-1))
    yb = fn(x, dm_augment.AugParams(theta=90.0), "bilinear")
    np.testing.assert_allclose(yb, np.rot90(x, k=-1), atol=1e-5)
    # a marker at (4, 10) moves to (10, n-1-4)
    m = np.zeros((n, n), np.float32)
    m[4, 10] = 1
    assert tuple(np.argwhere(fn(m, dm_augment.AugParams(theta=90.0), "nearest") == 1)[0]) == (10, n - 5)


@pytest.mark.parametrize("fn", [dm_augment.augment_numpy, dm_augment.augment_reference])
def test_zoom_is_independent_per_axis_about_centre(fn):
    x = RNG.random((33, 33)).astype(np.float32)
    y = fn(x, dm_augment.AugParams(zx=0.5, zy=1.0), "nearest")     # rows zoomed in 2x, columns untouched
    for k in range(-8, 9):
        np.testing.assert_array_equal(y[16 + 2 * k, :], x[16 + k, :])
    y = fn(x, dm_augment.AugParams(zx=2.0, zy=2.0), "nearest")     # zoom out: samples twice as far
    for k in range(-8, 9):
        for m in (-8, 0, 5):
            assert y[16 + k, 16 + m] == x[16 + 2 * k, 16 + 2 * m]


@pytest.mark.parametrize("fn", [dm_augment.augment_numpy, dm_augment.augment_reference])
def test_shear_moves_marker(fn):
    n, s = 65, 0.2
    x = np.zeros((n, n), np.float32)
    x[32, 52] = 1.0                                     # d = 20 columns right of centre
    y = fn(x, dm_augment.AugParams(shear=s), "bilinear")
    # in = A out: out col offset = d / cos(s), out row offset = tan(s) * d
    r, c = np.unravel_index(np.argmax(y), y.shape)
    assert abs(r - (32 + math.tan(s) * 20)) <= 1 and abs(c - (32 + 20 / math.cos(s))) <= 1


def test_channel_shift_clips_to_image_range():
    x = np.array([[0, 50], [90, 100]], np.float32)
    np.testing.assert_array_equal(dm_augment.augment_numpy(x, dm_augment.AugParams(shift=20.0)),
                                  [[20, 70], [100, 100]])
    np.testing.assert_array_equal(dm_augment.augment_reference(x, dm_augment.AugParams(shift=-20.0)),
                                  [[0, 30], [70, 80]])


@pytest.mark.parametrize("shifts", [(13.07, -5.86, 5.58), (-17.5, -13.9, 0.0), (0.0, 19.99, -0.25)])
def test_pipeline_channel_shift_is_bit_identical_to_the_reference(shifts):
    """The pipeline's fused merge+shift+clip equals `channel_shifts` of the 3-channel copy."""
    x = (RNG.random((37, 29)) * 300 - 60).astype(np.float32)
    ref = dm_augment.channel_shifts(np.repeat(x[:, :, None], 3, axis=2), shifts)
    out = np.empty((37, 29, 3), np.float32)
    dm_dataset._merge_shifted(out, x, shifts)
    np.testing.assert_array_equal(out, ref)
    assert out.min() == x.min() and out.max() == x.max()


def test_fast_augment_agrees_with_scipy_reference():
    x = cv2.GaussianBlur(RNG.random((64, 48)).astype(np.float32) * 255, (0, 0), 2)
    for k in range(5):
        p = dm_augment.draw_params(dm_augment.Augment(), seed=3, index=k)
        near_f, near_r = dm_augment.augment_numpy(x, p, "nearest"), dm_augment.augment_reference(x, p, "nearest")
        assert np.mean(near_f == near_r) > 0.99
        bil_f, bil_r = dm_augment.augment_numpy(x, p, "bilinear"), dm_augment.augment_reference(x, p, "bilinear")
        assert np.max(np.abs(bil_f - bil_r)) < 0.5 and np.mean(np.abs(bil_f - bil_r)) < 0.05


def test_draw_params_ranges_and_determinism():
    aug = dm_augment.Augment()
    ps = [dm_augment.draw_params(aug, 5, k) for k in range(50)]
    assert ps[:3] == [dm_augment.draw_params(aug, 5, k) for k in range(3)]
    assert ps[0] != dm_augment.draw_params(aug, 6, 0)
    for p in ps:
        assert -25 <= p.theta <= 25 and -0.2 <= p.shear <= 0.2 and -20 <= p.shift <= 20
        assert 0.8 <= p.zx <= 1.2 and 0.8 <= p.zy <= 1.2
    assert any(p.flip_h for p in ps) and not all(p.flip_h for p in ps)
    assert any(p.zx != p.zy for p in ps)
    off = dm_augment.draw_params(dm_augment.Augment(horizontal_flip=False, vertical_flip=False, rotation_range=0,
                                  shear_range=0, zoom_range=(1, 1), channel_shift_range=0), 5, 0)
    assert off == dm_augment.AugParams()


# ------------------------------------------------------------------ listing

def _tree(root, spec):
    """spec: {class: n_images}; images in nested folders, plus junk files."""
    for cls, n in spec.items():
        d = root / cls / "sub"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            ext = ".PNG" if i % 2 else ".png"
            _png((root / cls if i % 3 == 0 else d) / f"im{i}{ext}",
                 np.full((32, 24), 1000 * (i + 1), np.uint16))
        (root / cls / "notes.txt").write_text("x")
    return root


def test_list_class_folders_recursive_sorted_labels(tmp_path):
    root = _tree(tmp_path / "d", {"neg": 3, "pos": 2})
    paths, labels = dm_listing.list_class_folders(root, ["pos", "neg"])     # order set by class_list
    assert len(paths) == 5 and labels.tolist() == [0, 0, 1, 1, 1]
    assert all(os.path.basename(os.path.dirname(p)) in ("pos", "neg", "sub") for p in paths)
    assert paths[:2] == sorted(paths[:2]) and paths == dm_listing.list_class_folders(root, ["pos", "neg"])[0]
    assert dm_listing.class_counts(labels, ["pos", "neg"]) == {"pos": 2, "neg": 3}


def test_list_class_folders_skips_hidden_files(tmp_path):
    """A macOS resource fork (`._name.png`, not an image) or a hidden folder never blocks
    a dataset: names starting with '.' are skipped."""
    root = _tree(tmp_path / "d", {"neg": 2, "pos": 1})
    (root / "neg" / "._im0.png").write_bytes(b"\x00\x05\x16\x07 not a png")
    (root / "pos" / ".thumbs").mkdir()
    _png(root / "pos" / ".thumbs" / "t.png", np.zeros((4, 4), np.uint8))
    paths, labels = dm_listing.list_class_folders(root, ["neg", "pos"])
    assert len(paths) == 3 and not any(os.path.basename(p).startswith(".") or "/." in p
                                       for p in paths)
    assert dm_listing.check_bit_depths(paths, None) == {16}
    assert dm_listing.is_image_name("a.png") and not dm_listing.is_image_name("._a.png")


def test_list_class_folders_errors(tmp_path):
    with pytest.raises(dm_listing.DatasetError, match="dataset folder not found"):
        dm_listing.list_class_folders(tmp_path / "none", ["a"])
    root = _tree(tmp_path / "d", {"neg": 2})
    with pytest.raises(dm_listing.DatasetError, match="class folder 'pos' not found"):
        dm_listing.list_class_folders(root, ["neg", "pos"])
    (root / "pos").mkdir()
    paths, labels = dm_listing.list_class_folders(root, ["neg", "pos"])      # an empty class is allowed
    assert dm_listing.empty_classes(labels, ["neg", "pos"]) == ["pos"]
    (tmp_path / "e" / "a").mkdir(parents=True)
    (tmp_path / "e" / "b").mkdir()
    (tmp_path / "e" / "a" / "x.txt").write_text("")
    with pytest.raises(dm_listing.DatasetError, match="no images"):
        dm_listing.list_class_folders(tmp_path / "e", ["a", "b"])


# ------------------------------------------------------------------ datasets

REC = dm_recipe.Recipe(img_size=(32, 24), rescale_factor=255 / 65535, featurewise_center=True,
               featurewise_mean=20.0)


@pytest.fixture
def pngs(tmp_path):
    paths = []
    for i in range(10):
        a = cv2.GaussianBlur(RNG.random((40, 30)).astype(np.float32), (0, 0), 2) * 60000
        paths.append(_png(tmp_path / f"i{i}.png", a.astype(np.uint16)))
    return paths


def _collect(ds, n_batches=None):
    out = []
    for k, b in enumerate(ds):
        if n_batches is not None and k >= n_batches:
            break
        out.append([t.numpy() for t in b])
    return out


def test_eval_dataset_in_order_last_partial_batch_equals_reference(pngs):
    labels = np.arange(10) % 2
    batches = _collect(dm_dataset.make_dataset(pngs, labels, REC, 2, 4, training=False))
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]           # last partial batch kept
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    assert x.shape == (10, 32, 24, 3) and y.shape == (10, 2)
    np.testing.assert_array_equal(y.argmax(1), labels)
    ref = np.stack([dm_recipe.preprocess(dm_pixels.read_image(p), REC) for p in pngs])
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-6)
    assert dm_dataset.steps_for(10, 4) == 3


def test_training_elements_equal_reference_with_drawn_params(pngs):
    aug = dm_augment.Augment()
    n = len(pngs)
    # label = image index, so y tells which image each element is
    ds = dm_dataset.make_dataset(pngs, np.arange(n), REC, n, 4, training=True, augment=aug, seed=9)
    batches = _collect(ds, 6)                  # 2 epochs of 3 batches (4, 4, 2): 20 elements
    assert [len(b[1]) for b in batches] == [4, 4, 2, 4, 4, 2]
    idx = np.concatenate([b[1].argmax(1) for b in batches])
    assert sorted(idx[:n].tolist()) == list(range(n)) and sorted(idx[n:2 * n].tolist()) == list(range(n))
    assert idx[:n].tolist() != list(range(n)) and idx[:n].tolist() != idx[n:].tolist()
    xs = np.concatenate([b[0] for b in batches])
    for k in (0, 7, 13):
        p = dm_augment.draw_params(aug, 9, k)
        ref = dm_recipe.preprocess(dm_pixels.read_image(pngs[idx[k]]), REC, p, aug.interpolation)
        np.testing.assert_allclose(xs[k], ref, rtol=0, atol=1e-5)


def test_start_epoch_resumes_the_stream_exactly(pngs):
    """A run restarted at epoch 1 sees exactly what the uninterrupted run saw in epoch 1."""
    labels = np.arange(len(pngs))
    full = _collect(dm_dataset.make_dataset(pngs, labels, REC, len(pngs), 4, training=True,
                                   augment=dm_augment.Augment(), seed=3), 6)
    resumed = _collect(dm_dataset.make_dataset(pngs, labels, REC, len(pngs), 4, training=True,
                                      augment=dm_augment.Augment(), seed=3, start_epoch=1), 3)
    for a, b in zip(full[3:], resumed):
        for ta, tb in zip(a, b):
            np.testing.assert_array_equal(ta, tb)


def test_seeded_pipelines_identical_and_seeds_differ(pngs):
    labels = np.arange(10) % 2

    def first(seed):
        return _collect(dm_dataset.make_dataset(pngs, labels, REC, 2, 3, training=True,
                                       augment=dm_augment.Augment(), seed=seed, num_workers=2), 3)
    a, b, c = first(1), first(1), first(2)
    for ba, bb in zip(a, b):
        for ta, tb in zip(ba, bb):
            np.testing.assert_array_equal(ta, tb)
    assert not all(np.array_equal(ba[0], bc[0]) for ba, bc in zip(a, c))


def test_auto_batch_balance_weights_exact(pngs):
    labels = np.array([0, 0, 0, 1, 0, 0, 1, 1, 0, 0])
    batches = _collect(dm_dataset.make_dataset(pngs, labels, REC, 2, 4, training=False,
                                      auto_batch_balance=True))
    assert len(batches[0]) == 3
    np.testing.assert_array_equal(batches[0][2], np.float32([4 / 3, 4 / 3, 4 / 3, 4]))
    np.testing.assert_array_equal(batches[1][2], np.float32([2, 2, 2, 2]))
    np.testing.assert_array_equal(batches[2][2], np.float32([1, 1]))      # one class: all 1
    ds = dm_dataset.make_dataset(pngs, labels, REC, 2, 5, training=True, auto_batch_balance=True, seed=3)
    for x, y, w in _collect(ds, 4):                                       # original formula
        s = y.argmax(1)
        expect = np.ones(len(s), np.float32)
        for u in np.unique(s):
            expect[s == u] /= (s == u).mean()
        np.testing.assert_array_equal(w, expect)


def test_class_weight(pngs):
    labels = np.arange(10) % 3
    b = _collect(dm_dataset.make_dataset(pngs, labels, REC, 3, 10, training=False,
                                class_weight={0: 1.0, 1: 5.0}))[0]
    np.testing.assert_array_equal(b[2], np.float32([1, 5, 1, 1, 5, 1, 1, 5, 1, 1]))
    with pytest.raises(ValueError, match="not both"):
        dm_dataset.make_dataset(pngs, labels, REC, 3, 2, training=False, auto_batch_balance=True,
                       class_weight={0: 1.0})


def test_ram_mode_caches_native_single_channel_and_matches_disk(pngs):
    cache = dm_dataset.load_images(pngs, REC)
    assert cache.dtype == np.uint16 and cache.shape == (10, 32, 24)
    assert cache.nbytes == 10 * 32 * 24 * 2
    labels = np.arange(10) % 2
    disk = _collect(dm_dataset.make_dataset(pngs, labels, REC, 2, 4, training=False))
    ram = _collect(dm_dataset.make_dataset(pngs, labels, REC, 2, 4, training=False, load_ram=True))
    arr = _collect(dm_dataset.make_dataset(np.stack([dm_pixels.read_image(p) for p in pngs]), labels, REC, 2, 4,
                                  training=False))
    for bd, br, ba in zip(disk, ram, arr):
        np.testing.assert_array_equal(bd[0], br[0])
        np.testing.assert_array_equal(bd[0], ba[0])
    kw = dict(training=True, augment=dm_augment.Augment(), seed=4)
    t_disk = _collect(dm_dataset.make_dataset(pngs, labels, REC, 2, 4, **kw), 2)
    t_ram = _collect(dm_dataset.make_dataset(pngs, labels, REC, 2, 4, load_ram=True, **kw), 2)
    for bd, br in zip(t_disk, t_ram):
        np.testing.assert_array_equal(bd[0], br[0])
    a8 = dm_dataset.load_images([_png(os.path.dirname(pngs[0]) + "/u8.png",
                             np.zeros((40, 30), np.uint8))], REC)
    assert a8.dtype == np.uint8


def test_one_channel_and_dataset_errors(pngs, tmp_path):
    rec1 = dm_recipe.Recipe(img_size=(32, 24), channels=1)
    x, y = _collect(dm_dataset.make_dataset(pngs[:3], [0, 1, 0], rec1, 2, 8, training=False))[0]
    assert x.shape == (3, 32, 24, 1)
    with pytest.raises(dm_listing.DatasetError, match=r"gone\.png: file not found"):
        dm_dataset.make_dataset(pngs[:2] + [str(tmp_path / "gone.png")], [0, 1, 0], rec1, 2, 2,
                       training=False)
    with pytest.raises(dm_listing.DatasetError, match="labels must be in"):
        dm_dataset.make_dataset(pngs[:2], [0, 2], rec1, 2, 2, training=False)


def test_num_cpu_cores_env(monkeypatch):
    monkeypatch.setenv("NUM_CPU_CORES", "3")
    assert dm_dataset.num_workers_default() == 3
    monkeypatch.delenv("NUM_CPU_CORES")
    assert dm_dataset.num_workers_default() is None
    monkeypatch.setenv("NUM_CPU_CORES", "zero")
    with pytest.raises(ValueError, match="NUM_CPU_CORES"):
        dm_dataset.num_workers_default()


def test_shared_mias_image_reads_as_8_bit(shared_data):
    p = shared_data / "mias" / "images" / "mdb001.png"
    if not p.is_file():
        pytest.skip("mini-MIAS image not present")
    img = dm_pixels.read_image(p)
    assert img.dtype == np.uint8 and img.shape == (1024, 1024)
    x = dm_recipe.preprocess(img, dm_recipe.Recipe(img_size=(128, 128), featurewise_center=True,
                                   featurewise_mean=44.33))
    assert x.shape == (128, 128, 3) and np.isfinite(x).all()


def test_the_one_image_lister_is_shared_by_training_and_prediction(tmp_path):
    """dm_listing.image_files: recursive, sorted, hidden files and folders skipped; class
    folders and prediction folders list through it."""
    import dm_inputs
    for rel in ["neg/b.png", "neg/a/z.dcm", "neg/._b.png", "neg/.cache/c.png", "neg/notes.txt",
                "pos/c.PNG"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    want = [str(tmp_path / "neg/a/z.dcm"), str(tmp_path / "neg/b.png")]
    assert dm_listing.image_files(tmp_path / "neg") == want
    paths, labels = dm_listing.list_class_folders(tmp_path, ["neg", "pos"])
    assert paths == want + [str(tmp_path / "pos/c.PNG")] and labels.tolist() == [0, 0, 1]
    assert dm_inputs.list_images(str(tmp_path)) == paths


def test_augmented_batches_are_bit_identical_with_the_cpu_loaded(tmp_path):
    """Whole-image size, RAM cache, full augmentation: the same batches to the last bit
    whether or not other processes load the CPU (OpenCV's stripe layout used to depend on
    the load; dm_augment turns its threads off)."""
    import hashlib
    import subprocess
    import sys
    rng = np.random.default_rng(0)
    paths = []
    for i in range(12):
        p = tmp_path / f"{i}.png"
        cv2.imwrite(str(p), cv2.GaussianBlur(rng.integers(0, 60000, (288, 224)).astype(np.uint16),
                                             (0, 0), 3))
        paths.append(str(p))
    recipe = dm_recipe.Recipe(img_size=(288, 224), rescale_factor=255 / 65535, channels=1,
                              featurewise_center=True, featurewise_mean=40.0)

    def digest():
        ds = dm_dataset.make_dataset(paths, np.arange(12) % 2, recipe, 2, 4, training=True,
                                     augment=dm_augment.Augment(), seed=5, load_ram=True)
        h = hashlib.sha256()
        for x, _ in ds.take(9):
            h.update(np.asarray(x).tobytes())
        return h.hexdigest()

    quiet = digest()
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(3)]
    try:
        loaded = [digest() for _ in range(2)]
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert loaded == [quiet, quiet]
    assert cv2.getNumThreads() == 1
