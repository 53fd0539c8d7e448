"""The whole method in one command, on built-in synthetic data or on mini-MIAS.

    python end2end.py                       # synthetic mammograms (seeded), ~10 min on 2 CPUs
    python end2end.py --data mias ../shared/data/mias
    python end2end.py --seeds 5             # seeds S..S+4: one summary with the spread

Each configuration writes its own folder (default: runs/end2end, with the flags that differ
from the defaults appended, e.g. runs/end2end-mias-320x320); a folder holding another
configuration's run is refused in one line. A finished run is not redone: the same command
again says it is complete and where its results are (`--redo` runs it again, replacing its
models, predictions and report). These refusals come before TensorFlow loads.

Steps: data -> patches (docs/method.md) -> patch classifier (3 stages) -> whole-image
classifier (2 stages) -> test AUROC with 4-flip TTA and a bootstrap 95% interval ->
ROC curve, heatmap overlays and the HTML report. Every step calls the same code as the individual
command-line tools; sizes, epochs and nets are flags with small defaults.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import shutil
import sys
import time
from typing import Sequence

import numpy as np
import pandas as pd

import dm_cli
import dm_dataset
import dm_flags
import dm_listing
import dm_localisation
import dm_localisation_metrics
import dm_output
import dm_recipe
import dm_synthetic
import image_clf_train
import patch_clf_train
from ddsm_train.heatmap_score import score
from ddsm_train.sample_patches_combined import sample_patches as sample
from dm_errors import InputError
from dm_evaluate import evaluate
from dm_predict import predict
from dm_recipe_utils import claim_folder
from mias_train import prepare_mias

log = logging.getLogger("end2end")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=dm_cli.HelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", nargs="+", default=["synthetic"], metavar="KIND [PATH]",
                   help="'synthetic', or 'mias PATH' (the mini-MIAS folder)")
    g.add_argument("--out", "--out-dir", default=None,
                   help="output folder (default: runs/end2end plus the flags that differ from "
                        "the defaults, e.g. runs/end2end-mias-320x320)")
    g.add_argument("--n-patients", type=dm_cli.int_at_least(1), default=150,
                   help="synthetic patients (2 views each)")
    dm_cli.add_img_size(g, help="whole-image size (the paper: 1152 896)", default=[288, 224])
    g.add_argument("--patch-size", type=dm_cli.pixels, default=64, help="patch size (the paper: 224)")
    g.add_argument("--nb-abn", type=dm_cli.int_at_least(1), default=10, help="patches per lesion")
    g.add_argument("--nb-bkg", type=dm_cli.int_at_least(1), default=10,
                   help="background patches per image")
    g = p.add_argument_group("models and training")
    g.add_argument("--net", default="dm_resnet_14",
                   help="patch net (a ResNetBuilder net with 16 initial filters by default)")
    g.add_argument("--nb-init-filter", type=dm_cli.int_at_least(1), default=16,
                   help="filters of the first conv layer")
    g.add_argument("--patch-epochs", nargs=3, type=dm_cli.int_at_least(0), default=[1, 1, 6],
                   metavar=("DENSE", "TOP", "ALL"), help="epochs of the 3 patch stages")
    g.add_argument("--image-epochs", nargs=2, type=dm_cli.int_at_least(0), default=[2, 8],
                   metavar=("TOP", "ALL"), help="epochs of the 2 whole-image stages")
    g.add_argument("--top-depths", nargs="+", type=dm_cli.int_at_least(1), default=[64, 64],
                   help="depths of the whole-image top blocks")
    g.add_argument("--batch-size", type=dm_cli.int_at_least(1), default=32,
                   help="batch size of both trainers")
    dm_cli.add_mil_flags(g, "whole-image stage: ")
    dm_cli.add_seed_flag(g, "seeds data, sampling and training")
    g.add_argument("--seeds", nargs="+", type=dm_cli.seed_value, metavar="N | S1 S2",
                   help="run the whole method once per seed: N seeds from --seed on, or the "
                        "seeds listed; OUT/seed-S/ each, and OUT/summary.json with every "
                        "figure's mean, sd, min and max")
    g.add_argument("--mixed-precision", choices=["float16", "bfloat16"],
                   help="train both classifiers in this mixed precision (default float32)")
    g.add_argument("--redo", action="store_true",
                   help="run a finished run again, replacing its models, predictions and "
                        "report (without it, a finished run is only reported)")
    return p


# Folder-name parts of flags that differ from their defaults (the rest: --flag-value).
_NAME_PARTS = {
    "img_size": lambda v: "x".join(map(str, v)),
    "mixed_precision": str,
    "bilateral": lambda v: "bilateral",
    "seed": lambda v: f"seed{v}",
    "seeds": lambda v: f"seeds{v[0]}" if len(v) == 1 else "seeds" + "_".join(map(str, v)),
}
_NOT_CONFIG = ("out", "redo")
# Flags added after runs were made: at their defaults they stay out of the record, so a
# folder made before them is still the same run.
_NEWER = {"mil_pooling": None, "top_fraction": dm_cli.TOP_FRACTION, "bilateral": False}


def run_config(args) -> dict:
    """The flags that define a run (everything but the output folder); a --data path is
    recorded absolute, so a rerun from another working directory is the same run."""
    cfg = {k: v for k, v in sorted(vars(args).items()) if k not in _NOT_CONFIG
           and not (k in _NEWER and v == _NEWER[k])}
    if len(cfg.get("data") or ()) > 1:
        cfg["data"] = [cfg["data"][0]] + [os.path.abspath(d) for d in cfg["data"][1:]]
    return cfg


def default_out(args, parser: argparse.ArgumentParser | None = None) -> str:
    """runs/end2end, plus one part per flag that differs from its default: each
    configuration gets its own folder, so the README's rows run in order on one clone."""
    defaults = vars(dm_cli.namespace(parser or build_parser()))
    defaults["seed"] = dm_cli.DEFAULT_SEED
    parts = [] if args.data[0] == "synthetic" else [args.data[0]]
    for k, v in run_config(args).items():
        if k == "data" or v == defaults.get(k) or v is None:
            continue
        show = _NAME_PARTS.get(k)
        parts.append(show(v) if show else k.replace("_", "-") + "-" + (
            "x".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)))
    return "-".join(["runs/end2end"] + parts)


def seed_list(args) -> list[int]:
    """--seeds N: N seeds from --seed on; --seeds S1 S2 ...: those."""
    if len(args.seeds) == 1:
        if args.seeds[0] < 1:
            raise InputError(f"--seeds {args.seeds[0]}: give a number of seeds >= 1 or a list")
        return [args.seed + i for i in range(args.seeds[0])]
    if len(set(args.seeds)) != len(args.seeds):
        raise InputError(f"--seeds {' '.join(map(str, args.seeds))}: a seed is repeated")
    return list(args.seeds)


def spread(summaries: Sequence[dict]) -> dict:
    """Mean, sd, min, max and n of every numeric leaf of the per-seed summaries (nested
    dicts followed, lists, strings and booleans skipped; NaN and missing values left out)."""
    out: dict = {}
    keys = list(dict.fromkeys(k for s in summaries if isinstance(s, dict) for k in s))
    for k in keys:
        vals = [s.get(k) for s in summaries if isinstance(s, dict)]
        if any(isinstance(v, dict) for v in vals):
            sub = spread([v for v in vals if isinstance(v, dict)])
            if sub:
                out[k] = sub
            continue
        nums = [float(v) for v in vals if isinstance(v, (int, float, np.number))
                and not isinstance(v, (bool, np.bool_)) and np.isfinite(v)]
        if nums:
            a = np.asarray(nums)
            out[k] = dict(mean=float(a.mean()), sd=float(a.std(ddof=1)) if len(a) > 1 else 0.0,
                          min=float(a.min()), max=float(a.max()), n=len(a))
    return out


def check_data(args) -> None:
    """--data: 'synthetic', or 'mias PATH' with PATH a mini-MIAS folder."""
    kind = args.data[0]
    if kind == "synthetic" and len(args.data) == 1:
        return
    if kind == "mias":
        if len(args.data) != 2:
            raise InputError("--data mias needs the mini-MIAS folder: --data mias PATH")
        prepare_mias.check_source(args.data[1])
        return
    raise InputError(f"unknown --data {' '.join(args.data)!r}: use 'synthetic' or 'mias PATH'")


def prepare_data(args, data_dir: pathlib.Path) -> None:
    check_data(args)
    if args.data[0] == "synthetic":
        dm_synthetic.generate_dataset(data_dir, n_patients=args.n_patients,
                                      img_size=tuple(args.img_size), seed=args.seed,
                                      **({"bilateral": True} if args.bilateral else {}))
    else:
        prepare_mias.prepare(args.data[1], data_dir, img_size=tuple(args.img_size),
                             seed=args.seed)


def pairs_file(args, data: pathlib.Path) -> str | None:
    """Where a bilateral run finds each breast's pair: the synthetic recipe's images.csv
    (patient, side, view), mini-MIAS's pairs.csv; None for a one-view run."""
    if not args.bilateral:
        return None
    return str(data / ("images.csv" if args.data[0] == "synthetic" else "pairs.csv"))


def image_head(args, data: pathlib.Path) -> dict:
    """The whole-image trainer's head options: the original's top blocks (lr 0.001, the
    last stage x0.3), or a multiple-instance head, whose few weights need a larger stage-1
    lr (0.01) and whose trunk then finetunes gently (x0.01)."""
    if not (args.mil_pooling or args.bilateral):
        return dict(init_lr=0.001, all_layer_multiplier=0.3)
    return dict(mil_pooling=args.mil_pooling or "top", top_fraction=args.top_fraction,
                bilateral=args.bilateral, pairs=pairs_file(args, data), init_lr=0.01,
                all_layer_multiplier=0.01)


def sample_patches(args, data: pathlib.Path, patches: pathlib.Path) -> None:
    common = dict(target_size=list(args.img_size), patch_size=args.patch_size,
                  nb_abn=args.nb_abn, nb_bkg=args.nb_bkg, class_layout="3class",
                  images_csv=str(data / "images.csv"), seed=args.seed, verbose=False)
    rois, masks, full = data / "roi_mask_path.csv", data / "roi_masks", data / "full_images"
    sample(rois, masks, data / "patients_trainval.txt", full, patches / "train", patches / "val",
           val_list=str(data / "patients_val.txt"), **common)
    sample(rois, masks, data / "patients_test.txt", full, patches / "test",
           patches / "test_val_unused", val_size=0.0, **common)


def evaluate_and_draw(args, out: pathlib.Path, data: pathlib.Path, patch_model: pathlib.Path,
                      image_model: pathlib.Path, n_patch_classes: int) -> dict:
    """predict.py (4-flip TTA) and evaluate.py on the test split, then a sliding-window
    heatmap of the patch classifier and a Grad-CAM overlay of the whole-image classifier
    on the test image the model finds most suspicious."""



    preds = out / "test_predictions.csv"
    predict([image_model], image_dir=str(data / "test"), test_augment=True,
            batch_size=args.batch_size, out=str(preds), pairs=pairs_file(args, data))
    rep = evaluate(preds, out_dir=str(out / "report"), pos_class="pos", seed=args.seed,
                   html=True, model=str(image_model))
    level = rep["levels"][0]
    df = pd.read_csv(preds)
    top = df.sort_values("pos", ascending=False).iloc[0]["path"]
    hm_in = out / "heatmap" / "input"
    if hm_in.exists():
        shutil.rmtree(hm_in)
    hm_in.mkdir(parents=True)
    shutil.copy(top, hm_in / pathlib.Path(top).name)
    stride = max(4, args.patch_size // 4)
    score(hm_in, patch_model, stride=stride, img_size=list(args.img_size),
          out=str(out / "heatmap" / "patch_heatmap.npz"),
          overlay_dir=str(out / "heatmap" / "patch_overlay"))
    score(hm_in, image_model, grad_cam=True, out=str(out / "heatmap" / "gradcam.npz"),
          overlay_dir=str(out / "heatmap" / "gradcam_overlay"), pairs=pairs_file(args, data))
    first = lambda d: str(sorted((out / "heatmap" / d).glob("*.png"))[0])  # noqa: E731
    return dict(ci95=[level["ci_low"], level["ci_high"]], auroc=level["auroc"],
                predictions=str(preds), html=rep["html"],
                roc=level["plots"][0], heatmap=first("patch_overlay"),
                gradcam=first("gradcam_overlay"))


def out_folder(args) -> pathlib.Path:
    """--out, else the configuration's own folder (`default_out`), as the user gave it."""
    return pathlib.Path(args.out or default_out(args))


def folder_config(args) -> dict:
    """What OUT records: the run's flags; with --seeds, the seed list instead of --seed."""
    config = run_config(args)
    if args.seeds is not None:
        config.pop("seed")
        config["seeds"] = seed_list(args)
    return config


def precheck(args) -> int | None:
    """Everything refused or decided before TensorFlow loads: --seeds and --data, an OUT
    that is or holds the data it reads, OUT holding another configuration's run
    (dm_recipe_utils.claim_folder; OUT is claimed here), and a finished run: reported, exit
    status 0 (`--redo` runs it again: its summaries are removed first, so an interrupted
    redo is never taken for a finished run)."""
    if args.seeds is not None:
        seed_list(args)
    check_data(args)
    out = out_folder(args)
    dm_output.check_not_input(out, [("--data folder", d) for d in args.data[1:]], "--out",
                              holds=True)
    claim_folder(out, "end2end", folder_config(args))
    done = out / "summary.json"
    if args.redo:
        for old in [done, *out.glob("seed-*/summary.json")]:
            old.unlink(missing_ok=True)
    elif done.is_file():
        report_finished(out, json.loads(done.read_text()))
        return 0
    return None


def report_finished(out: pathlib.Path, summary: dict) -> None:
    """The lines a finished run gives when it is asked for again."""
    figures = summary.get("spread", summary)
    tta = figures.get("image_test_auroc_tta")
    tta = tta.get("mean") if isinstance(tta, dict) else tta
    said = f" (whole-image test AUROC with TTA {tta:.3f})" if isinstance(tta, float) else ""
    log.info("%s: this run is complete%s; its results: %s. Nothing was run: add --redo to "
             "run it again (its models, predictions and report are replaced)", out, said,
             out / "summary.json")


def run(args) -> dict:
    """The whole pipeline, once or once per seed (--seeds); returns the summary (also
    written to OUT/summary.json). `precheck` first: a finished run returns its summary."""
    if precheck(args) == 0:
        return json.loads((out_folder(args) / "summary.json").read_text())
    return execute(args)


def execute(args) -> dict:
    """`run` after its checks."""
    out = out_folder(args)
    if args.seeds is None:
        return run_one(args, out)
    return run_seeds(args, out)


def run_seeds(args, out: pathlib.Path) -> dict:
    """The pipeline once per seed in OUT/seed-S/, then OUT/summary.json: the per-seed
    summaries and, for every numeric figure, its mean, sd, min and max over the seeds.
    Rerun after an interruption, seeds that finished keep their summaries."""
    import keras  # deferred for --help (docs/modules.md)

    seeds = seed_list(args)
    config = folder_config(args)
    t0 = time.time()
    per_seed: dict[str, dict] = {}
    for i, seed in enumerate(seeds):
        log.info("=== seed %d (%d of %d) ===", seed, i + 1, len(seeds))
        one = argparse.Namespace(**dict(vars(args), seed=seed, seeds=None))
        sub = out / f"seed-{seed}"
        claim_folder(sub, "end2end", run_config(one))
        if (sub / "summary.json").is_file():    # finished before an interruption: kept
            log.info("seed %d finished earlier: its summary %s is kept", seed, sub / "summary.json")
            per_seed[str(seed)] = json.loads((sub / "summary.json").read_text())
            continue
        per_seed[str(seed)] = run_one(one, sub)
        keras.backend.clear_session()
    figures = spread(list(per_seed.values()))
    summary = dict(command=" ".join(["end2end.py"] + sys.argv[1:]) if sys.argv else "",
                   seeds=seeds, config=config, wall_time_s=round(time.time() - t0, 1),
                   spread=figures, per_seed=per_seed)
    dm_output.write_json(out / "summary.json", summary, indent=2)
    for key in ("patch_test_accuracy", "image_test_auroc", "image_test_auroc_tta", "total_s"):
        f = figures.get(key)
        if f:
            log.info("%-22s mean %.3f  sd %.3f  min %.3f  max %.3f  (%d seeds)", key,
                     f["mean"], f["sd"], f["min"], f["max"], f["n"])
    log.info("%d seeds in %.0f s; summary %s", len(seeds), summary["wall_time_s"],
             out / "summary.json")
    return summary


def run_one(args, out: pathlib.Path) -> dict:
    """The whole pipeline with one seed into `out` (already claimed)."""

    data, patches = out / "data", out / "patches"
    timings: dict[str, float] = {}
    t0 = time.time()

    log.info("[1/5] data: %s -> %s", " ".join(args.data), data)
    prepare_data(args, data)
    timings["data_s"] = time.time() - t0

    log.info("[2/5] patches: %d px, %d per lesion, %d background per image -> %s",
             args.patch_size, args.nb_abn, args.nb_bkg, patches)
    t = time.time()
    sample_patches(args, data, patches)
    timings["patches_s"] = time.time() - t

    patch_classes = ["background", "malignant", "benign"]
    ppaths, _ = dm_listing.list_class_folders(patches / "train", patch_classes)
    # the featurewise mean of the 1-2-3 recipe, rescaled by bit depth (dm_dataset.mean_pixel)
    patch_mean, rescale, _ = dm_dataset.mean_pixel(
        ppaths, dm_recipe.Recipe(img_size=(args.patch_size, args.patch_size)))
    log.info("[3/5] patch classifier %s: rescale %.6f, featurewise mean %.2f", args.net,
             rescale, patch_mean)
    t = time.time()
    patch_model = out / "patch_model.keras"
    e1, e2, e3 = args.patch_epochs
    patch_res = patch_clf_train.run(dm_flags.config(
        "patch", patches / "train", patches / "val", patches / "test",
        net=args.net, nb_init_filter=args.nb_init_filter, init_filter_size=5,
        init_conv_stride=2, pool_size=2, pool_stride=2, use_pretrained=True,
        img_size=[args.patch_size, args.patch_size], img_scale=None, rescale_factor=rescale,
        featurewise_center=True, featurewise_mean=float(f"{patch_mean:.4f}"),
        equalize_hist=False, augmentation=True, class_list=patch_classes,
        batch_size=2 * args.batch_size, train_bs_multiplier=0.5, load_train_ram=True,
        load_val_ram=True,
        # the trainers' stage flags are final epoch numbers (docs/fidelity.md)
        nb_epoch=e1, top_layer_epochs=e1 + e2, all_layer_epochs=e1 + e2 + e3,
        optim="adam", init_lr=0.001, top_layer_multiplier=1.0, all_layer_multiplier=1.0,
        weight_decay=0.0001, weight_decay2=0.0001, es_patience=5, seed=args.seed,
        mixed_precision=args.mixed_precision, best_model=str(patch_model)))
    timings["patch_training_s"] = time.time() - t

    ipaths, _ = dm_listing.list_class_folders(data / "train", ["neg", "pos"])
    image_mean = dm_dataset.mean_pixel(ipaths, dm_recipe.Recipe(img_size=tuple(args.img_size),
                                                                rescale_factor=rescale))[0]
    log.info("[4/5] whole-image classifier at %dx%d: featurewise mean %.2f", *args.img_size,
             image_mean)
    t = time.time()
    image_model = out / "image_model.keras"
    i1, i2 = args.image_epochs
    image_res = image_clf_train.run(dm_flags.config(
        "image", data / "train", data / "val", data / "test",
        patch_model_state=str(patch_model), patch_net=args.net, img_size=list(args.img_size),
        img_scale=None, rescale_factor=rescale, featurewise_center=True,
        featurewise_mean=float(f"{image_mean:.4f}"), equalize_hist=False, augmentation=True,
        class_list=["neg", "pos"], block_type="resnet", top_depths=list(args.top_depths),
        top_repetitions=[1] * len(args.top_depths), bottleneck_enlarge_factor=2,
        batch_size=args.batch_size, train_bs_multiplier=0.5, load_train_ram=True,
        load_val_ram=True, nb_epoch=i1, all_layer_epochs=i1 + i2, optim="adam",
        weight_decay=0.0001, weight_decay2=0.0001, es_patience=6,
        auto_batch_balance=True, test_augment=True, seed=args.seed,
        mixed_precision=args.mixed_precision, best_model=str(image_model),
        **image_head(args, data)))
    timings["image_training_s"] = time.time() - t

    log.info("[5/5] evaluation: predictions with TTA, bootstrap interval, curves, heatmaps")
    t = time.time()
    report = evaluate_and_draw(args, out, data, patch_model, image_model, len(patch_classes))
    timings["evaluation_s"] = time.time() - t
    t = time.time()     # heatmaps of the test images with lesions against their masks
    localisation = dm_localisation_metrics.brief(dm_localisation.score_and_localise(
        data, out / "localisation", patch_model, image_model, args.patch_size,
        max(4, args.patch_size // 4), args.img_size, seed=args.seed, report=report["html"]))
    timings["localisation_s"] = time.time() - t
    summary = dict(
        data=" ".join(args.data), mixed_precision=args.mixed_precision,
        img_size=list(args.img_size), patch_size=args.patch_size,
        net=args.net, patch_test_accuracy=patch_res["test_accuracy"],
        image_test_auroc=image_res["test_auroc"],
        image_test_auroc_tta=image_res.get("test_auroc_tta"),
        n_test_images=int(len(image_res["test_labels"])),
        image_test_auroc_tta_ci95=report["ci95"], evaluate_auroc=report["auroc"],
        predictions=report["predictions"], html_report=report["html"],
        roc_curve=report["roc"], heatmap_overlay=report["heatmap"],
        gradcam_overlay=report["gradcam"], localisation=localisation,
        patch_model=str(patch_model), image_model=str(image_model),
        timings={k: round(v, 1) for k, v in timings.items()},
        total_s=round(time.time() - t0, 1))
    dm_output.write_json(out / "summary.json", summary, indent=2)
    log.info("patch test accuracy %.3f; whole-image test AUROC %.3f, with TTA %.3f "
             "(95%% CI %.3f-%.3f, %d images); %.0f s in all",
             summary["patch_test_accuracy"], summary["image_test_auroc"],
             summary["image_test_auroc_tta"], *summary["image_test_auroc_tta_ci95"],
             summary["n_test_images"], summary["total_s"])
    for k in ("patch_model", "image_model", "predictions", "roc_curve", "heatmap_overlay",
              "gradcam_overlay", "html_report"):
        log.info("%-16s %s", k, summary[k])
    log.info("%-16s %s", "summary", out / "summary.json")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Input problems exit 2 with one line; Ctrl-C exits 130 with one line."""
    return dm_cli.run_tool("end2end", build_parser().parse_args, execute, argv, tensorflow=True,
                           resumable=True, precheck=precheck)


if __name__ == "__main__":
    sys.exit(main())
