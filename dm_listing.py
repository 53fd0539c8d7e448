"""Finding labelled images: class folders, image CSV lists, bit depths, class counts."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
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


@dataclass
class ImageList:
    """Images with their labels when known and any other columns of their list, as text
    (passed through to a predictions CSV)."""

    paths: list[str]
    labels: np.ndarray | None = None
    extra: dict[str, list[str]] = field(default_factory=dict)


def read_image_csv(csv_path: str | os.PathLike, class_list: Sequence[str] | None = None, *,
                   split: str | None = None, labels: bool = True) -> ImageList:
    """The one reader of a CSV listing images (prediction's `--csv`).

    Column names are matched without case or surrounding blanks (a BOM is ignored). The
    image is `path` (relative to the CSV's folder) or, in a recipe's `images.csv`,
    `full_img_file` (a file in `full_images/` beside the CSV); paths are kept as the CSV
    and the CSV's own path give them (a relative CSV path gives relative image paths).
    `label`, optional, is an index or a class name of `class_list`. `split` keeps the rows
    whose `split` column has that value. Every other column is kept as text in `extra`
    (with `labels=False` the label column too: a list read for its images, e.g. pairs).
    Each image must exist, so a bad row fails here with its line, not mid-run.
    """
    t = _csv_rows(os.fspath(csv_path), split)
    label_col = t.label if labels else None
    parsed = None if label_col is None else np.asarray(
        [_label_index((row.get(label_col) or "").strip(), class_list, where)
         for row, where in zip(t.rows, t.where)], np.int64)
    extra = {c: [(r.get(c) or "").strip() for r in t.rows] for c in t.fields
             if c not in (t.path, label_col)}
    return ImageList(t.paths, parsed, extra)


def csv_image_paths(csv_path: str | os.PathLike, split: str | None = None) -> list[str]:
    """The images a CSV lists, found and checked as `read_image_csv` does but without its
    labels: what a tool can check before it knows the class names (before TensorFlow)."""
    return _csv_rows(os.fspath(csv_path), split).paths


@dataclass
class _CsvRows:
    fields: list[str]
    rows: list[dict]
    where: list[str]            # "<csv>: line N" of each row
    path: str                   # the column naming the image
    label: str | None
    paths: list[str]


def _csv_rows(csv_path: str, split: str | None) -> _CsvRows:
    """The rows of an image CSV (after `split`) with their images, each checked to exist."""
    if not os.path.isfile(csv_path):
        raise DatasetError(f"{csv_path}: CSV file not found")
    base = os.path.dirname(csv_path)
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [(c or "").strip() for c in (reader.fieldnames or [])]
        reader.fieldnames = fields
        rows, lines = [], []
        for row in reader:
            rows.append(row)
            lines.append(reader.line_num)   # the file line the row ends on (quoted newlines)
    lower = [c.lower() for c in fields]
    if "path" in lower:
        pcol = fields[lower.index("path")]
    elif "full_img_file" in lower:
        pcol = fields[lower.index("full_img_file")]
        base = os.path.join(base, "full_images")
    else:
        raise DatasetError(f"{csv_path}: expected columns 'path' (or a recipe's "
                           f"'full_img_file'), got {fields}")
    lcol = fields[lower.index("label")] if "label" in lower else None
    if split is not None:
        if "split" not in lower:
            raise DatasetError(f"{csv_path}: --split given but the CSV has no 'split' column")
        scol = fields[lower.index("split")]
        keep = [k for k, r in enumerate(rows) if (r.get(scol) or "").strip() == split]
        rows, lines = [rows[k] for k in keep], [lines[k] for k in keep]
        if not rows:
            raise DatasetError(f"{csv_path}: no rows with split {split!r}")
    if not rows:
        raise DatasetError(f"{csv_path}: no rows")
    paths, where = [], [f"{csv_path}: line {line}" for line in lines]
    for w, row in zip(where, rows):
        p = (row.get(pcol) or "").strip()
        if not p:
            raise DatasetError(f"{w}: empty path")
        p = p if os.path.isabs(p) else os.path.join(base, p)
        if not os.path.isfile(p):
            raise DatasetError(f"{w}: image not found: {p}")
        paths.append(p)
    return _CsvRows(fields, rows, where, pcol, lcol, paths)


def _label_index(text: str, class_list: Sequence[str] | None, where: str) -> int:
    """A label cell as a class index: an integer (checked against the class list when there
    is one) or a class name."""
    if not text:
        raise DatasetError(f"{where}: empty label")
    try:
        k = int(text)
    except ValueError:
        if class_list is None or text not in class_list:
            raise DatasetError(f"{where}: unknown label {text!r}"
                               + (f" (classes {list(class_list)})" if class_list else
                                  " (class names need the class list; use indices)")) from None
        return list(class_list).index(text)
    if k < 0 or (class_list is not None and k >= len(class_list)):
        raise DatasetError(f"{where}: label {k} out of range"
                           + (f" (classes {list(class_list)})" if class_list else ""))
    return k
