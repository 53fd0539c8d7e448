"""Whole-image prediction throughput at 1152x896 on this machine, in one run.

A random-init patch net (ResNet50 by default, or VGG16) with the paper's "512x1" top
(two VGG blocks of 512; `--top 512-512-1024x2` for the other), saved with its recipe,
scores synthetic 16-bit PNGs (raw size --raw-size):
  bare     the network alone on a preprocessed batch of --batch-size (the ceiling);
  predict  the predict.py path from files: read + cubic resize + recipe + network
           (`dm_scoring.score_paths`);
  tta      the same with 4-flip test-time augmentation (one batched call per batch);
  export   the serving SavedModel (dm_export), raw uint16 batches in;
  bare_bf16  the bare network computing in bfloat16 (`--mixed-precision bfloat16`).
Every measurement is run once untimed with exactly the shapes it times (the last,
partial batch included), then timed over --n images. The last line is one JSON object
with images/s and the ratios predict_vs_bare, tta_vs_bare (TTA images/s x 4 / bare) and
bf16_vs_fp32.

    python benchmarks/bench_inference.py [--net resnet50] [--n 16] [--batch-size 4]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import keras
import numpy as np  # noqa: E402

import dm_cli
import dm_export
import dm_modelfile
import dm_patch_nets
import dm_resnet
import dm_scoring
from dm_modelfile import ModelMeta
from dm_recipe import Recipe

log = logging.getLogger("bench_inference")


def make_images(folder: pathlib.Path, n: int, h: int, w: int) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    yy, xx = np.mgrid[:h, :w]
    for i in range(n):
        breast = ((yy - h / 2) / (0.45 * h)) ** 2 + (xx / (0.8 * w)) ** 2 <= 1
        img = np.where(breast, 20000 + rng.normal(0, 3000, (h, w)), 300.0)
        p = folder / f"img_{i}.png"
        cv2.imwrite(str(p), np.clip(img, 0, 65535).astype(np.uint16))
        paths.append(str(p))
    return paths


def timed(fn, n_images: int) -> float:
    t = time.perf_counter()
    fn()
    return n_images / (time.perf_counter() - t)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--net", default="resnet50", choices=["resnet50", "vgg16"])
    p.add_argument("--top", default="512x1", choices=["512x1", "512-512-1024x2"])
    p.add_argument("--n", type=int, default=16, help="images per measurement")
    p.add_argument("--batch-size", type=int, default=4)
    dm_cli.add_img_size(p, default=[1152, 896])
    p.add_argument("--raw-size", nargs=2, type=int, default=[1400, 1100])
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    logging.getLogger("dm_scoring").setLevel(logging.WARNING)

    keras.utils.set_random_seed(1)
    patch, _, _ = dm_patch_nets.get_dl_model(a.net, nb_class=3, use_pretrained=False)
    top = (dict(block_type="vgg", depths=[512, 512], repetitions=[1, 1]) if a.top == "512x1"
           else dict(block_type="resnet", depths=[512, 512], repetitions=[2, 2],
                     bottleneck_enlarge_factor=2))
    model, _ = dm_resnet.add_top_layers(patch, a.img_size, nb_class=2, **top)
    recipe = Recipe(img_size=tuple(a.img_size), rescale_factor=255 / 65535,
                    featurewise_center=True, featurewise_mean=52.18)
    res = dict(net=a.net, top=a.top, img_size=a.img_size, raw_size=a.raw_size, n=a.n,
               batch_size=a.batch_size, threads=os.cpu_count())

    def measure(name, fn):
        fn()                                             # warm-up with the timed shapes
        res[name] = timed(fn, a.n)
        log.info("%-10s %.3f images/s", name, res[name])

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        path = tmp / "m.keras"
        dm_modelfile.save_model(model, path, ModelMeta(("neg", "pos"), recipe))
        paths = make_images(tmp, a.n, *a.raw_size)
        loaded = dm_scoring.load_models([str(path)])
        net = loaded[0].model
        x = np.random.default_rng(0).normal(
            size=(a.batch_size, *a.img_size, net.inputs[0].shape[-1])).astype(np.float32)
        bare = dm_scoring.forward_fn(net, tta=False)              # the network, nothing else
        steps = -(-a.n // a.batch_size)
        measure("bare_img_s", lambda: [bare(x[:min(a.batch_size, a.n - i * a.batch_size)])
                                       .numpy() for i in range(steps)])
        measure("predict_img_s", lambda: dm_scoring.score_paths(loaded, paths, a.batch_size))
        measure("tta_img_s", lambda: dm_scoring.score_paths(loaded, paths, a.batch_size, tta=True))
        dm_export.export_serving(net, recipe, ["neg", "pos"], str(tmp / "served"))
        served, _ = dm_export.load_serving(str(tmp / "served"))
        raw = np.stack([cv2.imread(q, cv2.IMREAD_UNCHANGED) for q in paths])
        measure("export_img_s", lambda: [
            served.serve_uint16(raw[i:i + a.batch_size])["probabilities"].numpy()
            for i in range(0, a.n, a.batch_size)])
        dm_modelfile.set_precision(net, "bfloat16")
        bare16 = dm_scoring.forward_fn(net, tta=False)
        measure("bare_bf16_img_s", lambda: [bare16(x[:min(a.batch_size, a.n - i * a.batch_size)])
                                            .numpy() for i in range(steps)])
    res["predict_vs_bare"] = res["predict_img_s"] / res["bare_img_s"]
    res["tta_vs_bare"] = res["tta_img_s"] * 4 / res["bare_img_s"]
    res["bf16_vs_fp32"] = res["bare_bf16_img_s"] / res["bare_img_s"]
    res = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()}
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
