"""Convert a published (Keras 2.0.x) or any other model file to a self-describing `.keras` file.

The output is an ordinary Keras 3 model that carries its class list and preprocessing
recipe (`dm_modelfile.ModelMeta`), so inference cannot be run with the wrong recipe.
Defaults are those of the published whole-image models: 1152x896, rescale 0.003891
(16-bit PNG to 0-255), featurewise mean 52.18 (CBIS-DDSM) or 44.33 (INbreast), classes
`neg pos`.

    python convert_checkpoint.py ddsm_resnet50.h5 ddsm_resnet50.keras --dataset ddsm
"""
from __future__ import annotations

import argparse
import logging
import sys

import dm_cli
from dm_errors import InputError
import dm_recipe

DATASET_MEANS = {"ddsm": 52.18, "inbreast": 44.33}
DEFAULT_RESCALE = 0.003891
DEFAULT_IMG_SIZE = (1152, 896)

log = logging.getLogger("convert_checkpoint")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=dm_cli.HelpFormatter)
    p.add_argument("input", help="model file: Keras 2.x/1.2 .h5, Keras 3 .h5 or .keras")
    p.add_argument("output", help="where to write the converted model (.keras; .h5 also accepted)")
    p.add_argument("--class-list", nargs="+", default=["neg", "pos"],
                   help="output column names, in order")
    dm_cli.add_img_size(p, help="image size of the recipe (default: the model's fixed input size, else "
                        f"{DEFAULT_IMG_SIZE[0]} {DEFAULT_IMG_SIZE[1]}); must agree with a fixed input")
    p.add_argument("--rescale-factor", type=float, default=DEFAULT_RESCALE,
                   help="multiply pixels by this (255/65535 for 16-bit PNGs); 0 disables")
    p.add_argument("--input-bits", type=int, choices=(8, 16), default=16,
                   help="bit depth of the images the model expects (the published models: 16-bit "
                        "PNGs); prediction refuses or converts other depths")
    p.add_argument("--img-scale", type=float, default=None, help="scale so the image maximum is this")
    p.add_argument("--equalize-hist", action="store_true", help="histogram-equalise each image")
    p.add_argument("--channels", type=int, choices=(1, 3), default=None,
                   help="input channels (default: from the model)")
    p.add_argument("--dataset", choices=sorted(DATASET_MEANS), default="ddsm",
                   help="chooses the default featurewise mean (ddsm 52.18, inbreast 44.33)")
    p.add_argument("--featurewise-mean", type=float, default=None, help="overrides the dataset mean")
    p.add_argument("--no-featurewise-center", action="store_true", help="do not subtract a mean")
    p.add_argument("--kind", choices=("image", "patch"), default="image",
                   help="whole-image or patch classifier")
    p.add_argument("--unsafe-load", action="store_true",
                   help="allow Lambda layers (runs code stored in the file; trusted files only)")
    return p


def run(args: argparse.Namespace) -> int:
    """Convert `args.input` to `args.output`; bad input raises an InputError (one line)."""
    import dm_modelfile
    import dm_checkpoint

    model = dm_checkpoint.load_model(args.input, safe_mode=not args.unsafe_load)
    out_units = model.outputs[0].shape[-1]
    if out_units is not None and out_units != len(args.class_list):
        raise InputError(f"{args.input}: the model has {out_units} outputs but --class-list names "
                         f"{len(args.class_list)} classes")
    fixed = tuple(model.inputs[0].shape[1:3])
    if all(isinstance(v, int) for v in fixed):
        if args.img_size is not None and tuple(args.img_size) != fixed:
            raise InputError(f"{args.input}: the model's input is fixed at {fixed[0]}x{fixed[1]} "
                             f"but --img-size says {args.img_size[0]}x{args.img_size[1]}; drop "
                             "--img-size or give the model's size")
        img_size = fixed
    else:
        img_size = tuple(args.img_size or DEFAULT_IMG_SIZE)
    channels = args.channels or (model.inputs[0].shape[-1] if model.inputs[0].shape[-1] in (1, 3) else 3)
    mean = args.featurewise_mean if args.featurewise_mean is not None else DATASET_MEANS[args.dataset]
    recipe = dm_recipe.Recipe(img_size=img_size, img_scale=args.img_scale, input_bits=args.input_bits,
                             rescale_factor=args.rescale_factor or None, equalize_hist=args.equalize_hist,
                             channels=int(channels), featurewise_center=not args.no_featurewise_center,
                             featurewise_mean=0.0 if args.no_featurewise_center else float(mean))
    meta = dm_modelfile.ModelMeta(class_list=tuple(args.class_list), recipe=recipe, kind=args.kind,
                                  extra={"converted_from": str(args.input)})
    dm_modelfile.save_model(model, args.output, meta)
    log.info("wrote %s (%s, classes %s, recipe %s)", args.output, type(model).__name__,
             " ".join(args.class_list), recipe.to_json())
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (2 for a bad input file or arguments)."""
    args = build_parser().parse_args(argv)
    dm_cli.quiet_tensorflow()
    dm_cli.setup_logging()
    return dm_cli.guarded("convert_checkpoint", run, args)


if __name__ == "__main__":
    sys.exit(main())
