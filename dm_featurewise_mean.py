"""Compute the featurewise mean (and the rescale factor) of a set of training images.

    python featurewise_mean.py TRAIN_DIR [--rescale-factor F] [--img-size H W] [--print WHAT]

The trainers subtract one scalar, `--featurewise-mean`: the mean pixel of the training
images after `--rescale-factor`. Without `--rescale-factor` the factor follows the images'
bit depth (255/65535 = 0.003891 for 16-bit, 1 for 8-bit), so the mean is on the 0-255
scale the published models use. Images are found recursively (class folders or any
folder); a mix of 8- and 16-bit images is refused, as in training. `--print mean` or
`--print rescale` prints just that number, for `MEAN=$(python featurewise_mean.py DIR
--print mean)` (README "Transfer to your data").
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

import dm_cli
import dm_inputs
from dm_dataset import mean_pixel

log = logging.getLogger("featurewise_mean")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=dm_cli.HelpFormatter)
    p.add_argument("image_dir", help="training images (searched recursively, e.g. TRAIN_DIR)")
    p.add_argument("--rescale-factor", type=float,
                   help="multiply pixels by this first (default: 0.003891 for 16-bit "
                        "images, 1 for 8-bit)")
    dm_cli.add_img_size(p, help="resize each image to H x W first, as training does (default: as is)")
    p.add_argument("--print", dest="what", choices=("flags", "mean", "rescale"), default="flags",
                   help="print the trainer flags, or only the mean or the rescale factor (for "
                        "shell variables)")
    return p


def run(args) -> int:
    paths = dm_inputs.list_images(args.image_dir)  # InferenceError: missing or empty folder
    mean, factor, bits = mean_pixel(paths, args.rescale_factor, args.img_size)
    if args.what != "flags":
        print(f"{mean:.2f}" if args.what == "mean" else f"{factor:.6g}")
        return 0
    log.info("%d images in %s%s: featurewise mean %.2f after rescale factor %.6g", len(paths),
             args.image_dir, f" ({bits}-bit)" if bits else "", mean, factor)
    print(f"--rescale-factor {factor:.6g} --featurewise-mean {mean:.2f}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The log goes to stderr, the result to stdout; bad input is one line and exit 2."""
    args = build_parser().parse_args(argv)
    with dm_cli.log_to_stderr():
        return dm_cli.guarded("featurewise_mean", run, args)


if __name__ == "__main__":
    sys.exit(main())
