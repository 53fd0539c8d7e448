"""Front door: the original's `DMImagePreprocessor`, over the breast segmentation.

The original's `dm_preprocess` name (docs/original.md): `DMImagePreprocessor`, as an
adapter over the project's breast segmentation (`dm_sweep`). The project's preprocessing
lives in `dm_pixels`, `dm_recipe`, `dm_sweep` and `dm_roi`; project code imports from those
rooms, never from here; code written for the original keeps importing this.
"""
from __future__ import annotations

import cv2
import numpy as np

from dm_errors import retired
from dm_sweep import largest_region, segment_breast


class DMImagePreprocessor:
    """The original's preprocessor: breast segmentation and artefact suppression."""

    segment_breast = staticmethod(segment_breast)

    @staticmethod
    def max_pix_val(dtype) -> int:
        """The largest value of an 8- or 16-bit image type."""
        if np.dtype(dtype) not in (np.uint8, np.uint16):
            raise ValueError(f"max_pix_val: 8- or 16-bit images only, got {np.dtype(dtype)}")
        return int(np.iinfo(dtype).max)

    def select_largest_obj(self, img_bin: np.ndarray, lab_val: int = 255,
                           fill_holes: bool = False, smooth_boundary: bool = False,
                           kernel_size: int = 15) -> np.ndarray:
        """A mask (values `lab_val`, the binary image's type) of its largest object
        (`dm_sweep.largest_region`), its holes filled and its boundary opened on request."""
        region, _ = largest_region(img_bin, fill_holes)
        mask = (region > 0).astype(img_bin.dtype) * img_bin.dtype.type(lab_val)
        if smooth_boundary:
            kernel = np.ones((kernel_size, kernel_size), np.uint8)
            mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
        return mask

    def suppress_artifacts(self, img: np.ndarray, global_threshold: float = .05,
                           fill_holes: bool = False, smooth_boundary: bool = True,
                           kernel_size: int = 15) -> tuple[np.ndarray, np.ndarray]:
        """(image with everything but the largest bright object zeroed, its mask, holes
        filled); the threshold is a fraction of the image maximum below 1, else a grey
        level. 8- and 16-bit images; `smooth_boundary=False` skips the opening (the
        original always opened and failed on 16-bit images, docs/fidelity.md)."""
        maxval = self.max_pix_val(img.dtype)
        low = int(img.max() * global_threshold) if global_threshold < 1 else int(global_threshold)
        binary = np.where(img > low, maxval, 0).astype(img.dtype)
        mask = self.select_largest_obj(binary, lab_val=maxval, fill_holes=True,
                                       smooth_boundary=smooth_boundary, kernel_size=kernel_size)
        return cv2.bitwise_and(img, mask), mask

    remove_pectoral = staticmethod(retired(
        "DMImagePreprocessor.remove_pectoral",
        "segment_breast; pectoral removal is not part of this project's recipe "
        "(docs/original.md)"))
    process = staticmethod(retired(
        "DMImagePreprocessor.process",
        "segment_breast, then the training recipe (dm_recipe.preprocess)"))
