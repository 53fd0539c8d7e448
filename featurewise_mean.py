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

import numpy as np

import dm_cli

log = logging.getLogger("featurewise_mean")
RESCALE_16 = 255.0 / 65535.0


def rescale_for_bits(bits: int | None) -> float:
    """The factor that maps pixels of this bit depth to 0-255 (16 -> 0.003891, else 1)."""
    return RESCALE_16 if bits == 16 else 1.0


def mean_pixel(paths: Sequence[str], rescale_factor: float | None = None,
               img_size: Sequence[int] | None = None) -> tuple[float, float, int | None]:
    """(mean, rescale factor used, bit depth) over every pixel of every image.

    Raises `dm_image.DatasetError` for no images or mixed 8/16-bit images.
    """
    import dm_image
    if not paths:
        raise dm_image.DatasetError("no images to average")
    depths = dm_image.check_bit_depths(paths, 1.0)   # refuses a mix of 8 and 16 bits
    bits = next(iter(depths)) if len(depths) == 1 else None
    if rescale_factor is None:
        if bits is None:
            sample = dm_image.read_image(paths[0])
            bits = 16 if sample.dtype == np.uint16 else 8 if sample.dtype == np.uint8 else None
        rescale_factor = rescale_for_bits(bits)
    recipe = dm_image.Recipe(img_size=tuple(img_size) if img_size else None)
    total, count = 0.0, 0
    for p in paths:
        img = dm_image.resize(dm_image.read_image(p), recipe).astype(np.float64)
        total += float(img.sum())
        count += img.size
    return total / count * float(rescale_factor), float(rescale_factor), bits


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=dm_cli.HelpFormatter)
    p.add_argument("image_dir", help="training images (searched recursively, e.g. TRAIN_DIR)")
    p.add_argument("--rescale-factor", type=float,
                   help="multiply pixels by this first (default: 0.003891 for 16-bit "
                        "images, 1 for 8-bit)")
    p.add_argument("--img-size", "--target-size", nargs=2, type=int, metavar=("H", "W"),
                   help="resize each image to H x W first, as training does (default: as is)")
    p.add_argument("--print", dest="what", choices=("flags", "mean", "rescale"), default="flags",
                   help="print the trainer flags, or only the mean or the rescale factor (for "
                        "shell variables)")
    return p


def run(args) -> int:
    import dm_inference
    paths = dm_inference.list_images(args.image_dir)  # InferenceError: missing or empty folder
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
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    try:
        return run(args)
    except (ValueError, OSError) as e:
        log.error("error: %s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
