"""Image scores read out of each fold's patch maps, the readout chosen on inner validation.

Multiple-instance readouts (`dm_readouts`: max, top-T% mean, log-sum-exp) of the sliding-
window lesion map (1 - p(background)) and p(malignant) map of each fold's patch classifier,
one view or bilateral (minus the same readout of the woman's other breast), need no
training. There are 24 of them, so picking the best on the pooled test figures would be
optimistic: each fold picks its readout on its own inner-validation women (scored by its
patch model, which never trained on them), then scores its test women with it. Every
candidate's pooled figure is listed too, marked as such (docs/mias.md).
"""
from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from dm_readouts import READOUTS, map_readouts
from mias_train.cv_chain import chain_auroc, chain_bootstrap, chain_difference, chain_lesion_map

MAPS = ("les", "mal")           # 1 - p(background), p(malignant)
TASKS = {"abnormal_vs_normal": lambda y: y > 0, "malignant_vs_rest": lambda y: y == 2}


def one_view() -> list[str]:
    """The one-view readout columns, map_readout."""
    return [f"{m}_{r}" for m in MAPS for r in READOUTS]


def candidates() -> list[str]:
    """Every readout column: map_readout, and its bilateral twin bi_map_readout."""
    return one_view() + [f"bi_{c}" for c in one_view()]


def readout_table(args: argparse.Namespace, out: pathlib.Path, I: pd.DataFrame,
                  val_women: Mapping[int, Sequence[str]]) -> pd.DataFrame:
    """One row per (fold, image) for each fold's test images and inner-validation images,
    every readout of the maps of that fold's patch model; `part` is test or val."""
    stride = max(4, args.patch_size // 4)
    jobs = []
    for k in sorted(I["fold"].unique()):
        val = set(val_women.get(int(k), ()))
        for part, sel in (("test", I["fold"] == k), ("val", I["woman"].isin(val))):
            jobs += [(int(k), part, r) for r in I[sel].itertuples(index=False)]
    rows = []
    for k, part, r in tqdm(jobs, desc="readouts", file=sys.stderr):
        model = str(out / f"fold{k}" / "patch_model.keras")
        path = str(out / "data" / "full_images" / f"{r.image_id}.png")
        les, mal = chain_lesion_map(model, path, args.patch_size, stride, column=-1)[1]
        row = dict(fold=k, part=part, image_id=r.image_id, woman=r.woman, label=int(r.label))
        for name, m in zip(MAPS, (les, mal)):
            row.update({f"{name}_{n}": v for n, v in map_readouts(m).items()})
        rows.append(row)
    T = pd.DataFrame(rows)
    for c in one_view():
        other = T.groupby(["fold", "part", "woman"])[c].transform(
            lambda s: s.iloc[::-1].to_numpy() if len(s) == 2 else np.nan)
        T[f"bi_{c}"] = T[c] - other
    return T


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    ok = np.isfinite(s)
    y, s = y[ok], s[ok]
    return chain_auroc(y, s) if 0 < y.sum() < len(y) else float("nan")


def choose(T: pd.DataFrame, task: str, among: Sequence[str] | None = None) -> dict[int, str]:
    """Each fold's readout with the highest AUROC on its inner-validation images, among
    `among` (default: every candidate; ties: the first in order); a readout undefined for an
    image (a bilateral one without the other breast) counts it out."""
    label = TASKS[task]
    out = {}
    for k, V in T[T["part"] == "val"].groupby("fold"):
        y = label(V["label"].to_numpy())
        scores = {c: _auc(y, V[c].to_numpy(float)) for c in (among or candidates())}
        out[int(k)] = max(scores, key=lambda c: (np.nan_to_num(scores[c], nan=-1.0)))
    return out


def mil_readouts(T: pd.DataFrame, I: pd.DataFrame, n_boot: int, seed: int) -> dict:
    """The chosen readouts' pooled out-of-fold AUROCs (images resampled by woman), their
    paired difference to the run's trained whole-image score and to the trivial readout
    (the lesion map's maximum), at image and woman level,
    and every candidate's pooled figure (not selection-safe: listed so nothing is hidden)."""
    test = T[T["part"] == "test"].set_index("image_id")
    net = {"abnormal_vs_normal": 1 - I.set_index("image_id")["p_normal"],
           "malignant_vs_rest": I.set_index("image_id")["p_malignant"]}
    out: dict = {}
    for task, label in TASKS.items():
        pick = choose(T, task)
        s = _picked(test, pick)
        ok = s.notna()
        ids = s.index[ok]
        y = label(test.loc[ids, "label"].to_numpy())
        w = test.loc[ids, "woman"].to_numpy()
        out[task] = dict(
            chosen_per_fold={str(k): v for k, v in sorted(pick.items())},
            n_images_scored=int(ok.sum()),
            image_level=chain_bootstrap(y, s[ids], w, n_boot, seed),
            woman_level=woman_level(y, s[ids].to_numpy(), w, n_boot, seed),
            minus_network=chain_difference(y, s[ids], net[task].loc[ids], w, n_boot, seed),
            minus_map_max=chain_difference(y, s[ids], test.loc[ids, "les_max"], w, n_boot, seed),
            bilateral_minus_one_view=bilateral_gain(T, test, task, n_boot, seed),
            every_candidate_pooled={c: round(_auc(label(test["label"].to_numpy()),
                                                  test[c].to_numpy(float)), 4)
                                    for c in candidates()})
    return out


def _picked(test: pd.DataFrame, pick: dict[int, str]) -> pd.Series:
    """Each test image's score under its fold's chosen readout."""
    return pd.Series([test.at[i, pick[int(test.at[i, "fold"])]] for i in test.index],
                     index=test.index, dtype=float)


def bilateral_gain(T: pd.DataFrame, test: pd.DataFrame, task: str, n_boot: int,
                   seed: int) -> dict:
    """The best bilateral readout minus the best one-view readout, each chosen per fold on
    inner validation among its own kind, paired on the test images both score."""
    pb = choose(T, task, [f"bi_{c}" for c in one_view()])
    po = choose(T, task, one_view())
    sb, so = _picked(test, pb), _picked(test, po)
    ids = sb.index[sb.notna() & so.notna()]
    y = TASKS[task](test.loc[ids, "label"].to_numpy())
    return dict(chosen_bilateral={str(k): v for k, v in sorted(pb.items())},
                chosen_one_view={str(k): v for k, v in sorted(po.items())},
                **chain_difference(y, sb[ids], so[ids], test.loc[ids, "woman"].to_numpy(),
                                   n_boot, seed))


def woman_level(y: np.ndarray, s: np.ndarray, woman: np.ndarray, n_boot: int,
                seed: int) -> dict:
    """AUROC by woman: a woman is positive if any of her images is, scored by her highest
    image score."""
    W = pd.DataFrame(dict(y=np.asarray(y, bool), s=np.asarray(s, float),
                          w=np.asarray(woman))).groupby("w").agg(y=("y", "max"), s=("s", "max"))
    return chain_bootstrap(W["y"].to_numpy(), W["s"].to_numpy(), W.index.to_numpy(), n_boot,
                           seed)
