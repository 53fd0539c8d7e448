"""The images a prediction tool scores and the predictions file it writes.

The images a prediction tool scores and the file it writes: paths from files, a folder or a
CSV (labels when known, other columns passed through; checked once before the models load,
`early_inputs`), and the predictions CSV.
"""
from __future__ import annotations

import csv
import os
from typing import Sequence

import numpy as np

import dm_listing
import dm_output
import dm_pixels
from dm_errors import InputError


class InferenceError(InputError):
    """Unusable inference input (models that disagree, bad list, bad sizes); one line."""


def list_images(root: str, hint: str | None = None) -> list[str]:
    """All images under a folder, recursively, sorted (same extensions as training); hidden
    files and folders (names starting with '.', e.g. macOS `._scan.png`) are skipped.
    `hint`: what to say to a user who gave a file instead."""
    if os.path.isfile(root):
        raise InferenceError(f"{root}: is a file, not a folder of images"
                             + (f" ({hint})" if hint else ""))
    if not os.path.isdir(root):
        raise InferenceError(f"{root}: image folder not found")
    found = dm_listing.image_files(root)
    if not found:
        raise InferenceError(f"{root}: no images ({', '.join(e[1:] for e in dm_pixels.IMAGE_EXTS)})")
    return found


_DIR_HINT = "--image-dir takes a folder; --images takes files"


def _one_source(images, image_dir, csv_path) -> None:
    """Exactly one of the three sources; files given to --images must be files."""
    given = [s is not None and s != [] for s in (images, image_dir, csv_path)]
    if sum(given) != 1:
        raise InferenceError("give exactly one of --images, --image-dir, --csv")
    for p in images or ():
        if os.path.isdir(p):
            raise InferenceError(f"{p}: is a folder, not an image file (--images takes files; "
                                 "--image-dir takes a folder)")
        if not os.path.isfile(p):
            raise InferenceError(f"{p}: image file not found")


def early_inputs(images: Sequence[str] | None = None, image_dir: str | None = None,
                 csv_path: str | None = None, split: str | None = None) -> list[str] | None:
    """The checks of `gather_inputs` that need no model (so no TensorFlow): one source, and
    each file or folder there and of its kind. Returns the images that will be scored, or
    None where that depends on the model's class names (a folder with sub-folders may be
    class folders)."""
    _one_source(images, image_dir, csv_path)
    if images:
        return list(images)
    if csv_path is not None:
        return dm_listing.csv_image_paths(csv_path, split)
    found = list_images(image_dir, _DIR_HINT)
    if any(e.is_dir() and not e.name.startswith(".") for e in os.scandir(image_dir)):
        return None
    return found


def gather_inputs(images: Sequence[str] | None = None, image_dir: str | None = None,
                  csv_path: str | None = None, class_list: Sequence[str] | None = None,
                  split: str | None = None) -> dm_listing.ImageList:
    """Image paths (and labels when known) from exactly one of the three sources.

    A folder whose sub-folders are exactly the class names gives labels (training
    layout); any other folder is listed recursively without labels. A CSV is read by
    `dm_listing.read_image_csv` (label optional, `split` keeps one split); its other
    columns (e.g. patient_id, side, view) are passed through to the predictions.
    """
    _one_source(images, image_dir, csv_path)
    if images:
        return dm_listing.ImageList(list(images))
    if image_dir is not None:
        if class_list and os.path.isdir(image_dir) and all(
                os.path.isdir(os.path.join(image_dir, c)) for c in class_list):
            paths, labels = dm_listing.list_class_folders(image_dir, class_list)
            return dm_listing.ImageList(paths, labels)
        return dm_listing.ImageList(list_images(image_dir, _DIR_HINT))
    return dm_listing.read_image_csv(csv_path, class_list, split=split)


def write_predictions_csv(path: str, inputs: dm_listing.ImageList, probs: np.ndarray,
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
