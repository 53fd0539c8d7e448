"""Finding labelled images: class folders, image CSV lists, bit depths, class counts."""
from __future__ import annotations

import csv
import os
from typing import Sequence

import numpy as np

from dm_errors import InputError
from dm_pixels import IMAGE_EXTS, header_bit_depth


class DatasetError(InputError):
    """A dataset folder or list is unusable (missing root or class, no images, bad CSV)."""


def is_image_name(name: str) -> bool:
    """An image file by its extension; hidden names (".x", e.g. macOS "._x.png" resource
    forks) are not images and are skipped by every lister."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTS)


def image_files(folder: str | os.PathLike) -> list[str]:
    """Every image under `folder`, recursively and sorted, hidden files and folders skipped:
    the one image lister (class folders, prediction folders)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(os.fspath(folder), followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in filenames if is_image_name(f))
    return sorted(found)


def list_class_folders(root: str | os.PathLike, class_list: Sequence[str]
                       ) -> tuple[list[str], np.ndarray]:
    """All images under ROOT/<class>/** (recursive, whitelisted extensions, sorted).

    The label of an image is the index of its class in `class_list`, never folder order.
    A class folder without images is allowed (see `empty_classes`); no images at all is not.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DatasetError(f"{root}: dataset folder not found")
    if not class_list:
        raise DatasetError(f"{root}: empty class list")
    if len(set(class_list)) != len(class_list):
        raise DatasetError(f"{root}: duplicate class names in class list {list(class_list)}")
    paths: list[str] = []
    labels: list[int] = []
    for k, cls in enumerate(class_list):
        cdir = os.path.join(root, cls)
        if not os.path.isdir(cdir):
            raise DatasetError(f"{cdir}: class folder '{cls}' not found")
        found = image_files(cdir)
        paths.extend(found)
        labels.extend([k] * len(found))
    if not paths:
        raise DatasetError(f"{root}: no images ({', '.join(e[1:] for e in IMAGE_EXTS)}) "
                           f"in class folders {list(class_list)}")
    return paths, np.asarray(labels, dtype=np.int64)


def check_bit_depths(paths: Sequence[str], rescale_factor: float | None) -> set[int]:
    """Check every file's header up front; with a rescale factor, refuse mixed 8/16 bits.

    A single factor (e.g. 255/65535) fits one bit depth only, so a folder mixing 8- and
    16-bit images would be silently mis-scaled.
    """
    seen: dict[int, str] = {}
    for p in paths:
        depth = header_bit_depth(p)
        if depth is not None:
            seen.setdefault(depth, p)
    if rescale_factor is not None and len(seen) > 1:
        raise DatasetError(f"{seen[16]}: 16-bit image among 8-bit ones (e.g. {seen[8]}); one "
                           f"--rescale-factor ({rescale_factor}) cannot fit both: convert them "
                           "to one bit depth or use --img-scale")
    return set(seen)


def class_counts(labels: Sequence[int], class_list: Sequence[str]) -> dict[str, int]:
    """Number of images per class name, in class_list order."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_list))
    return {c: int(counts[i]) for i, c in enumerate(class_list)}


def empty_classes(labels: Sequence[int], class_list: Sequence[str]) -> list[str]:
    """Classes with no images (fine for training, worth a warning; fatal for AUROC)."""
    return [c for c, n in class_counts(labels, class_list).items() if n == 0]


def read_csv_list(csv_path: str | os.PathLike, class_list: Sequence[str] | None = None
                  ) -> tuple[list[str], np.ndarray]:
    """Read a CSV with columns path,label; labels are indices or class names (needs class_list).

    Relative paths are taken relative to the CSV file's folder.
    """
    csv_path = os.fspath(csv_path)
    if not os.path.isfile(csv_path):
        raise DatasetError(f"{csv_path}: CSV file not found")
    base = os.path.dirname(os.path.abspath(csv_path))
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [c.strip().lower() for c in (reader.fieldnames or [])]
        if "path" not in fields or "label" not in fields:
            raise DatasetError(f"{csv_path}: expected columns 'path,label', got {reader.fieldnames}")
        reader.fieldnames = fields
        paths: list[str] = []
        labels: list[int] = []
        for line, row in enumerate(reader, start=2):
            p, lab = (row["path"] or "").strip(), (row["label"] or "").strip()
            if not p:
                raise DatasetError(f"{csv_path}: line {line}: empty path")
            try:
                k = int(lab)
            except ValueError:
                if class_list is None or lab not in class_list:
                    raise DatasetError(f"{csv_path}: line {line}: unknown label {lab!r}"
                                       + ("" if class_list is None else f" (classes {list(class_list)})")
                                       ) from None
                k = list(class_list).index(lab)
            if k < 0 or (class_list is not None and k >= len(class_list)):
                raise DatasetError(f"{csv_path}: line {line}: label {k} out of range")
            paths.append(p if os.path.isabs(p) else os.path.join(base, p))
            labels.append(k)
    if not paths:
        raise DatasetError(f"{csv_path}: no rows")
    return paths, np.asarray(labels, dtype=np.int64)
