"""Training throughput and peak memory of a whole-image model, per precision/XLA setting.

    python benchmarks/bench_train.py --net vgg16 --img-size 1152 896 --batch-size 2

Each setting runs in its own process (so peak memory is its own): float32 (the baseline),
mixed float16 (`fp16`, for GPUs), mixed bfloat16 (`bf16`, for CPUs with AVX512-BF16/AMX
and recent GPUs), XLA, and mixed + XLA. On a GPU, peak memory is TensorFlow's device peak;
on the CPU it is the process's peak resident memory. Prints a table and, last, one JSON
line with images/s, peak MB and the ratio of each setting to the float32 baseline.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import keras
import numpy as np
import tensorflow as tf

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)

import dm_cli  # noqa: E402
import dm_modelfile  # noqa: E402
import dm_patch_nets  # noqa: E402
import dm_resnet  # noqa: E402
import dm_stages  # noqa: E402


def worker(a) -> dict:

    precision = {"none": None, "fp16": "float16", "bf16": "bfloat16"}[a.precision]
    keras.utils.set_random_seed(0)
    patch, _, _ = dm_patch_nets.get_dl_model(a.net, nb_class=3, use_pretrained=False)
    model, _ = dm_resnet.add_top_layers(patch, a.img_size, block_type=a.block_type,
                                        depths=a.top_depths, repetitions=a.top_repetitions,
                                        bottleneck_enlarge_factor=a.enlarge)
    dm_modelfile.set_precision(model, precision)   # as the trainers' --mixed-precision
    model.compile(optimizer=dm_stages.create_optimizer("adam", 1e-4),
                  loss="categorical_crossentropy", jit_compile=bool(a.xla))
    ch = model.inputs[0].shape[-1]
    x = np.random.default_rng(0).normal(size=(a.batch_size, *a.img_size, ch)).astype("float32")
    y = np.eye(2, dtype="float32")[np.arange(a.batch_size) % 2]
    model.train_on_batch(x, y)                      # build, trace, compile
    t = time.perf_counter()
    for _ in range(a.steps):
        model.train_on_batch(x, y)
    dt = time.perf_counter() - t
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        peak = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
        where = "GPU"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        where = "CPU (process RSS)"
    return dict(images_per_s=a.steps * a.batch_size / dt, peak_mb=peak, device=where,
                params=model.count_params())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--net", default="vgg16")
    dm_cli.add_img_size(p, default=[576, 448])
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--block-type", default="vgg")
    p.add_argument("--top-depths", nargs="+", type=int, default=[512, 512])   # "512x1"
    p.add_argument("--top-repetitions", nargs="+", type=int, default=[1, 1])
    p.add_argument("--enlarge", type=int, default=2)
    p.add_argument("--settings", nargs="+", default=["fp32", "bf16", "fp16", "xla", "bf16+xla"])
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        a.precision, a.xla = a.worker[0], int(a.worker[1])
        print("RESULT " + json.dumps(worker(a)))
        return
    results = {}
    for s in a.settings:
        prec = "bf16" if "bf16" in s else ("fp16" if "fp16" in s else "none")
        flags = ["--worker", prec, str(int("xla" in s))]
        cmd = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], *flags]
        out = subprocess.run(cmd, capture_output=True, text=True,
                             env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
        if out.returncode != 0 or not line:
            results[s] = {"error": (out.stderr.strip().splitlines() or ["failed"])[-1][:200]}
        else:
            results[s] = json.loads(line[0][7:])
    base = results.get("fp32", {}).get("images_per_s")
    print(f"{a.net} + {a.block_type} {a.top_depths}x{a.top_repetitions} at "
          f"{a.img_size[0]}x{a.img_size[1]}, batch {a.batch_size}, {a.steps} steps")
    for s, r in results.items():
        if "error" in r:
            print(f"  {s:10s} failed: {r['error']}")
            continue
        ratio = r["images_per_s"] / base if base else float("nan")
        r["speed_vs_fp32"] = ratio
        print(f"  {s:10s} {r['images_per_s']:8.3f} images/s  x{ratio:5.2f}  "
              f"peak {r['peak_mb']:8.0f} MB ({r['device']})")
    bf16 = results.get("bf16", {}).get("images_per_s")
    print(json.dumps(dict(net=a.net, img_size=a.img_size, batch_size=a.batch_size,
                          results=results,
                          bf16_vs_fp32=bf16 / base if bf16 and base else None)))


if __name__ == "__main__":
    main()
