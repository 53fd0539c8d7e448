"""Synthetic-data throughput: dm_synthetic's images/s against writing the same PNGs alone.

Each round generates a fresh dataset (`dm_synthetic.generate_dataset`: rendering, lesion
masks, PNGs, the recipe tables) and then, as the baseline measured in the same run, writes
the same full images again as PNGs (`dm_pixels.write_png`, decoded beforehand): the file
writing that any generator of these images pays. One untimed warm-up run first; rounds are
interleaved and the medians reported. The goal (docs/benchmarks.md) is at least
`GOAL_IMG_S` images/s at the default size; the last line is one JSON object.

    python benchmarks/bench_synthetic.py [--n-patients 30 --img-size 288 224 --rounds 5]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import dm_cli  # noqa: E402
import dm_pixels  # noqa: E402
import dm_synthetic  # noqa: E402

log = logging.getLogger("bench_synthetic")
#: 60 images in at most 15 s, the budget the generator was first held to.
GOAL_IMG_S = 4.0


def time_generation(out: pathlib.Path, n_patients: int, img_size: tuple[int, int],
                    seed: int) -> tuple[float, int]:
    """(seconds, images) of one `generate_dataset` run into a new folder."""
    with contextlib.redirect_stderr(io.StringIO()):     # its progress bar
        t0 = time.perf_counter()
        summary = dm_synthetic.generate_dataset(out, n_patients=n_patients, img_size=img_size,
                                                seed=seed)
        secs = time.perf_counter() - t0
    return secs, int(summary["images"])


def time_writing(images: list[np.ndarray], out: pathlib.Path) -> float:
    """Seconds to write `images` as PNGs into `out` (the baseline)."""
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    for i, img in enumerate(images):
        dm_pixels.write_png(out / f"{i:04d}.png", img)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-patients", type=dm_cli.int_at_least(1), default=30,
                    help="patients per run (2 views each)")
    dm_cli.add_img_size(ap, help="image size", default=[288, 224])
    ap.add_argument("--rounds", type=dm_cli.int_at_least(1), default=5,
                    help="interleaved rounds (medians reported)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    for quiet in ("dm_recipe_utils", "dm_synthetic"):     # each run's summary table
        logging.getLogger(quiet).setLevel(logging.WARNING)
    size = tuple(args.img_size)
    rec: dict[str, list[float]] = {"generate": [], "write_only": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        time_generation(tmp / "warmup", 2, size, seed=0)       # imports, first allocations
        for r in range(args.rounds):
            secs, n = time_generation(tmp / f"gen{r}", args.n_patients, size, seed=r + 1)
            rec["generate"].append(n / secs)
            images = [dm_pixels.read_image(p)
                      for p in sorted((tmp / f"gen{r}" / "full_images").iterdir())]
            rec["write_only"].append(n / time_writing(images, tmp / f"write{r}"))
            log.info("round %d: %d images, generate %.1f images/s, writing alone %.1f", r, n,
                     rec["generate"][-1], rec["write_only"][-1])
    med = {k: float(np.median(v)) for k, v in rec.items()}
    ratio = float(np.median(np.array(rec["generate"]) / np.array(rec["write_only"])))
    log.info("dm_synthetic %dx%d: %.1f images/s (goal >= %.0f: %s); writing the PNGs alone "
             "%.1f images/s; generation runs at %.2f of that", size[0], size[1],
             med["generate"], GOAL_IMG_S, "met" if med["generate"] >= GOAL_IMG_S else "MISSED",
             med["write_only"], ratio)
    res = {"generate_img_s": round(med["generate"], 2),
           "write_only_img_s": round(med["write_only"], 2), "ratio_generate_write": round(ratio, 3),
           "goal_img_s": GOAL_IMG_S, "goal_met": med["generate"] >= GOAL_IMG_S,
           "rounds_img_s": {k: [round(v, 2) for v in vs] for k, vs in rec.items()},
           "n_patients": args.n_patients, "img_size": list(size), "rounds": args.rounds,
           "cpu_count": os.cpu_count()}
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
