"""The data split of the mini-MIAS cross-validation: folds by woman.

The data split of the mini-MIAS cross-validation (mias_train/cross_validate.py): image and
woman classes, folds by woman, the inner validation women, and each fold's class folders.

Kept apart from the training so the rule "both breasts of one woman stay in one fold, and a
fold's test women never reach its training" can be read and tested in one place.
"""
from __future__ import annotations

import pathlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np

from dm_recipe_utils import link_or_copy

if TYPE_CHECKING:
    import pandas as pd

IMAGE_CLASSES = ["normal", "benign", "malignant"]
PATCH_CLASSES = ["background", "malignant", "benign"]


def image_classes(info: pd.DataFrame) -> dict[str, str]:
    """Image id -> normal / benign / malignant from the parsed Info.txt (any malignant
    abnormality makes the image malignant)."""
    out = {}
    for img, g in info.groupby("image_id"):
        out[img] = ("malignant" if (g["severity"] == "M").any() else
                    "benign" if (g["cls"] != "NORM").any() else "normal")
    return out


def woman_classes(image_class: dict[str, str], woman_of: dict[str, str]) -> dict[str, int]:
    """A woman's stratum: 2 if any image is malignant, else 1 if any abnormal, else 0."""
    out: dict[str, int] = {}
    for img, c in image_class.items():
        w = woman_of[img]
        out[w] = max(out.get(w, 0), IMAGE_CLASSES.index(c))
    return out


def assign_folds(strata: dict[str, int], k: int, seed: int) -> dict[str, int]:
    """Women -> fold 0..k-1, stratified: each stratum shuffled (seeded) and dealt round-robin,
    continuing the deal across strata so fold sizes differ by at most one."""
    rng = np.random.default_rng(seed)
    out, pos = {}, 0
    for s in sorted(set(strata.values())):
        ws = sorted(w for w, v in strata.items() if v == s)
        for w in (ws[i] for i in rng.permutation(len(ws))):
            out[w] = pos % k
            pos += 1
    return out


def inner_validation(strata: dict[str, int], women: Sequence[str], frac: float,
                     seed: int) -> set[str]:
    """Validation women drawn from the training women, per stratum, at least one from every
    stratum with two or more women (so model selection sees every class)."""
    rng = np.random.default_rng(seed)
    val: set[str] = set()
    for s in sorted({strata[w] for w in women}):
        ws = sorted(w for w in women if strata[w] == s)
        if len(ws) < 2:
            continue
        n = min(len(ws) - 1, max(1, int(round(frac * len(ws)))))
        val.update(ws[i] for i in rng.permutation(len(ws))[:n])
    return val


def pick_women(strata: dict[str, int], n: int, seed: int) -> list[str]:
    """n women spread over the strata (for --max-women)."""
    rng = np.random.default_rng(seed)
    groups = [[w for w in sorted(strata) if strata[w] == s] for s in sorted(set(strata.values()))]
    groups = [[g[i] for i in rng.permutation(len(g))] for g in groups]
    out: list[str] = []
    while len(out) < n and any(groups):
        for g in groups:
            if g and len(out) < n:
                out.append(g.pop(0))
    return sorted(out)


def make_dirs(root: pathlib.Path, classes: Sequence[str]) -> None:
    """Empty train/val/test class folders (a class without items still has its folder)."""
    for split in ("train", "val", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)


def lay_out_fold(fd: pathlib.Path, split_of: Mapping[str, str],
                 img_path: Mapping[str, pathlib.Path], image_class: Mapping[str, str],
                 woman_of: Mapping[str, str], pidx: pd.DataFrame) -> None:
    """The fold's class-folder trees fd/images and fd/patches (hard links), each woman's
    images and patches in her split (train, val or test)."""
    make_dirs(fd / "images", IMAGE_CLASSES)
    for i in img_path:
        link_or_copy(img_path[i],
                     fd / "images" / split_of[woman_of[i]] / image_class[i] / f"{i}.png")
    make_dirs(fd / "patches", PATCH_CLASSES)
    for src, pid, cls, name in zip(pidx["path"], pidx["patient_id"], pidx["class"],
                                   pidx["name"]):
        link_or_copy(pathlib.Path(src), fd / "patches" / split_of[pid] / cls / name)


def add_mined(fd: pathlib.Path, mined: pd.DataFrame, r: int) -> list[pathlib.Path]:
    """Link hard-negative round r's mined patches (`cv_chain.chain_mine`'s index: split,
    class, file, path) into the fold's patch tree fd/patches, in their split (train or
    val: a test woman's image is never mined) and class folder, named after their woman
    with the round in the tag (W001_mdb001_MLO_mined1_0000.png) so rounds add up."""
    if not set(mined["split"]) <= {"train", "val"}:
        raise ValueError(f"mined patches in splits {sorted(set(mined['split']))}: only train "
                         "and val women are mined")
    out = []
    for src, split, f in zip(mined["path"], mined["split"], mined["file"]):
        cls, name = f.split("/")
        dst = fd / "patches" / split / cls / name.replace("_mined_", f"_mined{r}_")
        link_or_copy(pathlib.Path(src), dst)
        out.append(dst)
    return out


@dataclass
class Cohort:
    """The run's images and women, their classes and their folds: what every fold reads."""

    ids: list[str]                  # image ids in the run, sorted
    women: list[str]                # woman ids in the run, sorted
    image_class: dict[str, str]     # image id -> IMAGE_CLASSES name (every image in Info.txt)
    woman_of: dict[str, str]        # image id -> woman id
    strata: dict[str, int]          # woman id -> stratum (woman_classes)
    fold_of: dict[str, int]         # woman id -> fold

    def fold_split(self, k: int, val_frac: float, seed: int
                   ) -> tuple[list[str], set[str], list[str], dict[str, str]]:
        """Fold k's test women, inner validation women, training women, and each woman's
        split (train / val / test); validation women are drawn with seed + k."""
        test_w = sorted(w for w in self.women if self.fold_of[w] == k)
        train_w = sorted(w for w in self.women if self.fold_of[w] != k)
        val_w = inner_validation(self.strata, train_w, val_frac, seed + k)
        split_of = {w: ("test" if w in test_w else "val" if w in val_w else "train")
                    for w in self.women}
        return test_w, val_w, train_w, split_of


def cohort(info: pd.DataFrame, woman_id: Callable[[str], str], folds: int, max_women: int | None,
           seed: int) -> Cohort:
    """The women of the run (all, or --max-women spread over the strata), their images and
    their stratified folds."""
    image_class = image_classes(info)
    woman_of = {img: woman_id(img) for img in image_class}
    strata = woman_classes(image_class, woman_of)
    women = sorted(strata)
    if max_women:
        women = pick_women(strata, max_women, seed)
        strata = {w: strata[w] for w in women}
    ids = sorted(i for i in image_class if woman_of[i] in set(women))
    return Cohort(ids=ids, women=women, image_class=image_class, woman_of=woman_of,
                  strata=strata, fold_of=assign_folds(strata, folds, seed))
