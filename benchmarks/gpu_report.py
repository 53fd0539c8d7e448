"""The GPU check's report: the DDSM schedule in GPU-hours, the issue's goals, the tables.

Plain functions of the check's state (benchmarks/gpu_check.py), no TensorFlow: the JSON
file a run wrote can be read back into them.
"""
from __future__ import annotations

SECTIONS = ("environment", "tests", "training", "pipeline", "prediction", "schedule")
WHOLE_IMAGE = ("resnet50-2x", "vgg16-1x")
PATCH_NET = "resnet50-patch"


def key(s: dict) -> str:
    """A training setting's name, e.g. `resnet50-2x float16 +XLA`."""
    return (f"{s['net']} {s['precision'] or 'float32'}{' +XLA' if s['xla'] else ''}"
            f"{'' if s['deterministic'] else ' (non-deterministic ops)'}")


def ok_runs(state: dict, nets=WHOLE_IMAGE) -> list[dict]:
    """The training measurements that ran, of the given nets."""
    runs = state["sections"].get("training", {}).get("runs", [])
    return [r for r in runs if r["status"] == "ok" and r["net"] in nets]


def fastest(state: dict) -> dict | None:
    """The whole-image setting and batch with the most images/s."""
    runs = ok_runs(state)
    return max(runs, key=lambda r: r["images_per_s"]) if runs else None


# ------------------------------------------------------------------ section: schedule
# The paper's DDSM runs as the original's scripts set them (docs/training.md, "Full-scale
# runs"); image counts from CBIS-DDSM (docs/data.md) split as the recipes split them.
DDSM = dict(
    nontest_images=2420,        # CBIS-DDSM training descriptions: distinct patient/side/view
    train_abnormalities=2864,   # 1318 mass + 1546 calcification abnormalities (docs/data.md)
    val_fraction=0.1,           # prepare_cbis_ddsm.py and the patch sampler: --val-size 0.1
    patches_per_abnormality=10, patches_per_image=10,   # "S10": --nb-abn 10 --nb-bkg 10
    patch=dict(batch=32, epochs=15, source="train_patch_clf_im4096_256_3Cls.sh: --img-size "
               "256 256, --batch-size 64 x --train-bs-multiplier 0.5, stages ending at epochs "
               "1, 5 and 15"),
    image=dict(batch=10, epochs=2, source="train_image_clf_im1152.sh: --img-size 1152 896, "
               "--batch-size 20 x --train-bs-multiplier 0.5, stages ending at epochs 1 and 2"))


def _rate_near(runs: list[dict], batch: int) -> dict | None:
    """The run at the largest measured batch up to `batch`, else the smallest batch."""
    if not runs:
        return None
    below = [r for r in runs if r["batch"] <= batch]
    return (max(below, key=lambda r: (r["batch"], r["images_per_s"])) if below
            else min(runs, key=lambda r: r["batch"]))


def schedule_section(sec: dict, state: dict) -> None:
    """GPU-hours of the two classifiers' schedules, in float32 (the paper's) and in the
    fastest measured setting, from the measured training and prediction rates."""
    d = DDSM
    train_img = round(d["nontest_images"] * (1 - d["val_fraction"]))
    val_img = d["nontest_images"] - train_img
    patches = d["train_abnormalities"] * d["patches_per_abnormality"] \
        + d["nontest_images"] * d["patches_per_image"]
    train_patch = round(patches * (1 - d["val_fraction"]))
    val_patch = patches - train_patch
    bare = state["sections"].get("prediction", {}).get("bare_img_s")
    sec["assumptions"] = [
        f"patch classifier: {d['patch']['source']}; {train_patch} training and {val_patch} "
        "validation patches (S10: 10 per abnormality and 10 background per image)",
        f"whole-image classifier: {d['image']['source']}; {train_img} training and {val_img} "
        "validation images (CBIS-DDSM outside its test set, 10% of patients to validation)",
        "every epoch costs full training steps (stage 1 freezes the trunk: an upper bound); "
        "images/s at the largest measured batch up to the script's; data loading keeps up",
        "validation at " + ("the measured float32 forward rate (prediction section) for "
                            "whole images, " if bare else "3x the training rate for whole "
                            "images, ") + "3x the training rate for patches"]
    rows = []
    for label, pick in (("float32", lambda r: r["precision"] is None and not r["xla"]
                         and r["deterministic"]), ("fastest", lambda r: True)):
        for name, net, n_train, n_val, plan in (
                ("patch", PATCH_NET, train_patch, val_patch, d["patch"]),
                ("whole image", "resnet50-2x", train_img, val_img, d["image"])):
            runs = [r for r in ok_runs(state, (net,)) if pick(r)]
            if label == "fastest" and runs:
                runs = [max(runs, key=lambda r: r["images_per_s"])]
            r = _rate_near(runs, plan["batch"])
            if r is None:
                rows.append(dict(classifier=name, setting=label, note="not measured"))
                continue
            val_rate = bare if (bare and net != PATCH_NET) else 3 * r["images_per_s"]
            epoch_h = (n_train / r["images_per_s"] + n_val / val_rate) / 3600
            rows.append(dict(classifier=name, setting=f"{label}: {key(r)} batch {r['batch']}",
                             images_per_s=r["images_per_s"], epochs=plan["epochs"],
                             gpu_hours_per_epoch=round(epoch_h, 4),
                             gpu_hours=round(epoch_h * plan["epochs"], 4)))
    sec["rows"] = rows
    for label in ("float32", "fastest"):
        hours = [r["gpu_hours"] for r in rows if r["setting"].startswith(label) and "gpu_hours" in r]
        if len(hours) == 2:
            sec[f"total_gpu_hours_{label}"] = round(sum(hours), 4)


# ------------------------------------------------------------------ goals
def goals(state: dict) -> list[dict]:
    """The issue's four goals, each PASS or FAIL with the figures behind it."""
    sections = state["sections"]
    out: list[dict] = []

    def goal(text: str, passed: bool, detail: str) -> None:
        out.append(dict(goal=text, status="PASS" if passed else "FAIL", detail=detail))

    best, pipe = fastest(state), sections.get("pipeline", {})
    text = "the input pipeline delivers >= 1.5x the images/s of the fastest training setting"
    if best and pipe.get("disk_img_s"):
        disk, ram, train = pipe["disk_img_s"], pipe.get("ram_img_s", 0.0), best["images_per_s"]
        detail = (f"from disk {disk:.1f} images/s (x{disk / train:.2f}), from RAM {ram:.1f} "
                  f"(x{ram / train:.2f}), against {train:.1f} for {key(best)} batch "
                  f"{best['batch']}")
        if pipe.get("fed_img_s"):
            detail += (f"; fed by the pipeline it trains at {pipe['fed_img_s']:.1f} images/s "
                       f"(x{pipe['fed_img_s'] / train:.2f})")
        if disk < 1.5 * train:
            cpu, cores = pipe.get("cpu_ms_per_image"), pipe.get("cores")
            detail += ("; bounded by PNG decoding from disk (the RAM cache, --load-train-ram, "
                       "keeps up)" if ram >= 1.5 * train else
                       f"; bounded by the CPU: {cpu} ms of CPU per image on {cores} cores")
        goal(text, disk >= 1.5 * train, detail)
    else:
        goal(text, False, "not measured (training or pipeline missing)")

    text = "mixed precision trains >= 2x as fast as float32"
    ratios = []
    runs = ok_runs(state)
    for r in runs:
        base = [q for q in runs if q["precision"] is None and r["precision"] and
                all(q[k] == r[k] for k in ("net", "xla", "deterministic", "batch"))]
        if base:
            ratios.append((r["images_per_s"] / base[0]["images_per_s"], r))
    main = [x for x in ratios if x[1]["net"] == "resnet50-2x"] or ratios
    if main:
        ratio, r = max(main, key=lambda x: x[0])
        goal(text, ratio >= 2.0, f"x{ratio:.2f}: {key(r)} against float32 at batch {r['batch']}"
             + "".join(f"; best {n} x{max(x[0] for x in ratios if x[1]['net'] == n):.2f}"
                       for n in WHOLE_IMAGE if any(x[1]["net"] == n for x in ratios)))
    else:
        goal(text, False, "not measured")

    size = "x".join(map(str, state["config"]["img_size"]))
    text = f"the paper's ResNet50 whole-image recipe trains at batch >= 4 at {size}"
    r50 = ok_runs(state, ("resnet50-2x",))
    largest = max((r["batch"] for r in r50), default=0)
    ooms = sorted({r["batch"] for r in sections.get("training", {}).get("runs", [])
                   if r["net"] == "resnet50-2x" and r["status"] == "oom"})
    goal(text, largest >= 4, f"largest batch trained: {largest or 'none'}"
         + (f"; out of memory at {ooms}" if ooms else "; no setting ran out of memory"))

    found = failures(state)
    gpu = bool(sections.get("environment", {}).get("gpus"))
    goal("no GPU-only failure is left unfixed or undocumented", gpu and not found,
         ("" if gpu else "no GPU visible to TensorFlow: nothing ran on a GPU. ")
         + ("failures: " + "; ".join(found[:6]) + (f" (+{len(found) - 6} more)"
                                                    if len(found) > 6 else "")
            if found else "no failure recorded"))
    return out


def failures(state: dict) -> list[str]:
    """Every failure the run recorded: sections, tests, trainer runs, training settings
    (test failures explained in docs/benchmarks.md are shown, not counted)."""
    found = []
    for name, sec in state["sections"].items():
        if sec.get("status") == "failed":
            found.append(f"{name}: {sec.get('error')}")
    tests = state["sections"].get("tests", {})
    for t in tests.get("tests", []) + ([dict(tests["smoke"], test="trainers " +
                                             tests["smoke"]["flags"])]
                                       if tests.get("smoke") else []):
        if t["outcome"] in ("failure", "error", "failed") and not t.get("known"):
            found.append(f"{t['test']}: {t['message']}")
    for r in state["sections"].get("training", {}).get("runs", []):
        if r["status"] in ("failed", "crashed"):
            found.append(f"{key(r)} batch {r['batch']}: {r['status']}: {r.get('error')}")
    return found


# ------------------------------------------------------------------ Markdown
def _table(header: list[str], rows: list[list]) -> list[str]:
    fmt = lambda v: "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa: E731
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(fmt(v).replace("|", "/") for v in row) + " |" for row in rows]
            + [""])


def markdown(state: dict) -> str:
    """The report: one table per section, then the goals as PASS/FAIL lines."""
    s, cfg = state["sections"], state["config"]
    env = s.get("environment", {})
    gpus = env.get("gpus") or []
    device = (", ".join(g.get("name", "?") for g in gpus or state.get("nvidia_smi") or [])
              or "no GPU (CPU only)")
    lines = [f"## GPU check: {device}" + (" (--tiny)" if cfg["tiny"] else ""), ""]
    lines += _table(["section", "status", "seconds", "error"],
                    [[n, s[n].get("status"), s[n].get("wall_s"), s[n].get("error")]
                     for n in SECTIONS if n in s])
    if env.get("versions"):
        lines += _table(["environment", "value"], [[k, v] for k, v in env["versions"].items()])
    t = s.get("tests", {})
    rows = [[x["test"], x["outcome"], x["time_s"],
             f"{x['known']}. {x['message']}" if x.get("known") else x["message"]]
            for x in t.get("tests", [])]
    if t.get("smoke"):
        sm = t["smoke"]
        rows.append([f"trainers {sm['flags']}", sm["outcome"], None,
                     f"replicas {sm.get('replicas')}, XLA ignored: {sm.get('xla_ignored')}, "
                     f"finite losses: {sm.get('losses_finite')}. {sm.get('message', '')}"])
    if rows:
        lines += _table(["test", "outcome", "seconds", "note"], rows)
    runs = s.get("training", {}).get("runs", [])
    if runs:
        lines.append(f"Training steps at {cfg['img_size'][0]}x{cfg['img_size'][1]} (patch net "
                     f"at {cfg['patch_size']}x{cfg['patch_size']}), random init:")
        lines += _table(["setting", "batch", "status", "images/s", "peak GPU MB",
                         "first step s", "XLA used", "note"],
                        [[key(r), r["batch"], r["status"], r.get("images_per_s"),
                          r.get("peak_mb"), r.get("compile_s"), r.get("xla_effective"),
                          r.get("error")] for r in runs])
    p = s.get("pipeline", {})
    if p.get("rows"):
        lines += _table(["input pipeline", "images/s", "CPU ms/image", "x fastest training"],
                        [[r["source"], r["images_per_s"], r.get("cpu_ms_per_image"),
                          r.get("x_training")] for r in p["rows"]])
    pr = s.get("prediction", {})
    if pr.get("rows"):
        lines += _table(["prediction", "images/s", "note"],
                        [[r["path"], r.get("images_per_s"), r.get("note")] for r in pr["rows"]])
    sc = s.get("schedule", {})
    if sc.get("rows"):
        lines += _table(["DDSM schedule", "setting", "images/s", "epochs", "GPU-hours"],
                        [[r["classifier"], r["setting"], r.get("images_per_s"), r.get("epochs"),
                          r.get("gpu_hours", r.get("note"))] for r in sc["rows"]])
        lines += ["Assumptions: " + "; ".join(sc["assumptions"]) + ".", ""]
    lines += [f"{g['status']} {g['goal']}: {g['detail']}" for g in state.get("goals", [])]
    return "\n".join(lines)
