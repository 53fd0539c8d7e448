"""Print a whole-image model's layers and parameter counts.

Build a patch net and its whole-image model; print the layer summary and parameter counts.

    python benchmarks/model_params.py --net vgg16 --block-type vgg --top-repetitions 1 1

(The counts at 1152x896 are pinned in tests/test_dm_resnet.py and listed in the README.)
"""
from __future__ import annotations

import argparse
import logging
import pathlib
import sys
from typing import Sequence

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import dm_cli  # noqa: E402
import dm_patch_nets  # noqa: E402
from dm_resnet import TRUNK_NAME, add_top_layers


def main(argv: Sequence[str] | None = None) -> None:
    """Print the layer summary and parameter counts of a whole-image model."""
    p = argparse.ArgumentParser(description="Build a patch net and its whole-image model.")
    p.add_argument("--net", default="resnet50", choices=dm_patch_nets.PATCH_NETS)
    dm_cli.add_img_size(p, default=[1152, 896])
    p.add_argument("--block-type", default="resnet", choices=["resnet", "vgg"])
    p.add_argument("--top-depths", nargs="+", type=int, default=[512, 512])
    p.add_argument("--top-repetitions", nargs="+", type=int, default=[2, 2])
    p.add_argument("--bottleneck-enlarge-factor", type=int, default=2)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    patch, _, _ = dm_patch_nets.get_dl_model(a.net, nb_class=3, use_pretrained=False)
    model, nb = add_top_layers(patch, a.img_size, block_type=a.block_type, depths=a.top_depths,
                               repetitions=a.top_repetitions,
                               bottleneck_enlarge_factor=a.bottleneck_enlarge_factor)
    model.summary(print_fn=logging.info)
    trunk = model.get_layer(TRUNK_NAME)
    logging.info("trunk feature map at %s: %s; parameters: total %d, trunk %d, top %d",
                 tuple(a.img_size), tuple(model.layers[nb].input.shape[1:]), model.count_params(),
                 trunk.count_params(), model.count_params() - trunk.count_params())


if __name__ == "__main__":
    main()
