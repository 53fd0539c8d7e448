"""Lesion geometry for the patch sampler and the recipes.

Lesion geometry for the patch sampler and the recipes: the largest-contour box of an ROI
mask, patch/ROI overlap and the background rule, patch extraction, and blob-detector key
points (hard negatives).
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from dm_errors import InputError
from dm_sweep import Bbox, add_img_margins, crop_img, segment_breast


class EmptyMaskError(InputError):
    """An ROI mask has no foreground pixel."""


# ----------------------------------------------------------------------------- ROI geometry
def largest_contour_bbox(mask: np.ndarray) -> Bbox:
    """Bounding box (x, y, w, h) of the largest external contour of a mask."""
    m = (mask > 0).astype(np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        raise EmptyMaskError("ROI mask is empty")
    areas = [cv2.contourArea(c) for c in contours]
    idx = int(np.argmax(areas))
    if areas[idx] == 0:  # single pixels / lines: fall back to the largest pixel count
        idx = int(np.argmax([len(c) for c in contours]))
    x, y, w, h = cv2.boundingRect(contours[idx])
    return int(x), int(y), int(w), int(h)


def patch_box(center: tuple[int, int], patch_size: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) of a square patch centred at (x, y), clipped to an image of `shape`."""
    x, y = int(center[0]), int(center[1])
    half = patch_size // 2
    x1, y1 = max(0, x - half), max(0, y - half)
    x2, y2 = min(shape[1], x - half + patch_size), min(shape[0], y - half + patch_size)
    return x1, y1, x2, y2


def patch_roi_overlap(center: tuple[int, int], patch_size: int, roi_mask: np.ndarray,
                      roi_area: int | None = None) -> tuple[float, float]:
    """(intersection / ROI area, intersection / patch area) of a patch and an ROI mask."""
    x1, y1, x2, y2 = patch_box(center, patch_size, roi_mask.shape[:2])
    if roi_area is None:
        roi_area = int(np.count_nonzero(roi_mask))
    patch_area = max(0, x2 - x1) * max(0, y2 - y1)
    if roi_area == 0 or patch_area == 0:
        return 0.0, 0.0
    inter = int(np.count_nonzero(roi_mask[y1:y2, x1:x2]))
    return inter / roi_area, inter / patch_area


def overlap_patch_roi(center: tuple[int, int], patch_size: int, roi_mask: np.ndarray,
                      cutoff: float = 0.5, roi_area: int | None = None) -> bool:
    """True if the patch covers more than `cutoff` of the ROI or the ROI more than `cutoff` of the patch."""
    fr, fp = patch_roi_overlap(center, patch_size, roi_mask, roi_area)
    return fr > cutoff or fp > cutoff


def is_negative(center: tuple[int, int], patch_size: int, roi_masks: Sequence[np.ndarray],
                cutoff: float, roi_areas: Sequence[int] | None = None) -> bool:
    """The sampler's rule for a background patch: it overlaps every ROI by at most `cutoff`
    (of the ROI's area and of its own), so hard negatives of any kind obey one rule."""
    areas = [None] * len(roi_masks) if roi_areas is None else roi_areas
    return not any(overlap_patch_roi(center, patch_size, m, cutoff, a)
                   for m, a in zip(roi_masks, areas))


def extract_patch(img: np.ndarray, center: tuple[int, int], patch_size: int) -> np.ndarray:
    """The patch_size x patch_size patch centred at (x, y); the centre must keep it inside the image."""
    x, y = int(center[0]), int(center[1])
    half = patch_size // 2
    y1, x1 = y - half, x - half
    if y1 < 0 or x1 < 0 or y1 + patch_size > img.shape[0] or x1 + patch_size > img.shape[1]:
        raise InputError(f"patch at {center} of size {patch_size} leaves image of shape {img.shape}")
    return img[y1:y1 + patch_size, x1:x1 + patch_size]


# ----------------------------------------------------------------------------- the sampler's frame
def frame_image(img: np.ndarray, patch_size: int, segment: bool = True) -> tuple[np.ndarray, Bbox]:
    """A full image (at the recipe size) in the frame the patch sampler cuts patches from:
    the breast alone, cropped to its box (`segment`), with half a patch of zeros on every
    side so border pixels get centred patches. Returns (framed image, crop box)."""
    bbox = (0, 0, img.shape[1], img.shape[0])
    if segment:
        img, bbox = segment_breast(img)
    return add_img_margins(img, patch_size // 2), bbox


def frame_mask(mask: np.ndarray, bbox: Bbox, patch_size: int) -> np.ndarray:
    """An ROI mask on the full image's grid in the same frame (0/1: cropped and padded)."""
    return add_img_margins((crop_img(mask, bbox) > 0).astype(np.uint8), patch_size // 2)


# ----------------------------------------------------------------------------- blobs
def create_blob_detector(roi_size: tuple[int, int] = (128, 128), blob_min_area: float = 3,
                         blob_min_int: float = 0.5, blob_max_int: float = 0.95,
                         blob_th_step: float = 10) -> cv2.SimpleBlobDetector:
    """A SimpleBlobDetector filtering by area only, thresholds as fractions of 255."""
    params = cv2.SimpleBlobDetector_Params()
    params.filterByArea = True
    params.minArea = float(blob_min_area)
    params.maxArea = float(roi_size[0] * roi_size[1])
    params.filterByCircularity = False
    params.filterByColor = False
    params.filterByConvexity = False
    params.filterByInertia = False
    params.minThreshold = float(int(blob_min_int * 255))
    params.maxThreshold = float(int(blob_max_int * 255))
    params.thresholdStep = float(blob_th_step)
    return cv2.SimpleBlobDetector_create(params)


def blob_keypoints(img: np.ndarray, detector: cv2.SimpleBlobDetector | None = None) -> list[tuple[int, int]]:
    """(x, y) integer key points of blobs in the image scaled to 8 bits by its maximum."""
    if detector is None:
        detector = create_blob_detector()
    mx = float(img.max())
    if mx <= 0:
        return []
    img8 = (img.astype(np.float32) / mx * 255).astype(np.uint8)
    return [(int(k.pt[0]), int(k.pt[1])) for k in detector.detect(img8)]
