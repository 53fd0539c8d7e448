"""The mini-MIAS cross-validation's calls into the project's pipeline.

The cross-validation's calls into the pipeline's stages: the mini-MIAS recipe, the patch
sampler (and its hard-negative mining), the trainers' configs built from values, prediction, AUROC and its bootstrap,
sliding-window maps and localisation. (Image reading, segmentation, figures and output
writing in the other cv_* modules use the shared rooms directly.)

In one module so the cross-validation is seen to run the project's own chain (as
end2end.py does), with no private copy of any stage.
"""
from __future__ import annotations

import argparse
import contextlib
import pathlib
import warnings
from typing import Any, Callable, Iterator, Sequence

import cv2
import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

import dm_dataset
import dm_flags
import dm_listing
import dm_localisation
import dm_localisation_metrics
import dm_overlay
import dm_pairs
import dm_pixels
import image_clf_train
import patch_clf_train
from ddsm_train.sample_patches_combined import sample_patches
from dm_sweep import breast_mask
from mias_train import prepare_mias
from mias_train.cv_split import IMAGE_CLASSES, PATCH_CLASSES


@contextlib.contextmanager
def functions_eagerly(eager: bool) -> Iterator[None]:
    """TensorFlow functions run eagerly inside when `eager` (--quick's training), as they were
    set after. A quick fold trains for a couple of steps per stage, for which tracing and
    optimising each train and test graph takes most of the time; the full run keeps its
    graphs, and so does all scoring after training (maps, localisation), where a graph traced
    once is faster than eager calls."""
    if not eager:
        yield
        return
    import tensorflow as tf  # deferred for --help (docs/modules.md)
    before = tf.config.functions_run_eagerly()
    tf.config.run_functions_eagerly(True)
    try:
        with warnings.catch_warnings():     # tf.data's own functions stay graphs: known
            warnings.filterwarnings("ignore", "Even though the `tf.config.experimental_run")
            yield
    finally:
        tf.config.run_functions_eagerly(before)


def chain_prepare(mias_dir: str, out: pathlib.Path, img_size: tuple[int, int], ids: Sequence[str],
                  seed: int) -> None:
    """The mini-MIAS recipe over all (or the chosen) images; its own split is not used."""
    prepare_mias.prepare(mias_dir, out, img_size=tuple(img_size), seed=seed, ids=ids,
                         verbose=False)


def chain_info(mias_dir: str) -> tuple[pd.DataFrame, Callable[[str], str]]:
    """The parsed Info.txt and the image id -> woman id rule."""
    return prepare_mias.parse_info(pathlib.Path(mias_dir) / "Info.txt"), prepare_mias.woman_id


def chain_sample_patches(data: pathlib.Path, patients: pathlib.Path, out: pathlib.Path,
                         args: argparse.Namespace) -> None:
    """The patch sampler on the given women, all into one folder (no validation split)."""
    sample_patches(data / "roi_mask_path.csv", data / "roi_masks", patients,
                   data / "full_images", out, val_size=0.0,
                   target_size=list(args.img_size), patch_size=args.patch_size,
                   nb_abn=args.nb_abn, nb_bkg=args.nb_bkg, nb_hns=args.nb_hns,
                   class_layout="3class", images_csv=str(data / "images.csv"), seed=args.seed,
                   verbose=False)


def chain_mine(data: pathlib.Path, root: pathlib.Path, model: pathlib.Path,
               women: Sequence[str], val_women: Sequence[str], args: argparse.Namespace
               ) -> pd.DataFrame:
    """Hard negatives mined by the patch `model`, `args.nb_mined` per image of the given
    women, by the patch sampler (`--mine-model`, `dm_hardneg`) and nothing else:
    root/train for the women not in `val_women`, root/val for those in it (each folder's
    patch_index.csv has their centres and scores). Returns one row per mined patch: its
    split, file (class/name) and path."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "women.txt").write_text("".join(f"{w}\n" for w in women))
    (root / "val_women.txt").write_text("".join(f"{w}\n" for w in val_women))
    sample_patches(data / "roi_mask_path.csv", data / "roi_masks", root / "women.txt",
                   data / "full_images", root / "train", root / "val",
                   val_list=str(root / "val_women.txt"), target_size=list(args.img_size),
                   patch_size=args.patch_size, nb_abn=0, nb_bkg=0, nb_hns=0,
                   mine_model=str(model), nb_mined=args.nb_mined, class_layout="3class",
                   images_csv=str(data / "images.csv"), seed=args.seed, verbose=False)
    rows = [dict(split=split, file=f"{p.parent.name}/{p.name}", path=str(p))
            for split in ("train", "val") for p in sorted((root / split).glob("*/*.png"))]
    return pd.DataFrame(rows, columns=["split", "file", "path"])


def chain_list(root: pathlib.Path, classes: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Paths and labels in the order the trainers score a folder."""
    return dm_listing.list_class_folders(root, classes)


def patch_config(d: pathlib.Path, model: pathlib.Path, args: argparse.Namespace,
                 mean: float) -> Any:
    """The patch trainer's config for one fold."""
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


def chain_train_patch(d: pathlib.Path, model: pathlib.Path, args: argparse.Namespace,
                      mean: float) -> dict:
    """Train the fold's patch classifier (its result: history, test probabilities)."""
    return patch_clf_train.run(patch_config(d, model, args, mean))


def chain_trunk_mean(patch_model: pathlib.Path) -> float:
    """The featurewise mean the patch trunk was trained with (its saved recipe): the
    whole-image stage must centre images with it, since the trunk's weights and batch-norm
    statistics assume it (the mean of whole images, mostly dark background, is far lower)."""
    import dm_modelfile  # deferred for --help (docs/modules.md)
    meta = dm_modelfile.read_model_meta(patch_model)
    if meta is None or not meta.recipe.featurewise_center:
        raise RuntimeError(f"{patch_model}: no featurewise-centred recipe stored")
    return float(meta.recipe.featurewise_mean)


def image_config(d: pathlib.Path, patch_model: pathlib.Path, model: pathlib.Path,
                 args: argparse.Namespace, mean: float) -> Any:
    """The whole-image trainer's config for one fold."""
    i1, i2 = args.image_epochs
    return dm_flags.config(
        "image", d / "train", d / "val", d / "test",
        patch_model_state=str(patch_model), patch_net=args.net,
        img_size=list(args.img_size), img_scale=None, rescale_factor=1.0,
        featurewise_center=True, featurewise_mean=float(f"{mean:.4f}"), equalize_hist=False,
        augmentation=args.image_augmentation, class_list=IMAGE_CLASSES, block_type="resnet",
        top_depths=list(args.top_depths), top_repetitions=[1] * len(args.top_depths),
        bottleneck_enlarge_factor=2, batch_size=2 * args.image_batch, train_bs_multiplier=0.5,
        load_train_ram=True, load_val_ram=True,
        # the stage flags are final epoch numbers (docs/fidelity.md)
        nb_epoch=i1, all_layer_epochs=i1 + i2, optim="adam", weight_decay=0.0001,
        weight_decay2=0.0001,
        # all epochs run (early stopping follows val loss, not the selection metric)
        es_patience=i1 + i2, auto_batch_balance=args.image_balance, seed=args.seed,
        best_model=str(model), **image_head(args, d))


def pairs_csv(d: pathlib.Path) -> pathlib.Path:
    """The recipe's pairs of breasts (prepare_mias) from a fold's images folder."""
    return d.parent.parent / "data" / "pairs.csv"


def image_head(args: argparse.Namespace, d: pathlib.Path) -> dict:
    """The whole-image head: the top blocks (lr 0.001, the last stage x0.3), or a
    multiple-instance head (--mil-pooling / --bilateral), whose few weights need a larger
    stage-1 lr (0.01) while its trunk then finetunes gently (x0.01)."""
    if not (args.mil_pooling or args.bilateral):
        return dict(init_lr=0.001, all_layer_multiplier=0.3)
    return dict(mil_pooling=args.mil_pooling or "top", top_fraction=args.top_fraction,
                bilateral=args.bilateral, pairs=str(pairs_csv(d)) if args.bilateral else None,
                init_lr=0.01, all_layer_multiplier=0.01)


def chain_train_image(d: pathlib.Path, patch_model: pathlib.Path, model: pathlib.Path,
                      args: argparse.Namespace, mean: float) -> dict:
    """Train the fold's whole-image classifier on its patch model (two stages)."""
    return image_clf_train.run(image_config(d, patch_model, model, args, mean))


def chain_predict_folder(model_path: pathlib.Path, root: pathlib.Path,
                         classes: Sequence[str], skip: str | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(labels, probs) of a saved model on a class-folder tree, with its stored recipe (the
    whole-image model on its own training images: can it fit them at all?), leaving out
    the files whose name holds `skip` (a patch model on the validation patches that every
    hard-negative round shares)."""
    import dm_scoring  # deferred for --help (docs/modules.md)
    m = dm_scoring.load_models([str(model_path)])[0]
    paths, labels = dm_listing.list_class_folders(root, classes)
    if skip:
        keep = [skip not in pathlib.Path(p).name for p in paths]
        paths, labels = [p for p, k in zip(paths, keep) if k], np.asarray(labels)[keep]
    pairs = None
    if len(m.model.inputs) == 2:        # a bilateral model: each image with its pair
        source = pairs_csv(root.parent)
        pairs = dm_pairs.partner_index(paths, dm_pairs.read_pairs(source), str(source),
                                       str(root))
    ds = dm_dataset.make_dataset(paths, labels, m.recipe(), len(classes), 16, training=False,
                                 pairs=pairs)
    return np.asarray(labels), dm_scoring.predict(m.model, ds)


def chain_auroc(y: ArrayLike, s: ArrayLike) -> float:
    """The project's one AUROC (dm_metrics)."""
    import dm_metrics  # deferred for --help (docs/modules.md)
    return dm_metrics.auroc(y, s)


def chain_bootstrap(y: ArrayLike, s: ArrayLike, groups: ArrayLike, n_boot: int, seed: int
                    ) -> dict:
    """The project's one bootstrap AUROC (dm_metrics) resampling whole groups (all patches
    of an image, both images of a woman), as summary.json records it: 4 digits, with the
    counts of items, positives, groups and resamples that had both classes (`n_valid`)."""
    import dm_metrics  # deferred for --help (docs/modules.md)
    r = dm_metrics.bootstrap_auroc(y, s, n_boot, seed, groups=groups)
    y = np.asarray(y).astype(bool)
    return dict(auroc=round(r["auroc"], 4), ci_low=round(r["ci_low"], 4),
                ci_high=round(r["ci_high"], 4), n=int(len(y)), n_pos=int(y.sum()),
                n_groups=r["n_groups"], n_boot=int(n_boot), n_valid=r["n_boot"] - r["n_skipped"])


def chain_difference(y: ArrayLike, s_new: ArrayLike, s_old: ArrayLike, groups: ArrayLike,
                     n_boot: int, seed: int) -> dict:
    """AUROC(s_new) - AUROC(s_old) on the same images with its paired interval, women
    resampled (dm_metrics), 4 digits."""
    import dm_metrics  # deferred for --help (docs/modules.md)
    r = dm_metrics.bootstrap_auroc_difference(y, s_new, s_old, n_boot, seed, groups=groups)
    return dict(difference=round(r["difference"], 4), ci_low=round(r["ci_low"], 4),
                ci_high=round(r["ci_high"], 4), n_groups=r["n_groups"])


def chain_plot_roc(y: ArrayLike, s: ArrayLike, roc: pathlib.Path, title: str) -> None:
    """ROC curve at `roc`, its precision-recall curve beside it (`*_pr.png`)."""
    import dm_metrics  # deferred for --help (docs/modules.md)
    dm_metrics.plot_curves(y, s, str(roc), str(roc.with_name(roc.stem + "_pr.png")), title=title)


_MODELS: dict = {}


def chain_lesion_map(model_path: str, img_path: str, patch_size: int, stride: int,
                     column: int | None = None) -> tuple[np.ndarray, Any]:
    """Sliding-window lesion score 1 - p(background) (or p(class `column`), or with
    column=-1 both as a pair) of a patch model on the image's grid, NaN outside the breast
    shrunk by half a patch (training patches came from inside the breast; at its edge the
    windows take in the padding and the film border)."""
    import dm_heatmaps  # deferred for --help (docs/modules.md)
    import dm_scoring  # deferred for --help (docs/modules.md)
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
        heat = dm_overlay.place_heatmap(score, img.shape, hm.centre0, stride)
        heat[inside == 0] = np.nan
        return heat
    if column == -1:
        return img, (place(1.0 - hm.probs[..., 0]), place(hm.probs[..., 1]))
    return img, place(1.0 - hm.probs[..., 0] if column is None else hm.probs[..., column])


def chain_localisation(args: argparse.Namespace, out: pathlib.Path, I: pd.DataFrame,
                       n_boot: int, seed: int) -> dict:
    """Out of fold, on the abnormal images with a centre and radius (their masks): each
    fold's sliding-window lesion map and Grad-CAM (of p(malignant)) against the masks
    (docs/localisation.md)."""
    folds = [(str(out / f"fold{k}" / "patch_model.keras"), str(out / f"fold{k}" / "image_model.keras"),
              [str(out / "data" / "full_images" / f"{i}.png")
               for i in I[(I["fold"] == k) & (I["label"] > 0)]["image_id"]])
             for k in sorted(I["fold"].unique())]
    return dm_localisation_metrics.brief(dm_localisation.localise_folds(
        out / "data", out / "localisation", folds, args.patch_size,
        max(4, args.patch_size // 4), list(args.img_size), n_boot=n_boot, seed=seed))
