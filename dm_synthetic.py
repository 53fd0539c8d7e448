"""Seeded synthetic mammograms: the built-in default data and test fixtures.

Breast-shaped 16-bit images (fat/glandular texture, thickness fall-off, skin line, dark
background, a pectoral muscle on MLO views), some carrying lesions whose benign/malignant
label is visible in their shape:
  malignant mass  irregular outline with spicules;   benign mass  round/oval, smooth;
  malignant calcs a tight cluster of many small pleomorphic specks;
  benign calcs    a few larger round specks, spread out.
Each lesion comes with a 0/255 mask that covers all of its signal. `generate_dataset`
writes the same layout as the CBIS-DDSM recipe (see dm_recipe_utils), so every downstream
tool (patch sampler, whole-image trainer) runs on it unchanged. Each image is drawn from
its own generator seeded by (seed, patient, view), so the output is reproducible and an
image doesn't change when more patients are requested.

Bilateral mode (`bilateral=True`, `--bilateral`) draws women with both breasts of each view.
The traits that describe the woman rather than one breast (outline size and shape, pectoral
reach, glandular density and most of its coarse pattern; see `Woman`) are drawn once per
woman, so her two breasts look alike, mirrored; the rest (outline wobble, fine texture,
noise, lesions) is drawn per breast. A breast's tissue on its own is distributed as in the
default mode; only the pairing differs. lesion_fraction then counts women, not images: a
woman has lesions on one side at most, the same list in each view of that side.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import pathlib
from dataclasses import dataclass, field

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

import dm_cli
import dm_output
from dm_errors import InputError
from dm_pixels import write_png
from dm_recipe_utils import (FULL_DIR, IMAGE_COLUMNS, MASK_DIR, ROI_COLUMNS, claim_folder, run_cli,
                             stratified_split, summarize, write_layout)

log = logging.getLogger(__name__)

VIEWS = (("LEFT", "CC"), ("LEFT", "MLO"), ("RIGHT", "CC"), ("RIGHT", "MLO"))
VIEW_NAMES = ("CC", "MLO")
PEAK = 60000.0  # 16-bit value of intensity 1.0
# Ranges of the traits drawn per image (default mode) or per woman (bilateral mode).
SIZE = (0.72, 0.92)                                   # breast half-width / image width
CENTRE = {"CC": (0.47, 0.53), "MLO": (0.40, 0.46)}    # breast centre row / image height
TOP = {"CC": (0.36, 0.44), "MLO": (0.40, 0.46)}       # upper half-height / image height
BOTTOM = (0.36, 0.44)                                 # lower half-height / image height
PECTORAL = ((0.22, 0.36), (0.35, 0.5))                # pectoral reach along x / w, along y / h
DENSITY = (-0.3, 0.4)                                 # glandular offset
SHARED_PATTERN = 0.75  # bilateral: fraction of the coarse density pattern's variance the two breasts share


@dataclass(frozen=True)
class SynthConfig:
    """Appearance parameters; sizes are fractions of the image width so they scale with it."""

    img_size: tuple[int, int] = (576, 448)
    mass_radius: tuple[float, float] = (0.045, 0.08)   # mass radius range / width
    mass_contrast: float = 0.30                          # added intensity (tissue spans ~0.2-0.75)
    spicules: tuple[int, int] = (7, 13)                  # malignant mass spicule count range
    calc_radius: float = 0.0055                          # speck radius / width (min 1 px)
    calc_contrast: float = 0.55
    noise: float = 0.012                                 # white noise sd (intensity units)


@dataclass
class Lesion:
    """One abnormality: type 'mass'/'calc', pathology 'MALIGNANT'/'BENIGN', full-size 0/255 mask."""

    type: str
    pathology: str
    mask: np.ndarray
    center: tuple[int, int]


@dataclass
class SynthImage:
    """A rendered image, the same image without its lesions, the breast mask and the lesions."""

    image: np.ndarray
    clean: np.ndarray
    breast: np.ndarray
    lesions: list[Lesion] = field(default_factory=list)

    @property
    def label(self) -> int:
        return int(any(les.pathology == "MALIGNANT" for les in self.lesions))


@dataclass(frozen=True)
class Woman:
    """What both breasts of one woman share in bilateral mode (see the module docstring).

    Shape traits are quantiles (0..1) within the ranges above, so one woman's CC and MLO
    views show the same breast size; `pattern_seed` seeds her coarse density pattern per view.
    """

    size: float
    centre: float
    top: float
    bottom: float
    pectoral: tuple[float, float]
    density: float
    pattern_seed: int


def draw_woman(rng: np.random.Generator) -> Woman:
    """One woman's shared traits."""
    return Woman(size=rng.random(), centre=rng.random(), top=rng.random(), bottom=rng.random(),
                 pectoral=(rng.random(), rng.random()), density=float(rng.uniform(*DENSITY)),
                 pattern_seed=int(rng.integers(2 ** 32)))


def _at(span: tuple[float, float], q: float) -> float:
    """The value at quantile `q` of a uniform range."""
    return span[0] + q * (span[1] - span[0])


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Zero-mean noise smooth over about `cell` pixels: blurred low-res noise, upsampled linearly."""
    h, w = shape
    sub = max(1.0, cell / 4)  # low-res pixel size
    gh, gw = int(math.ceil(h / sub)) + 2, int(math.ceil(w / sub)) + 2
    g = cv2.GaussianBlur(rng.standard_normal((gh, gw), dtype=np.float32), (0, 0), 1.6) * np.float32(4.0)
    big = cv2.resize(g, (int(math.ceil(gw * sub)), int(math.ceil(gh * sub))), interpolation=cv2.INTER_LINEAR)
    return big[:h, :w]


def _breast(rng: np.random.Generator, h: int, w: int, view: str, woman: Woman | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Breast mask (bool), normalised radius map (0 centre of chest wall .. 1 skin) and pectoral mask.

    The outline comes from `woman` if given, else from `rng` (the default mode's draws, in order)."""
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    if woman is None:
        a, cy = w * rng.uniform(*SIZE), h * rng.uniform(*CENTRE[view])
        b_top, b_bot = h * rng.uniform(*TOP[view]), h * rng.uniform(*BOTTOM)
    else:
        a, cy = w * _at(SIZE, woman.size), h * _at(CENTRE[view], woman.centre)
        b_top, b_bot = h * _at(TOP[view], woman.top), h * _at(BOTTOM, woman.bottom)
    b = np.where(yy < cy, np.float32(b_top), np.float32(b_bot))
    wobble = 1 + np.float32(0.03) * _smooth_noise(rng, (h, w), max(h, w) / 3)
    dx2 = (xx * np.float32(1 / a)) ** 2
    dy2 = ((yy - np.float32(cy)) / b) ** 2
    r = np.sqrt(dx2 + dy2) * wobble
    breast = r <= 1.0
    pect = np.zeros((h, w), bool)
    if view == "MLO":
        if woman is None:
            px, py = w * rng.uniform(*PECTORAL[0]), h * rng.uniform(*PECTORAL[1])
        else:
            px, py = w * _at(PECTORAL[0], woman.pectoral[0]), h * _at(PECTORAL[1], woman.pectoral[1])
        pect = (xx / np.float32(px) + yy / np.float32(py)) <= 1.0
        pect &= breast
    return breast, r, pect


def _place(rng: np.random.Generator, ok: np.ndarray) -> tuple[int, int] | None:
    ys, xs = np.nonzero(ok)
    if len(xs) == 0:
        return None
    i = int(rng.integers(len(xs)))
    return int(xs[i]), int(ys[i])


def _mass_signal(rng: np.random.Generator, shape: tuple[int, int], c: tuple[int, int], radius: float,
                 malignant: bool, cfg: SynthConfig) -> np.ndarray:
    """Full-size mass signal, computed in a window around the centre for speed."""
    h, w = shape
    ext = int(math.ceil(radius * (2.8 if malignant else 1.4))) + 3
    x0, y0 = max(0, c[0] - ext), max(0, c[1] - ext)
    x1, y1 = min(w, c[0] + ext + 1), min(h, c[1] + ext + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xx - np.float32(c[0]), yy - np.float32(c[1])
    if malignant:
        theta = np.arctan2(dy, dx)
        rr = np.ones_like(theta)
        for k in range(2, 7):
            rr += np.float32(rng.uniform(0.05, 0.11)) * np.cos(k * theta + np.float32(rng.uniform(0, 2 * np.pi)))
        core_r = np.float32(radius) * rr
        rad = np.sqrt(dx * dx + dy * dy)
    else:
        ang = rng.uniform(0, np.pi)
        ratio = rng.uniform(0.7, 1.0)
        u = dx * np.float32(np.cos(ang)) + dy * np.float32(np.sin(ang))
        v = (-dx * np.float32(np.sin(ang)) + dy * np.float32(np.cos(ang))) / np.float32(ratio)
        rad = np.sqrt(u * u + v * v)
        core_r = np.float32(radius)
    edge = np.float32(max(1.0, 0.12 * radius))
    sig = np.clip((core_r - rad) / edge + np.float32(0.5), 0, 1)
    sig = sig * sig * (3 - 2 * sig)  # smoothstep edge
    if malignant:
        canvas = np.zeros_like(sig)
        n = int(rng.integers(cfg.spicules[0], cfg.spicules[1] + 1))
        thick = max(2, int(round(radius * 0.12)))
        cl = (c[0] - x0, c[1] - y0)
        for ang in rng.uniform(0, 2 * np.pi, n):
            length = radius * rng.uniform(1.6, 2.6)
            end = (int(round(cl[0] + length * np.cos(ang))), int(round(cl[1] + length * np.sin(ang))))
            cv2.line(canvas, cl, end, 0.75, thickness=thick, lineType=cv2.LINE_AA)
        sig = np.maximum(sig, canvas)
    out = np.zeros(shape, np.float32)
    out[y0:y1, x0:x1] = sig * np.float32(cfg.mass_contrast)
    return out


def _calc_signal(rng: np.random.Generator, shape: tuple[int, int], c: tuple[int, int], w: int,
                 malignant: bool, cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """Full-size speck signal and cluster outline mask (convex hull of the specks, dilated)."""
    h = shape[0]
    r0 = max(1.0, cfg.calc_radius * w)
    pts = []
    if malignant:
        n = int(rng.integers(10, 22))
        spread = w * rng.uniform(0.022, 0.035)
        ang = rng.uniform(0, np.pi)
        for _ in range(n):
            t = rng.uniform(-1, 1) * spread
            off = rng.normal(0, spread * 0.35)
            pts.append((c[0] + t * np.cos(ang) - off * np.sin(ang), c[1] + t * np.sin(ang) + off * np.cos(ang)))
    else:
        n = int(rng.integers(2, 5))
        spread = w * rng.uniform(0.03, 0.05)
        for _ in range(n):
            pts.append((c[0] + rng.uniform(-spread, spread), c[1] + rng.uniform(-spread, spread)))
    margin = int(math.ceil(r0 * 3 + 2))
    ext = int(math.ceil(spread * (2.2 if malignant else 1.0) + r0 * 2.5)) + margin + 4
    x0, y0 = max(0, c[0] - ext), max(0, c[1] - ext)
    x1, y1 = min(w, c[0] + ext + 1), min(h, c[1] + ext + 1)
    canvas = np.zeros((y1 - y0, x1 - x0), np.float32)
    loc = [(x - x0, y - y0) for x, y in pts]
    for x, y in loc:
        if malignant:
            ax = r0 * rng.uniform(0.6, 1.5)
            axes = (max(1, int(round(ax))), max(1, int(round(ax * rng.uniform(0.3, 1.0)))))
            cv2.ellipse(canvas, (int(round(x)), int(round(y))), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1,
                        lineType=cv2.LINE_AA)
        else:
            rad = max(1, int(round(r0 * rng.uniform(1.6, 2.2))))
            cv2.circle(canvas, (int(round(x)), int(round(y))), rad, 1.0, -1, lineType=cv2.LINE_AA)
    canvas = cv2.GaussianBlur(canvas, (0, 0), 0.6)
    hull = cv2.convexHull(np.array(loc, np.float32).reshape(-1, 1, 2))
    m = np.zeros(canvas.shape, np.uint8)
    cv2.fillConvexPoly(m, np.round(hull).astype(np.int32), 255)
    m = cv2.dilate(m, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin + 1, 2 * margin + 1)))
    m[canvas > 0] = 255
    sig = np.zeros(shape, np.float32)
    mask = np.zeros(shape, np.uint8)
    sig[y0:y1, x0:x1] = canvas * np.float32(cfg.calc_contrast)
    mask[y0:y1, x0:x1] = m
    return sig, mask


def render_image(rng: np.random.Generator, view: str = "CC", side: str = "LEFT",
                 lesions: list[tuple[str, str]] = (), cfg: SynthConfig = SynthConfig(),
                 woman: Woman | None = None) -> SynthImage:
    """Render one mammogram with the given (type, pathology) lesions.

    With `woman`, her shared traits replace the per-image draws of outline and density, and
    her coarse density pattern for `view` is mixed into this breast's own (bilateral mode)."""
    h, w = cfg.img_size
    breast, r, pect = _breast(rng, h, w, view, woman)
    white = rng.standard_normal((h, w), dtype=np.float32)  # one draw: texture, background and noise
    coarse = _smooth_noise(rng, (h, w), max(8.0, w / 10))
    if woman is not None:  # same variance as one field: sqrt(s) shared + sqrt(1 - s) own
        shared = _smooth_noise(np.random.default_rng([woman.pattern_seed, VIEW_NAMES.index(view)]), (h, w),
                               max(8.0, w / 10))
        coarse = np.float32(math.sqrt(SHARED_PATTERN)) * shared + np.float32(math.sqrt(1 - SHARED_PATTERN)) * coarse
    dens = coarse * np.float32(0.5) + _smooth_noise(rng, (h, w), max(4.0, w / 30)) * np.float32(0.3)
    offset = rng.uniform(*DENSITY) if woman is None else woman.density
    gland = np.maximum(dens + np.float32(offset) + np.float32(0.6) * (1 - r), 0)
    gland = gland / (1 + gland)  # 0..1, denser towards the chest wall
    texture = cv2.GaussianBlur(white, (0, 0), 1.0) * np.float32(0.06)
    thick = np.sqrt(np.sqrt(np.clip(1 - r * r, 0, 1)))
    tissue = (0.22 + 0.45 * gland) * (0.55 + 0.45 * thick) + texture
    tissue += np.clip(1 - np.abs(r - np.float32(0.985)) * np.float32(w / 3.0), 0, 1) * np.float32(0.12)  # skin
    if pect.any():
        muscle = np.float32(0.7) + np.float32(0.05) * _smooth_noise(rng, (h, w), w / 8)
        tissue = np.where(pect, np.maximum(tissue, muscle), tissue)
    img = np.where(breast, tissue, np.float32(0.012) + np.float32(0.004) * white)
    clean = img.copy()
    dist = cv2.distanceTransform((breast & ~pect).astype(np.uint8), cv2.DIST_L2, 5)
    used = np.zeros((h, w), bool)
    out_lesions: list[Lesion] = []
    for typ, path in lesions:
        malignant = path == "MALIGNANT"
        if typ == "mass":
            radius = w * rng.uniform(*cfg.mass_radius)
            reach = radius * (2.8 if malignant else 1.3)
        else:
            radius = w * 0.05
            reach = radius * 1.5
        c = _place(rng, (dist > reach * 0.8 + 2) & ~cv2.dilate(used.view(np.uint8), np.ones((9, 9), np.uint8), iterations=max(1, int(reach / 4))).view(bool))
        if c is None:
            log.debug("no room for a %s lesion", typ)
            continue
        if typ == "mass":
            sig = _mass_signal(rng, (h, w), c, radius, malignant, cfg)
            mask = ((sig > 0.02 * cfg.mass_contrast) * 255).astype(np.uint8)
            mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
        else:
            sig, mask = _calc_signal(rng, (h, w), c, w, malignant, cfg)
        sig *= breast  # spicules stop at the skin
        mask[~breast] = 0
        img += sig
        used |= mask > 0
        out_lesions.append(Lesion(typ, path, mask, c))
    noise = np.float32(cfg.noise) * white
    img, clean = img + noise, clean + noise
    to16 = lambda a: np.clip(a * PEAK, 0, 65535).astype(np.uint16)  # noqa: E731
    image, clean16 = to16(img), to16(clean)
    if side == "RIGHT":  # chest wall on the right edge
        image, clean16, breast = image[:, ::-1].copy(), clean16[:, ::-1].copy(), breast[:, ::-1].copy()
        for les in out_lesions:
            les.mask = les.mask[:, ::-1].copy()
            les.center = (w - 1 - les.center[0], les.center[1])
    return SynthImage(image, clean16, (breast * 255).astype(np.uint8), out_lesions)


def plan_lesions(rng: np.random.Generator, lesion_fraction: float, malignant_fraction: float,
                 calc_fraction: float) -> list[tuple[str, str]]:
    """Random (type, pathology) list for one image: none, one or (rarely) two lesions."""
    if rng.random() >= lesion_fraction:
        return []
    n = 1 if rng.random() < 0.8 else 2
    out = []
    for _ in range(n):
        typ = "calc" if rng.random() < calc_fraction else "mass"
        out.append((typ, "MALIGNANT" if rng.random() < malignant_fraction else "BENIGN"))
    return out


def plan_women(n_patients: int, seed: int, views_per_patient: int, lesion_fraction: float,
               malignant_fraction: float, calc_fraction: float
               ) -> tuple[dict[tuple[str, int], list[tuple[str, str]]], dict[str, Woman]]:
    """Bilateral mode: each woman's traits, and lesion plans per (patient, index into VIEWS).

    `views_per_patient` counts images per woman as in the default mode: 2 is the CC view of
    both breasts, 4 adds the MLO pair. lesion_fraction of the women have lesions, all on one
    side chosen at random and the same lesion list on each view of that side (one lesion
    seen twice); the other breast is normal."""
    if views_per_patient not in (2, 4):
        raise InputError(f"bilateral mode needs views_per_patient 2 (CC of both breasts) or 4 (CC and "
                         f"MLO of both), got {views_per_patient}")
    kept = VIEW_NAMES[:views_per_patient // 2]
    plans, women = {}, {}
    for p in range(n_patients):
        pid = f"S_{p + 1:05d}"
        rng = np.random.default_rng([seed, p, len(VIEWS), 0])  # a stream no image uses
        women[pid] = draw_woman(rng)
        lesions = plan_lesions(rng, lesion_fraction, malignant_fraction, calc_fraction)
        lesion_side = ("LEFT", "RIGHT")[int(rng.integers(2))]
        for v, (side, view) in enumerate(VIEWS):
            if view in kept:
                plans[(pid, v)] = list(lesions) if side == lesion_side else []
    return plans, women


def generate_dataset(out_dir: str | pathlib.Path, n_patients: int = 60, img_size: tuple[int, int] = (576, 448),
                     seed: int = 12345, lesion_fraction: float = 0.5, malignant_fraction: float = 0.6,
                     calc_fraction: float = 0.35, views_per_patient: int = 2, val_size: float = 0.15,
                     test_size: float = 0.2, config: SynthConfig | None = None, bilateral: bool = False) -> dict:
    """Write a synthetic dataset in the CBIS-DDSM recipe layout; returns the summary dict.

    Default mode: image v of a patient is VIEWS[v], each drawn on its own, lesion_fraction of
    the images with lesions. `bilateral`: women with both breasts, see `plan_women`."""
    if n_patients < 1 or not 1 <= views_per_patient <= 4:
        raise InputError(f"need n_patients >= 1 and 1 <= views_per_patient <= 4, got {n_patients}, {views_per_patient}")
    cfg = dataclasses.replace(config or SynthConfig(), img_size=tuple(int(v) for v in img_size))
    women: dict[str, Woman] = {}
    if bilateral:
        plans, women = plan_women(n_patients, seed, views_per_patient, lesion_fraction, malignant_fraction,
                                  calc_fraction)
    else:
        plans = {(f"S_{p + 1:05d}", v): plan_lesions(np.random.default_rng([seed, p, v, 0]), lesion_fraction,
                                                     malignant_fraction, calc_fraction)
                 for p in range(n_patients) for v in range(views_per_patient)}
    mode = {"bilateral": True} if bilateral else {}  # recorded only when on: default folders stay as they were
    out = claim_folder(out_dir, "dm_synthetic", dict(
        n_patients=n_patients, img_size=cfg.img_size, seed=seed, lesion_fraction=lesion_fraction,
        malignant_fraction=malignant_fraction, calc_fraction=calc_fraction,
        views_per_patient=views_per_patient, val_size=val_size, test_size=test_size,
        config=dataclasses.asdict(cfg), **mode), what="output folder")
    (out / FULL_DIR).mkdir(parents=True, exist_ok=True)
    (out / MASK_DIR).mkdir(parents=True, exist_ok=True)
    pat_label = {pid: 0 for pid, _ in plans}
    for (pid, _), les in plans.items():
        if any(path == "MALIGNANT" for _, path in les):
            pat_label[pid] = 1
    split_of = stratified_split(pat_label, {"test": test_size, "val": val_size}, seed)
    img_rows, roi_rows = [], []
    for (pid, v), les in tqdm(plans.items(), desc="synthetic images", disable=len(plans) < 50, leave=False):
        p = int(pid[2:]) - 1
        side, view = VIEWS[v]
        rng = np.random.default_rng([seed, p, v, 1])
        s = render_image(rng, view, side, les, cfg, women.get(pid))
        image_id = f"{pid}_{side}_{view}"
        fname = f"{image_id}.png"
        write_png(out / FULL_DIR / fname, s.image)
        split = split_of[pid]
        for k, lesion in enumerate(s.lesions, start=1):
            mname = f"{'Calc' if lesion.type == 'calc' else 'Mass'}-{'Test' if split == 'test' else 'Training'}" \
                    f"_{image_id}_{k}.png"
            write_png(out / MASK_DIR / mname, lesion.mask)
            roi_rows.append([pid, side, view, k, lesion.pathology, lesion.type, fname, mname])
        img_rows.append([pid, side, view, image_id, "pos" if s.label else "neg", split, fname])
    images = pd.DataFrame(img_rows, columns=IMAGE_COLUMNS)
    rois = pd.DataFrame(roi_rows, columns=ROI_COLUMNS)
    write_layout(out, rois, images, split_of, img_size=img_size)
    summary = summarize(images, rois, name="synthetic")
    summary["config"] = {**dataclasses.asdict(cfg), "seed": seed, "n_patients": n_patients,
                         "lesion_fraction": lesion_fraction, "malignant_fraction": malignant_fraction,
                         "calc_fraction": calc_fraction, "views_per_patient": views_per_patient, **mode}
    dm_output.write_json(out / "synthetic.json", summary, default=list)
    return summary


FRACTION = dm_cli.float_in(0, 1)            # fractions of images, lesions or patients
CONTRAST = dm_cli.float_in(0)                # intensity added (tissue spans about 0.2-0.75)
RADIUS = dm_cli.float_in(0, 0.5, low_open=True)   # a fraction of the image width


def main(argv: list[str] | None = None) -> dict:
    """The command: flags checked at parsing (counts, fractions, contrasts and radii in
    their ranges), then `generate_dataset`; returns its summary."""
    ap = argparse.ArgumentParser(description="Write a seeded synthetic mammogram dataset (CBIS-DDSM recipe layout).",
                                 formatter_class=dm_cli.HelpFormatter)
    ap.add_argument("out_dir", help="output folder (the recipe layout)")
    ap.add_argument("--n-patients", type=dm_cli.int_at_least(1), default=60, help="number of synthetic patients")
    ap.add_argument("--views-per-patient", type=dm_cli.int_at_least(1, len(VIEWS)), default=2,
                    help="images per patient: LEFT CC, LEFT MLO, RIGHT CC, RIGHT MLO in that order; "
                         "with --bilateral 2 (CC of both breasts) or 4")
    ap.add_argument("--bilateral", action="store_true",
                    help="women with both breasts of each view, sharing her traits; lesions on one side at most")
    dm_cli.add_img_size(ap, help="image size", default=[576, 448])
    dm_cli.add_seed_flag(ap, "seeds every image and the splits")
    ap.add_argument("--lesion-fraction", type=FRACTION, default=0.5,
                    help="fraction of images (--bilateral: of women) with lesions")
    ap.add_argument("--malignant-fraction", type=FRACTION, default=0.6, help="fraction of lesions that are malignant")
    ap.add_argument("--calc-fraction", type=FRACTION, default=0.35,
                    help="fraction of lesions that are calcification clusters (else masses)")
    ap.add_argument("--val-size", type=FRACTION, default=0.15, help="fraction of patients for validation")
    ap.add_argument("--test-size", type=FRACTION, default=0.2, help="fraction of patients for test")
    ap.add_argument("--mass-contrast", type=CONTRAST, default=SynthConfig.mass_contrast,
                    help="intensity added by a mass (tissue spans about 0.2-0.75)")
    ap.add_argument("--calc-contrast", type=CONTRAST, default=SynthConfig.calc_contrast,
                    help="intensity added by a calcification")
    ap.add_argument("--mass-radius", type=RADIUS, nargs=2, default=list(SynthConfig.mass_radius), metavar=("MIN", "MAX"),
                    help="mass radius range, as a fraction of the image width")
    ap.add_argument("--calc-radius", type=RADIUS, default=SynthConfig.calc_radius,
                    help="calcification radius, as a fraction of the image width (at least 1 px)")
    a = ap.parse_args(argv)
    if a.mass_radius[0] > a.mass_radius[1]:
        ap.error(f"argument --mass-radius: MIN {a.mass_radius[0]:g} is above MAX "
                 f"{a.mass_radius[1]:g}")
    if a.val_size + a.test_size >= 1:
        ap.error(f"--val-size {a.val_size:g} and --test-size {a.test_size:g} leave no patient "
                 "for training (their sum must be below 1)")
    dm_cli.setup_logging()
    cfg = SynthConfig(mass_contrast=a.mass_contrast, calc_contrast=a.calc_contrast,
                      mass_radius=tuple(a.mass_radius), calc_radius=a.calc_radius)
    return generate_dataset(a.out_dir, a.n_patients, tuple(a.img_size), a.seed, a.lesion_fraction,
                            a.malignant_fraction, a.calc_fraction, a.views_per_patient, a.val_size,
                            a.test_size, cfg, bilateral=a.bilateral)


def cli() -> None:
    """The command (`python dm_synthetic.py` or, installed, `dm_synthetic`)."""
    run_cli(main, "dm_synthetic")


if __name__ == "__main__":
    cli()
