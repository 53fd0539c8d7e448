"""Score mammograms with one or more saved models (averaged), optionally with 4-flip TTA.

    python predict.py MODEL [MODEL ...] (--images P ... | --image-dir DIR | --csv FILE) \
        --out preds.csv [--test-augment] [--batch-size N] [recipe overrides]

Each model's class list and preprocessing recipe are read from its file; the flags
below only override them. The CSV has `path`, one probability column per class name,
`label` when the source has labels, and any extra columns of an input CSV (e.g.
patient_id, side, view, used by evaluate.py for breast/exam aggregation).
`--export DIR` writes a serving SavedModel (recipe built in) of the single model instead.
"""
from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger("predict")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", metavar="MODEL", help=".keras or .h5 model file(s)")
    src = p.add_argument_group("input (exactly one)")
    src.add_argument("--images", nargs="+", metavar="PATH", help="image or DICOM files")
    src.add_argument("--image-dir", metavar="DIR",
                     help="folder, searched recursively (class sub-folders give labels)")
    src.add_argument("--csv", metavar="FILE", help="CSV with a path column (label optional)")
    p.add_argument("--out", metavar="CSV", help="predictions CSV to write")
    p.add_argument("--test-augment", action="store_true",
                   help="average the image and its horizontal, vertical and double flips")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--class-list", nargs="+", default=None,
                   help="column names, only for models that store none")
    p.add_argument("--unsafe-load", action="store_true",
                   help="allow Lambda layers in model files (runs code from the file)")
    p.add_argument("--no-calibration", action="store_true",
                   help="raw probabilities: ignore the calibration stored by calibrate.py")
    r = p.add_argument_group("recipe overrides (default: each model's stored recipe)")
    r.add_argument("--img-size", nargs=2, type=int, metavar=("H", "W"))
    r.add_argument("--img-scale", type=float)
    r.add_argument("--rescale-factor", type=float)
    r.add_argument("--equalize-hist", dest="equalize_hist", action="store_const", const=True)
    r.add_argument("--no-equalize-hist", dest="equalize_hist", action="store_const", const=False)
    r.add_argument("--featurewise-mean", type=float, help="subtract this mean (turns centring on)")
    r.add_argument("--no-featurewise-center", dest="featurewise_center", action="store_const",
                   const=False)
    e = p.add_argument_group("export")
    e.add_argument("--export", metavar="DIR",
                   help="write a serving SavedModel of the (single) model with its recipe built in")
    e.add_argument("--export-onnx", metavar="FILE",
                   help="also write an ONNX model (needs the optional tf2onnx package)")
    e.add_argument("--export-resize", default="cv2cubic", choices=["cv2cubic", "bicubic", "bilinear"],
                   help="resize in the exported graph (cv2cubic matches the cv2 path)")
    return p


def overrides_from(args) -> dict:
    return dict(img_size=args.img_size, img_scale=args.img_scale,
                rescale_factor=args.rescale_factor, equalize_hist=args.equalize_hist,
                featurewise_mean=args.featurewise_mean,
                featurewise_center=getattr(args, "featurewise_center", None))


def run(args) -> int:
    import dm_inference as inf
    if args.batch_size < 1:
        raise inf.InferenceError(f"--batch-size must be >= 1, got {args.batch_size}")
    models = inf.load_models(args.models, safe_mode=not args.unsafe_load)
    class_list = inf.common_class_list(models, args.class_list)
    if args.export or args.export_onnx:
        import dm_export
        if len(models) != 1:
            raise inf.InferenceError("--export/--export-onnx take exactly one model")
        recipe = models[0].recipe(**overrides_from(args))
        if args.export:
            dm_export.export_serving(models[0].model, recipe, class_list, args.export,
                                     resize=args.export_resize)
            log.info("exported %s to %s", args.models[0], args.export)
        if args.export_onnx:
            dm_export.export_onnx(models[0].model, recipe, args.export_onnx,
                                  resize=args.export_resize)
            log.info("exported %s to %s", args.models[0], args.export_onnx)
        if not (args.images or args.image_dir or args.csv):
            return 0
    if not args.out:
        raise inf.InferenceError("--out is required to write predictions")
    inputs = inf.gather_inputs(args.images, args.image_dir, args.csv, class_list)
    import dm_calibration
    probs = dm_calibration.score_models(
        models, lambda ms: inf.score_paths(ms, inputs.paths, args.batch_size, args.test_augment,
                                           overrides_from(args)),
        enabled=not args.no_calibration)
    inf.write_predictions_csv(args.out, inputs, probs, class_list)
    log.info("wrote %d predictions (%s) to %s", len(inputs.paths), ", ".join(class_list), args.out)
    return 0


def main(argv=None) -> int:
    import dm_train
    return dm_train.run_command(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
