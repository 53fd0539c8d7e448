"""Fit a probability calibration on validation predictions and store it in the model.

Calibrate a model's probabilities on validation predictions and store the map in the
model file, so that predict.py gives calibrated probabilities for it.

    python predict.py MODEL --image-dir VAL_DIR --no-calibration --out val_preds.csv
    python calibrate.py MODEL val_preds.csv [--method auto|temperature|platt] [--out NEW_MODEL]

Temperature scaling or (2 classes) Platt scaling; "auto" picks the one with the lower
cross-validated log-loss on these predictions. The ranking of images is unchanged, so
AUROC is too. The calibrated model is a new file (default: MODEL_calibrated.keras beside
MODEL); MODEL itself is never changed, so retraining or rerunning what wrote it cannot
lose a calibration, nor calibration a model. `predict.py --no-calibration` gives the raw
probabilities again; calibrating a calibrated model replaces its map (give it raw
predictions).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

import numpy as np

import dm_cli
import dm_convert_checkpoint
import dm_evaluate
import dm_output
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
    p.add_argument("--folds", type=dm_cli.int_at_least(2), default=5,
                   help="cross-validation folds for --method auto")
    dm_cli.add_seed_flag(p, "seed of the fold assignment")
    p.add_argument("--out", help="the calibrated model to write, a new file (default: "
                   "MODEL_calibrated.keras beside MODEL; never MODEL itself)")
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


def out_path(args) -> str:
    """--out, else MODEL_calibrated<suffix> beside MODEL."""
    if args.out:
        return args.out
    stem, ext = os.path.splitext(args.model)
    return f"{stem}_calibrated{ext or '.keras'}"


def precheck(args) -> None:
    """What calibrate refuses before TensorFlow loads: a missing model or predictions, and
    an output that cannot be written or that is one of the inputs (MODEL above all)."""
    dm_convert_checkpoint.require_model_file(args.model)
    for path in (args.preds, args.labels):
        if path is not None and not os.path.isfile(path):
            raise InputError(f"{path}: file not found")
    out = out_path(args)
    dm_output.check_writable(out, "--out")
    dm_output.check_not_input(out, [("MODEL", args.model), ("predictions", args.preds),
                                    ("--labels", args.labels)], "--out")


def run(args) -> int:
    """The command after its flags are parsed: `precheck`, then `calibrate`."""
    precheck(args)
    return calibrate(args)


def calibrate(args) -> int:
    """Fit the map and write the calibrated model (after `precheck`)."""
    import dm_calibration  # deferred for --help (docs/modules.md)
    import dm_metrics  # deferred for --help (docs/modules.md)
    import dm_modelfile  # deferred for --help (docs/modules.md)
    meta = dm_modelfile.read_model_meta(args.model)
    if meta is None:
        raise InputError(f"{args.model}: the model stores no class list; calibrate a model "
                         "saved by this project's trainers or convert_checkpoint.py")
    classes = list(meta.class_list)
    df = dm_evaluate._read(args.preds)
    missing = [c for c in classes if c not in df.columns]
    if missing:
        raise InputError(f"{args.preds}: no column for class(es) {missing} of {args.model}")
    probs = np.stack([dm_evaluate.scores(df, c, args.preds) for c in classes], axis=1)
    y = _labels(df, classes, args)
    if meta.calibration:
        log.warning("%s already carries %s: it is replaced; the predictions must be raw "
                    "(predict.py --no-calibration)", args.model,
                    dm_calibration.describe(meta.calibration))
    cal = dm_calibration.fit(probs, y, args.method, args.folds, args.seed)
    cal["fitted_on"] = os.path.abspath(args.preds)
    out = out_path(args)
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
    return dm_cli.run_tool("calibrate", build_parser().parse_args, calibrate, argv,
                           tensorflow=True, precheck=precheck)


if __name__ == "__main__":
    sys.exit(main())
