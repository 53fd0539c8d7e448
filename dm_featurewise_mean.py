"""Compute the featurewise mean (and the rescale factor) of a set of training images.

    python featurewise_mean.py TRAIN_DIR --trainer patch|image [recipe flags] [--print WHAT]

The trainers subtract one scalar, `--featurewise-mean`: the mean pixel of the training
images after every recipe step before centring (size, `--img-scale`, `--rescale-factor`,
equalisation). Those steps differ between the trainers (the patch trainer resizes to
256x256 and equalises by default, the image trainer resizes to 1152x896 and does not), so
`--trainer` is required: its recipe defaults (dm_flags) apply, and the trainer's recipe
flags given here replace them, as they would in the trainer (centring flags are accepted
and ignored). Without `--rescale-factor` the factor follows the images' bit depth
(255/65535 = 0.003891 for 16-bit, 1 for 8-bit), so the mean is on the 0-255 scale the
published models use. Images are found recursively (class folders or any folder); a mix of
8- and 16-bit images is refused, as in training. `--print mean` or `--print rescale`
prints just that number, for `MEAN=$(python featurewise_mean.py DIR --trainer image
--print mean)` (README "Transfer to your data").
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

import dm_cli
import dm_flags
import dm_inputs
import dm_recipe
from dm_dataset import mean_pixel

log = logging.getLogger("featurewise_mean")
#: Each trainer's defaults, of which the recipe's apply here (defined once, in dm_flags).
TRAINER_DEFAULTS = {"patch": dm_flags.PATCH_DEFAULTS, "image": dm_flags.IMAGE_DEFAULTS}


def trainer_recipe(kind: str, flags: argparse.Namespace | None = None) -> dm_recipe.Recipe:
    """The recipe steps the mean is taken after: the trainer's recipe defaults, replaced by
    the recipe flags given (not None), no centring (the mean is what centring subtracts);
    rescale None is filled in by `mean_pixel`."""
    given = dm_recipe.flag_values(flags) if flags is not None else {}
    values = {k: TRAINER_DEFAULTS[kind].get(k) if given.get(k) is None else given[k]
              for k in dm_recipe.RECIPE_FLAGS}
    return dm_recipe.recipe_from_flags(argparse.Namespace(**values), featurewise_center=False,
                                       featurewise_mean=0.0)


def steps(recipe: dm_recipe.Recipe) -> str:
    """A trainer recipe's steps before centring, in words (help and log)."""
    h, w = recipe.img_size
    return f"{h}x{w}, " + ("equalised" if recipe.equalize_hist else "not equalised")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=dm_cli.HelpFormatter)
    p.add_argument("image_dir", help="training images (searched recursively, e.g. TRAIN_DIR)")
    p.add_argument("--trainer", required=True, choices=tuple(TRAINER_DEFAULTS),
                   help="the trainer the mean is for; its recipe defaults apply ("
                        + "; ".join(f"{k}: {steps(trainer_recipe(k))}" for k in TRAINER_DEFAULTS)
                        + ")")
    p.add_argument("--print", dest="what", choices=("flags", "mean", "rescale"), default="flags",
                   help="print the trainer flags, or only the mean or the rescale factor (for "
                        "shell variables)")
    g = p.add_argument_group(
        "recipe (the trainer's)",
        "The mean is taken after every step before centring: the --trainer's defaults, "
        "replaced by the recipe flags given here. Without --rescale-factor the factor follows the "
        "bit depth (0.003891 for 16-bit, 1 for 8-bit), or is 1 with --img-scale. The "
        "centring flags are accepted (a trainer's flags can be pasted) and ignored.")
    dm_cli.add_recipe_flags(g, trainer=True)
    return p


def trainer_flags(args: argparse.Namespace, factor: float, mean: float) -> str:
    """The trainer flags that reproduce the mean: the recipe flags given that it depends
    on, then the rescale factor and the mean."""
    given = []
    if args.img_size is not None:
        given.append(f"--img-size {args.img_size[0]} {args.img_size[1]}")
    if args.img_scale is not None:
        given.append(f"--img-scale {args.img_scale:g}")
    if args.equalize_hist is not None:
        given.append("--equalize-hist" if args.equalize_hist else "--no-equalize-hist")
    return " ".join(given + [f"--rescale-factor {factor:.6g} --featurewise-mean {mean:.2f}"])


def run(args: argparse.Namespace) -> int:
    paths = dm_inputs.list_images(args.image_dir)  # InferenceError: missing or empty folder
    recipe = trainer_recipe(args.trainer, args)
    mean, factor, bits = mean_pixel(paths, recipe)
    if args.what != "flags":
        print(f"{mean:.2f}" if args.what == "mean" else f"{factor:.6g}")
        return 0
    log.info("%d images in %s%s: featurewise mean %.2f for the %s trainer (%s, rescale "
             "factor %.6g)", len(paths), args.image_dir, f" ({bits}-bit)" if bits else "",
             mean, args.trainer, steps(recipe), factor)
    print(trainer_flags(args, factor, mean))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The log goes to stderr, the result to stdout; bad input is one line and exit 2."""
    args = build_parser().parse_args(argv)
    with dm_cli.log_to_stderr():
        return dm_cli.guarded("featurewise_mean", run, args)


if __name__ == "__main__":
    sys.exit(main())
