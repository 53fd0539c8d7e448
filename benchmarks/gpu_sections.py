"""The GPU check's TensorFlow sections, run in a worker process by benchmarks/gpu_check.py.

Environment, whole-image training steps, the input pipeline and prediction. The worker
reads the check's state file (its settings, deadlines and what is measured already), runs
the sections it is given and writes the file again after every measurement, so the check
keeps what was measured before a crash and can start a new worker for the rest.

    python benchmarks/gpu_sections.py STATE.json SECTION [SECTION ...]
"""
from __future__ import annotations

import gc
import logging
import os
import pathlib
import platform
import sys
import tempfile
import time
import warnings

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import dm_cli  # noqa: E402

dm_cli.quiet_tensorflow()   # TensorFlow's start-up banner stays out of the check's log

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import dm_augment  # noqa: E402
import dm_dataset  # noqa: E402
import dm_export  # noqa: E402
import dm_modelfile  # noqa: E402
import dm_patch_nets  # noqa: E402
import dm_pixels  # noqa: E402
import dm_resnet  # noqa: E402
import dm_scoring  # noqa: E402
import dm_stages  # noqa: E402
import dm_train  # noqa: E402
import gpu_check  # noqa: E402
import gpu_report  # noqa: E402
from dm_modelfile import ModelMeta  # noqa: E402
from dm_recipe import Recipe  # noqa: E402

log = logging.getLogger("gpu_check")
# The original's DDSM whole-image recipe (ddsm_train/train_image_clf_im1152.sh).
RECIPE = dict(rescale_factor=0.003891, featurewise_center=True, featurewise_mean=52.18)
TOPS = {"resnet50-2x": dict(block_type="resnet", repetitions=[2, 2], bottleneck_enlarge_factor=2),
        "vgg16-1x": dict(block_type="vgg", repetitions=[1, 1])}
TRUNKS = {"resnet50-2x": "resnet50", "vgg16-1x": "vgg16", gpu_report.PATCH_NET: "resnet50"}
# --tiny: every net is the project's 14-layer ResNet with 8 filters, and the tops 16 deep.
TINY_TRUNK = dict(nb_init_filter=8, init_filter_size=3, init_conv_stride=1, pool_size=0)


def gpu_name() -> str | None:
    """The first GPU's logical name, or None on a machine without one."""
    return "GPU:0" if tf.config.list_logical_devices("GPU") else None


# ------------------------------------------------------------------ environment
def environment(sec: dict, cfg: dict) -> None:
    """Versions, the CUDA build, the GPUs, and how long the first GPU operations take (a
    build without machine code for the GPU compiles its kernels from PTX at first use)."""
    build = tf.sysconfig.get_build_info()
    v = dict(python=sys.version.split()[0], platform=platform.platform(),
             cpu_cores=len(os.sched_getaffinity(0)), tensorflow=tf.__version__,
             keras=keras.__version__, cuda_build=build.get("cuda_version"),
             cudnn_build=build.get("cudnn_version"),
             cuda_capabilities=" ".join(build.get("cuda_compute_capabilities", [])))
    for k in ("CUDA_VISIBLE_DEVICES", "NUM_CPU_CORES", "TF_FORCE_GPU_ALLOW_GROWTH", "XLA_FLAGS"):
        if k in os.environ:
            v[k] = os.environ[k]
    gpus = []
    for i, d in enumerate(tf.config.list_physical_devices("GPU")):
        det = tf.config.experimental.get_device_details(d)
        cc = det.get("compute_capability")
        sm = f"sm_{cc[0]}{cc[1]}" if cc else None
        gpus.append(dict(name=det.get("device_name"), compute_capability=sm,
                         machine_code_in_build=sm in build.get("cuda_compute_capabilities", [])))
        v[f"GPU {i}"] = f"{det.get('device_name')} ({sm}" + (
            ")" if gpus[-1]["machine_code_in_build"] else ", kernels compiled from PTX)")
    for i, g in enumerate(gpu_check.nvidia_smi()):
        v[f"nvidia-smi {i}"] = (f"{g.get('name')}, {g.get('memory.total')}, driver "
                                f"{g.get('driver_version')}")
    sec.update(gpus=gpus, versions=v)
    t = time.perf_counter()
    with tf.device(gpu_name() or "CPU:0"):
        x = tf.random.normal((8, 256, 256, 3))
        k = tf.random.normal((3, 3, 3, 64))
        float(tf.reduce_sum(tf.nn.conv2d(x, k, 1, "SAME")) + tf.reduce_sum(x[0, 0] @ x[0, 0, :3]))
    v["first_ops_s"] = round(time.perf_counter() - t, 2)
    # Keras turns XLA off (with a warning) while TensorFlow's op determinism is on, which
    # is the trainers' default (--deterministic): record it, it decides what --jit-compile does.
    dm_train.setup_runtime(0, None, None, deterministic=True)
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m.compile(loss="mse", jit_compile=True)
    v["xla_under_deterministic_ops"] = bool(m.jit_compile)
    forget(m)
    dm_train.setup_runtime(0, None, None, deterministic=False)


# ------------------------------------------------------------------ training
def build(net: str, cfg: dict) -> keras.Model:
    """A model of the check's nets with the project's builders, random init."""
    kw = TINY_TRUNK if cfg["tiny"] else {}
    trunk = "dm_resnet_14" if cfg["tiny"] else TRUNKS[net]
    if net == gpu_report.PATCH_NET:
        ps = cfg["patch_size"]
        return dm_patch_nets.get_dl_model(trunk, nb_class=3, use_pretrained=False,
                                          img_size=(ps, ps), **kw)[0]
    patch = dm_patch_nets.get_dl_model(trunk, nb_class=3, use_pretrained=False, **kw)[0]
    depth = 16 if cfg["tiny"] else 512
    model, _ = dm_resnet.add_top_layers(patch, cfg["img_size"], nb_class=2,
                                        depths=[depth, depth], **TOPS[net])
    return model


def compiled(s: dict, cfg: dict) -> keras.Model:
    """The model of setting `s` as the trainers make it: runtime (seed, precision policy,
    deterministic ops), the model in that precision, its last stage compiled."""
    dm_train.setup_runtime(0, s["precision"], None, deterministic=s["deterministic"])
    model = build(s["net"], cfg)
    dm_modelfile.set_precision(model, s["precision"])
    patch = s["net"] == gpu_report.PATCH_NET
    stage = dm_stages.Stage("all layers", 1, 1e-4, 1e-4, 0.0)
    dm_stages.compile_for_stage(model, stage, "nadam" if patch else "adam", jit_compile=s["xla"])
    return model


def is_oom(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, tf.errors.ResourceExhaustedError) or any(
        w in text for w in ("RESOURCE_EXHAUSTED", "out of memory", "OOM when allocating"))


def forget(model=None) -> None:
    """Free a model and its graphs before the next setting."""
    del model
    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("float32")
    gc.collect()


def measure_training(s: dict, batch: int, cfg: dict) -> dict:
    """Images/s of training steps on a batch already on the device, after two untimed
    steps of the same shapes (the first one traces and compiles); peak GPU memory."""
    gpu = gpu_name()
    if gpu:
        tf.config.experimental.reset_memory_stats(gpu)
    t = time.perf_counter()
    model = None
    try:
        model = compiled(s, cfg)
        shape = model.inputs[0].shape[1:]
        nb = int(model.outputs[0].shape[-1])
        x = tf.random.normal((batch, *shape))
        y = tf.one_hot(tf.range(batch) % nb, nb)
        w = tf.ones((batch,))       # the image trainer's batch-balancing weights
        t1 = time.perf_counter()
        model.train_on_batch(x, y, sample_weight=w)
        compile_s = time.perf_counter() - t1
        model.train_on_batch(x, y, sample_weight=w)
        t1 = time.perf_counter()
        logs = model.train_on_batch(x, y, sample_weight=w, return_dict=True)
        one = time.perf_counter() - t1
        n = min(50, max(1, int(cfg["timed_s"] / max(one, 1e-6))))
        for _ in range(n):
            logs = model.train_on_batch(x, y, sample_weight=w, return_dict=True)
        dt = time.perf_counter() - t1
        loss = float(logs["loss"])
        res = dict(status="ok" if np.isfinite(loss) else "failed",
                   images_per_s=round((n + 1) * batch / dt, 3), step_s=round(dt / (n + 1), 4),
                   compile_s=round(compile_s, 2), loss=loss,
                   xla_effective=bool(model.jit_compile),
                   peak_mb=round(tf.config.experimental.get_memory_info(gpu)["peak"] / 2**20)
                   if gpu else None)
        if not np.isfinite(loss):
            res["error"] = f"loss {loss}"
    except Exception as e:   # a setting that fails is a finding, recorded; the next one runs
        if not is_oom(e):
            log.exception("%s batch %d failed", gpu_report.key(s), batch)
        res = dict(status="oom" if is_oom(e) else "failed",
                   error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300])
    finally:
        forget(model)
    res["wall_s"] = round(time.perf_counter() - t, 2)
    log.info("%s batch %d: %s", gpu_report.key(s), batch,
             res.get("images_per_s", res["status"]))
    return res


def training(sec: dict, cfg: dict, save) -> None:
    runs = sec.setdefault("runs", [])
    abort = "training:abort" in cfg["fail"] and not any(r["status"] == "crashed" for r in runs)
    while True:
        nxt = gpu_check.next_measurement(runs, cfg, time.time(), cfg["deadlines"]["training"])
        save()
        if nxt is None:
            break
        s, batch = nxt
        runs.append(dict(s, batch=batch, status="running"))
        save()
        if abort:   # --fail-section training:abort: die as a fatal CUDA error would
            os.abort()
        runs[-1].update(measure_training(s, batch, cfg))


# ------------------------------------------------------------------ input pipeline
def rate(ds, seconds: float) -> tuple[float, float]:
    """(images/s, CPU ms per image of this process) over `seconds` after two batches."""
    it = iter(ds)
    next(it)
    next(it)
    t, c, n, k = time.perf_counter(), time.process_time(), 0, 0
    while k < 3 or time.perf_counter() - t < seconds:
        n += int(next(it)[0].shape[0])
        k += 1
    return n / (time.perf_counter() - t), (time.process_time() - c) / n * 1e3


class _StopAfter(keras.callbacks.Callback):
    """Times the batches of a fit after the first two and stops it after `seconds`."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds, self.times = seconds, []

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter())
        if len(self.times) > 3 and self.times[-1] - self.times[1] > self.seconds:
            self.model.stop_training = True


def pipeline(sec: dict, cfg: dict, save) -> None:
    """The trainer's tf.data pipeline (augmented, batch-balanced, 3 channels) from the RAM
    cache and from disk, on all cores; then the fastest setting fed by it (fit)."""
    best = gpu_report.fastest(cfg["state"])
    batch = best["batch"] if best else cfg["start_batch"]
    h, w = cfg["img_size"]
    recipe = Recipe(img_size=(h, w), channels=3, **RECIPE)
    sec.update(batch=batch, cores=len(os.sched_getaffinity(0)), rows=[])
    with tempfile.TemporaryDirectory() as tmp:
        paths = gpu_check.synthetic_pngs(pathlib.Path(tmp), cfg["pipeline_images"], (h, w))
        labels = np.arange(len(paths)) % 2
        ds = {}
        for source, ram in (("ram", True), ("disk", False)):
            ds[source] = dm_dataset.make_dataset(
                paths, labels, recipe, 2, batch, training=True, augment=dm_augment.Augment(),
                seed=1, load_ram=ram, auto_batch_balance=True)
            ips, cpu = rate(ds[source], cfg["pipeline_s"])
            sec[f"{source}_img_s"] = round(ips, 2)
            sec["rows"].append(dict(source=f"from {'RAM' if ram else 'disk'}, batch {batch}",
                                    images_per_s=round(ips, 2), cpu_ms_per_image=round(cpu, 2),
                                    x_training=round(ips / best["images_per_s"], 2)
                                    if best else None))
            save()
        sec["cpu_ms_per_image"] = sec["rows"][0]["cpu_ms_per_image"]
        if not best:
            return
        sec["training_img_s"] = best["images_per_s"]
        if time.time() + 2 * best["wall_s"] > cfg["deadlines"]["pipeline"]:
            sec["fed"] = "skipped: time budget"
            return
        model = compiled(best, cfg)
        try:
            stop = _StopAfter(max(cfg["pipeline_s"], 2 * cfg["timed_s"]))
            model.fit(ds["ram"], steps_per_epoch=10_000, epochs=1, callbacks=[stop], verbose=0,
                      shuffle=False)
            fed = batch * (len(stop.times) - 2) / (stop.times[-1] - stop.times[1])
        finally:
            forget(model)
        sec["fed_img_s"] = round(fed, 2)
        sec["rows"].append(dict(source=f"{gpu_report.key(best)} fed from RAM by fit",
                                images_per_s=round(fed, 2),
                                x_training=round(fed / best["images_per_s"], 2)))


# ------------------------------------------------------------------ prediction
def prediction(sec: dict, cfg: dict, save) -> None:
    """ResNet50 + [512-512-1024]x2 in float32: the bare network, predict.py's path from
    16-bit PNG files (read, cubic resize, recipe, network) with and without 4-flip TTA, and
    the serving SavedModel on raw uint16 batches."""
    h, w = cfg["img_size"]
    n = cfg["predict_images"]
    recipe = Recipe(img_size=(h, w), **RECIPE)
    sec["rows"] = []
    dm_train.setup_runtime(1, None, None, deterministic=False)   # as predict.py runs
    model = build("resnet50-2x", cfg)

    def measure(name, fn, note):
        if time.time() > cfg["deadlines"]["prediction"]:
            sec["rows"].append(dict(path=name, note="skipped: time budget"))
            return
        fn()                                   # warm-up with the shapes it times
        t, k = time.perf_counter(), 0
        while k < 1 or time.perf_counter() - t < cfg["timed_s"]:
            fn()
            k += 1
        ips = round(k * n / (time.perf_counter() - t), 3)
        sec["rows"].append(dict(path=name, images_per_s=ips, note=note))
        save()
        return ips

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        dm_modelfile.save_model(model, tmp / "m.keras", ModelMeta(("neg", "pos"), recipe))
        loaded = dm_scoring.load_models([str(tmp / "m.keras")])
        net = loaded[0].model
        paths = gpu_check.synthetic_pngs(tmp / "png", n, cfg["raw_size"])
        bare = dm_scoring.forward_fn(net)
        raw_note = f"{n} PNGs of {cfg['raw_size'][0]}x{cfg['raw_size'][1]}"
        for bs in cfg["predict_batches"]:
            x = tf.random.normal((bs, h, w, 3))
            ips = measure(f"bare, batch {bs}", lambda: [bare(x).numpy() for _ in range(0, n, bs)],
                          "the network alone on a batch in memory")
            sec["bare_img_s"] = max(ips or 0, sec.get("bare_img_s", 0)) or None
            for tta in (False, True):
                measure(
                    f"predict.py{' --test-augment' if tta else ''} --batch-size {bs}",
                    lambda: dm_scoring.score_paths(loaded, paths, bs, tta=tta),
                    raw_note + (", 4 flips per image in one network call" if tta else ""))
        t = time.perf_counter()
        dm_export.export_serving(net, recipe, ["neg", "pos"], str(tmp / "served"))
        served, _ = dm_export.load_serving(str(tmp / "served"))
        sec["export_write_s"] = round(time.perf_counter() - t, 2)
        raw = np.stack([dm_pixels.read_image(p) for p in paths])
        bs = cfg["predict_batches"][0]
        measure(
            "serving export, serve_uint16", lambda: [
                served.serve_uint16(raw[i:i + bs])["probabilities"].numpy()
                for i in range(0, n, bs)],
            f"raw uint16 batches of {bs}; written and loaded in {sec['export_write_s']} s")


def main(argv: list[str] | None = None) -> None:
    state_path, *names = argv if argv is not None else sys.argv[1:]
    dm_cli.setup_logging()
    logging.getLogger("dm_scoring").setLevel(logging.WARNING)   # one line per scored batch
    state = gpu_check.load_state(state_path)
    cfg = dict(state["config"], state=state)
    save = lambda: gpu_check.save_state(state_path, state)  # noqa: E731
    jobs = dict(environment=lambda sec: environment(sec, cfg),
                training=lambda sec: training(sec, cfg, save),
                pipeline=lambda sec: pipeline(sec, cfg, save),
                prediction=lambda sec: prediction(sec, cfg, save))
    for name in names:
        gpu_check.run_guarded(state, name, jobs[name], save)


if __name__ == "__main__":
    main()
