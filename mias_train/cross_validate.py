"""Patient-level k-fold cross-validation of the whole chain on mini-MIAS (docs/mias.md).

    python mias_train/cross_validate.py MIAS_DIR --out runs/mias_cv [--folds 5] [--quick]

The two breasts of one woman (mdb001+mdb002, ...) always stay in one fold. Each fold runs
this project's own chain: the mini-MIAS recipe, the patch sampler, the patch classifier
(from scratch: one stage; docs/fidelity.md), the whole-image classifier (2 stages, classes
normal/benign/malignant), with model selection on an inner validation split of the fold's
training women only; the fold's test women are scored once, by the selected models.

Pooled over the out-of-fold predictions, with bootstrap 95% intervals that resample whole
images (patches) or whole women (images): patch AUROC (lesion vs background, score
1 - p(background)), whole-image AUROC abnormal vs normal (1 - p(normal)) and malignant vs
rest (p(malignant)), each next to a trivial baseline measured in the same run (mean grey
level of the patch / of the breast, its sign chosen on the fold's training part).
Out of fold, the localisation of the abnormal images' lesions (centre and radius) by the
sliding-window map and Grad-CAM (`localisation`, docs/localisation.md).
Writes per-fold figures, learning curves, ROC curves, a lesion overlay and summary.json,
whose content is also the last line printed.
"""
from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys
import time
from typing import Sequence

import numpy as np

if not __package__:  # run as a script from its folder: put the repo root on the path
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import dm_cli  # noqa: E402
import dm_flags  # noqa: E402
from dm_errors import InputError  # noqa: E402
from dm_output import write_json, write_named  # noqa: E402
from dm_recipe_utils import claim_folder, link_or_copy, write_csv  # noqa: E402
import dm_dataset
import dm_listing
import dm_pixels
import dm_localisation_metrics
import dm_heatmaps
import dm_scoring

log = logging.getLogger("cross_validate")

IMAGE_CLASSES = ["normal", "benign", "malignant"]
PATCH_CLASSES = ["background", "malignant", "benign"]


class CrossValidationError(InputError):
    """A flag or folder the cross-validation cannot use."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=dm_cli.HelpFormatter)
    p.add_argument("mias_dir", help="mini-MIAS folder (Info.txt and images/)")
    p.add_argument("--out", "--out-dir", dest="out", default="runs/mias_cv", help="output folder")
    p.add_argument("--folds", type=int, default=5, help="number of folds (by woman)")
    p.add_argument("--val-frac", type=float, default=0.2,
                   help="fraction of each fold's training women used for model selection")
    p.add_argument("--img-size", type=dm_cli.pixels, default=512, help="square image side (mini-MIAS is 1024)")
    p.add_argument("--patch-size", type=dm_cli.pixels, default=64, help="patch side at --img-size")
    p.add_argument("--nb-abn", type=int, default=20, help="patches per lesion")
    p.add_argument("--nb-bkg", type=int, default=20, help="background patches per image")
    p.add_argument("--nb-hns", type=int, default=5, help="of them, hard negatives (blob key points)")
    p.add_argument("--net", default="dm_resnet_14", help="patch net")
    p.add_argument("--nb-init-filter", type=int, default=16, help="filters of the first conv")
    p.add_argument("--patch-epochs", type=int, default=20,
                   help="patch classifier epochs (one stage: from scratch)")
    p.add_argument("--image-epochs", nargs=2, type=int, default=[2, 12], metavar=("TOP", "ALL"),
                   help="whole-image stage lengths (converted to final epoch numbers)")
    p.add_argument("--top-depths", nargs="+", type=int, default=[64, 64],
                   help="whole-image top blocks")
    p.add_argument("--patch-batch", type=int, default=64, help="patch training batch")
    p.add_argument("--image-batch", type=int, default=8, help="whole-image training batch")
    p.add_argument("--image-augmentation", action=argparse.BooleanOptionalAction, default=False,
                   help="augment whole images in training")
    p.add_argument("--image-balance", action=argparse.BooleanOptionalAction, default=False,
                   help="class-balanced whole-image batches (--auto-batch-balance)")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples")
    dm_cli.add_seed_flag(p, "seeds folds, sampling and training")
    p.add_argument("--max-women", type=int, default=None,
                   help="use only this many women (stratified pick; trials and tests)")
    p.add_argument("--fold-limit", type=int, default=None,
                   help="train and score only the first N folds (trials; the pooled figures "
                        "then cover those folds only)")
    p.add_argument("--quick", action="store_true",
                   help="tiny run for tests (well under a minute on 2 cores): 12 women, "
                        "2 folds, 128 px, 1-2 epochs")
    p.add_argument("--report-only", action="store_true",
                   help="only redo the steps after training (overlay, diagnostics, heatmap "
                        "scores) of the finished run in --out")
    return p


QUICK = dict(max_women=12, folds=2, img_size=128, patch_size=32, nb_abn=3, nb_bkg=3, nb_hns=0,
             nb_init_filter=8, patch_epochs=1, image_epochs=[1, 1], top_depths=[16, 16],
             patch_batch=16, image_batch=4, n_boot=100)


# ------------------------------------------------------------------------------ folds
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


# ------------------------------------------------------------------------------ statistics
def cluster_bootstrap(y, s, groups, n_boot: int, seed: int, level: float = 0.95) -> dict:
    """AUROC with a percentile interval from resampling whole groups (images or women) with
    replacement, since items of one group are correlated."""
    y, s, groups = np.asarray(y).astype(bool), np.asarray(s, float), np.asarray(groups)
    point = chain_auroc(y, s)
    uniq, inv = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inv == g) for g in range(len(uniq))]
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        idx = np.concatenate([members[g] for g in rng.integers(0, len(uniq), len(uniq))])
        if 0 < y[idx].sum() < len(idx):
            vals.append(chain_auroc(y[idx], s[idx]))
    a = (1 - level) / 2
    lo, hi = np.quantile(vals, [a, 1 - a]) if vals else (float("nan"),) * 2
    return dict(auroc=round(point, 4), ci_low=round(float(lo), 4), ci_high=round(float(hi), 4),
                n=int(len(y)), n_pos=int(y.sum()), n_groups=int(len(uniq)),
                n_boot=int(n_boot), n_valid=len(vals))


def null_learner(I, n_rep: int, seed: int, n_features: int = 20) -> dict:
    """What a learner without any lesion information scores on these folds: logistic
    regression on noise features, trained on each fold's other images and pooled out of
    fold like the network. Its spread says how far from 0.5 chance alone moves a pooled
    AUROC here; `share_at_or_below` is the one-sided p-value of the network's figure
    against "no signal" (README: below-chance figures)."""
    from sklearn.linear_model import LogisticRegression
    rng = np.random.default_rng(seed)
    folds = I["fold"].to_numpy()
    out = {}
    for task, y, score in (("abnormal_vs_normal", I["label"] > 0, 1 - I["p_normal"]),
                           ("malignant_vs_rest", I["label"] == 2, I["p_malignant"])):
        y = np.asarray(y)
        vals = []
        for _ in range(n_rep):
            X = rng.normal(size=(len(y), n_features))
            s = np.zeros(len(y))
            for k in np.unique(folds):
                tr, te = folds != k, folds == k
                if 0 < y[tr].sum() < tr.sum():
                    s[te] = LogisticRegression(max_iter=500).fit(X[tr], y[tr]).decision_function(X[te])
            vals.append(chain_auroc(y, s))
        vals = np.asarray(vals)
        net = chain_auroc(y, np.asarray(score))
        out[task] = dict(mean=round(float(vals.mean()), 4),
                         q05=round(float(np.quantile(vals, 0.05)), 4),
                         q95=round(float(np.quantile(vals, 0.95)), 4),
                         network=round(net, 4),
                         share_at_or_below=round(float((vals <= net).mean()), 4), n_rep=n_rep)
    return out


def oriented(train_y, train_s) -> float:
    """+1 or -1: the direction in which a baseline feature ranks positives higher on the
    training part (never chosen on test data)."""
    y = np.asarray(train_y).astype(bool)
    if y.all() or not y.any():
        return 1.0
    return 1.0 if chain_auroc(y, np.asarray(train_s, float)) >= 0.5 else -1.0


def grey_mean(path: str, breast_only: bool) -> float:
    """Mean grey level of an image (of its breast region when breast_only)."""
    img = dm_pixels.read_image(path).astype(np.float64)   # the project's one reader
    if breast_only:
        from dm_sweep import breast_mask
        m = breast_mask(img)[0] > 0
        if m.any():
            return float(img[m].mean())
    return float(img.mean())


# ============================================================================== the chain
# Every call into the project's pipeline is in this section: the tools' typed functions
# (recipe, sampler, trainers' configs from values, prediction, heatmaps), as end2end.py.
def chain_prepare(mias_dir: str, out: pathlib.Path, img_size: int, ids, seed: int) -> None:
    """The mini-MIAS recipe over all (or the chosen) images; its own split is not used."""
    from mias_train import prepare_mias
    prepare_mias.prepare(mias_dir, out, img_size=(img_size, img_size), seed=seed, ids=ids,
                         verbose=False)


def chain_info(mias_dir: str):
    from mias_train import prepare_mias
    return prepare_mias.parse_info(pathlib.Path(mias_dir) / "Info.txt"), prepare_mias.woman_id


def chain_sample_patches(data: pathlib.Path, patients: pathlib.Path, out: pathlib.Path,
                         args) -> None:
    """The patch sampler on the given women, all into one folder (no validation split)."""
    from ddsm_train.sample_patches_combined import sample_patches
    sample_patches(data / "roi_mask_path.csv", data / "roi_masks", patients,
                   data / "full_images", out, val_size=0.0,
                   target_size=[args.img_size, args.img_size], patch_size=args.patch_size,
                   nb_abn=args.nb_abn, nb_bkg=args.nb_bkg, nb_hns=args.nb_hns,
                   class_layout="3class", images_csv=str(data / "images.csv"), seed=args.seed,
                   verbose=False)


def chain_list(root: pathlib.Path, classes: Sequence[str]):
    """Paths and labels in the order the trainers score a folder."""
    return dm_listing.list_class_folders(root, classes)


def patch_config(d: pathlib.Path, model: pathlib.Path, args, mean: float):
    """The patch trainer's config for one fold."""
    import dm_flags
    return dm_flags.config(
        "patch", d / "train", d / "val", d / "test",
        net=args.net, nb_init_filter=args.nb_init_filter, init_filter_size=5,
        init_conv_stride=2, pool_size=2, pool_stride=2,
        # no pretrained weights: one stage on all layers, up to --nb-epoch (docs/fidelity.md)
        use_pretrained=False,
        img_size=[args.patch_size, args.patch_size], img_scale=None, rescale_factor=1.0,
        featurewise_center=True, featurewise_mean=float(f"{mean:.4f}"), equalize_hist=False,
        augmentation=True, class_list=PATCH_CLASSES, batch_size=2 * args.patch_batch,
        train_bs_multiplier=0.5, load_train_ram=True, load_val_ram=True,
        nb_epoch=args.patch_epochs, optim="adam", init_lr=0.001, weight_decay=0.0001,
        # no class balancing: the inner validation patches have the training mix, so the
        # best-by-validation-accuracy epoch is not picked from a swinging accuracy; all
        # epochs run (early stopping after 4 of 11 epochs stopped a still-learning net)
        es_patience=args.patch_epochs, seed=args.seed, best_model=str(model))


def chain_train_patch(d: pathlib.Path, model: pathlib.Path, args, mean: float) -> dict:
    import patch_clf_train
    return patch_clf_train.run(patch_config(d, model, args, mean))


def chain_trunk_mean(patch_model: pathlib.Path) -> float:
    """The featurewise mean the patch trunk was trained with (its saved recipe): the
    whole-image stage must centre images with it, since the trunk's weights and batch-norm
    statistics assume it (the mean of whole images, mostly dark background, is far lower)."""
    import dm_modelfile
    meta = dm_modelfile.read_model_meta(patch_model)
    if meta is None or not meta.recipe.featurewise_center:
        raise RuntimeError(f"{patch_model}: no featurewise-centred recipe stored")
    return float(meta.recipe.featurewise_mean)


def image_config(d: pathlib.Path, patch_model: pathlib.Path, model: pathlib.Path, args,
                 mean: float):
    """The whole-image trainer's config for one fold."""
    import dm_flags
    i1, i2 = args.image_epochs
    return dm_flags.config(
        "image", d / "train", d / "val", d / "test",
        patch_model_state=str(patch_model), patch_net=args.net,
        img_size=[args.img_size, args.img_size], img_scale=None, rescale_factor=1.0,
        featurewise_center=True, featurewise_mean=float(f"{mean:.4f}"), equalize_hist=False,
        augmentation=args.image_augmentation, class_list=IMAGE_CLASSES, block_type="resnet",
        top_depths=list(args.top_depths), top_repetitions=[1] * len(args.top_depths),
        bottleneck_enlarge_factor=2, batch_size=2 * args.image_batch, train_bs_multiplier=0.5,
        load_train_ram=True, load_val_ram=True,
        # the stage flags are final epoch numbers (docs/fidelity.md)
        nb_epoch=i1, all_layer_epochs=i1 + i2, optim="adam", init_lr=0.001,
        all_layer_multiplier=0.3, weight_decay=0.0001, weight_decay2=0.0001,
        # all epochs run (early stopping follows val loss, not the selection metric)
        es_patience=i1 + i2, auto_batch_balance=args.image_balance, seed=args.seed,
        best_model=str(model))


def chain_train_image(d: pathlib.Path, patch_model: pathlib.Path, model: pathlib.Path, args,
                      mean: float) -> dict:
    import image_clf_train
    return image_clf_train.run(image_config(d, patch_model, model, args, mean))


def chain_predict_folder(model_path: pathlib.Path, root: pathlib.Path,
                         classes: Sequence[str]):
    """(labels, probs) of a saved model on a class-folder tree, with its stored recipe (the
    whole-image model on its own training images: can it fit them at all?)."""
    m = dm_scoring.load_models([str(model_path)])[0]
    paths, labels = dm_listing.list_class_folders(root, classes)
    ds = dm_dataset.make_dataset(paths, labels, m.recipe(), len(classes), 16, training=False)
    return np.asarray(labels), dm_scoring.predict(m.model, ds)


def chain_auroc(y, s) -> float:
    import dm_metrics
    return dm_metrics.auroc(y, s)


def chain_plot_roc(y, s, roc: pathlib.Path, title: str) -> None:
    import dm_metrics
    dm_metrics.plot_curves(y, s, str(roc), str(roc.with_name(roc.stem + "_pr.png")), title=title)


_MODELS: dict = {}


def chain_lesion_map(model_path: str, img_path: str, patch_size: int, stride: int,
                     column: int | None = None):
    """Sliding-window lesion score 1 - p(background) (or p(class `column`), or with
    column=-1 both as a pair) of a patch model on the image's grid, NaN outside the breast
    shrunk by half a patch (training patches came from inside the breast; at its edge the
    windows take in the padding and the film border)."""
    import cv2
    from dm_sweep import breast_mask
    if model_path not in _MODELS:
        _MODELS.clear()
        _MODELS[model_path] = dm_scoring.load_models([model_path])[0]
    m = _MODELS[model_path]
    img = dm_pixels.read_image(img_path)
    hm = dm_heatmaps.sliding_window_heatmap(m.model, img, m.recipe(), patch_size, stride,
                                             segment=False, batch_size=256)
    inside = cv2.erode(breast_mask(img)[0], np.ones((patch_size, patch_size), np.uint8),
                       borderType=cv2.BORDER_CONSTANT, borderValue=0)

    def place(score):
        heat = dm_heatmaps.place_heatmap(score, img.shape, hm.centre0, stride)
        heat[inside == 0] = np.nan
        return heat
    if column == -1:
        return img, (place(1.0 - hm.probs[..., 0]), place(hm.probs[..., 1]))
    return img, place(1.0 - hm.probs[..., 0] if column is None else hm.probs[..., column])


def chain_localisation(args, out: pathlib.Path, I, n_boot: int, seed: int) -> dict:
    """Out of fold, on the abnormal images with a centre and radius (their masks): each
    fold's sliding-window lesion map and Grad-CAM (of p(malignant)) against the masks
    (docs/localisation.md)."""
    import dm_localisation
    folds = [(str(out / f"fold{k}" / "patch_model.keras"), str(out / f"fold{k}" / "image_model.keras"),
              [str(out / "data" / "full_images" / f"{i}.png")
               for i in I[(I["fold"] == k) & (I["label"] > 0)]["image_id"]])
             for k in sorted(I["fold"].unique())]
    return dm_localisation_metrics.brief(dm_localisation.localise_folds(
        out / "data", out / "localisation", folds, args.patch_size,
        max(4, args.patch_size // 4), [args.img_size] * 2, n_boot=n_boot, seed=seed))


def chain_overlay(img, heat, path: pathlib.Path, circles) -> None:
    import cv2
    out = dm_heatmaps.overlay_heatmap(img, heat, alpha=0.35)
    for cx, cy, r in circles:
        cv2.circle(out, (int(round(cx)), int(round(cy))), int(round(r)), (255, 255, 255), 1)
    dm_pixels.write_png(str(path), out)
# ============================================================================== end of chain


def make_dirs(root: pathlib.Path, classes: Sequence[str]) -> None:
    for split in ("train", "val", "test"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)


def plot_learning_curves(folds: list[dict], path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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


def jsonable_history(h: dict) -> dict:
    return {k: [round(float(x), 5) for x in v] for k, v in h.items()
            if isinstance(v, (list, tuple)) and all(np.isscalar(x) for x in v)}


def run(args) -> dict:
    import pandas as pd
    from tqdm import tqdm

    if args.quick:
        for k, v in QUICK.items():
            if (k == "max_women" and args.max_women is not None) or (k == "folds"
                                                                     and args.folds != 5):
                continue    # given explicitly
            setattr(args, k, v)
    t0 = time.time()
    info, woman_id = chain_info(args.mias_dir)      # bad input stops here, nothing written
    out = claim_folder(args.out, "cross_validate",
                       {k: v for k, v in vars(args).items() if k not in ("out", "report_only")},
                       paths=("mias_dir",))
    image_class = {}
    for img, g in info.groupby("image_id"):
        image_class[img] = ("malignant" if (g["severity"] == "M").any() else
                            "benign" if (g["cls"] != "NORM").any() else "normal")
    woman_of = {img: woman_id(img) for img in image_class}
    strata = woman_classes(image_class, woman_of)
    women = sorted(strata)
    if args.max_women:
        women = pick_women(strata, args.max_women, args.seed)
        strata = {w: strata[w] for w in women}
    ids = sorted(i for i in image_class if woman_of[i] in set(women))
    fold_of = assign_folds(strata, args.folds, args.seed)
    log.info("%d images of %d women, %d folds; image classes %s", len(ids), len(women),
             args.folds, pd.Series([image_class[i] for i in ids]).value_counts().to_dict())

    data = out / "data"
    chain_prepare(args.mias_dir, data, args.img_size, ids, args.seed)
    all_list = out / "women_all.txt"
    all_list.write_text("".join(f"{w}\n" for w in women))
    patches = out / "patches_all"
    chain_sample_patches(data, all_list, patches, args)
    pidx = pd.read_csv(patches / "patch_index.csv")
    pidx["path"] = [str(patches / f) for f in pidx["file"]]
    pidx["name"] = [pathlib.Path(f).name for f in pidx["file"]]
    pidx["grey"] = [grey_mean(p, False) for p in pidx["path"]]
    img_path = {i: data / "full_images" / f"{i}.png" for i in ids}
    img_grey = {i: grey_mean(str(img_path[i]), True) for i in ids}
    t_prep = time.time() - t0
    log.info("data and patches ready in %.0f s: %d patches", t_prep, len(pidx))

    folds, oof_img, oof_patch = [], [], []
    n_run = min(args.folds, args.fold_limit or args.folds)
    for k in tqdm(range(n_run), desc="folds", file=sys.stderr):
        tf0 = time.time()
        fd = out / f"fold{k}"
        test_w = sorted(w for w in women if fold_of[w] == k)
        train_w = sorted(w for w in women if fold_of[w] != k)
        val_w = inner_validation(strata, train_w, args.val_frac, args.seed + k)
        split_of = {w: ("test" if w in test_w else "val" if w in val_w else "train")
                    for w in women}
        assert not (set(test_w) & set(train_w)), "a woman in both the test and training part"
        make_dirs(fd / "images", IMAGE_CLASSES)
        for i in ids:
            link_or_copy(img_path[i],
                         fd / "images" / split_of[woman_of[i]] / image_class[i] / f"{i}.png")
        make_dirs(fd / "patches", PATCH_CLASSES)
        for src, pid, cls, name in zip(pidx["path"], pidx["patient_id"], pidx["class"],
                                       pidx["name"]):
            link_or_copy(pathlib.Path(src), fd / "patches" / split_of[pid] / cls / name)
        tr = pidx[[split_of[p] == "train" for p in pidx["patient_id"]]]
        patch_mean = float(tr["grey"].mean())
        pres = chain_train_patch(fd / "patches", fd / "patch_model.keras", args, patch_mean)
        t_patch = time.time() - tf0
        train_imgs = [i for i in ids if split_of[woman_of[i]] == "train"]
        image_mean = chain_trunk_mean(fd / "patch_model.keras")
        ires = chain_train_image(fd / "images", fd / "patch_model.keras", fd / "image_model.keras",
                                 args, image_mean)
        t_image = time.time() - tf0 - t_patch

        # patch-level out-of-fold scores, in the order the trainer scored the test folder
        ppaths, plabels = chain_list(fd / "patches" / "test", PATCH_CLASSES)
        by_name = pidx.set_index("name")
        names = [pathlib.Path(p).name for p in ppaths]
        sign_p = oriented(tr["class"] != "background", tr["grey"])
        pt = pd.DataFrame(dict(fold=k, name=names, label=np.asarray(plabels),
                               img_id=by_name.loc[names, "img_id"].values,
                               score=1.0 - pres["test_probs"][:, 0],
                               pred=pres["test_probs"].argmax(-1),
                               baseline=sign_p * by_name.loc[names, "grey"].values))
        oof_patch.append(pt)
        # image-level out-of-fold scores
        ipaths, ilabels = chain_list(fd / "images" / "test", IMAGE_CLASSES)
        iid = [pathlib.Path(p).stem for p in ipaths]
        probs = ires["test_probs"]
        ytr = np.array([IMAGE_CLASSES.index(image_class[i]) for i in train_imgs])
        gtr = np.array([img_grey[i] for i in train_imgs])
        it = pd.DataFrame(dict(fold=k, image_id=iid, woman=[woman_of[i] for i in iid],
                               label=np.asarray(ilabels), p_normal=probs[:, 0],
                               p_benign=probs[:, 1], p_malignant=probs[:, 2],
                               grey=[img_grey[i] for i in iid]))
        it["baseline_abnormal"] = oriented(ytr > 0, gtr) * it["grey"]
        it["baseline_malignant"] = oriented(ytr == 2, gtr) * it["grey"]
        oof_img.append(it)

        ytr_i, ptr_i = chain_predict_folder(fd / "image_model.keras", fd / "images" / "train",
                                            IMAGE_CLASSES)

        def fold_auc(y, s):
            y = np.asarray(y).astype(bool)
            return round(chain_auroc(y, s), 4) if 0 < y.sum() < len(y) else None
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
                   patch_best_val_accuracy=(round(max(pres["history"].get("val_accuracy", [0])), 4)),
                   patch_epochs_run=len(pres["history"].get("epoch", [])),
                   image_epochs_run=len(ires["history"].get("epoch", [])),
                   patch_train_s=round(t_patch, 1), image_train_s=round(t_image, 1),
                   fold_s=round(time.time() - tf0, 1),
                   patch_history=jsonable_history(pres["history"]),
                   image_history=jsonable_history(ires["history"]))
        folds.append(rec)
        log.info("fold %d: patch AUROC %s (baseline %s), image abnormal %s (baseline %s), "
                 "malignant %s; %.0f s", k, rec["patch_auroc"], rec["patch_auroc_baseline"],
                 rec["image_auroc_abnormal"], rec["image_auroc_abnormal_baseline"],
                 rec["image_auroc_malignant"], rec["fold_s"])

    P = pd.concat(oof_patch, ignore_index=True)
    I = pd.concat(oof_img, ignore_index=True)
    write_csv(P, out / "oof_patches.csv")
    write_csv(I, out / "oof_images.csv")
    nb, sd = args.n_boot, args.seed
    pooled = dict(
        patch_lesion_vs_background=dict(
            network=cluster_bootstrap(P["label"] > 0, P["score"], P["img_id"], nb, sd),
            baseline_mean_grey=cluster_bootstrap(P["label"] > 0, P["baseline"], P["img_id"], nb, sd)),
        image_abnormal_vs_normal=dict(
            network=cluster_bootstrap(I["label"] > 0, 1 - I["p_normal"], I["woman"], nb, sd),
            baseline_breast_grey=cluster_bootstrap(I["label"] > 0, I["baseline_abnormal"],
                                                   I["woman"], nb, sd)),
        image_malignant_vs_rest=dict(
            network=cluster_bootstrap(I["label"] == 2, I["p_malignant"], I["woman"], nb, sd),
            baseline_breast_grey=cluster_bootstrap(I["label"] == 2, I["baseline_malignant"],
                                                   I["woman"], nb, sd)))
    conf = np.zeros((3, 3), int)
    for a, b in zip(P["label"], P["pred"]):
        conf[a, b] += 1
    img_conf = np.zeros((3, 3), int)
    for a, b in zip(I["label"], I[["p_normal", "p_benign", "p_malignant"]].values.argmax(1)):
        img_conf[a, b] += 1

    figs = out / "figures"
    figs.mkdir(exist_ok=True)
    chain_plot_roc(I["label"] > 0, 1 - I["p_normal"], figs / "roc_abnormal.png",
                   "mini-MIAS CV, abnormal vs normal (out-of-fold)")
    chain_plot_roc(I["label"] == 2, I["p_malignant"], figs / "roc_malignant.png",
                   "mini-MIAS CV, malignant vs rest (out-of-fold)")
    chain_plot_roc(P["label"] > 0, P["score"], figs / "roc_patches.png",
                   "mini-MIAS CV, lesion vs background patches (out-of-fold)")
    plot_learning_curves(folds, figs / "learning_curves.png")
    overlay = find_overlay(args, out, I, info, figs / "overlay.png")
    diag = diagnostics(out, info)
    hm_scores = heatmap_max_scores(args, out, I, nb, sd)
    localisation = chain_localisation(args, out, I, nb, sd)
    null = null_learner(I, 200, sd)

    goals = dict(
        patch_auroc_ge_0_90=pooled["patch_lesion_vs_background"]["network"]["auroc"] >= 0.90,
        image_abnormal_auroc_ge_0_75=pooled["image_abnormal_vs_normal"]["network"]["auroc"] >= 0.75,
        image_abnormal_ci_low_gt_0_6=pooled["image_abnormal_vs_normal"]["network"]["ci_low"] > 0.6)
    summary = dict(
        command="python mias_train/cross_validate.py " + " ".join(sys.argv[1:]),
        config={k: v for k, v in vars(args).items()}, n_images=len(ids), n_women=len(women),
        folds=folds, pooled=pooled, goals=goals, diagnostics=diag,
        image_score_from_patch_heatmap_max=hm_scores, localisation=localisation,
        null_learner=null,
        patch_confusion=dict(classes=PATCH_CLASSES, rows_true_cols_pred=conf.tolist()),
        image_confusion=dict(classes=IMAGE_CLASSES, rows_true_cols_pred=img_conf.tolist()),
        files=dict(roc_abnormal=str(figs / "roc_abnormal.png"),
                   roc_malignant=str(figs / "roc_malignant.png"),
                   roc_patches=str(figs / "roc_patches.png"),
                   learning_curves=str(figs / "learning_curves.png"), overlay=overlay,
                   oof_images=str(out / "oof_images.csv"), oof_patches=str(out / "oof_patches.csv")),
        prep_s=round(t_prep, 1), wall_s=round(time.time() - t0, 1))
    write_json(out / "summary.json", summary)
    return summary


def find_overlay(args, out: pathlib.Path, I, info, path: pathlib.Path) -> dict | None:
    """The sliding-window lesion map of the fold's patch model on the highest-scored abnormal
    test image whose map peaks inside a marked lesion ("correctly found")."""
    cand = I[I["label"] > 0].sort_values("p_normal")
    scale = args.img_size / 1024.0
    for r in cand.head(20).itertuples(index=False):
        rows = info[(info["image_id"] == r.image_id) & info["radius"].notna()]
        if rows.empty:
            continue
        circles = [(a.x * scale, (1024 - a.y) * scale, a.radius * scale)
                   for a in rows.itertuples(index=False)]
        img, heat = chain_lesion_map(str(out / f"fold{r.fold}" / "patch_model.keras"),
                                     str(out / "data" / "full_images" / f"{r.image_id}.png"),
                                     args.patch_size, max(4, args.patch_size // 8))
        peak = np.unravel_index(np.nanargmax(heat), heat.shape)
        hit = any((peak[1] - cx) ** 2 + (peak[0] - cy) ** 2 <= cr ** 2 for cx, cy, cr in circles)
        if hit:
            chain_overlay(img, heat, path, circles)
            return dict(path=str(path), image_id=r.image_id, fold=int(r.fold),
                        p_abnormal=round(1 - float(r.p_normal), 4),
                        peak_lesion_score=round(float(np.nanmax(heat)), 4))
    return None


def diagnostics(out: pathlib.Path, info) -> dict:
    """Where the out-of-fold patch and image scores fail (for the README's diagnosis; read
    after the run, never used to choose anything): patch AUROC per lesion kind, size and
    background kind, and image AUROC of benign-only and malignant images against normal."""
    import pandas as pd
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


def heatmap_max_scores(args, out: pathlib.Path, I, n_boot: int, seed: int) -> dict:
    """A fixed second image score from the same out-of-fold patch models, without the
    whole-image classifier: the maximum of the sliding-window lesion map (1 - p(background))
    inside the breast, and of the p(malignant) map. Tells whether the patch classifier's
    signal reaches the image level when the trained whole-image model does not."""
    import pandas as pd
    from tqdm import tqdm
    stride = max(4, args.patch_size // 4)
    rows = []
    for r in tqdm(sorted(I.itertuples(index=False), key=lambda r: r.fold), desc="heatmaps",
                  file=sys.stderr):
        model = str(out / f"fold{r.fold}" / "patch_model.keras")
        path = str(out / "data" / "full_images" / f"{r.image_id}.png")
        les, mal = chain_lesion_map(model, path, args.patch_size, stride, column=-1)[1]
        rows.append((r.image_id, float(np.nanmax(les)), float(np.nanmax(mal))))
    H = I.merge(pd.DataFrame(rows, columns=["image_id", "hm_lesion_max", "hm_malignant_max"]),
                on="image_id")
    write_csv(H, out / "oof_images_heatmap.csv")
    return dict(
        stride=stride,
        abnormal_vs_normal=cluster_bootstrap(H["label"] > 0, H["hm_lesion_max"], H["woman"],
                                             n_boot, seed),
        malignant_vs_rest=cluster_bootstrap(H["label"] == 2, H["hm_malignant_max"], H["woman"],
                                            n_boot, seed))


def report_only(args) -> dict:
    """Redo the report steps that need no training on a finished run (the overlay and the
    diagnostics) from its saved out-of-fold tables and models; updates summary.json."""
    import pandas as pd
    out = pathlib.Path(args.out)
    if not (out / "summary.json").is_file():
        raise CrossValidationError(f"{out}: no summary.json of a finished run "
                                        "(--report-only redoes the steps after training)")
    summary = json.loads((out / "summary.json").read_text())
    run_args = argparse.Namespace(**summary["config"])
    info, _ = chain_info(run_args.mias_dir)
    I = pd.read_csv(out / "oof_images.csv")
    summary["files"]["overlay"] = find_overlay(run_args, out, I, info,
                                               out / "figures" / "overlay.png")
    summary["diagnostics"] = diagnostics(out, info)
    summary["image_score_from_patch_heatmap_max"] = heatmap_max_scores(
        run_args, out, I, run_args.n_boot, run_args.seed)
    summary["null_learner"] = null_learner(I, 200, run_args.seed)
    summary["localisation"] = chain_localisation(run_args, out, I, run_args.n_boot, run_args.seed)
    write_json(out / "summary.json", summary)
    return summary


def cross_validate(args: argparse.Namespace) -> dict:
    """The command's body: the run (or --report-only), its summary as the last line."""
    if args.folds < 2:
        raise CrossValidationError(f"--folds {args.folds}: need at least 2 folds")
    summary = report_only(args) if args.report_only else run(args)
    sys.stdout.write(json.dumps(summary) + "\n")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    return dm_cli.run_tool("cross_validate", build_parser().parse_args, cross_validate, argv,
                           tensorflow=True)


if __name__ == "__main__":
    sys.exit(main())
