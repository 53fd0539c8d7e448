"""Score mammograms with one or more saved models (averaged), optionally with 4-flip TTA.

    python predict.py MODEL [MODEL ...] (--images P ... | --image-dir DIR | --csv FILE) \
        [--out preds.csv | --out -] [--test-augment] [--batch-size N] [recipe overrides]

Each model's class list and preprocessing recipe are read from its file; the flags
below only override them. The CSV has `path`, one probability column per class name,
`label` when the source has labels, and any extra columns of an input CSV (e.g.
patient_id, side, view, used by evaluate.py for breast/exam aggregation); a recipe's own
`images.csv` works as `--csv` (with `--split test` to score one split). `--out -`, or no
`--out` for up to 20 images, prints the CSV on standard output (the log goes to stderr).
Images of another bit depth than the model was trained on are refused unless
`--convert-bit-depth`. `--export DIR` writes a serving SavedModel (recipe built in) of the single model instead.

Checked before any model loads (no TensorFlow; one line, exit 2; docs/reliability.md):
missing models and images, an output that cannot be written or that is one of the inputs
(`--out` over the `--csv`, a model or an image). Before anything is scored: sizes the model
cannot take, and likely mistakes, each with the flag that forces it: whole mammograms for a
patch model (--allow-whole-images), images under half the model's size
(--allow-small-images), blank images (--allow-blank), colour images (--allow-colour),
12-bit data in 16-bit PNGs for a 16-bit model (--stored-bits).
A progress bar goes to stderr when it is a terminal (DM_PROGRESS=1 forces it).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any, Sequence

import dm_cli
import dm_convert_checkpoint
import dm_inputs
import dm_output
import dm_pairs
import dm_pixels
import dm_preflight
import dm_recipe

log = logging.getLogger("predict")
STDOUT_MAX_IMAGES = 20


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=dm_cli.HelpFormatter)
    p.add_argument("models", nargs="+", metavar="MODEL", help=".keras or .h5 model file(s)")
    src = p.add_argument_group("input (exactly one)")
    src.add_argument("--images", nargs="+", metavar="PATH", help="image or DICOM files")
    src.add_argument("--image-dir", metavar="DIR",
                     help="folder, searched recursively (class sub-folders give labels)")
    src.add_argument("--csv", metavar="FILE",
                     help="CSV with a path column (label optional), or a recipe's images.csv")
    src.add_argument("--split", metavar="NAME",
                     help="with --csv: only rows whose split column is NAME (e.g. test)")
    src.add_argument("--pairs", metavar="FILE",
                     help="a bilateral model's pairs: each image's other breast, from a "
                          "recipe's images.csv (patient_id, side, view) or a path,other_path "
                          "CSV (default: the --csv file)")
    p.add_argument("--out", metavar="CSV",
                   help=f"predictions CSV to write; '-' prints it (the default for up to "
                        f"{STDOUT_MAX_IMAGES} images)")
    p.add_argument("--test-augment", action="store_true",
                   help="average the image and its horizontal, vertical and double flips")
    p.add_argument("--batch-size", type=dm_cli.int_at_least(1), default=4,
                   help="images per model call")
    dm_cli.add_image_check_flags(p, "score")
    p.add_argument("--allow-whole-images", action="store_true",
                   help="let a patch model score images over twice its patch size (each is "
                        "shrunk to one patch) instead of refusing them")
    p.add_argument("--class-list", nargs="+", default=None,
                   help="column names, only for models that store none")
    p.add_argument("--unsafe-load", action="store_true",
                   help="allow Lambda layers in model files (runs code from the file)")
    p.add_argument("--mixed-precision", choices=["float16", "bfloat16"],
                   help="compute in this precision (the softmax stays float32); default float32")
    p.add_argument("--no-calibration", action="store_true",
                   help="raw probabilities: ignore the calibration stored by calibrate.py")
    r = p.add_argument_group("recipe overrides (default: each model's stored recipe)")
    dm_cli.add_recipe_flags(r)
    e = p.add_argument_group("export")
    e.add_argument("--export", metavar="DIR",
                   help="write a serving SavedModel of the (single) model with its recipe built in")
    e.add_argument("--export-onnx", metavar="FILE",
                   help="also write an ONNX model (needs the optional tf2onnx package)")
    e.add_argument("--export-resize", default="cv2cubic", choices=["cv2cubic", "bicubic", "bilinear"],
                   help="resize in the exported graph (cv2cubic matches the cv2 path)")
    return p


def precheck(args) -> None:
    """What predict refuses before any model loads (no TensorFlow, about a second): the
    flags, missing models and images, an output that cannot be written or that would write
    over an input, and more than STDOUT_MAX_IMAGES images for standard output."""
    if args.split and not args.csv:
        raise dm_inputs.InferenceError("--split goes with --csv")
    for m in args.models:
        dm_convert_checkpoint.require_model_file(m)
    scoring = bool(args.images or args.image_dir or args.csv)
    paths = dm_inputs.early_inputs(args.images, args.image_dir, args.csv, args.split) \
        if scoring or not (args.export or args.export_onnx) else []
    # Every output location first, so a long run cannot fail at its end.
    if args.pairs and not os.path.isfile(args.pairs):
        raise dm_inputs.InferenceError(f"--pairs {args.pairs}: file not found")
    inputs = [("MODEL", m) for m in args.models] + [("--csv", args.csv),
                                                    ("--image-dir", args.image_dir),
                                                    ("--pairs", args.pairs)]
    inputs += [("image", p) for p in paths or ()]
    for flag, dest, folder in (("--out", args.out if scoring else None, False),
                               ("--export", args.export, True),
                               ("--export-onnx", args.export_onnx, False)):
        dm_output.check_writable(dest, flag, folder=folder)
        dm_output.check_not_input(dest, inputs, flag, holds=folder)
    if scoring and not args.out and paths is not None:
        _check_stdout_size(len(paths))


def _check_stdout_size(n: int) -> None:
    if n > STDOUT_MAX_IMAGES:
        raise dm_inputs.InferenceError(f"{n} images: give --out FILE (or --out - to print the "
                                       "CSV)")


def run(args) -> int:
    """The command after its flags are parsed: `precheck`, then `score`."""
    precheck(args)
    return score(args)


def score(args) -> int:
    """Load the models, export and/or score (after `precheck`)."""
    import dm_calibration  # deferred for --help (docs/modules.md)
    import dm_scoring  # deferred for --help (docs/modules.md)
    scoring = bool(args.images or args.image_dir or args.csv)
    models = dm_scoring.load_models(args.models, safe_mode=not args.unsafe_load)
    class_list = dm_scoring.common_class_list(models, args.class_list)
    recipes = [m.recipe(**dm_recipe.flag_values(args)) for m in models]   # sizes checked here
    if args.export or args.export_onnx:
        import dm_export  # deferred for --help (docs/modules.md)
        if len(models) != 1:
            raise dm_inputs.InferenceError("--export/--export-onnx take exactly one model")
        dm_export.export(models[0].model, recipes[0], class_list, out_dir=args.export,
                         onnx_path=args.export_onnx, resize=args.export_resize)
        for dest in (args.export, args.export_onnx):
            if dest:
                log.info("exported %s to %s", args.models[0], dest)
        if not scoring:
            return 0
    inputs = dm_inputs.gather_inputs(args.images, args.image_dir, args.csv, class_list, args.split)
    out = args.out or "-"
    if not args.out:    # a folder of class folders: known now that the class names are
        _check_stdout_size(len(inputs.paths))
    allow = dm_preflight.Allow(colour=args.allow_colour, whole_images=args.allow_whole_images,
                               stored_bits=args.stored_bits, small=args.allow_small,
                               blank=args.allow_blank)
    depths = [dm_pixels.file_bit_depth(p) for p in inputs.paths]
    depths = dm_preflight.check_images(inputs.paths, models, recipes, allow, depths)
    if args.mixed_precision:  # scoring only: the export above stays float32
        import dm_modelfile  # deferred for --help (docs/modules.md)
        for m in models:
            dm_modelfile.set_precision(m.model, args.mixed_precision)
    others = _other_breasts(args, models, inputs.paths)
    with dm_cli.progress(len(inputs.paths) * len(models), "scoring") as bar:
        probs = dm_calibration.score_models(
            models, lambda ms: dm_scoring.score_paths(ms, inputs.paths, args.batch_size,
                                               args.test_augment, dm_recipe.flag_values(args),
                                               convert_bits=args.convert_bit_depth,
                                               depths=depths, progress=bar, others=others),
            enabled=not args.no_calibration)
    dm_inputs.write_predictions_csv(out, inputs, probs, class_list)
    log.info("wrote %s (%s) to %s", dm_cli.plural(len(inputs.paths), "prediction"),
             ", ".join(class_list), "standard output" if out == "-" else out)
    return 0


def _other_breasts(args, models, paths: Sequence[str]) -> list[str] | None:
    """Each image's other breast when a model is bilateral (`dm_pairs`), else None."""
    if not any(len(m.model.inputs) == 2 for m in models):
        return None
    source = args.pairs or args.csv
    if source is None:
        raise dm_inputs.InferenceError("a bilateral model scores each image with the other "
                                       "breast: give --pairs (or --csv with a recipe's "
                                       "images.csv)")
    return dm_pairs.partner_paths(paths, dm_pairs.read_pairs(source), source)


def predict(models: Sequence[str], **options: Any) -> int:
    """The command as a function: `options` are its flags by destination name (`image_dir`,
    `images`, `csv`, `out`, `test_augment`, `batch_size`, ...), defaults as the command's.
    Bad input raises an InputError with the command's message."""
    return run(dm_cli.namespace(build_parser(), models=[str(m) for m in models], **options))


def main(argv=None) -> int:
    """Flags, then the checks that need no TensorFlow, then the models; when the CSV goes
    to standard output the log goes to stderr."""
    def csv_to_stdout(a) -> bool:
        return not (a.export or a.export_onnx) and (a.out is None or dm_output.is_stdout(a.out))
    return dm_cli.run_tool("predict", build_parser().parse_args, score, argv, tensorflow=True,
                           precheck=precheck, stderr_log=csv_to_stdout)


if __name__ == "__main__":
    sys.exit(main())
