"""Breast segmentation, ROI geometry, blob key points, image I/O and seeded splits."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

import dm_pixels
import dm_recipe
import dm_roi
import dm_sweep
from dm_recipe_utils import stratified_split


def _phantom():
    img = np.zeros((120, 90), np.uint16)
    cv2.ellipse(img, (0, 60), (70, 50), 0, -90, 90, 30000, -1)   # breast against the left edge
    img[5:9, 80:86] = 60000                                        # a bright label artefact
    return img


def test_segment_breast_keeps_largest_object_and_crops():
    img = _phantom()
    out, bbox = dm_sweep.segment_breast(img)
    assert bbox == (0, 10, 71, 101)
    assert out.shape == (101, 71) and out.dtype == np.uint16
    full, _ = dm_sweep.segment_breast(img, crop=False)
    assert full[5:9, 80:86].max() == 0 and full[60, 10] == 30000   # artefact removed, breast kept
    mask = np.zeros_like(img, np.uint8)
    mask[50:60, 20:30] = 255
    assert dm_sweep.crop_img(mask, bbox)[40:50, 20:30].all()


def test_largest_contour_bbox_and_empty_mask():
    m = np.zeros((50, 50), np.uint8)
    m[5:8, 5:8] = 1
    m[20:40, 10:25] = 1
    assert dm_roi.largest_contour_bbox(m) == (10, 20, 15, 20)
    with pytest.raises(dm_roi.EmptyMaskError):
        dm_roi.largest_contour_bbox(np.zeros((5, 5), np.uint8))


def test_overlap_matches_brute_force():
    rng = np.random.default_rng(0)
    m = np.zeros((60, 70), np.uint8)
    m[20:35, 30:50] = 1
    area = int(m.sum())
    for _ in range(200):
        x, y, ps = int(rng.integers(0, 70)), int(rng.integers(0, 60)), int(rng.integers(4, 30))
        box = np.zeros_like(m)
        box[max(0, y - ps // 2):max(0, y - ps // 2 + ps), max(0, x - ps // 2):max(0, x - ps // 2 + ps)] = 1
        inter = int((box & m).sum())
        fr, fp = dm_roi.patch_roi_overlap((x, y), ps, m)
        assert fr == pytest.approx(inter / area)
        assert fp == pytest.approx(inter / box.sum())
        assert dm_roi.overlap_patch_roi((x, y), ps, m, 0.5) == (inter / area > .5 or inter / box.sum() > .5)


def test_padding_and_patch_extraction():
    img = np.arange(12, dtype=np.uint16).reshape(3, 4) + 1
    pad = dm_sweep.add_img_margins(img, 2)
    assert pad.shape == (7, 8) and pad[:2].sum() == 0 and pad[2, 2] == 1
    assert dm_roi.extract_patch(pad, (2, 2), 4).shape == (4, 4)
    with pytest.raises(ValueError):
        dm_roi.extract_patch(pad, (1, 1), 4)


def test_blob_keypoints_find_bright_spots():
    img = np.full((100, 100), 1000, np.uint16)
    for x, y in [(20, 30), (70, 60)]:
        cv2.circle(img, (x, y), 4, 50000, -1)
    pts = dm_roi.blob_keypoints(img, dm_roi.create_blob_detector((32, 32)))
    assert len(pts) == 2
    assert sorted(pts) == [(20, 30), (70, 60)]


def test_png_roundtrip_resize_and_errors(tmp_path):
    img = (np.arange(64 * 48, dtype=np.uint32).reshape(64, 48) * 20).astype(np.uint16)
    dm_pixels.write_png(tmp_path / "a.png", img)
    back = dm_pixels.read_image(tmp_path / "a.png")
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, img)
    assert dm_recipe.resize_to(img, target_height=32).shape == (32, 24)
    m = np.zeros((64, 48), np.uint8)
    m[10:40, 10:30] = 255
    r = dm_recipe.resize_mask(m, (16, 12))
    assert set(np.unique(r)) == {0, 255}
    assert not list(tmp_path.glob(".tmp_*"))
    with pytest.raises(dm_pixels.ImageReadError, match="not found"):
        dm_pixels.read_image(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(dm_pixels.ImageReadError, match="cannot decode"):
        dm_pixels.read_image(tmp_path / "bad.png")
    with pytest.raises(ValueError):
        dm_pixels.write_png(tmp_path / "f.png", img.astype(np.float32))


def test_dicom_read_and_monochrome1(tmp_path):
    from recipe_helpers import write_dicom
    import pydicom

    arr = (np.arange(20 * 10, dtype=np.uint16).reshape(20, 10) * 100)
    write_dicom(tmp_path / "x.dcm", arr)
    np.testing.assert_array_equal(dm_pixels.read_image(tmp_path / "x.dcm"), arr)
    assert dm_pixels.dicom_shape(tmp_path / "x.dcm") == (20, 10)
    ds = pydicom.dcmread(tmp_path / "x.dcm")
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "y.dcm")
    np.testing.assert_array_equal(dm_pixels.read_image(tmp_path / "y.dcm"), 65535 - arr)


def test_stratified_split_is_seeded_and_proportional():
    labels = {f"p{i:03d}": int(i % 4 == 0) for i in range(100)}
    a = stratified_split(labels, {"test": 0.2, "val": 0.1}, 1)
    assert a == stratified_split(dict(reversed(list(labels.items()))), {"test": 0.2, "val": 0.1}, 1)
    assert a != stratified_split(labels, {"test": 0.2, "val": 0.1}, 2)
    count = {s: sum(v == s for v in a.values()) for s in ("train", "val", "test")}
    assert count == {"train": 70, "val": 10, "test": 20}
    assert sum(labels[k] for k, v in a.items() if v == "test") == 5
    tiny = stratified_split({"a": 0, "b": 0, "c": 1, "d": 1}, {"val": 1}, 0)
    assert sum(v == "val" for v in tiny.values()) == 1


def test_largest_region_fills_holes_or_keeps_the_objects_own_pixels():
    b = np.zeros((40, 40), np.uint8)
    b[5:35, 5:35] = 255
    b[12:28, 12:28] = 0                  # a hole ...
    b[17:23, 17:23] = 255                # ... with an island in it
    b[0:3, 37:40] = 255                  # a small separate object
    filled, bbox = dm_sweep.largest_region(b)
    assert bbox == (5, 5, 30, 30) and filled[5:35, 5:35].all() and filled.sum() == 900 * 255
    own, _ = dm_sweep.largest_region(b, fill_holes=False)
    ring = np.zeros_like(b)
    ring[5:35, 5:35] = 255
    ring[12:28, 12:28] = 0
    np.testing.assert_array_equal(own, ring)         # neither the hole nor the island
    assert dm_sweep.largest_region(np.zeros((4, 4), np.uint8))[1] is None
    # the breast segmentation is this region of the thresholded image
    img = _phantom()
    mask, box = dm_sweep.breast_mask(img)
    np.testing.assert_array_equal(mask, dm_sweep.largest_region(img > 0.05 * img.max())[0])
    assert box == dm_sweep.segment_breast(img)[1]

