"""The images a prediction tool scores and the predictions file it writes.

The images a prediction tool scores and the file it writes: paths from files, a folder or a
CSV (labels when known, other columns passed through), and the predictions CSV.
"""
from __future__ import annotations

import csv
import dataclasses
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

import dm_listing
import dm_output
import dm_pixels
from dm_errors import InputError


class InferenceError(InputError):
    """Unusable inference input (models that disagree, bad list, bad sizes); one line."""


@dataclass
class InputList:
    """Images to score: paths, optional integer labels, and pass-through columns."""

    paths: list[str]
    labels: np.ndarray | None = None
    extra: dict[str, list[str]] = dataclasses.field(default_factory=dict)


def list_images(root: str) -> list[str]:
    """All images under a folder, recursively, sorted (same extensions as training); hidden
    files and folders (names starting with '.', e.g. macOS `._scan.png`) are skipped."""
    if not os.path.isdir(root):
        raise InferenceError(f"{root}: image folder not found")
    found = dm_listing.image_files(root)
    if not found:
        raise InferenceError(f"{root}: no images ({', '.join(e[1:] for e in dm_pixels.IMAGE_EXTS)})")
    return found


def gather_inputs(images: Sequence[str] | None = None, image_dir: str | None = None,
                  csv_path: str | None = None, class_list: Sequence[str] | None = None,
                  split: str | None = None) -> InputList:
    """Image paths (and labels when known) from exactly one of the three sources.

    A folder whose sub-folders are exactly the class names gives labels (training
    layout); any other folder is listed recursively without labels. A CSV needs a
    `path` column; `label` (index or class name) is optional; other columns (e.g.
    patient_id, side, view) are passed through to the predictions.
    """
    given = [s is not None and s != [] for s in (images, image_dir, csv_path)]
    if sum(given) != 1:
        raise InferenceError("give exactly one of --images, --image-dir, --csv")
    if images:
        bad = [p for p in images if not os.path.isfile(p)]
        if bad:
            raise InferenceError(f"{bad[0]}: image file not found")
        return InputList(list(images))
    if image_dir is not None:
        if class_list and os.path.isdir(image_dir) and all(
                os.path.isdir(os.path.join(image_dir, c)) for c in class_list):
            paths, labels = dm_listing.list_class_folders(image_dir, class_list)
            return InputList(paths, labels)
        return InputList(list_images(image_dir))
    return read_input_csv(csv_path, class_list, split)


def read_input_csv(csv_path: str, class_list: Sequence[str] | None = None,
                   split: str | None = None) -> InputList:
    """A CSV of images: `path` required, `label` optional, other columns kept as text.

    A recipe's own `images.csv` works too: without a `path` column, `full_img_file` names a
    file in the `full_images/` folder beside the CSV (docs/data.md). `split` keeps
    the rows whose `split` column has that value.
    """
    if not os.path.isfile(csv_path):
        raise InferenceError(f"{csv_path}: CSV file not found")
    base = os.path.dirname(os.path.abspath(csv_path))
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in (reader.fieldnames or [])]
        lower = [c.lower() for c in fields]
        rows = list(reader)
    lines = list(range(2, len(rows) + 2))
    if "path" in lower:
        pcol = fields[lower.index("path")]
    elif "full_img_file" in lower:
        pcol = fields[lower.index("full_img_file")]
        base = os.path.join(base, "full_images")
    else:
        raise InferenceError(f"{csv_path}: no 'path' (or recipe 'full_img_file') column "
                             f"(columns: {fields})")
    if split is not None:
        if "split" not in lower:
            raise InferenceError(f"{csv_path}: --split given but the CSV has no 'split' column")
        scol = fields[lower.index("split")]
        keep = [k for k, r in enumerate(rows) if (r.get(scol) or "").strip() == split]
        rows, lines = [rows[k] for k in keep], [lines[k] for k in keep]
        if not rows:
            raise InferenceError(f"{csv_path}: no rows with split {split!r}")
    if not rows:
        raise InferenceError(f"{csv_path}: no rows")
    lcol = fields[lower.index("label")] if "label" in lower else None
    others = [c for c in fields if c not in (pcol, lcol)]
    paths, labels = [], []
    for line, row in zip(lines, rows):
        p = (row.get(pcol) or "").strip()
        if not p:
            raise InferenceError(f"{csv_path}: line {line}: empty path")
        p = p if os.path.isabs(p) else os.path.join(base, p)
        if not os.path.isfile(p):
            raise InferenceError(f"{csv_path}: line {line}: image not found: {p}")
        paths.append(p)
        if lcol is not None:
            labels.append(_parse_label((row.get(lcol) or "").strip(), class_list,
                                       f"{csv_path}: line {line}"))
    extra = {c: [(r.get(c) or "").strip() for r in rows] for c in others}
    return InputList(paths, np.asarray(labels, np.int64) if lcol else None, extra)


def _parse_label(text: str, class_list: Sequence[str] | None, where: str) -> int:
    try:
        k = int(text)
    except ValueError:
        if class_list is None or text not in class_list:
            raise InferenceError(f"{where}: unknown label {text!r}"
                                 + (f" (classes {list(class_list)})" if class_list else "")) from None
        return list(class_list).index(text)
    if k < 0 or (class_list is not None and k >= len(class_list)):
        raise InferenceError(f"{where}: label {k} out of range")
    return k


def write_predictions_csv(path: str, inputs: InputList, probs: np.ndarray,
                          class_list: Sequence[str]) -> None:
    """`path`, one probability column per class name, `label` if known, pass-through columns."""
    if len(set(class_list)) != len(class_list) or {"path", "label"} & set(class_list):
        raise InferenceError(f"class names {list(class_list)} must be unique and not "
                             "'path' or 'label'")
    header = ["path", *class_list]
    if inputs.labels is not None:
        header.append("label")
    extra_cols = [c for c in inputs.extra if c not in header]
    header += extra_cols
    rows = []
    for i, p in enumerate(inputs.paths):
        row = [p, *(f"{v:.8g}" for v in probs[i])]
        if inputs.labels is not None:
            row.append(str(int(inputs.labels[i])))
        row += [inputs.extra[c][i] for c in extra_cols]
        rows.append(row)

    def write(f):
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    dm_output.atomic_write(path, write, text=True)
