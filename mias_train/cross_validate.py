"""Patient-level k-fold cross-validation of the whole chain on mini-MIAS (docs/mias.md).

    python mias_train/cross_validate.py MIAS_DIR --out runs/mias_cv [--folds 5] [--quick]

The two breasts of one woman (mdb001+mdb002, ...) always stay in one fold. Each fold runs
this project's own chain: the mini-MIAS recipe, the patch sampler, the patch classifier
(from scratch: one stage; docs/fidelity.md), the whole-image classifier (2 stages, classes
normal/benign/malignant), with model selection on an inner validation split of the fold's
training women only; the fold's test women are scored once, by the selected models.
With --hard-negative-rounds R, each fold's patch classifier is retrained R times, each time
on its patches plus the background windows the latest one scores highest in its training
and validation women's images (hard negatives, `dm_hardneg`; never its test women's).

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
import os
import pathlib
import sys
import time
from typing import Callable, Sequence

import pandas as pd
from tqdm import tqdm

if not __package__:  # run as a script from its folder: put the repo root on the path
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import dm_cli  # noqa: E402
from dm_errors import InputError  # noqa: E402
from dm_output import write_json  # noqa: E402
from dm_recipe_utils import claim_folder, write_csv  # noqa: E402
from mias_train.cv_baselines import grey_mean, null_learner  # noqa: E402
from mias_train.cv_chain import (  # noqa: E402
    chain_info,
    chain_localisation,
    chain_prepare,
    chain_sample_patches,
    functions_eagerly,
)
from mias_train.cv_fold import train_fold  # noqa: E402
from mias_train.cv_report import (  # noqa: E402
    compare_runs,
    confusion,
    diagnostics,
    find_overlay,
    goals,
    heatmap_max_scores,
    network_by_woman,
    plot_figures,
    pooled_aurocs,
)
from mias_train.cv_readouts import mil_readouts, readout_table  # noqa: E402
from mias_train.cv_split import IMAGE_CLASSES, PATCH_CLASSES, cohort  # noqa: E402

log = logging.getLogger("cross_validate")


class CrossValidationError(InputError):
    """A flag or folder the cross-validation cannot use."""


def build_parser() -> argparse.ArgumentParser:
    """The command's flags (the full run's defaults; --quick replaces some, see QUICK)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=dm_cli.HelpFormatter)
    p.add_argument("mias_dir", help="mini-MIAS folder (Info.txt and images/)")
    p.add_argument("--out", "--out-dir", dest="out", default="runs/mias_cv", help="output folder")
    p.add_argument("--folds", type=int, default=5, help="number of folds (by woman)")
    p.add_argument("--val-frac", type=float, default=0.2,
                   help="fraction of each fold's training women used for model selection")
    dm_cli.add_img_size(p, default=[512, 512], help="resize every image to H x W (mini-MIAS is 1024 x 1024)")
    p.add_argument("--patch-size", type=dm_cli.pixels, default=64, help="patch side at --img-size")
    p.add_argument("--nb-abn", type=int, default=20, help="patches per lesion")
    p.add_argument("--nb-bkg", type=int, default=20, help="background patches per image")
    p.add_argument("--nb-hns", type=int, default=5, help="of them, hard negatives (blob key points)")
    p.add_argument("--hard-negative-rounds", type=int, default=0,
                   help="rounds of hard-negative mining per fold: mine --nb-mined windows per "
                        "image of the training and validation women with the patch model, add "
                        "them as background, retrain it from scratch (0: today's chain)")
    p.add_argument("--nb-mined", type=int, default=10,
                   help="hard negatives mined per image and round (with --hard-negative-rounds)")
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
    dm_cli.add_mil_flags(p, "whole-image stage: ")
    p.add_argument("--patch-models-from", metavar="RUN", default=None,
                   help="take each fold's patch classifier from this finished run (same "
                        "folds, patches and patch settings) instead of training it: runs "
                        "that differ only in their whole-image stage")
    p.add_argument("--compare-with", metavar="RUN", default=None,
                   help="a finished run on the same images: report this run's whole-image "
                        "AUROCs minus that run's, paired, women resampled")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples")
    dm_cli.add_seed_flag(p, "seeds folds, sampling and training")
    p.add_argument("--max-women", type=int, default=None,
                   help="use only this many women (stratified pick; trials and tests)")
    p.add_argument("--fold-limit", type=int, default=None,
                   help="train and score only the first N folds (trials; the pooled figures "
                        "then cover those folds only)")
    p.add_argument("--quick", action="store_true",
                   help="tiny run for tests (about a minute on a busy 2-core machine): 12 "
                        "women, 2 folds, 128 px, one-batch epochs (2 per classifier), one "
                        "hard-negative round, 100 bootstrap resamples, training run eagerly; "
                        "a flag given explicitly keeps its value")
    p.add_argument("--report-only", action="store_true",
                   help="only redo the steps after training (overlay, diagnostics, heatmap "
                        "scores, null learner, localisation) of the finished run in --out")
    p.set_defaults(**RUN_SETTINGS)
    return p


# Settings added after runs were made: at their defaults they are left out of the folder's
# record, so a folder made before them is still the same run.
NEWER_SETTINGS = ("mil_pooling", "top_fraction", "bilateral", "patch_models_from",
                  "compare_with")
# What a full run uses where no flag sets it: the null learner's noise refits (its spread
# needs many), and graph (not eager) TensorFlow functions in training.
RUN_SETTINGS = dict(null_reps=200, eager=False)
# --quick: every stage and output of a run, as small as they still work. 12 women are the
# fewest whose 2 folds each have every class among their inner validation women; 128 px
# with 32 px patches, since with 32 px patches at 96 px some breast had no window inside it
# and at 64 px with 16 px patches no lesion map peaked in a lesion (no overlay); two epochs
# per classifier so learning curves are lines; batches as large as a fold's training part
# (one step per epoch); one hard negative per image so the blob sampler runs; one round of
# hard-negative mining (2 windows per image) so the rounds run; a few null
# learner refits (its figures only need to exist). Its training runs eagerly
# (cv_chain.functions_eagerly): a couple of steps per stage cost less than tracing graphs.
QUICK = dict(max_women=12, folds=2, img_size=[128, 128], patch_size=32, nb_abn=3, nb_bkg=3, nb_hns=1,
             hard_negative_rounds=1, nb_mined=2, nb_init_filter=8, patch_epochs=2,
             image_epochs=[1, 1], top_depths=[16, 16], patch_batch=32, image_batch=8, n_boot=100,
             null_reps=5, eager=True)


def apply_quick(args: argparse.Namespace) -> argparse.Namespace:
    """With --quick, QUICK replaces every setting still at its full-run default (a flag
    given explicitly, with another value, keeps it)."""
    if args.quick:
        defaults = build_parser()
        for k, v in QUICK.items():
            if getattr(args, k) == defaults.get_default(k):
                setattr(args, k, v)
    return args


def check_flags(args: argparse.Namespace) -> None:
    """Refuse impossible values in one line, before anything loads or is written."""
    bad = [(args.folds < 2, f"--folds {args.folds}: need at least 2 folds"),
           (not 0 < args.val_frac < 1, f"--val-frac {args.val_frac}: need a fraction in (0, 1)"),
           (args.max_women is not None and args.max_women < args.folds,
            f"--max-women {args.max_women}: need at least one woman per fold ({args.folds})"),
           (args.fold_limit is not None and args.fold_limit < 1,
            f"--fold-limit {args.fold_limit}: need at least 1"),
           (args.n_boot < 1, f"--n-boot {args.n_boot}: need at least 1 resample"),
           (args.patch_epochs < 1, f"--patch-epochs {args.patch_epochs}: need at least 1"),
           (min(args.image_epochs) < 0 or sum(args.image_epochs) < 1,
            f"--image-epochs {' '.join(map(str, args.image_epochs))}: need stage lengths "
            ">= 0, at least 1 epoch in all"),
           (min(args.patch_batch, args.image_batch, args.nb_init_filter, *args.top_depths) < 1,
            "--patch-batch, --image-batch, --nb-init-filter and --top-depths must be >= 1"),
           (min(args.nb_abn, args.nb_bkg, args.nb_hns) < 0 or args.nb_hns > args.nb_bkg,
            "--nb-abn, --nb-bkg and --nb-hns must be >= 0, --nb-hns at most --nb-bkg"),
           (args.hard_negative_rounds < 0,
            f"--hard-negative-rounds {args.hard_negative_rounds}: need 0 or more"),
           (args.hard_negative_rounds > 0 and args.nb_mined < 1,
            f"--nb-mined {args.nb_mined}: need at least 1 with --hard-negative-rounds")]
    for wrong, problem in bad:
        if wrong:
            raise CrossValidationError(problem)
    for flag, run in (("--patch-models-from", args.patch_models_from),
                      ("--compare-with", args.compare_with)):
        if run and not (pathlib.Path(run) / "summary.json").is_file():
            raise CrossValidationError(f"{flag} {run}: no summary.json of a finished run")
    if args.patch_models_from:
        same_patches(args)


# What two runs must share for one to take the other's patch models.
PATCH_SETTINGS = ("mias_dir", "folds", "val_frac", "img_size", "patch_size", "nb_abn", "nb_bkg",
                  "nb_hns", "hard_negative_rounds", "nb_mined", "net", "nb_init_filter",
                  "patch_epochs", "patch_batch", "seed", "max_women", "quick")


def same_patches(args: argparse.Namespace) -> None:
    """--patch-models-from: the other run's folds and patch settings must be this run's."""
    other = json.loads((pathlib.Path(args.patch_models_from) / "summary.json").read_text())
    other = dict(vars(apply_quick(build_parser().parse_args([args.mias_dir]))),
                 **other["config"])
    if isinstance(other.get("img_size"), int):
        other["img_size"] = [other["img_size"]] * 2
    mine = vars(args)
    diff = [k for k in PATCH_SETTINGS if k != "mias_dir" and other.get(k) != mine.get(k)]
    if os.path.abspath(other["mias_dir"]) != os.path.abspath(args.mias_dir):
        diff.insert(0, "mias_dir")
    if diff:
        raise CrossValidationError(f"--patch-models-from {args.patch_models_from}: its "
                                   f"{', '.join(diff)} differ from this run's")


def claim(args: argparse.Namespace) -> tuple[pd.DataFrame, Callable[[str], str], pathlib.Path]:
    """What can refuse a run, checked before TensorFlow loads: the flags, mini-MIAS's
    Info.txt and the output folder (claimed for this configuration). Returns the parsed
    Info.txt, the image -> woman rule and the output folder."""
    check_flags(args)
    info, woman_id = chain_info(args.mias_dir)      # bad input stops here, nothing written
    # (RUN_SETTINGS follow --quick: left out, a folder claimed before they existed still is;
    # so are the mining settings of a run without rounds)
    unmined = ("hard_negative_rounds", "nb_mined") if not args.hard_negative_rounds else ()
    new = [k for k in NEWER_SETTINGS if getattr(args, k) == build_parser().get_default(k)]
    out = claim_folder(args.out, "cross_validate",
                       {k: v for k, v in vars(args).items()
                        if k not in ("out", "report_only", *RUN_SETTINGS, *unmined, *new)},
                       paths=("mias_dir", "patch_models_from", "compare_with"))
    return info, woman_id, out


def run(args: argparse.Namespace, info: pd.DataFrame, woman_id: Callable[[str], str],
        out: pathlib.Path) -> dict:
    """Prepare the data and patches of the chosen women once, run every fold, and write the
    pooled out-of-fold report (summary.json and figures) into the claimed folder `out`."""
    t0 = time.time()
    c = cohort(info, woman_id, args.folds, args.max_women, args.seed)
    ids, women = c.ids, c.women
    log.info("%d images of %d women, %d folds; image classes %s", len(ids), len(women),
             args.folds, pd.Series([c.image_class[i] for i in ids]).value_counts().to_dict())

    data = out / "data"
    chain_prepare(args.mias_dir, data, tuple(args.img_size), ids, args.seed)
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
        with functions_eagerly(args.eager):
            rec, pt, it = train_fold(k, out / f"fold{k}", args, c, img_path, img_grey, pidx, data)
        folds.append(rec)
        oof_patch.append(pt)
        oof_img.append(it)

    P = pd.concat(oof_patch, ignore_index=True)
    I = pd.concat(oof_img, ignore_index=True)
    write_csv(P, out / "oof_patches.csv")
    write_csv(I, out / "oof_images.csv")
    nb, sd = args.n_boot, args.seed
    pooled = pooled_aurocs(P, I, nb, sd)
    conf = confusion(P["label"], P["pred"])
    img_conf = confusion(I["label"], I[["p_normal", "p_benign", "p_malignant"]].values.argmax(1))

    figs = out / "figures"
    files = plot_figures(P, I, folds, figs)
    overlay = find_overlay(args, out, I, info, figs / "overlay.png")
    diag = diagnostics(out, info)
    T = readout_table(args, out, I, {f["fold"]: f["val_women"] for f in folds})
    write_csv(T, out / "oof_readouts.csv")
    hm_scores = heatmap_max_scores(args, out, I, nb, sd, T)
    localisation = chain_localisation(args, out, I, nb, sd)
    null = null_learner(I, args.null_reps, sd)

    summary = dict(
        command="python mias_train/cross_validate.py " + " ".join(sys.argv[1:]),
        config={k: v for k, v in vars(args).items()}, n_images=len(ids), n_women=len(women),
        folds=folds, pooled=pooled, goals=goals(pooled), diagnostics=diag,
        image_score_from_patch_heatmap_max=hm_scores, mil_readouts=mil_readouts(T, I, nb, sd),
        network_by_woman=network_by_woman(I, nb, sd), localisation=localisation,
        null_learner=null, compared_with=compared(args, I, nb, sd),
        patch_confusion=dict(classes=PATCH_CLASSES, rows_true_cols_pred=conf),
        image_confusion=dict(classes=IMAGE_CLASSES, rows_true_cols_pred=img_conf),
        files=dict(**files, overlay=overlay,
                   oof_images=str(out / "oof_images.csv"), oof_patches=str(out / "oof_patches.csv")),
        prep_s=round(t_prep, 1), wall_s=round(time.time() - t0, 1))
    write_json(out / "summary.json", summary)
    return summary


def recorded_run(args: argparse.Namespace) -> tuple[dict, argparse.Namespace]:
    """--report-only: the finished run's summary and settings (runs recorded before a
    setting existed get its default, or --quick's), checked before TensorFlow loads."""
    out = pathlib.Path(args.out)
    if not (out / "summary.json").is_file():
        raise CrossValidationError(f"{out}: no summary.json of a finished run "
                                   "(--report-only redoes the steps after training)")
    summary = json.loads((out / "summary.json").read_text())
    config = summary["config"]
    run_args = apply_quick(build_parser().parse_args(
        [config["mias_dir"]] + (["--quick"] if config.get("quick") else [])))
    vars(run_args).update(config)
    if isinstance(run_args.img_size, int):   # runs before --img-size took H W recorded one side
        run_args.img_size = [run_args.img_size, run_args.img_size]
    return summary, run_args


def report_only(summary: dict, run_args: argparse.Namespace, out: pathlib.Path,
                info: pd.DataFrame) -> dict:
    """Redo the report steps that need no training on a finished run (the overlay, the
    diagnostics, the heatmap-max scores, the null learner and the localisation) from its
    saved out-of-fold tables and models; updates summary.json."""
    I = pd.read_csv(out / "oof_images.csv")
    summary["files"]["overlay"] = find_overlay(run_args, out, I, info,
                                               out / "figures" / "overlay.png")
    summary["diagnostics"] = diagnostics(out, info)
    nb, sd = run_args.n_boot, run_args.seed
    T = readout_table(run_args, out, I, {f["fold"]: f["val_women"] for f in summary["folds"]})
    write_csv(T, out / "oof_readouts.csv")
    summary["image_score_from_patch_heatmap_max"] = heatmap_max_scores(run_args, out, I, nb, sd,
                                                                       T)
    summary["mil_readouts"] = mil_readouts(T, I, nb, sd)
    summary["network_by_woman"] = network_by_woman(I, nb, sd)
    summary["compared_with"] = compared(run_args, I, nb, sd)
    summary["null_learner"] = null_learner(I, run_args.null_reps, run_args.seed)
    summary["localisation"] = chain_localisation(run_args, out, I, run_args.n_boot, run_args.seed)
    write_json(out / "summary.json", summary)
    return summary


def compared(args: argparse.Namespace, I: pd.DataFrame, n_boot: int, seed: int) -> dict | None:
    """--compare-with RUN: this run's whole-image AUROCs minus that run's, paired."""
    if not args.compare_with:
        return None
    other = pd.read_csv(pathlib.Path(args.compare_with) / "oof_images.csv")
    return dict(run=args.compare_with, **compare_runs(
        I, other[["image_id", "p_normal", "p_malignant"]], n_boot, seed))


def cross_validate(args: argparse.Namespace) -> dict:
    """The command's body: every refusal first (flags, Info.txt, the output folder), then
    TensorFlow, then the run (or --report-only); its summary as the last line."""
    apply_quick(args)
    if args.report_only:
        summary, run_args = recorded_run(args)
        if args.compare_with and not (pathlib.Path(args.compare_with) / "summary.json").is_file():
            raise CrossValidationError(f"--compare-with {args.compare_with}: no summary.json "
                                       "of a finished run")
        run_args.compare_with = args.compare_with or run_args.compare_with
        info = chain_info(run_args.mias_dir)[0]
        dm_cli.quiet_tensorflow()
        summary = report_only(summary, run_args, pathlib.Path(args.out), info)
    else:
        info, woman_id, out = claim(args)
        dm_cli.quiet_tensorflow()
        summary = run(args, info, woman_id, out)
    sys.stdout.write(json.dumps(summary) + "\n")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (dm-cross-validate); returns its exit status."""
    return dm_cli.run_tool("cross_validate", build_parser().parse_args, cross_validate, argv)


if __name__ == "__main__":
    sys.exit(main())
