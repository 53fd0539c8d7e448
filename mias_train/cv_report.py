"""The report of a mini-MIAS cross-validation from its out-of-fold predictions.

The report of a mini-MIAS cross-validation (mias_train/cross_validate.py) from its
out-of-fold predictions: pooled AUROCs with clustered bootstrap intervals, confusion
matrices, goals, ROC and learning-curve figures, the lesion overlay, the failure
diagnostics and the heatmap-maximum image score.

Apart from the training so `--report-only` can redo these steps on a finished run from its
saved tables and models.
"""
from __future__ import annotations

import argparse
import pathlib
from typing import Sequence

import numpy as np
import pandas as pd

from dm_output import write_named
from dm_recipe_utils import write_csv
from mias_train.cv_chain import (chain_auroc, chain_bootstrap, chain_difference, chain_lesion_map,
                                 chain_plot_roc)
from mias_train.cv_readouts import TASKS, woman_level


def pooled_aurocs(P: pd.DataFrame, I: pd.DataFrame, n_boot: int, seed: int) -> dict:
    """Network and grey-level baseline AUROCs over all folds' out-of-fold predictions:
    patches resampled by image, images by woman."""
    nb, sd = n_boot, seed
    return dict(
        patch_lesion_vs_background=dict(
            network=chain_bootstrap(P["label"] > 0, P["score"], P["img_id"], nb, sd),
            baseline_mean_grey=chain_bootstrap(P["label"] > 0, P["baseline"], P["img_id"], nb,
                                               sd)),
        image_abnormal_vs_normal=dict(
            network=chain_bootstrap(I["label"] > 0, 1 - I["p_normal"], I["woman"], nb, sd),
            baseline_breast_grey=chain_bootstrap(I["label"] > 0, I["baseline_abnormal"],
                                                 I["woman"], nb, sd)),
        image_malignant_vs_rest=dict(
            network=chain_bootstrap(I["label"] == 2, I["p_malignant"], I["woman"], nb, sd),
            baseline_breast_grey=chain_bootstrap(I["label"] == 2, I["baseline_malignant"],
                                                 I["woman"], nb, sd)))


def confusion(true: Sequence[int], pred: Sequence[int], n: int = 3) -> list[list[int]]:
    """Counts, rows true class, columns predicted class."""
    conf = np.zeros((n, n), int)
    for a, b in zip(true, pred):
        conf[a, b] += 1
    return conf.tolist()


def goals(pooled: dict) -> dict:
    """The run's stated targets, met or not."""
    return dict(
        patch_auroc_ge_0_90=pooled["patch_lesion_vs_background"]["network"]["auroc"] >= 0.90,
        image_abnormal_auroc_ge_0_75=pooled["image_abnormal_vs_normal"]["network"]["auroc"] >= 0.75,
        image_abnormal_ci_low_gt_0_6=pooled["image_abnormal_vs_normal"]["network"]["ci_low"] > 0.6)


def plot_figures(P: pd.DataFrame, I: pd.DataFrame, folds: list[dict], figs: pathlib.Path
                 ) -> dict[str, str]:
    """The pooled out-of-fold ROC (and precision-recall) curves and the folds' learning
    curves in `figs`; their paths by name."""
    figs.mkdir(exist_ok=True)
    chain_plot_roc(I["label"] > 0, 1 - I["p_normal"], figs / "roc_abnormal.png",
                   "mini-MIAS CV, abnormal vs normal (out-of-fold)")
    chain_plot_roc(I["label"] == 2, I["p_malignant"], figs / "roc_malignant.png",
                   "mini-MIAS CV, malignant vs rest (out-of-fold)")
    chain_plot_roc(P["label"] > 0, P["score"], figs / "roc_patches.png",
                   "mini-MIAS CV, lesion vs background patches (out-of-fold)")
    plot_learning_curves(folds, figs / "learning_curves.png")
    return dict(roc_abnormal=str(figs / "roc_abnormal.png"),
                roc_malignant=str(figs / "roc_malignant.png"),
                roc_patches=str(figs / "roc_patches.png"),
                learning_curves=str(figs / "learning_curves.png"))


def plot_learning_curves(folds: list[dict], path: pathlib.Path) -> None:
    """Per fold: patch loss (train and inner validation), patch inner-validation accuracy and
    whole-image inner-validation AUROC by epoch, in three panels."""
    import matplotlib  # deferred for --help (docs/modules.md)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred for --help (docs/modules.md)
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    for f in folds:
        hp, hi = f["patch_history"], f["image_history"]
        # markers: a run of one epoch is a point, not an invisible line
        ax[0].plot(hp["epoch"], hp.get("loss", []), "-o", ms=3, label=f"fold {f['fold']} train")
        if hp.get("val_loss"):
            ax[0].plot(hp["epoch"], hp["val_loss"], "--o", ms=3, mfc="none",
                       color=ax[0].lines[-1].get_color())
        ax[1].plot(hp["epoch"], hp.get("val_accuracy", []), "-o", ms=3, label=f"fold {f['fold']}")
        key = next((k for k in ("val_auroc", "val_auc") if hi.get(k)), None)
        if key:
            ax[2].plot(hi["epoch"], hi[key], "-o", ms=3, label=f"fold {f['fold']}")
    ax[0].set_title("patch loss (solid train, dashed inner val)")
    ax[1].set_title("patch inner-val accuracy (3 classes)")
    ax[2].set_title("whole-image inner-val AUROC (mean OvR)")
    for a in ax:
        a.set_xlabel("epoch")
        a.grid(alpha=.3)
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_named(str(path), lambda tmp: fig.savefig(tmp, dpi=90, format="png"), ".png")
    plt.close(fig)


MIAS_SIDE = 1024     # mini-MIAS images are 1024 x 1024; Info.txt's y counts from the bottom


def lesion_ellipses(rows: pd.DataFrame, img_size: Sequence[int]
                    ) -> list[tuple[float, float, float, float]]:
    """Info.txt's lesion circles (x, y, radius at 1024 x 1024, y up) on an H x W image, as
    (centre x, centre y, semi-axis x, semi-axis y): each axis scaled by its own factor, so
    a circle becomes an ellipse when H != W (as prepare_mias draws the masks)."""
    sy, sx = img_size[0] / MIAS_SIDE, img_size[1] / MIAS_SIDE
    return [(a.x * sx, (MIAS_SIDE - a.y) * sy, a.radius * sx, a.radius * sy)
            for a in rows.itertuples(index=False)]


def in_lesion(row: float, col: float, ellipses: Sequence[tuple[float, float, float, float]]
              ) -> bool:
    """Whether pixel (row, col) lies in one of the lesion ellipses."""
    return any(((col - cx) / rx) ** 2 + ((row - cy) / ry) ** 2 <= 1.0
               for cx, cy, rx, ry in ellipses)


def overlay_figure(img: np.ndarray, heat: np.ndarray,
                   ellipses: Sequence[tuple[float, float, float, float]],
                   peak: tuple[int, int], title: str):
    """The lesion map over the image (NaN: no value, the grey image shows), the marked
    lesions as white outlines, the map's peak as a cross, a title and a colour bar of the
    score; returns the Matplotlib figure."""
    import matplotlib  # deferred for --help (docs/modules.md)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # deferred for --help (docs/modules.md)
    from matplotlib.patches import Ellipse  # deferred for --help (docs/modules.md)
    h, w = img.shape[:2]
    fig, ax = plt.subplots(figsize=(3.2 + 4.0 * w / max(h, w), 0.9 + 4.6 * h / max(h, w)))
    ax.imshow(img, cmap="gray", interpolation="bilinear")
    ax.imshow(np.ma.masked_invalid(heat), cmap="jet", vmin=0.0, vmax=1.0, alpha=0.45,
              interpolation="bilinear")
    for cx, cy, rx, ry in ellipses:
        ax.add_patch(Ellipse((cx, cy), 2 * rx, 2 * ry, fill=False, color="white", lw=1.5))
    ax.plot(peak[1], peak[0], "w+", ms=12, mew=2)
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.axis("off")
    ax.set_title(title, fontsize=9)
    scale = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(0.0, 1.0), "jet")
    fig.colorbar(scale, ax=ax, fraction=0.046, pad=0.03).set_label(   # opaque, unlike the map
        "lesion score 1 - p(background)")
    fig.tight_layout()
    return fig


def find_overlay(args: argparse.Namespace, out: pathlib.Path, I: pd.DataFrame, info: pd.DataFrame,
                 path: pathlib.Path) -> dict | None:
    """The sliding-window lesion map of the fold's patch model on the highest-scored abnormal
    test image whose map peaks inside a marked lesion ("correctly found"), as a figure."""
    import matplotlib.pyplot as plt  # deferred for --help (docs/modules.md)
    cand = I[I["label"] > 0].sort_values("p_normal")
    for r in cand.head(20).itertuples(index=False):
        rows = info[(info["image_id"] == r.image_id) & info["radius"].notna()]
        if rows.empty:
            continue
        ellipses = lesion_ellipses(rows, args.img_size)
        img, heat = chain_lesion_map(str(out / f"fold{r.fold}" / "patch_model.keras"),
                                     str(out / "data" / "full_images" / f"{r.image_id}.png"),
                                     args.patch_size, max(4, args.patch_size // 8))
        peak = np.unravel_index(np.nanargmax(heat), heat.shape)
        if in_lesion(peak[0], peak[1], ellipses):
            rec = dict(path=str(path), image_id=r.image_id, fold=int(r.fold),
                       p_abnormal=round(1 - float(r.p_normal), 4),
                       peak_lesion_score=round(float(np.nanmax(heat)), 4))
            fig = overlay_figure(img, heat, ellipses, peak, (
                f"mini-MIAS {r.image_id}, a test image of fold {r.fold}: sliding-window lesion "
                f"map\nof that fold's patch model; white: lesions of Info.txt, +: the map's "
                f"peak ({rec['peak_lesion_score']:.2f})\nwhole-image p(abnormal) "
                f"{rec['p_abnormal']:.2f}"))
            path.parent.mkdir(parents=True, exist_ok=True)
            write_named(str(path), lambda tmp: fig.savefig(tmp, dpi=100, format="png"), ".png")
            plt.close(fig)
            return rec
    return None


def diagnostics(out: pathlib.Path, info: pd.DataFrame) -> dict:
    """Where the out-of-fold patch and image scores fail (for the README's diagnosis; read
    after the run, never used to choose anything): patch AUROC per lesion kind, size and
    background kind, and image AUROC of benign-only and malignant images against normal."""
    P = pd.read_csv(out / "oof_patches.csv")
    I = pd.read_csv(out / "oof_images.csv")
    idx = pd.read_csv(out / "patches_all" / "patch_index.csv")
    idx["name"] = [pathlib.Path(f).name for f in idx["file"]]
    P = P.merge(idx[["name", "kind", "abn"]], on="name", how="left")
    P["image_id"] = P["img_id"].str.split("_").str[1]
    P["abn"] = pd.to_numeric(P["abn"].astype(str).str.extract(r"(\d+)$")[0], errors="coerce")
    abn = info[info["cls"] != "NORM"].copy()
    abn["abn"] = (abn.groupby("image_id").cumcount() + 1).astype(float)
    P = P.merge(abn[["image_id", "abn", "cls", "radius"]], on=["image_id", "abn"], how="left")
    bkg = P[P["label"] == 0]

    def vs_bkg(mask, negatives=bkg):
        pos = P[mask & (P["label"] > 0)]
        if len(pos) == 0 or len(negatives) == 0:
            return None
        y = np.r_[np.ones(len(pos)), np.zeros(len(negatives))]
        return dict(auroc=round(chain_auroc(y, np.r_[pos["score"], negatives["score"]]), 4),
                    n_lesion_patches=int(len(pos)), n_lesions=int(pos.groupby(
                        ["image_id", "abn"]).ngroups))
    lesion = P["label"] > 0
    r = P["radius"]
    out_d = dict(
        patch_by_class={"malignant": vs_bkg(P["label"] == 1), "benign": vs_bkg(P["label"] == 2)},
        patch_by_mias_class={c: vs_bkg(P["cls"] == c) for c in sorted(abn["cls"].unique())},
        patch_by_radius_at_1024px={"<40": vs_bkg(r < 40), "40-80": vs_bkg((r >= 40) & (r < 80)),
                                   ">=80": vs_bkg(r >= 80)},
        patch_lesion_vs_random_background=vs_bkg(lesion, bkg[bkg["kind"] == "bkg"]),
        patch_lesion_vs_hard_negatives=vs_bkg(lesion, bkg[bkg["kind"] == "hns"]),
        baseline_patch_by_class={})
    for name, lab in (("malignant", 1), ("benign", 2)):
        pos = P[P["label"] == lab]
        y = np.r_[np.ones(len(pos)), np.zeros(len(bkg))]
        out_d["baseline_patch_by_class"][name] = (round(chain_auroc(
            y, np.r_[pos["baseline"], bkg["baseline"]]), 4) if len(pos) and len(bkg) else None)
    normal = I[I["label"] == 0]
    for name, lab in (("benign_vs_normal", 1), ("malignant_vs_normal", 2)):
        pos = I[I["label"] == lab]
        y = np.r_[np.ones(len(pos)), np.zeros(len(normal))]
        out_d[f"image_{name}"] = (round(chain_auroc(
            y, np.r_[1 - pos["p_normal"], 1 - normal["p_normal"]]), 4)
            if len(pos) and len(normal) else None)
    return out_d


def heatmap_max_scores(args: argparse.Namespace, out: pathlib.Path, I: pd.DataFrame, n_boot: int,
                       seed: int, T: pd.DataFrame) -> dict:
    """A fixed second image score from the same out-of-fold patch models, without the
    whole-image classifier: the maximum of the sliding-window lesion map (1 - p(background))
    inside the breast, and of the p(malignant) map (the `max` readouts of `T`, the run's
    readout table, cv_readouts). Tells whether the patch classifier's signal reaches the
    image level when the trained whole-image model does not."""
    test = T[T["part"] == "test"][["image_id", "les_max", "mal_max"]]
    H = I.merge(test.rename(columns={"les_max": "hm_lesion_max", "mal_max": "hm_malignant_max"}),
                on="image_id")
    write_csv(H, out / "oof_images_heatmap.csv")
    return dict(
        stride=max(4, args.patch_size // 4),
        abnormal_vs_normal=chain_bootstrap(H["label"] > 0, H["hm_lesion_max"], H["woman"],
                                           n_boot, seed),
        malignant_vs_rest=chain_bootstrap(H["label"] == 2, H["hm_malignant_max"], H["woman"],
                                          n_boot, seed))


def network_by_woman(I: pd.DataFrame, n_boot: int, seed: int) -> dict:
    """The trained whole-image scores at woman level (her highest image score; positive if
    any of her images is)."""
    return {task: woman_level(label(I["label"].to_numpy()), s.to_numpy(), I["woman"].to_numpy(),
                              n_boot, seed)
            for (task, label), s in zip(TASKS.items(), (1 - I["p_normal"], I["p_malignant"]))}


def compare_runs(I: pd.DataFrame, other: pd.DataFrame, n_boot: int, seed: int) -> dict:
    """This run's trained whole-image scores minus another run's (`--compare-with`) on the
    same images: paired AUROC differences, women resampled."""
    M = I.merge(other, on="image_id", suffixes=("", "_other"))
    if len(M) != len(I):
        raise ValueError(f"--compare-with: {len(I) - len(M)} of this run's images are not in "
                         "the other run")
    y = M["label"].to_numpy()
    return dict(
        n_images=len(M),
        abnormal_vs_normal=chain_difference(y > 0, 1 - M["p_normal"], 1 - M["p_normal_other"],
                                            M["woman"], n_boot, seed),
        malignant_vs_rest=chain_difference(y == 2, M["p_malignant"], M["p_malignant_other"],
                                           M["woman"], n_boot, seed))
