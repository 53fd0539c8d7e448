"""Which image is the other breast of the same woman: the pairs a bilateral model scores.

A bilateral model (`dm_mil`, `--bilateral`) scores a breast together with the same view of
the woman's other breast. The pairs come from one CSV, read by the project's one image-CSV
reader (`dm_listing.read_image_csv`), in either of two layouts:

- a recipe's `images.csv` (or any image list) with `patient_id`, `side` (LEFT/RIGHT) and
  `view` columns: the image of the same woman and view on the other side;
- a list with `path` and `other_path` columns (relative paths are relative to the CSV).

Images are matched by file name, so a class-folder tree of links named like the recipe's
images (`mdb001.png`) finds its pairs in the recipe's table (docs/prediction.md).
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from dm_errors import InputError
from dm_listing import read_image_csv

SIDES = ("LEFT", "RIGHT")


class PairingError(InputError):
    """An image without its other breast, or a pairs file that cannot give pairs."""


def _lower(extra: dict) -> dict[str, str]:
    return {k.lower(): k for k in extra}


def read_pairs(csv_path: str | os.PathLike) -> dict[str, str]:
    """file name -> the path of the other breast's image, both ways, from a pairs CSV."""
    csv_path = os.fspath(csv_path)
    lst = read_image_csv(csv_path, labels=False)
    cols = _lower(lst.extra)
    out: dict[str, str] = {}

    def add(a: str, b: str) -> None:
        for x, y in ((a, b), (b, a)):
            name = os.path.basename(x)
            if name in out and os.path.basename(out[name]) != os.path.basename(y):
                raise PairingError(f"{csv_path}: {name} is paired with both "
                                   f"{os.path.basename(out[name])} and {os.path.basename(y)}")
            out[name] = y

    if "other_path" in cols:
        base = os.path.dirname(csv_path)
        for p, o in zip(lst.paths, lst.extra[cols["other_path"]]):
            if not o:
                raise PairingError(f"{csv_path}: {os.path.basename(p)} has an empty other_path")
            o = o if os.path.isabs(o) else os.path.join(base, o)
            if not os.path.isfile(o):
                raise PairingError(f"{csv_path}: other breast of {os.path.basename(p)} not "
                                   f"found: {o}")
            add(p, o)
        return out
    missing = [c for c in ("patient_id", "side", "view") if c not in cols]
    if missing:
        raise PairingError(f"{csv_path}: cannot pair breasts: give 'path,other_path' columns, "
                           f"or 'patient_id', 'side' and 'view' (missing {', '.join(missing)})")
    key: dict[tuple[str, str, str], str] = {}
    for i, p in enumerate(lst.paths):
        pid, side, view = (lst.extra[cols[c]][i] for c in ("patient_id", "side", "view"))
        side = side.upper()
        if side not in SIDES:
            continue          # unknown side (e.g. an old recipe): this image has no pair
        key.setdefault((pid, view, side), p)
    for (pid, view, side), p in key.items():
        if side == "LEFT" and (pid, view, "RIGHT") in key:
            add(p, key[(pid, view, "RIGHT")])
    return out


def partner_paths(paths: Sequence[str], pairs: dict[str, str], source: str) -> list[str]:
    """The other breast's image of each path; the first image without one is an error."""
    out = []
    for p in paths:
        other = pairs.get(os.path.basename(p))
        if other is None:
            raise PairingError(f"{p}: no other breast of the same woman and view in {source} "
                               "(a bilateral model scores pairs)")
        out.append(other)
    return out


def partner_index(paths: Sequence[str], pairs: dict[str, str], source: str,
                  where: str) -> np.ndarray:
    """For each path, the index in `paths` of its other breast (a training or validation
    set holds both breasts of each woman: the recipes split by woman)."""
    index = {os.path.basename(p): i for i, p in enumerate(paths)}
    others = partner_paths(paths, pairs, source)
    out = np.empty(len(paths), np.int64)
    for i, (p, o) in enumerate(zip(paths, others)):
        j = index.get(os.path.basename(o))
        if j is None:
            raise PairingError(f"{p}: its other breast {os.path.basename(o)} is not in {where} "
                               "(both breasts of a woman belong to the same set)")
        out[i] = j
    return out
