"""Evaluate a predictions file against its labels.

AUROC with a 95% bootstrap interval, ROC/PR curves, operating points, calibration
(reliability curve, ECE, Brier score) and breast-/exam-level aggregation.

    python evaluate.py preds.csv [--labels labels.csv] [--pos-class pos] \
        [--thresholds 0.5 ...] [--target-sensitivity 0.9] [--aggregate max] \
        [--group-cols patient_id side] [--exam-cols patient_id] --out-dir report/ \
        [--html [--model MODEL]]

The predictions CSV is what predict.py writes (path, one column per class, label, extra
columns). Labels come from its `label` column or from --labels (path,label), as class
indices or names. Writes report/summary.json and roc_<level>.png, pr_<level>.png,
reliability_<level>.png; with --html also report/index.html (see dm_report.py).
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from typing import Any

import numpy as np
import pandas as pd

import dm_cli
import dm_convert_checkpoint
import dm_output
from dm_errors import InputError

log = logging.getLogger("evaluate")


class EvalError(InputError):
    """Unusable evaluation input, reported in one line."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[:2]),
                                formatter_class=dm_cli.HelpFormatter)
    p.add_argument("preds", help="predictions CSV")
    p.add_argument("--labels", help="CSV with path,label (when the predictions have none)")
    p.add_argument("--pos-class", help="positive class column (default: the last class column)")
    p.add_argument("--class-cols", nargs="+", help="class columns (default: detected)")
    p.add_argument("--n-boot", type=dm_cli.int_at_least(1), default=2000,
                   help="bootstrap resamples of the interval")
    dm_cli.add_seed_flag(p, "seed of the bootstrap")
    p.add_argument("--thresholds", nargs="+", type=dm_cli.float_in(0, 1), default=[0.5],
                   help="score thresholds for sensitivity/specificity (score >= t is positive)")
    p.add_argument("--target-sensitivity", type=dm_cli.float_in(0, 1), nargs="+", default=[0.9],
                   help="operating points: the highest threshold reaching this sensitivity")
    p.add_argument("--aggregate", choices=["max", "mean"], default="max",
                   help="breast/exam score from its images' scores")
    p.add_argument("--n-bins", type=dm_cli.int_at_least(1), default=10,
                   help="equal-width score bins of the reliability curve and ECE")
    p.add_argument("--group-cols", nargs="+", default=["patient_id", "side"],
                   help="breast-level grouping columns (used when present)")
    p.add_argument("--exam-cols", nargs="+", default=["patient_id"],
                   help="exam-level grouping columns (used when present)")
    p.add_argument("--out-dir", default="eval_report", help="folder for the summary and plots")
    p.add_argument("--json", help="summary JSON path (default OUT_DIR/summary.json)")
    p.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    h = p.add_argument_group("HTML report")
    h.add_argument("--html", action="store_true",
                   help="also write OUT_DIR/index.html: summary, plots, and the cases behind "
                        "the numbers (opens from the file system)")
    h.add_argument("--model", help="whole-image or patch model: heatmap overlays in the gallery")
    h.add_argument("--gallery-size", type=dm_cli.int_at_least(0), default=6,
                   help="images per gallery")
    h.add_argument("--thumb-height", type=dm_cli.pixels, default=256,
                   help="thumbnail height in pixels")
    h.add_argument("--unsafe-load", action="store_true",
                   help="allow Lambda layers in --model (runs code from the file)")
    return p


def _read(path: str):
    if not os.path.isfile(path):
        raise EvalError(f"{path}: file not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as e:  # noqa: BLE001 - any parse failure is an input error
        raise EvalError(f"{path}: cannot read CSV ({e})") from None
    if df.empty:
        raise EvalError(f"{path}: no rows")
    return df


def _is_prob(col) -> bool:
    """A column of scores: mostly numbers, all of them in [0, 1]. A few empty or NaN cells
    keep it one (`scores` then names the bad cell), where a strict test made it end the
    class columns and gave a misleading "label out of range" instead."""
    v = pd.to_numeric(col, errors="coerce").to_numpy(float)
    ok = np.isfinite(v)
    return bool(ok.any()) and ok.mean() >= 0.5 and bool(np.all((v[ok] >= 0) & (v[ok] <= 1)))


def scores(df, col: str, where: str) -> np.ndarray:
    """A class column as probabilities; a cell that is not a number in [0, 1] (empty,
    NaN, text) is refused with its line."""
    v = pd.to_numeric(df[col], errors="coerce").to_numpy(float)
    bad = ~(np.isfinite(v) & (v >= 0) & (v <= 1))
    if bad.any():
        i = int(np.argmax(bad))
        raise EvalError(f"{where}: line {i + 2}: {col} score {df[col].iloc[i]!r} is not a "
                        f"probability (a number in [0, 1]); {int(bad.sum())} such cell(s)")
    return v


def class_columns(df, skip: set[str]) -> list[str]:
    """The run of probability columns right after `path` (predict.py's layout)."""
    cols = list(df.columns)
    start = cols.index("path") + 1 if "path" in cols else 0
    out = []
    for c in cols[start:]:
        if c == "label" or c in skip or not _is_prob(df[c]):
            break
        out.append(c)
    return out


def load_table(args):
    """(dataframe, class columns, positive column, binary labels)."""
    df = _read(args.preds)
    skip = set(args.group_cols) | set(args.exam_cols)
    classes = args.class_cols or class_columns(df, skip)
    if not classes:
        raise EvalError(f"{args.preds}: no probability columns found after 'path' "
                        "(give --class-cols)")
    missing = [c for c in classes if c not in df.columns]
    if missing:
        raise EvalError(f"{args.preds}: no column {missing[0]!r}")
    pos = args.pos_class or classes[-1]
    if pos not in classes:
        raise EvalError(f"--pos-class {pos!r} is not a class column {classes}")
    if args.labels:
        lab = _read(args.labels)
        if not {"path", "label"} <= set(lab.columns):
            raise EvalError(f"{args.labels}: expected columns path,label")
        if "path" not in df.columns:
            raise EvalError(f"{args.preds}: no 'path' column to join labels on")
        df = df.drop(columns=["label"], errors="ignore").merge(lab[["path", "label"]],
                                                               on="path", how="left")
        if (df["label"] == "").any() or df["label"].isna().any():
            n = int(((df["label"] == "") | df["label"].isna()).sum())
            raise EvalError(f"{args.labels}: {n} predicted images have no label")
    elif "label" not in df.columns:
        raise EvalError(f"{args.preds}: no 'label' column; give --labels")
    y = np.array([_binary(v, classes, pos, args.preds) for v in df["label"]])
    return df, classes, pos, y


def _binary(v: str, classes: list[str], pos: str, where: str) -> bool:
    v = str(v).strip()
    if v in classes:
        return v == pos
    try:
        k = int(float(v))
    except ValueError:
        raise EvalError(f"{where}: label {v!r} is neither a class name {classes} nor an index") from None
    if not 0 <= k < len(classes):
        raise EvalError(f"{where}: label {k} out of range: the class columns are {classes} "
                        "(give --class-cols if a column is missing)")
    return classes[k] == pos


def evaluate_level(name: str, y, s, args) -> dict:
    import dm_metrics as M  # deferred for --help (docs/modules.md)
    res = dict(level=name, n=int(len(y)), n_pos=int(np.sum(y)))
    if res["n_pos"] in (0, res["n"]):
        res["error"] = "one class only: AUROC undefined"
        return res
    res.update(M.bootstrap_auroc(y, s, args.n_boot, args.seed))
    res["thresholds"] = [M.sens_spec(y, s, t) for t in args.thresholds]
    res["at_sensitivity"] = [M.at_sensitivity(y, s, t) for t in args.target_sensitivity]
    res["calibration"] = M.reliability(y, s, args.n_bins)
    if not args.no_plots:
        roc = os.path.join(args.out_dir, f"roc_{name}.png")
        pr = os.path.join(args.out_dir, f"pr_{name}.png")
        rel = os.path.join(args.out_dir, f"reliability_{name}.png")
        title = f"({name} level, n={len(y)})"
        M.plot_curves(y, s, roc, pr, title, ci=(res["ci_low"], res["ci_high"]))
        M.plot_reliability(res["calibration"], rel, title)
        res["plots"] = [roc, pr, rel]
        log.info("%s level: wrote %s", name, ", ".join(res["plots"]))
    return res


def precheck(args) -> None:
    """What evaluate refuses before reading anything large or loading TensorFlow: missing
    files, --model without --html, and outputs that cannot be written or that would write
    over an input."""
    for path in (args.preds, args.labels):
        if path is not None and not os.path.isfile(path):
            raise EvalError(f"{path}: file not found")
    if args.model:
        dm_convert_checkpoint.require_model_file(args.model, "--model")
        if not args.html:
            raise EvalError("--model draws the heatmaps of the HTML report: add --html")
    inputs = [("predictions", args.preds), ("--labels", args.labels), ("--model", args.model)]
    dm_output.check_writable(args.out_dir, "--out-dir", folder=True)
    dm_output.check_not_input(args.out_dir, inputs, "--out-dir")
    json_path = args.json or os.path.join(args.out_dir, "summary.json")
    dm_output.check_writable(json_path, "--json")
    dm_output.check_not_input(json_path, inputs, "--json")


def run(args) -> dict:
    """The command after its flags are parsed: `precheck`, then `evaluate_table`."""
    precheck(args)
    return evaluate_table(args)


def evaluate_table(args) -> dict:
    """Read the predictions and write the summary, plots and report (after `precheck`)."""
    import dm_metrics as M  # deferred for --help (docs/modules.md)
    df, classes, pos, y = load_table(args)
    s = scores(df, pos, args.preds)
    if args.html and "path" in df.columns:   # the report clears its cases/ folder
        import dm_report  # deferred for --help (docs/modules.md)
        dm_output.check_not_input(os.path.join(args.out_dir, dm_report.CASES_DIR),
                                  [("image", p) for p in df["path"].astype(str)],
                                  "--out-dir", holds=True)
    levels = [evaluate_level("image", y, s, args)]
    for name, cols in (("breast", args.group_cols), ("exam", args.exam_cols)):
        if cols and all(c in df.columns for c in cols):
            groups = list(df[cols].itertuples(index=False, name=None))
            _, yg, sg = M.aggregate(groups, y, s, args.aggregate)
            levels.append(evaluate_level(name, yg, sg, args))
    summary = dict(predictions=os.path.abspath(args.preds), pos_class=pos, classes=classes,
                   aggregate=args.aggregate, levels=levels)
    if args.html:     # the path as the user gave it (--out-dir), not this machine's
        summary["html"] = write_html(args, summary, df, y, s)
    path = args.json or os.path.join(args.out_dir, "summary.json")
    dm_output.write_json(path, summary, default=float)
    report(summary)
    log.info("summary written to %s", path)
    if args.html:
        log.info("HTML report: %s", summary["html"])
    return summary


def write_html(args, summary: dict, df, y, s) -> str:
    """The HTML report of this evaluation (dm_report.py) in OUT_DIR; returns its path."""
    import dm_report  # deferred for --help (docs/modules.md)
    if "path" not in df.columns:
        raise EvalError(f"{args.preds}: no 'path' column: the HTML report shows the images")
    paths = df["path"].astype(str).tolist()
    hm = dm_report.Heatmapper(args.model, summary["pos_class"], args.unsafe_load) \
        if args.model else None
    cases = dm_report.draw_cases(args.out_dir, paths, y, s, args.gallery_size,
                                 args.thumb_height, hm)
    neg = [c for c in summary["classes"] if c != summary["pos_class"]]
    names = ("/".join(neg) or "negative", summary["pos_class"])
    notes = [f"heatmaps: {os.path.basename(args.model)} ({hm.kind} model)"] if hm else []
    return dm_report.write_report(args.out_dir, summary, paths, y, s, cases, names, notes)


def _f(v) -> str:
    return "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def report(summary: dict) -> None:
    log.info("positive class: %s", summary["pos_class"])
    for lv in summary["levels"]:
        head = f"{lv['level']:>6}: n={lv['n']} (pos {lv['n_pos']})"
        if "error" in lv:
            log.info("%s  %s", head, lv["error"])
            continue
        log.info("%s  AUROC %.3f (95%% CI %.3f-%.3f, %d bootstraps)", head, lv["auroc"],
                 lv["ci_low"], lv["ci_high"], lv["n_boot"])
        for t in lv["thresholds"]:
            log.info("        threshold %.3f: sensitivity %s specificity %s", t["threshold"],
                     _f(t["sensitivity"]), _f(t["specificity"]))
        for t in lv["at_sensitivity"]:
            log.info("        target sensitivity %.2f: threshold %.4f sensitivity %s "
                     "specificity %s", t["target_sensitivity"], t["threshold"],
                     _f(t["sensitivity"]), _f(t["specificity"]))
        cal = lv["calibration"]
        log.info("        calibration: ECE %.3f, Brier %.3f (%d bins)", cal["ece"], cal["brier"],
                 cal["n_bins"])


def evaluate(preds: str, **options: Any) -> dict:
    """The command as a function: `options` are its flags by destination name (`out_dir`,
    `pos_class`, `seed`, `html`, `model`, ...), defaults as the command's; returns the
    summary (AUROC, interval, plots per level)."""
    return run(dm_cli.namespace(build_parser(), preds=str(preds), **options))


def main(argv=None) -> int:
    return dm_cli.run_tool("evaluate", build_parser().parse_args, evaluate_table, argv,
                           tensorflow=lambda a: a.html,   # the report's room loads it
                           precheck=precheck)


if __name__ == "__main__":
    sys.exit(main())
