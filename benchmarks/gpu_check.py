"""The GPU check: one command that runs the GPU paths on a lent GPU and sizes them (issue 33).

Sections (docs/benchmarks.md, "The GPU check"):
  environment  TensorFlow, Keras, their CUDA/cuDNN build, the GPU, its memory, first-op time;
  tests        the test suite's mixed-precision and --distribute tests on the GPU, and both
               trainers with --distribute --mixed-precision float16 --jit-compile;
  training     whole-image training steps of ResNet50 + [512-512-1024]x2 and VGG16 + 512x1
               at 1152x896 (and the ResNet50 patch classifier), float32 / mixed float16 /
               mixed bfloat16, with and without XLA, batch doubling up to what fits;
  pipeline     the tf.data pipeline (16-bit PNGs, the paper's augmentation; RAM and disk)
               against the fastest training setting, and that setting fed by it;
  prediction   predict.py's path with and without 4-flip TTA, and the serving export;
  schedule     the original scripts' DDSM schedule in GPU-hours from the measured rates.
Prints Markdown tables and one PASS/FAIL line per goal of the issue; --out gets the JSON,
rewritten after every measurement (dm_output), so a run cut short keeps what it measured.

The TensorFlow sections run in a worker process (benchmarks/gpu_sections.py): a crash there
(a fatal CUDA or XLA error) costs the measurement in flight, not the run, and a new worker
goes on; an exception in any section is recorded with its message and the check goes on.
This process never imports TensorFlow, so it also reports a machine where it is missing;
the schedule, the goals and the tables are benchmarks/gpu_report.py.
--budget-s bounds the whole run: settings that would overrun are skipped and listed.

    python benchmarks/gpu_check.py --out gpu_check.json [--budget-s 420] [--tiny]
"""
from __future__ import annotations

import argparse
import collections
import csv
import json
import logging
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import dm_cli  # noqa: E402
import dm_output  # noqa: E402
import dm_synthetic  # noqa: E402
from dm_pixels import write_png  # noqa: E402
from gpu_report import PATCH_NET, SECTIONS, goals, key, markdown, schedule_section  # noqa: E402

log = logging.getLogger("gpu_check")

WORKER_SECTIONS = ("environment", "training", "pipeline", "prediction")
WORKER = pathlib.Path(__file__).with_name("gpu_sections.py")
# The tests that exercise mixed precision and --distribute (found by grepping tests/ for
# mixed_bfloat16, set_precision, --distribute, MirroredStrategy; none uses float16 or XLA:
# the trainer runs of this section cover those).
GPU_TESTS = (
    "tests/test_dm_modelfile.py::test_set_precision_bfloat16_keeps_the_softmax_float32_and_goes_back",
    "tests/test_dm_modelfile.py::test_trained_in_bfloat16_loads_and_predicts_in_float32",
    "tests/test_trainers.py::test_two_replicas_under_mirrored_strategy",
)
# Failures explained in docs/benchmarks.md ("The GPU check"): listed, not counted.
KNOWN = {"test_two_replicas_under_mirrored_strategy":
         "expected with a GPU: the test makes two logical CPUs and expects two replicas, but "
         "--distribute takes the visible GPU (one replica)"}


def config(args: argparse.Namespace, t0: float) -> dict:
    """Everything a worker needs, sizes by mode (the paper's, or tiny for a CPU test)."""
    tiny = args.tiny
    return dict(
        tiny=tiny, t0=t0, budget_s=args.budget_s, sections=list(args.sections),
        fail=list(args.fail_section or ()), deadlines={},
        img_size=[64, 48] if tiny else [1152, 896], patch_size=16 if tiny else 256,
        patch_batch=4 if tiny else 32, start_batch=2 if tiny else 4,
        max_batch=4 if tiny else args.max_batch, raw_size=[80, 60] if tiny else [1400, 1100],
        pipeline_images=6 if tiny else 32, predict_images=6 if tiny else 32,
        predict_batches=[4] if tiny else [4, 16],
        timed_s=0.0 if tiny else 1.5, pipeline_s=0.5 if tiny else 6.0)


# ------------------------------------------------------------------ state file
def load_state(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def save_state(path: str, state: dict) -> None:
    dm_output.write_json(path, state, indent=1, default=str)


def section(state: dict, name: str) -> dict:
    return state["sections"].setdefault(name, {})


def run_guarded(state: dict, name: str, fn, save) -> None:
    """Run one section: its result or its failure (message and traceback tail) is recorded,
    and the check goes on either way."""
    sec = section(state, name)
    sec.update(status="running", started=time.time())
    save()
    try:
        if name in state["config"]["fail"]:
            raise RuntimeError(f"planted failure (--fail-section {name})")
        fn(sec)
        sec["status"] = "ok"
    except Exception as e:   # recorded, shown and counted by the goals: the run goes on
        log.exception("section %s failed", name)
        sec.update(status="failed", error=f"{type(e).__name__}: {e}"[:500])
    sec["wall_s"] = round(time.time() - sec.pop("started"), 2)
    save()


# ------------------------------------------------------------------ training plan
def settings(tiny: bool) -> list[dict]:
    """Training settings, most important first: the issue's goals (mixed precision against
    float32 on the paper's ResNet50 recipe, its batch size), the patch net (for the schedule),
    XLA, then VGG16, then the cost of deterministic ops. XLA runs with deterministic ops off:
    Keras turns XLA off under TensorFlow's op determinism (the trainers' default)."""
    def s(net, precision, xla=False, deterministic=None):
        return dict(net=net, precision=precision, xla=xla,
                    deterministic=not xla if deterministic is None else deterministic)
    r50 = [s("resnet50-2x", p) for p in (None, "float16", "bfloat16")]
    patch = [s(PATCH_NET, p) for p in (None, "float16")]
    xla = [s("resnet50-2x", p, True) for p in ("float16", None, "bfloat16")]
    vgg = [s("vgg16-1x", p) for p in (None, "float16", "bfloat16")]
    vgg_xla = [s("vgg16-1x", p, True) for p in ("float16", None, "bfloat16")]
    nondet = [s("resnet50-2x", "float16", deterministic=False)]
    if tiny:   # a CPU test: one of each code path
        return [r50[0], r50[2], patch[0], s("resnet50-2x", "bfloat16", True), vgg[0]]
    return r50 + patch + xla + vgg + vgg_xla + nondet


def estimate_s(runs: list[dict], s: dict, batch: int, tiny: bool) -> float:
    """Seconds a measurement will take: the same setting at half the batch, else the
    slowest of its kind (XLA or not) so far, else a guess."""
    done = [r for r in runs if r.get("wall_s") is not None]
    same = [r for r in done if key(r) == key(s) and r["batch"] == batch // 2]
    if same:
        return same[0]["wall_s"] * 1.3
    kind = [r["wall_s"] for r in done if r["xla"] == s["xla"]]
    if kind:
        return max(kind)
    return (20.0 if s["xla"] else 10.0) if tiny else (90.0 if s["xla"] else 30.0)


def next_measurement(runs: list[dict], cfg: dict, now: float, deadline: float
                     ) -> tuple[dict, int] | None:
    """The next (setting, batch) to measure: every setting at its first batch, then rounds
    of doubled batches for the settings whose last batch fitted (--tiny: the first setting
    only). Candidates that would
    overrun the deadline are recorded as skipped in `runs`."""
    seen = {(key(r), r["batch"]): r for r in runs}
    order = settings(cfg["tiny"])

    def first(s):
        return cfg["patch_batch"] if s["net"] == PATCH_NET else cfg["start_batch"]
    candidates = [(s, first(s)) for s in order]
    doubled = order[:1] if cfg["tiny"] else [s for s in order if s["net"] != PATCH_NET]
    b = cfg["start_batch"] * 2
    while b <= cfg["max_batch"]:
        candidates += [(s, b) for s in doubled]
        b *= 2
    for s, batch in candidates:
        if (key(s), batch) in seen:
            continue
        if batch != first(s) and seen.get((key(s), batch // 2), {}).get("status") != "ok":
            continue
        if estimate_s(runs, s, batch, cfg["tiny"]) > deadline - now:
            runs.append(dict(s, batch=batch, status="skipped", error="time budget"))
            seen[(key(s), batch)] = runs[-1]
            continue
        return s, batch
    return None


# ------------------------------------------------------------------ helpers without TensorFlow
def nvidia_smi() -> list[dict]:
    """The GPUs nvidia-smi sees (name, memory, driver); [] where there is none."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    q = "name,memory.total,driver_version,compute_cap"
    out = subprocess.run([exe, f"--query-gpu={q}", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=30)
    return [dict(zip(q.split(","), (v.strip() for v in line.split(","))))
            for line in out.stdout.splitlines() if line.strip()]


def gpu_env() -> dict:
    """The environment for subprocesses that must see the GPUs: the test suite's conftest
    hides them unless CUDA_VISIBLE_DEVICES is set, so it is set to every GPU here."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    if "CUDA_VISIBLE_DEVICES" not in env:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in range(len(nvidia_smi())))
    return env


def synthetic_pngs(folder: pathlib.Path, n: int, size, distinct: int = 8) -> list[str]:
    """n 16-bit synthetic mammograms (dm_synthetic), `distinct` of them rendered and the
    rest copies: decoding costs the same, rendering would cost more than the measurement."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"img_{i:04d}.png"
        if i < distinct:
            cfg = dm_synthetic.SynthConfig(img_size=tuple(size))
            write_png(p, dm_synthetic.render_image(np.random.default_rng(i), cfg=cfg).image)
        else:
            shutil.copyfile(paths[i % distinct], p)
        paths.append(str(p))
    return paths


def class_folders(root: pathlib.Path, classes, n: int, size) -> list[str]:
    """ROOT/{train,val,test}/<class>/ with n synthetic images each; the split folders."""
    for split in ("train", "val", "test"):
        for c in classes:
            synthetic_pngs(root / split / c, n, size, distinct=n)
    return [str(root / split) for split in ("train", "val", "test")]


def tail(text: str, n: int = 3) -> str:
    """The last lines of a log that say something (TensorFlow's start-up notices left out)."""
    noise = ("I0000 ", "WARNING: All log messages before absl", "To enable the following")
    lines = [l for l in text.strip().splitlines() if l.strip() and not l.startswith(noise)]
    return " | ".join(lines[-n:])[-600:]


# ------------------------------------------------------------------ section: tests
SMOKE_FLAGS = ["--no-deterministic", "--rescale-factor", "0.003891", "--featurewise-mean", "50",
               "--optimizer", "adam", "--no-equalize-hist"]
SMOKE = ("import sys, json, patch_clf_train, image_clf_train\n"
         "a = json.loads(sys.argv[1])\n"
         "rc = patch_clf_train.main(a['patch'])\n"
         "print('SMOKE patch', rc, flush=True)\n"
         "print('SMOKE image', image_clf_train.main(a['image']) if rc == 0 else None)\n")


def tests_section(sec: dict, cfg: dict, deadline: float) -> None:
    """The GPU tests of the suite (pytest, one subprocess), then both trainers with
    --distribute --mixed-precision float16 --jit-compile on small synthetic data (--tiny:
    the first test only, and bfloat16)."""
    env = gpu_env()
    sec["cuda_visible_devices"] = env.get("CUDA_VISIBLE_DEVICES")
    nodes = GPU_TESTS[:1] if cfg["tiny"] else GPU_TESTS
    with tempfile.TemporaryDirectory() as tmp:
        xml = pathlib.Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               f"--junitxml={xml}", *nodes]
        limit = max(10.0, min(cfg["budget_s"] * 0.18, deadline - time.time()))
        try:
            out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                                 timeout=limit)
            sec["pytest_rc"], sec["pytest_tail"] = out.returncode, tail(out.stdout, 2)
        except subprocess.TimeoutExpired:
            sec["pytest_rc"], sec["pytest_tail"] = None, f"timed out after {limit:.0f} s"
        sec["tests"] = junit_results(xml) if xml.exists() else []
        sec["smoke"] = trainer_smoke(pathlib.Path(tmp), env,
                                     max(10.0, min(cfg["budget_s"] * 0.2, deadline - time.time())),
                                     cfg["tiny"])


def junit_results(xml: pathlib.Path) -> list[dict]:
    """Each test's outcome and message from pytest's JUnit XML; known failures marked."""
    out = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        bad = [c for c in case if c.tag in ("failure", "error", "skipped")]
        out.append(dict(test=f"{case.get('classname')}::{case.get('name')}",
                        outcome=bad[0].tag if bad else "passed", time_s=float(case.get("time", 0)),
                        message=(bad[0].get("message") or "")[:400] if bad else ""))
        if bad and case.get("name") in KNOWN:
            out[-1]["known"] = KNOWN[case.get("name")]
    return out


def gpu_flags(tiny: bool) -> list[str]:
    """The trainers' GPU flags (--tiny: bfloat16, as CPUs emulate float16 slowly)."""
    return ["--distribute", "--mixed-precision", "bfloat16" if tiny else "float16",
            "--jit-compile"]


def trainer_smoke(tmp: pathlib.Path, env: dict, limit: float, tiny: bool) -> dict:
    """patch_clf_train then image_clf_train (from its model) in one subprocess, with the GPU
    flags; XLA needs --no-deterministic (Keras turns it off under deterministic ops)."""
    flags = gpu_flags(tiny) + SMOKE_FLAGS
    patch = class_folders(tmp / "patches", ["background", "malignant", "benign"], 4, (32, 32))
    image = class_folders(tmp / "images", ["neg", "pos"], 4, (64, 48))
    argv = dict(
        patch=[*patch, "--net", "dm_resnet_14", "--nb-init-filter", "8", "--no-use-pretrained",
               "--img-size", "32", "32", "--batch-size", "8", "--nb-epoch", "1", *flags,
               "--best-model", str(tmp / "patch.keras"), "--history-csv", str(tmp / "p.csv")],
        image=[*image, "--patch-model-state", str(tmp / "patch.keras"), "--patch-net",
               "dm_resnet_14", "--img-size", "64", "48", "--top-depths", "16", "16",
               "--top-repetitions", "1", "1", "--bottleneck-enlarge-factor", "2",
               "--batch-size", "4", "--nb-epoch", "0", "--all-layer-epochs", "1",
               "--class-list", "neg", "pos", *flags, "--best-model",
               str(tmp / "image.keras"), "--history-csv", str(tmp / "i.csv")])
    res = dict(flags=" ".join(gpu_flags(tiny)))
    try:
        out = subprocess.run([sys.executable, "-c", SMOKE, json.dumps(argv)], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return dict(res, outcome="failed", message=f"timed out after {limit:.0f} s")
    text = out.stdout + out.stderr
    res["replicas"] = sorted({int(m) for m in re.findall(r"training on (\d+) replicas", text)})
    res["xla_ignored"] = "support `jit_compile=True`" in text
    rcs = dict(l.split()[1:3] for l in out.stdout.splitlines() if l.startswith("SMOKE "))
    losses = [float(row["loss"]) for f in ("p.csv", "i.csv") if (tmp / f).exists()
              for row in _csv_rows(tmp / f)]
    res["losses_finite"] = bool(losses) and all(math.isfinite(v) for v in losses)
    good = (out.returncode == 0 and rcs == {"patch": "0", "image": "0"}
            and res["losses_finite"] and (tmp / "image.keras").exists())
    res.update(outcome="passed" if good else "failed",
               message="" if good else f"exit {out.returncode}, trainers {rcs}: {tail(text)}")
    return res


def _csv_rows(path: pathlib.Path) -> list[dict]:
    """The rows of a trainer's history file."""
    with open(path) as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------ the run
def launch_worker(state_path: str, names: list[str], hard_end: float) -> tuple[int | None, str]:
    """Run the worker on `names`, its log passed through; (exit status or None if it was
    killed at the time limit, the log's last lines)."""
    p = subprocess.Popen([sys.executable, str(WORKER), state_path, *names], cwd=REPO,
                         env=dict(os.environ, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    last: collections.deque = collections.deque(maxlen=40)

    def pump():
        for line in p.stdout:
            sys.stderr.write(line)
            last.append(line)
    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = p.wait(timeout=max(1.0, hard_end - time.time()))
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        rc = None
    reader.join(10)
    return rc, "".join(last)


def run_workers(state: dict, path: str, names: list[str], hard_end: float) -> None:
    """The TensorFlow sections in worker processes. After a crash the measurement in flight
    is recorded as crashed and a new worker goes on with the rest; a worker that dies
    outside any section (TensorFlow missing or broken) fails the sections left."""
    for _ in range(4):
        if not names or time.time() >= hard_end:
            break
        save_state(path, state)
        rc, text = launch_worker(path, names, hard_end)
        state.update(load_state(path))
        why = ("killed at the time limit" if rc is None else f"worker killed by signal {-rc}"
               if rc < 0 else f"worker exited with {rc}")
        msg = f"{why}: {tail(text, 2)}"
        running = [n for n in names if state["sections"].get(n, {}).get("status") == "running"]
        for name in (running if running or rc == 0 else names):
            sec = section(state, name)
            log.error("%s: %s", name, why)
            runs = [r for r in sec.get("runs", []) if r["status"] == "running"]
            for r in runs:
                r.update(status="crashed", error=msg)
            if runs and rc is not None:
                sec["status"] = "pending"   # go on with the other settings
            else:
                sec.update(status="failed", error=msg,
                           wall_s=round(max(0.0, time.time() - sec.pop("started", time.time())), 2))
        names = [n for n in names if state["sections"].get(n, {}).get("status") in
                 (None, "pending")]
    for n in names:   # out of time (or of restarts) before they could run
        section(state, n).update(status="skipped", error="not run: no time or restarts left")
    save_state(path, state)


def set_deadlines(cfg: dict, names: list[str]) -> None:
    """Share the time left among the worker's sections (training gets the most)."""
    now, end = time.time(), cfg["t0"] + cfg["budget_s"]
    share = {"training": 0.62, "pipeline": 0.18, "prediction": 0.2}
    total = sum(share.get(n, 0) for n in names) or 1.0
    t = now
    for n in names:
        t += (end - now) * share.get(n, 0) / total
        cfg["deadlines"][n] = end if n == names[-1] else t


def run_check(args: argparse.Namespace, path: str) -> dict:
    """All requested sections in order, the goals, the JSON file after each step."""
    t0 = time.time()
    state = dict(tool="gpu_check", started=time.strftime("%Y-%m-%d %H:%M:%S"),
                 config=config(args, t0), nvidia_smi=nvidia_smi(), goals=[],
                 sections={n: {} for n in SECTIONS if n in args.sections})
    cfg = state["config"]

    def save():
        save_state(path, state)
    if "tests" in cfg["sections"]:
        run_guarded(state, "tests", lambda sec: tests_section(
            sec, cfg, t0 + cfg["budget_s"] * 0.35), save)
    names = [n for n in WORKER_SECTIONS if n in cfg["sections"]]
    set_deadlines(cfg, names)
    run_workers(state, path, names, t0 + cfg["budget_s"] + (20 if cfg["tiny"] else 40))
    if "schedule" in cfg["sections"]:
        run_guarded(state, "schedule", lambda sec: schedule_section(sec, state), save)
    state["goals"] = goals(state)
    state["wall_s"] = round(time.time() - t0, 1)
    save()
    return state


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=dm_cli.HelpFormatter)
    p.add_argument("--out", help="the JSON file (rewritten after every measurement)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="time for the whole run in seconds (default 420; 900 with --tiny, a cap "
                        "for slow CPUs)")
    p.add_argument("--tiny", action="store_true",
                   help="tiny images and nets, on whatever device: the test suite's mode")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                   help="run only these sections")
    p.add_argument("--max-batch", type=int, default=256, help="largest batch size tried")
    p.add_argument("--fail-section", action="append", metavar="SECTION",
                   help="make SECTION raise at its start (training:abort kills the worker in "
                        "its first measurement), to see the check record it and go on")
    a = p.parse_args(argv)
    if a.budget_s is None:
        a.budget_s = 900.0 if a.tiny else 420.0
    return a


def main(argv=None) -> dict:
    args = parse(argv)
    # Kernels compiled from PTX at first use (a TensorFlow build without machine code for
    # the GPU) are cached for the test and worker processes that follow.
    os.environ.setdefault("CUDA_CACHE_MAXSIZE", str(2**32))
    with dm_cli.log_to_stderr(), tempfile.TemporaryDirectory() as tmp:
        path = args.out or os.path.join(tmp, "gpu_check.json")
        state = run_check(args, path)
    print(markdown(state))
    return state

if __name__ == "__main__":
    main()
