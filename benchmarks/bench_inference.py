"""Whole-image prediction throughput at 1152x896 on this machine, in one run.

A random-init patch net (ResNet50 by default, or VGG16) with the "512x1" top (one VGG
block of 512), saved with its recipe, scores synthetic 16-bit PNGs (raw size --raw-size):
  plain    model(x) on one preprocessed image at a time (network only);
  batched  dm_inference.score_paths: read + cubic resize + recipe + predict, --batch-size;
  tta      the same with 4-flip test-time augmentation;
  export   the serving SavedModel (dm_export, cv2-cubic resize in the graph), raw uint16
           batches in (resize + recipe + network, no file reading).
Each is timed after a warm-up; the last line is one JSON object with images/s.

    python benchmarks/bench_inference.py [--net resnet50] [--n 4] [--batch-size 2]
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
import numpy as np  # noqa: E402

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
    p.add_argument("--n", type=int, default=4, help="images per measurement")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--img-size", nargs=2, type=int, default=[1152, 896])
    p.add_argument("--raw-size", nargs=2, type=int, default=[1400, 1100])
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    import keras
    import tensorflow as tf
    import dm_export
    import dm_inference as inf
    import dm_keras_ext
    import dm_resnet
    from dm_image import Recipe
    from dm_keras_ext import ModelMeta

    keras.utils.set_random_seed(1)
    patch, _, _ = dm_keras_ext.get_dl_model(a.net, nb_class=3, use_pretrained=False)
    model, _ = dm_resnet.add_top_layers(patch, a.img_size, block_type="vgg", depths=[512],
                                        repetitions=[1], nb_class=2)
    recipe = Recipe(img_size=tuple(a.img_size), rescale_factor=255 / 65535,
                    featurewise_center=True, featurewise_mean=52.18)
    res = dict(net=a.net, top="512x1", img_size=a.img_size, raw_size=a.raw_size, n=a.n,
               batch_size=a.batch_size, threads=os.cpu_count())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        path = tmp / "m.keras"
        dm_keras_ext.save_model(model, path, ModelMeta(("neg", "pos"), recipe))
        paths = make_images(tmp, a.n, *a.raw_size)
        loaded = inf.load_models([str(path)])
        net = loaded[0].model
        x = np.random.default_rng(0).normal(size=(1, *a.img_size, 3)).astype(np.float32)
        call = tf.function(lambda t: net(t, training=False))
        call(x)                                                  # warm-up / trace
        res["plain_img_s"] = timed(lambda: [call(x).numpy() for _ in range(a.n)], a.n)
        log.info("plain model call: %.3f images/s", res["plain_img_s"])
        inf.score_paths(loaded, paths[:1], a.batch_size)         # warm-up
        res["batched_img_s"] = timed(lambda: inf.score_paths(loaded, paths, a.batch_size), a.n)
        log.info("batched predict (read+preprocess+net): %.3f images/s", res["batched_img_s"])
        res["tta_img_s"] = timed(lambda: inf.score_paths(loaded, paths, a.batch_size, tta=True),
                                 a.n)
        log.info("with 4-flip TTA: %.3f images/s", res["tta_img_s"])
        dm_export.export_serving(net, recipe, ["neg", "pos"], str(tmp / "served"))
        served, _ = dm_export.load_serving(str(tmp / "served"))
        raw = np.stack([cv2.imread(q, cv2.IMREAD_UNCHANGED) for q in paths])
        served.serve_uint16(raw[:a.batch_size])                   # warm-up
        res["export_img_s"] = timed(lambda: [served.serve_uint16(raw[i:i + a.batch_size])["probabilities"].numpy()
                                             for i in range(0, a.n, a.batch_size)], a.n)
        log.info("exported SavedModel (raw uint16 in): %.3f images/s", res["export_img_s"])
    res = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()}
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
