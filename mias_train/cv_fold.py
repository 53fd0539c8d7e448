"""One fold of the mini-MIAS cross-validation: train on its women, score its test women.

One fold of the mini-MIAS cross-validation (mias_train/cross_validate.py): lay out its
folders, train the patch classifier (and its hard-negative rounds) and the whole-image
classifier on its training women (model selection on its inner validation women), and score
its test women once.

Separate from the command so what one fold sees, and what it hands to the pooled figures
(its out-of-fold tables and its record), is in one place.
"""
from __future__ import annotations

import argparse
import json
import logging
import pathlib
import time
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from dm_recipe_utils import link_or_copy
from mias_train.cv_baselines import grey_mean, oriented
from mias_train.cv_chain import (chain_auroc, chain_list, chain_mine, chain_predict_folder,
                                 chain_train_image, chain_train_patch, chain_trunk_mean)
from mias_train.cv_split import IMAGE_CLASSES, PATCH_CLASSES, Cohort, add_mined, lay_out_fold

log = logging.getLogger("cross_validate")


def jsonable_history(h: dict) -> dict:
    """A training history's per-epoch lists as rounded floats (for summary.json)."""
    return {k: [round(float(x), 5) for x in v] for k, v in h.items()
            if isinstance(v, (list, tuple)) and all(np.isscalar(x) for x in v)}


def fold_auc(y: ArrayLike, s: ArrayLike) -> float | None:
    """AUROC rounded for the fold record, None when the fold's part has one class only."""
    y = np.asarray(y).astype(bool)
    return round(chain_auroc(y, s), 4) if 0 < y.sum() < len(y) else None


def train_patch_rounds(fd: pathlib.Path, data: pathlib.Path, args: argparse.Namespace,
                       train_grey: Sequence[float], women: Sequence[str],
                       val_women: Sequence[str]) -> tuple[dict, list[dict]]:
    """The fold's patch classifier, then `args.hard_negative_rounds` rounds of hard-negative
    mining (docs/mias.md): each mines `args.nb_mined` windows per image of the fold's
    training and inner-validation `women` (never its test women) with the latest model,
    adds them to those splits' background folders, and trains a new model from scratch on
    the enlarged set, its featurewise mean recomputed on the enlarged training patches.
    `train_grey`: the training patches' mean grey levels. The last model is the fold's
    fd/patch_model.keras, which the rest of the fold uses (each round's is kept as
    patch_model_r<round>.keras). Returns its training result and, with rounds, one record
    per round (round 0: the first model). A round's best validation accuracy is measured on
    a validation set its own mining enlarged; `val_auroc_unmined` (lesion vs background on
    the validation patches without mined ones) compares the rounds on one set."""
    n = args.hard_negative_rounds
    model = [fd / ("patch_model.keras" if n == 0 else f"patch_model_r{r}.keras")
             for r in range(n + 1)]
    grey, rounds = list(train_grey), []
    for r in range(n + 1):
        t0, mined = time.time(), pd.DataFrame(dict(split=[], path=[]))
        if r:
            mined = chain_mine(data, fd / "mined" / f"r{r}", model[r - 1], women,
                               sorted(val_women), args)
            add_mined(fd, mined, r)
            grey += [grey_mean(p, False) for p in mined.loc[mined["split"] == "train", "path"]]
        t_mine = time.time() - t0
        mean = float(np.mean(grey))
        pres = chain_train_patch(fd / "patches", model[r], args, mean)
        t_train = time.time() - t0 - t_mine
        if n:   # the same validation patches every round (its accuracy's set grows)
            yv, pv = chain_predict_folder(model[r], fd / "patches" / "val", PATCH_CLASSES,
                                          skip="_mined")
        rounds.append(dict(round=r, mined_train=int((mined["split"] == "train").sum()),
                           mined_val=int((mined["split"] == "val").sum()),
                           n_train_patches=len(grey), patch_mean=round(mean, 4),
                           best_val_accuracy=best_val_accuracy(pres),
                           val_auroc_unmined=fold_auc(yv > 0, 1 - pv[:, 0]) if n else None,
                           n_val_unmined=len(yv) if n else None,
                           mine_s=round(t_mine, 1), train_s=round(t_train, 1)))
        if r:
            log.info("hard negatives, round %d: %d + %d mined (train + val); lesion vs "
                     "background AUROC on the unmined validation patches %s (round 0: %s)", r,
                     rounds[-1]["mined_train"], rounds[-1]["mined_val"],
                     rounds[-1]["val_auroc_unmined"], rounds[0]["val_auroc_unmined"])
    if n:
        for a, b in ((model[n], fd / "patch_model.keras"),
                     (model[n].with_suffix(".history.csv"), fd / "patch_model.history.csv")):
            link_or_copy(a, b)
    return pres, rounds if n else []


def reuse_patch_model(fd: pathlib.Path, args: argparse.Namespace, k: int) -> dict:
    """--patch-models-from RUN: fold k's patch classifier of another run with the same folds
    and patches (cross_validate checks the settings), linked, not trained again, so two
    runs differ in their whole-image stage only; its history comes from that run's
    summary, its test scores are computed here."""
    src = pathlib.Path(args.patch_models_from)
    link_or_copy(src / f"fold{k}" / "patch_model.keras", fd / "patch_model.keras")
    history = json.loads((src / "summary.json").read_text())["folds"][k]["patch_history"]
    probs = chain_predict_folder(fd / "patch_model.keras", fd / "patches" / "test",
                                 PATCH_CLASSES)[1]
    return dict(history=history, test_probs=probs)


def best_val_accuracy(res: dict) -> float:
    """The best validation accuracy of a patch training (the selected model's), 4 digits."""
    return round(max(res["history"].get("val_accuracy", [0])), 4)


def train_fold(k: int, fd: pathlib.Path, args: argparse.Namespace, cohort: Cohort,
               img_path: Mapping[str, pathlib.Path], img_grey: Mapping[str, float],
               pidx: pd.DataFrame, data: pathlib.Path) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """Fold k in folder fd: (its record for summary.json, its test patches' out-of-fold
    scores, its test images' out-of-fold scores). `pidx` is the patch index of all women
    with each patch's path, file name and mean grey level; `data` the recipe's folder."""
    tf0 = time.time()
    ids, woman_of, image_class = cohort.ids, cohort.woman_of, cohort.image_class
    test_w, val_w, train_w, split_of = cohort.fold_split(k, args.val_frac, args.seed)
    lay_out_fold(fd, split_of, img_path, image_class, woman_of, pidx)
    tr = pidx[[split_of[p] == "train" for p in pidx["patient_id"]]]
    if args.patch_models_from:
        pres, rounds = reuse_patch_model(fd, args, k), []
    else:
        pres, rounds = train_patch_rounds(fd, data, args, tr["grey"], train_w, val_w)
    t_patch = time.time() - tf0
    train_imgs = [i for i in ids if split_of[woman_of[i]] == "train"]
    image_mean = chain_trunk_mean(fd / "patch_model.keras")
    ires = chain_train_image(fd / "images", fd / "patch_model.keras",
                             fd / "image_model.keras", args, image_mean)
    t_image = time.time() - tf0 - t_patch

    # patch-level out-of-fold scores, in the order the trainer scored the test folder
    ppaths, plabels = chain_list(fd / "patches" / "test", PATCH_CLASSES)
    by_name = pidx.set_index("name")
    names = [pathlib.Path(p).name for p in ppaths]
    sign_p = oriented(tr["class"] != "background", tr["grey"])
    pt = pd.DataFrame(dict(fold=k, name=names, label=np.asarray(plabels),
                           img_id=by_name.loc[names, "img_id"].values,
                           score=1.0 - np.asarray(pres["test_probs"][:, 0], np.float64),
                           pred=pres["test_probs"].argmax(-1),
                           baseline=sign_p * by_name.loc[names, "grey"].values))
    # image-level out-of-fold scores
    ipaths, ilabels = chain_list(fd / "images" / "test", IMAGE_CLASSES)
    iid = [pathlib.Path(p).stem for p in ipaths]
    # float64 before any 1 - p: in float32, 1 - p rounds every p below 3e-8 to a tie at 1.0
    # in this run but not when --report-only reads oof_images.csv back (figures would differ)
    probs = np.asarray(ires["test_probs"], np.float64)
    ytr = np.array([IMAGE_CLASSES.index(image_class[i]) for i in train_imgs])
    gtr = np.array([img_grey[i] for i in train_imgs])
    it = pd.DataFrame(dict(fold=k, image_id=iid, woman=[woman_of[i] for i in iid],
                           label=np.asarray(ilabels), p_normal=probs[:, 0],
                           p_benign=probs[:, 1], p_malignant=probs[:, 2],
                           grey=[img_grey[i] for i in iid]))
    it["baseline_abnormal"] = oriented(ytr > 0, gtr) * it["grey"]
    it["baseline_malignant"] = oriented(ytr == 2, gtr) * it["grey"]

    ytr_i, ptr_i = chain_predict_folder(fd / "image_model.keras", fd / "images" / "train",
                                        IMAGE_CLASSES)
    rec = dict(fold=k, test_women=test_w, val_women=sorted(val_w), train_women=train_w,
               n_test_images=len(iid), n_test_patches=len(pt),
               patch_auroc=fold_auc(pt["label"] > 0, pt["score"]),
               patch_auroc_baseline=fold_auc(pt["label"] > 0, pt["baseline"]),
               image_auroc_abnormal=fold_auc(it["label"] > 0, 1 - it["p_normal"]),
               image_auroc_malignant=fold_auc(it["label"] == 2, it["p_malignant"]),
               image_train_auroc_abnormal=fold_auc(ytr_i > 0, 1 - ptr_i[:, 0]),
               image_train_auroc_malignant=fold_auc(ytr_i == 2, ptr_i[:, 2]),
               image_mean=round(image_mean, 4),
               image_auroc_abnormal_baseline=fold_auc(it["label"] > 0, it["baseline_abnormal"]),
               image_auroc_malignant_baseline=fold_auc(it["label"] == 2,
                                                       it["baseline_malignant"]),
               patch_best_val_accuracy=best_val_accuracy(pres),
               patch_epochs_run=len(pres["history"].get("epoch", [])),
               image_epochs_run=len(ires["history"].get("epoch", [])),
               image_best_val_auroc=round(max(ires["history"].get("val_auroc", [0])), 4),
               patch_train_s=round(t_patch, 1), image_train_s=round(t_image, 1),
               fold_s=round(time.time() - tf0, 1),
               patch_history=jsonable_history(pres["history"]),
               image_history=jsonable_history(ires["history"]))
    if rounds:
        rec["patch_rounds"] = rounds
    log.info("fold %d: patch AUROC %s (baseline %s), image abnormal %s (baseline %s), "
             "malignant %s; %.0f s", k, rec["patch_auroc"], rec["patch_auroc_baseline"],
             rec["image_auroc_abnormal"], rec["image_auroc_abnormal_baseline"],
             rec["image_auroc_malignant"], rec["fold_s"])
    return rec, pt, it
