"""Fit a probability calibration on validation predictions and store it in the model.

Calibrate a model's probabilities on validation predictions and store the map in the
model file, so that predict.py gives calibrated probabilities for it.

    python predict.py MODEL --image-dir VAL_DIR --no-calibration --out val_preds.csv
    python calibrate.py MODEL val_preds.csv [--method auto|temperature|platt] [--out NEW_MODEL]

Temperature scaling or (2 classes) Platt scaling; "auto" picks the one with the lower
cross-validated log-loss on these predictions. The ranking of images is unchanged, so
AUROC is too. `predict.py --no-calibration` gives the raw probabilities again; running
calibrate.py again replaces the stored map (give it raw predictions).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

import numpy as np

import dm_cli
import dm_evaluate
from dm_errors import InputError

log = logging.getLogger("calibrate")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=dm_cli.HelpFormatter)
    p.add_argument("model", help=".keras or .h5 model file (written by this project)")
    p.add_argument("preds", help="validation predictions CSV of predict.py --no-calibration")
    p.add_argument("--labels", help="CSV with path,label when the predictions have no label column")
    p.add_argument("--method", default="auto", choices=["auto", "temperature", "platt"],
                   help="calibration map; auto: lower cross-validated log-loss")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds for --method auto")
    dm_cli.add_seed_flag(p, "seed of the fold assignment")
    p.add_argument("--out", help="write the calibrated model here (default: update MODEL in place)")
    return p


def _labels(df, classes: list[str], args) -> np.ndarray:
    if args.labels:
        lab = dm_evaluate._read(args.labels)
        if not {"path", "label"} <= set(lab.columns) or "path" not in df.columns:
            raise InputError(f"{args.labels}: expected columns path,label matching the predictions")
        df = df.drop(columns=["label"], errors="ignore").merge(lab[["path", "label"]],
                                                               on="path", how="left")
    if "label" not in df.columns:
        raise InputError(f"{args.preds}: no 'label' column; give --labels")
    out = []
    for v in df["label"].fillna(""):
        v = str(v).strip()
        if v in classes:
            out.append(classes.index(v))
            continue
        try:
            k = int(float(v))
        except ValueError:
            raise InputError(f"{args.preds}: label {v!r} is neither a class name {classes} "
                             "nor an index") from None
        if not 0 <= k < len(classes):
            raise InputError(f"{args.preds}: label {k} out of range for {len(classes)} classes")
        out.append(k)
    return np.array(out, int)


def run(args) -> int:
    import dm_calibration  # deferred for --help (docs/modules.md)
    import dm_metrics  # deferred for --help (docs/modules.md)
    import dm_modelfile  # deferred for --help (docs/modules.md)
    if not os.path.isfile(args.model):
        raise InputError(f"{args.model}: model file not found")
    meta = dm_modelfile.read_model_meta(args.model)
    if meta is None:
        raise InputError(f"{args.model}: the model stores no class list; calibrate a model "
                         "saved by this project's trainers or convert_checkpoint.py")
    classes = list(meta.class_list)
    df = dm_evaluate._read(args.preds)
    missing = [c for c in classes if c not in df.columns]
    if missing:
        raise InputError(f"{args.preds}: no column for class(es) {missing} of {args.model}")
    probs = df[classes].astype(float).to_numpy()
    y = _labels(df, classes, args)
    if meta.calibration:
        log.warning("%s already carries %s: it is replaced; the predictions must be raw "
                    "(predict.py --no-calibration)", args.model,
                    dm_calibration.describe(meta.calibration))
    cal = dm_calibration.fit(probs, y, args.method, args.folds, args.seed)
    cal["fitted_on"] = os.path.abspath(args.preds)
    out = args.out or args.model
    dm_modelfile.write_model_meta(args.model, dataclasses.replace(meta, calibration=cal), out)
    cv = cal.get("cv_log_loss")
    if cv:
        log.info("cross-validated log-loss (%d folds): %s", cal["cv_folds"],
                 ", ".join(f"{m} {v:.4f}" for m, v in cv.items()))
    log.info("%s on %d validation images: log-loss %.4f -> %.4f", dm_calibration.describe(cal),
             cal["n"], cal["log_loss_raw"], cal["log_loss_fitted"])
    if len(classes) == 2:
        before = dm_metrics.reliability(y == 1, probs[:, 1])
        after = dm_metrics.reliability(y == 1, dm_calibration.apply(cal, probs)[:, 1])
        log.info("on the same images (in-sample): ECE %.4f -> %.4f, Brier %.4f -> %.4f",
                 before["ece"], after["ece"], before["brier"], after["brier"])
    log.info("calibration stored in %s; predict.py applies it (--no-calibration: raw)", out)
    return 0


def main(argv=None) -> int:
    return dm_cli.run_tool("calibrate", build_parser().parse_args, run, argv, tensorflow=True)


if __name__ == "__main__":
    sys.exit(main())
