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
import os
import sys
import zipfile
from typing import Sequence

import dm_cli
import dm_output
import dm_recipe
from dm_errors import InputError, InputFileNotFoundError

DATASET_MEANS = {"ddsm": 52.18, "inbreast": 44.33}
DEFAULT_RESCALE = 0.003891
DEFAULT_IMG_SIZE = (1152, 896)
PUBLISHED_BITS = 16

log = logging.getLogger("convert_checkpoint")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=dm_cli.HelpFormatter)
    p.add_argument("input", help="model file: Keras 2.x/1.2 .h5, Keras 3 .h5 or .keras")
    p.add_argument("output", help="where to write the converted model (.keras; .h5 also accepted)")
    p.add_argument("--class-list", nargs="+", default=["neg", "pos"],
                   help="output column names, in order")
    p.add_argument("--kind", choices=("image", "patch"), default="image",
                   help="whole-image or patch classifier")
    p.add_argument("--unsafe-load", action="store_true",
                   help="allow Lambda layers (runs code stored in the file; trusted files only)")
    r = p.add_argument_group(
        "recipe stored in the file",
        "Default (a flag not given): the published models' recipe: the model's fixed input "
        f"size, else {DEFAULT_IMG_SIZE[0]}x{DEFAULT_IMG_SIZE[1]} (--img-size must agree with a "
        f"fixed input); --rescale-factor {DEFAULT_RESCALE} (0 also switches it off); "
        f"{PUBLISHED_BITS}-bit input; featurewise centring with the --dataset mean "
        "(--no-featurewise-center also sets the mean to 0); channels from the model.")
    dm_cli.add_recipe_flags(r)
    r.add_argument("--channels", type=int, choices=(1, 3), default=None,
                   help="input channels (default: from the model)")
    r.add_argument("--dataset", choices=sorted(DATASET_MEANS), default="ddsm",
                   help="chooses the default featurewise mean (ddsm 52.18, inbreast 44.33)")
    return p


def require_model_file(path: str, flag: str | None = None) -> None:
    """Refuse a model file that is not there, before anything loads: "model file not
    found", and for a name like the converted published checkpoints (`ddsm_vgg16.keras`,
    README "Transfer to your data") how such a file is made: downloaded, then converted.
    A `.keras` zip cut short (an interrupted download or copy) is called truncated, not
    "not a model file"."""
    where = f" ({flag})" if flag else ""
    if os.path.isfile(path):
        with open(path, "rb") as f:
            zip_start = f.read(4) == b"PK\x03\x04"
        if zip_start and not zipfile.is_zipfile(path):
            raise InputError(f"{path}: a truncated or corrupt .keras file{where} (it begins "
                             "as one but its end is missing or damaged: an interrupted "
                             "download or copy?)")
        return
    if os.path.isdir(path):
        raise InputFileNotFoundError(f"{path}: is a folder, not a model file{where}")
    name = os.path.basename(path).lower()
    dataset = next((d for d in DATASET_MEANS if name.startswith(d + "_")), None)
    hint = "" if dataset is None else (
        f"; a published checkpoint is downloaded first (the .h5 links: docs/original.md), "
        f"then converted: python convert_checkpoint.py DOWNLOADED.h5 {path} --dataset {dataset}")
    raise InputFileNotFoundError(f"{path}: model file not found{where}{hint}")


def published_recipe(img_size: Sequence[int], channels: int, dataset: str) -> dm_recipe.Recipe:
    """The recipe the published whole-image models were trained with (16-bit PNGs rescaled
    to 0-255, centred on the data set's mean), at the given size and channels."""
    return dm_recipe.Recipe(img_size=tuple(img_size), rescale_factor=DEFAULT_RESCALE,
                            input_bits=PUBLISHED_BITS, channels=int(channels),
                            featurewise_center=True, featurewise_mean=DATASET_MEANS[dataset])


def recipe_for(args: argparse.Namespace, input_shape: Sequence[int | None]) -> dm_recipe.Recipe:
    """The recipe to store for a model whose input has `input_shape` (batch, H, W, C): the
    published one with the recipe flags given replacing its items. A size a fixed input
    cannot take is refused in one line."""
    fixed = tuple(input_shape[1:3])
    if all(isinstance(v, int) for v in fixed):
        if args.img_size is not None and tuple(args.img_size) != fixed:
            raise InputError(f"{args.input}: the model's input is fixed at {fixed[0]}x{fixed[1]} "
                             f"but --img-size says {args.img_size[0]}x{args.img_size[1]}; drop "
                             "--img-size or give the model's size")
        img_size = fixed
    else:
        img_size = tuple(args.img_size or DEFAULT_IMG_SIZE)
    channels = args.channels or (input_shape[-1] if input_shape[-1] in (1, 3) else 3)
    fields: dict = {}
    if args.rescale_factor == 0:              # the tool's older spelling of --no-rescale-factor
        fields["rescale_factor"] = dm_cli.OFF
    if args.featurewise_center is False:      # no centring: no mean recorded either
        fields["featurewise_mean"] = 0.0
    return dm_recipe.recipe_from_flags(args, base=published_recipe(img_size, channels, args.dataset),
                                       **fields)


def precheck(args: argparse.Namespace) -> None:
    """The refusals that need no TensorFlow: a missing input, an output that cannot be
    written or that is the input itself."""
    if not os.path.isfile(args.input):
        raise InputFileNotFoundError(f"{args.input}: model file not found")
    dm_output.check_writable(args.output, "OUTPUT")
    dm_output.check_not_input(args.output, [("INPUT model", args.input)], "OUTPUT")


def run(args: argparse.Namespace) -> int:
    """Convert `args.input` to `args.output`; bad input raises an InputError (one line)."""
    precheck(args)
    return convert(args)


def convert(args: argparse.Namespace) -> int:
    """`run` after its checks."""
    import dm_modelfile  # deferred for --help (docs/modules.md)

    # dm_modelfile's loader (Keras 2.0.8 files through dm_checkpoint) keeps a whole-image
    # model's record of its trunk's own trainable flags, which save_model writes again.
    model = dm_modelfile.load_model(args.input, safe_mode=not args.unsafe_load)
    out_units = model.outputs[0].shape[-1]
    if out_units is not None and out_units != len(args.class_list):
        raise InputError(f"{args.input}: the model has {out_units} outputs but --class-list names "
                         f"{len(args.class_list)} classes")
    recipe = recipe_for(args, tuple(model.inputs[0].shape))
    meta = dm_modelfile.ModelMeta(class_list=tuple(args.class_list), recipe=recipe, kind=args.kind,
                                  extra={"converted_from": str(args.input)})
    dm_modelfile.save_model(model, args.output, meta)
    log.info("wrote %s (%s, classes %s, recipe %s)", args.output, type(model).__name__,
             " ".join(args.class_list), recipe.to_json())
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (2 for a bad input file or arguments)."""
    return dm_cli.run_tool("convert_checkpoint", build_parser().parse_args, convert, argv,
                           tensorflow=True, precheck=precheck)


if __name__ == "__main__":
    sys.exit(main())
