"""Tiny synthetic class-folder datasets for trainer tests (not the demo data generator)."""
from __future__ import annotations

import pathlib

import cv2
import numpy as np


def _image(cls: int, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """16-bit grey noise; class 1 adds a bright disc, class 2 a bright square."""
    h, w = size
    img = rng.normal(12000, 3000, size=(h, w)).clip(0, 65535)
    r = max(2, min(h, w) // 6)
    cy, cx = rng.integers(r + 1, h - r - 1), rng.integers(r + 1, w - r - 1)
    yy, xx = np.mgrid[:h, :w]
    if cls == 1:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] += 30000
    elif cls == 2:
        img[cy - r:cy + r, cx - r:cx + r] += 30000
    return img.clip(0, 65535).astype(np.uint16)


def write_class_folders(root, class_list, n_per_class: int, size=(32, 32), seed: int = 0,
                        splits=("train", "val", "test")) -> dict[str, pathlib.Path]:
    """ROOT/<split>/<class>/img_*.png for each split; returns the split folders."""
    rng = np.random.default_rng(seed)
    out = {}
    for split in splits:
        for k, cls in enumerate(class_list):
            d = pathlib.Path(root) / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n_per_class):
                cv2.imwrite(str(d / f"img_{i:03d}.png"), _image(k, size, rng))
        out[split] = pathlib.Path(root) / split
    return out
