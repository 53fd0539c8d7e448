"""Heatmaps of mammograms, grouped per patient and side (CC and MLO), saved as .npz.

    python ddsm_train/heatmap_score.py IMG_FOLDER MODEL [--pat-csv pat.csv] \
        [--fprop-mode --avg-pool-size 7 7 --hm-strides 1 1 | --grad-cam] \
        [--patch-size 256 --stride 8 --batch-size 128 --img-height 4096] \
        --out heatmaps.npz [--overlay-dir overlays/]

Modes (docs/method.md, section 3): sliding window (default) scores every patch of the resized,
breast-segmented image padded by half a patch with a patch classifier, giving a
(rows, cols, classes) map; `--fprop-mode` runs the all-convolutional patch classifier
once over the whole image (average pooling + the patch Dense at every position);
`--grad-cam` gives Grad-CAM saliency of a whole-image model on its trunk's last
feature map. Recipes come from the model file; flags override any item, and `--no-X`
switches one off. A whole-image model is refused without `--grad-cam` (it is not a patch
classifier), and so is an fprop window larger than the trunk's feature map.

Overlays (`--overlay-dir`): the map on the whole source image at its own size, pixel for
pixel (rows TITLE_H.. of the PNG), a title with the image, class and probability, and a
colour bar; `--grad-cam-scale absolute` shows Grad-CAM on a fixed scale.

Images: a CSV (`--pat-csv`) with patient_id, side and either path or view (then the
file is IMG_FOLDER/<patient_id>_<side>_<view>.png, views CC and MLO), optional cancer;
or, without a CSV, every image in IMG_FOLDER, grouped by names <patient>_<side>_<view>.

Output .npz (no pickle): `hm_<i>` per image, arrays `path`, `patient_id`, `side`,
`view`, `group` (index of the image's patient/side group), group arrays
`group_patient_id`, `group_side`, `group_cancer`, `group_cc`, `group_mlo` (image index or
-1), and `meta` (JSON; for the sliding window each map's first patch centre `centre0` and
breast crop `bbox`, x y w h on the scored image). `dm_localisation.py` measures the maps
against lesion masks. `load_heatmaps` turns it back into the original's list of dicts.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from typing import Any

if not __package__:  # run as a script from its folder: put the repo root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2
import numpy as np  # noqa: E402
import pandas as pd

import dm_cli  # noqa: E402
import dm_convert_checkpoint
import dm_inputs
import dm_output
import dm_overlay
import dm_pairs
import dm_pixels
import dm_preflight
import dm_recipe
from dm_errors import InputError  # noqa: E402

log = logging.getLogger("heatmap_score")


class HeatmapError(InputError):
    """Unusable heatmap input, reported in one line."""


@dataclass
class Item:
    path: str
    patient_id: str
    side: str
    view: str
    cancer: float = float("nan")


_NAME = re.compile(r"^(?P<pat>.+)_(?P<side>LEFT|RIGHT|L|R)_(?P<view>CC|MLO|ML|LM|XCCL)$", re.I)


def list_items(img_folder: str, pat_csv: str | None, pat_list: str | None) -> list[Item]:
    """Images to score with their patient, side and view (see module doc)."""
    if pat_csv is None:
        items = []
        for p in dm_inputs.list_images(img_folder, "IMG_FOLDER takes a folder"):
            stem = os.path.splitext(os.path.basename(p))[0]
            m = _NAME.match(stem)
            items.append(Item(p, m["pat"], m["side"].upper(), m["view"].upper()) if m
                         else Item(p, stem, "", ""))
        return items
    if not os.path.isfile(pat_csv):
        raise HeatmapError(f"{pat_csv}: patient CSV not found")
    df = pd.read_csv(pat_csv, dtype=str, keep_default_na=False)
    need = {"patient_id", "side"}
    if not need <= set(df.columns):
        raise HeatmapError(f"{pat_csv}: expected columns patient_id, side (got {list(df.columns)})")
    if pat_list is not None:
        if not os.path.isfile(pat_list):
            raise HeatmapError(f"{pat_list}: patient list not found")
        keep = set(pd.read_csv(pat_list, dtype=str).iloc[:, 0].str.strip())
        df = df[df["patient_id"].isin(keep)]
    items = []
    for _, r in df.iterrows():
        cancer = float(r["cancer"]) if "cancer" in df.columns and r["cancer"] != "" else float("nan")
        if "path" in df.columns:
            p = r["path"] if os.path.isabs(r["path"]) else os.path.join(img_folder, r["path"])
            items.append(Item(p, r["patient_id"], r["side"], r.get("view", ""), cancer))
            continue
        views = [r["view"]] if "view" in df.columns else ["CC", "MLO"]
        for v in views:
            p = os.path.join(img_folder, f"{r['patient_id']}_{r['side']}_{v}.png")
            if os.path.isfile(p):
                items.append(Item(p, r["patient_id"], r["side"], v, cancer))
    seen, unique = set(), []
    for it in items:
        if it.path not in seen:
            seen.add(it.path)
            unique.append(it)
    missing = [it.path for it in unique if not os.path.isfile(it.path)]
    if missing:
        raise HeatmapError(f"{missing[0]}: image not found ({len(missing)} missing)")
    if not unique:
        raise HeatmapError(f"{pat_csv}: no images found in {img_folder}")
    return unique


def group_items(items: list[Item]) -> list[tuple[str, str, list[int]]]:
    """(patient, side, image indices with CC first) in sorted patient/side order."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault((it.patient_id, it.side), []).append(i)
    order = {"CC": 0, "MLO": 1}
    return [(p, s, sorted(idx, key=lambda i: (order.get(items[i].view.upper(), 2), items[i].path)))
            for (p, s), idx in sorted(groups.items())]


def save_heatmaps(path: str, items: list[Item], maps: list[np.ndarray], meta: dict) -> None:
    """Write the .npz (see module doc) atomically."""
    groups = group_items(items)
    group_of = np.full(len(items), -1, np.int64)
    cc, mlo = [], []
    for g, (_, _, idx) in enumerate(groups):
        group_of[idx] = g
        views = {items[i].view.upper(): i for i in idx}
        cc.append(views.get("CC", -1))
        mlo.append(views.get("MLO", -1))
    arrays = {f"hm_{i}": np.asarray(m, np.float32) for i, m in enumerate(maps)}
    arrays.update(
        path=np.array([it.path for it in items]), patient_id=np.array([it.patient_id for it in items]),
        side=np.array([it.side for it in items]), view=np.array([it.view for it in items]),
        group=group_of, group_patient_id=np.array([g[0] for g in groups]),
        group_side=np.array([g[1] for g in groups]),
        group_cancer=np.array([items[g[2][0]].cancer for g in groups], np.float64),
        group_cc=np.array(cc, np.int64), group_mlo=np.array(mlo, np.int64),
        meta=np.array(json.dumps(meta)))

    def write(f):
        np.savez_compressed(f, **arrays)
    dm_output.atomic_write(path, write)


def load_heatmaps(path: str) -> list[dict]:
    """The original's structure: [{'patient_id', 'side', 'cancer', 'cc', 'mlo'}] (maps or None)."""
    with np.load(path, allow_pickle=False) as z:
        def hm(i):
            return None if i < 0 else z[f"hm_{i}"]
        return [dict(patient_id=str(p), side=str(s), cancer=float(c), cc=hm(int(a)), mlo=hm(int(b)))
                for p, s, c, a, b in zip(z["group_patient_id"], z["group_side"], z["group_cancer"],
                                         z["group_cc"], z["group_mlo"])]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Heatmap scoring of mammograms (sliding window, fprop, Grad-CAM), grouped "
                    "per patient and side into a .npz, with optional PNG overlays.",
        formatter_class=dm_cli.HelpFormatter)
    p.add_argument("img_folder", help="folder of the images (<patient>_<side>_<view>.png)")
    p.add_argument("dl_state", metavar="MODEL", help="patch model (or whole-image model "
                   "with --grad-cam)")
    m = p.add_argument_group("mode (default: sliding window with a patch model)")
    m.add_argument("--fprop-mode", dest="fprop_mode", action="store_true", default=False,
                   help="one forward pass of the all-convolutional patch classifier")
    m.add_argument("--no-fprop-mode", dest="fprop_mode", action="store_false", default=argparse.SUPPRESS,
                   help="turn off --fprop-mode")
    m.add_argument("--grad-cam", action="store_true", default=False,
                   help="Grad-CAM of a whole-image model on its trunk's last feature map")
    m.add_argument("--grad-cam-scale", choices=["relative", "absolute"], default="relative",
                   help="relative: each map divided by its own maximum; absolute: the "
                        "class-score units of Grad-CAM, shown on the fixed range "
                        "[0, --grad-cam-max] (a model without evidence stays dark)")
    m.add_argument("--grad-cam-max", type=dm_cli.float_in(0, low_open=True), default=1.0,
                   help="top of the colour scale with --grad-cam-scale absolute")
    m.add_argument("--patch-model", help="fprop with a whole-image MODEL: the patch model "
                   "whose Dense classifies the trunk's features")
    m.add_argument("--net", help="accepted so the original's scripts run; the net is read "
                   "from the model file")
    g = p.add_argument_group("geometry")
    dm_cli.add_img_size(g, help="resize (fprop: 1152 896 for patch models, else the model's recipe; "
                        "sliding window: no resize)", short=True)
    g.add_argument("--img-height", "-ih", type=dm_cli.pixels,
                   help="sliding window: resize to this height, aspect kept")
    g.add_argument("--no-img-height", dest="img_height", action="store_const", default=argparse.SUPPRESS, const=None,
                   help="unset --img-height")
    g.add_argument("--patch-size", type=dm_cli.pixels,
                   help="default: the patch model's input size")
    g.add_argument("--stride", type=dm_cli.pixels, default=8, help="sliding-window step in pixels")
    g.add_argument("--batch-size", type=dm_cli.int_at_least(1), default=128,
                   help="patches per batch")
    dm_cli.add_image_check_flags(g, "map")
    g.add_argument("--segment", dest="segment", action="store_true", default=True,
                   help="sliding window: crop to the breast first")
    g.add_argument("--no-segment", dest="segment", action="store_false", default=argparse.SUPPRESS, help="turn off --segment")
    g.add_argument("--pad", dest="pad", action="store_true", default=True,
                   help="sliding window: pad by half a patch")
    g.add_argument("--no-pad", dest="pad", action="store_false", default=argparse.SUPPRESS, help="turn off --pad")
    g.add_argument("--avg-pool-size", nargs=2, type=dm_cli.pixels, default=[7, 7],
                   metavar=("H", "W"), help="fprop: average-pooling window on the trunk's "
                   "feature map")
    g.add_argument("--hm-strides", nargs=2, type=dm_cli.pixels, default=[1, 1], metavar=("H", "W"),
                   help="fprop: strides of that pooling")
    io = p.add_argument_group("images and output")
    io.add_argument("--pat-csv", help="CSV with patient_id, side, view or path [, cancer]; "
                    "default: every image of IMG_FOLDER")
    io.add_argument("--pat-list", help="CSV whose first column (after a header) lists the "
                    "patients to keep")
    io.add_argument("--no-pat-list", dest="pat_list", action="store_const", default=argparse.SUPPRESS, const=None,
                    help="unset --pat-list")
    io.add_argument("--pairs", help="a bilateral model's pairs for --grad-cam: a recipe's images"
                    ".csv or a path,other_path CSV (default: the same patient's other side)")
    io.add_argument("--out", default="./output/prob_heatmap.npz", help=".npz to write")
    io.add_argument("--overlay-dir", help="write a colour overlay PNG per image here")
    io.add_argument("--overlay-class", help="class shown in overlays (None: 1 - first class "
                    "for patch models, the last class for whole-image models)")
    io.add_argument("--unsafe-load", action="store_true", help="allow Lambda layers in "
                    "model files (runs code from the file)")
    r = p.add_argument_group("recipe overrides (default None: the model's stored recipe; "
                             "--no-X switches an item off)")
    dm_cli.add_recipe_flags(r, img_size=False)   # --img-size: the geometry above
    return p


def _name(it: Item) -> str:
    """The overlay title's image name: patient, side and view, the empty ones left out."""
    return " ".join(v for v in (it.patient_id, it.side, it.view) if v)


def _overlay_channel(probs: np.ndarray, class_list, name: str | None, kind: str
                     ) -> tuple[np.ndarray, str]:
    """The map shown in an overlay and what it shows."""
    if name is not None:
        if name not in class_list:
            raise HeatmapError(f"--overlay-class {name!r} is not one of {list(class_list)}")
        return probs[..., list(class_list).index(name)], name
    if kind == "patch" and probs.shape[-1] > 1:
        return 1.0 - probs[..., 0], f"not {class_list[0]}"
    return probs[..., -1], class_list[-1]


def _looks_whole_image(loaded) -> bool:
    """A whole-image classifier, by its stored kind or (files without one) its layers."""
    return loaded.kind == "image"


def _to_source(heat: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A map at the scored image's size resized to the source image's size (NaN kept)."""
    if heat.shape == tuple(shape):
        return heat
    h, w = shape
    valid = cv2.resize(np.isfinite(heat).astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    out = cv2.resize(np.nan_to_num(heat, nan=0.0), (w, h), interpolation=cv2.INTER_LINEAR)
    return np.where(valid > 0, out, np.nan).astype(np.float32)


TITLE_H = 28   # overlay figure: title strip height (pixels) above the image
BAR_W = 64     # colour bar strip width to the right of the image


def overlay_figure(grey: np.ndarray, heat: np.ndarray, title: str, vmin: float = 0.0,
                   vmax: float = 1.0) -> np.ndarray:
    """A readable overlay: the colour-mapped heat on the whole source image (pixel for pixel
    at rows TITLE_H.., columns 0..W-1), a title strip and a labelled colour bar."""
    img = dm_overlay.overlay_heatmap(grey, heat, vmin=vmin, vmax=vmax)
    h, w = grey.shape
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, 0.45
    (tw, _), _ = cv2.getTextSize(title, font, scale, 1)
    canvas = np.full((TITLE_H + max(h, 60), max(w + BAR_W, tw + 8), 3), 255, np.uint8)
    canvas[TITLE_H:TITLE_H + h, :w] = img
    cv2.putText(canvas, title, (4, TITLE_H - 9), font, scale, (0, 0, 0), 1, cv2.LINE_AA)
    bar_h = max(h, 60) - 4
    ramp = np.linspace(255, 0, bar_h).astype(np.uint8)[:, None].repeat(12, axis=1)
    x0 = w + 4
    canvas[TITLE_H + 2:TITLE_H + 2 + bar_h, x0:x0 + 12] = cv2.applyColorMap(ramp, cv2.COLORMAP_JET)
    for frac, val in ((0.0, vmax), (0.5, (vmin + vmax) / 2), (1.0, vmin)):
        y = TITLE_H + 2 + int(frac * (bar_h - 1))
        cv2.putText(canvas, f"{val:.2g}", (x0 + 15, min(y + 4, canvas.shape[0] - 2)), font, 0.35,
                    (0, 0, 0), 1, cv2.LINE_AA)
    return canvas


def cell_offset(model, x: np.ndarray, n: int = 3) -> list[float]:
    """(rows, cols) in scored-image pixels from the geometric centre ((j + 0.5) * stride -
    0.5) of the trunk's feature cells to the centre of what they see: the centroid of
    |d cell / d input| over n x n interior cells of `x`. Stride-2 1x1 convolutions take the
    top-left pixel of every 2x2 block, so cells look up-left of their geometric centres
    (about 13 px at a /32 trunk; docs/localisation.md)."""
    import tensorflow as tf  # deferred for --help (docs/modules.md)

    import dm_heatmaps  # deferred for --help (docs/modules.md)
    sub, _ = dm_heatmaps.grad_cam_model(model)
    pair = len(model.inputs) == 2       # a bilateral model: (breast, other breast)
    xt = tf.convert_to_tensor(np.asarray(x[0] if pair else x, np.float32))
    rest = [tf.convert_to_tensor(np.asarray(x[1], np.float32))] if pair else []
    h, w = xt.shape[1:3]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(xt)
        feat = sub([xt] + rest if pair else xt, training=False)[0]
    fh, fw = feat.shape[1:3]
    rows = np.unique(np.linspace(1, max(1, fh - 2), n).round().astype(int))
    cols = np.unique(np.linspace(1, max(1, fw - 2), n).round().astype(int))
    yy, xx = np.mgrid[:h, :w]
    offs = []
    for r in rows:
        for c in cols:
            with tape:
                target = tf.reduce_sum(feat[:, r, c, :])
            g = np.abs(tape.gradient(target, xt).numpy()[0]).sum(-1)
            if g.sum() > 0:
                offs.append(((g * yy).sum() / g.sum() - ((r + 0.5) * h / fh - 0.5),
                             (g * xx).sum() / g.sum() - ((c + 0.5) * w / fw - 0.5)))
    del tape
    return [round(float(v), 2) for v in np.mean(offs, axis=0)] if offs else [0.0, 0.0]


def _check_pool(fmap_hw, avg_pool_size, size) -> None:
    if any(int(p) > int(f) for p, f in zip(avg_pool_size, fmap_hw)):
        raise HeatmapError(
            f"--avg-pool-size {avg_pool_size[0]} {avg_pool_size[1]} is larger than the trunk's "
            f"feature map {int(fmap_hw[0])}x{int(fmap_hw[1])} at image size {size[0]}x{size[1]}: "
            "use a smaller window or a larger --img-size")


def _fprop_net(model, size, args, patch_model, kind):
    """The fprop heatmap network, built once, and the trunk's feature map (rows, cols) it
    pools; a pooling window larger than that map is refused in one line."""
    import dm_heatmaps  # deferred for --help (docs/modules.md)
    try:
        net = dm_heatmaps.fprop_model(model, size, args.avg_pool_size, args.hm_strides,
                                      patch_model=patch_model, kind=kind)
    except ValueError:      # a window larger than the map leaves no output: say which
        probe = dm_heatmaps.fprop_model(model, size, (1, 1), (1, 1), patch_model=patch_model,
                                        kind=kind)
        _check_pool(probe.outputs[0].shape[1:3], args.avg_pool_size, size)
        raise
    pool = [l for l in net.layers if l.__class__.__name__ == "AveragePooling2D"][-1]
    fmap = pool.input.shape[1:3]
    if not _is_mil(model):          # a multiple-instance model brings its own window
        _check_pool(fmap, args.avg_pool_size, size)
    return net, fmap


def _is_mil(model) -> bool:
    return any(l.name == "mil_pool" for l in model.layers)


def other_breasts(items: list, model, pairs: str | None = None) -> list[str | None]:
    """For a bilateral model's Grad-CAM, each image's other breast: from `--pairs`
    (`dm_pairs`), else among the images scored (same patient and view, the other side);
    None for a one-view model. An image without one is refused in one line."""
    if len(model.inputs) != 2:
        return [None] * len(items)
    if pairs:
        return dm_pairs.partner_paths([it.path for it in items], dm_pairs.read_pairs(pairs),
                                      pairs)
    where = {(it.patient_id, it.side.upper()[:1], it.view.upper()): it.path for it in items}
    out = []
    for it in items:
        other = where.get((it.patient_id, {"L": "R", "R": "L"}.get(it.side.upper()[:1], "?"),
                           it.view.upper()))
        if other is None:
            raise HeatmapError(f"{it.path}: no other breast of patient {it.patient_id}, view "
                               f"{it.view} among the images (a bilateral model's Grad-CAM "
                               "scores pairs; --fprop-mode maps one breast)")
        out.append(other)
    return out


def precheck(args) -> None:
    """What heatmap_score refuses before any model loads (no TensorFlow): sizes that are
    not positive, excluding modes, missing models, images or lists, and an output that
    cannot be written or that would write over an input (overlays are not written into a
    folder the images come from)."""
    for flag, v in (("--img-size", args.img_size), ("--img-height", args.img_height),
                    ("--patch-size", args.patch_size), ("--avg-pool-size", args.avg_pool_size),
                    ("--hm-strides", args.hm_strides), ("--stride", args.stride),
                    ("--batch-size", args.batch_size)):
        vals = list(v) if isinstance(v, (list, tuple)) else [v]
        if v is not None and min(vals) < 1:
            raise HeatmapError(f"{flag} {' '.join(map(str, vals))}: must be positive")
    if args.fprop_mode and args.grad_cam:
        raise HeatmapError("--fprop-mode and --grad-cam exclude each other")
    dm_convert_checkpoint.require_model_file(args.dl_state)
    if args.patch_model:
        dm_convert_checkpoint.require_model_file(args.patch_model, "--patch-model")
    items = list_items(args.img_folder, args.pat_csv, args.pat_list)
    inputs = [("MODEL", args.dl_state), ("--patch-model", args.patch_model),
              ("IMG_FOLDER", args.img_folder), ("--pat-csv", args.pat_csv),
              ("--pat-list", args.pat_list), ("--pairs", args.pairs)] + \
        [("image", it.path) for it in items]
    dm_output.check_writable(args.out, "--out")
    dm_output.check_not_input(args.out, inputs, "--out")
    if args.overlay_dir:
        dm_output.check_writable(args.overlay_dir, "--overlay-dir", folder=True)
        folders = {os.path.dirname(it.path) or "." for it in items}
        dm_output.check_not_input(args.overlay_dir, inputs + [("folder of images", f)
                                                               for f in sorted(folders)],
                                  "--overlay-dir")


def run(args, *legacy_args, **legacy_kw) -> dict:
    """Score the images. `args` is the parsed flags; the original's call
    `run(img_folder, dl_state, fprop_mode=..., ...)` also works (see docs/original.md, "Code written
    for the original")."""
    if isinstance(args, (str, os.PathLike)):
        return run(parse_original(args, *legacy_args, **legacy_kw))
    precheck(args)
    return score_images(args)


def score_images(args) -> dict:
    """`run` after its checks (`precheck`)."""
    import dm_heatmaps  # deferred for --help (docs/modules.md)
    import dm_scoring  # deferred for --help (docs/modules.md)
    loaded = dm_scoring.load_models([args.dl_state], safe_mode=not args.unsafe_load)[0]
    kind = loaded.kind
    mode = "fprop" if args.fprop_mode else "gradcam" if args.grad_cam else "sliding"
    if mode == "sliding" and _looks_whole_image(loaded):
        raise HeatmapError(f"{args.dl_state}: a whole-image model cannot be slid as a patch "
                           "classifier: use --grad-cam (or --fprop-mode --patch-model PATCH)")
    classes = dm_scoring.common_class_list([loaded])
    items = list_items(args.img_folder, args.pat_csv, args.pat_list)
    flags = dm_recipe.flag_values(args)   # overrides of the stored recipe (LoadedModel.recipe)
    meta = dict(mode=mode, model=os.path.abspath(args.dl_state), class_list=list(classes))
    maps = []
    img_height = args.img_height
    if mode == "sliding":
        # the recipe's size is the patch size; --img-size resizes the whole image first
        recipe = loaded.recipe(**{**flags, "img_size": None})
        ps = args.patch_size or loaded.input_hw[0]
        if ps is None:
            raise HeatmapError("give --patch-size (the model's input size is not fixed)")
        if loaded.input_hw[0] not in (None, ps):
            raise HeatmapError(f"--patch-size {ps} differs from the model's input size "
                               f"{loaded.input_hw[0]}")
        size = dm_recipe.Recipe(img_size=args.img_size, target_height=img_height)
        reference = ((args.img_size, f"the --img-size {args.img_size[0]} {args.img_size[1]} "
                      "it is resized to") if args.img_size else
                     ((img_height, None), f"the --img-height {img_height} it is resized to")
                     if img_height else ((ps, ps), f"a {ps}x{ps} patch of {args.dl_state}"))
        meta.update(patch_size=ps, stride=args.stride, segment=args.segment, pad=args.pad,
                    img_size=args.img_size, img_height=img_height, recipe=recipe.to_dict(),
                    centre0=[])
    else:
        if mode == "fprop":
            if kind == "patch" or (kind is None and args.img_size):
                size = tuple(args.img_size or (1152, 896))
            else:
                size = tuple(args.img_size or loaded.recipe().img_size)
            recipe = loaded.recipe(fixed_input=False, **{**flags, "img_size": size})
            patch = (dm_scoring.load_models([args.patch_model], not args.unsafe_load)[0]
                     if args.patch_model else None)            # loaded once
            patch_model = patch.model if patch is not None else None
            net, fmap = _fprop_net(loaded.model, size, args, patch_model, kind)
            if patch is not None:
                classes = dm_scoring.common_class_list([patch])
                meta["class_list"] = list(classes)
            meta.update(avg_pool_size=args.avg_pool_size, hm_strides=args.hm_strides,
                        feature_map=[int(v) for v in fmap])
        else:
            recipe = loaded.recipe(**flags)
            net = loaded.model
            cls = list(classes).index(args.overlay_class) if args.overlay_class else len(classes) - 1
            meta.update(grad_cam_class=classes[cls], grad_cam_scale=args.grad_cam_scale)
        meta.update(recipe=recipe.to_dict())
        others = (other_breasts(items, net, args.pairs) if mode == "gradcam"
                  else [None] * len(items))
        reference = ((recipe.img_size, "the {}x{} size it is resized to".format(*recipe.img_size))
                     if recipe.img_size else (None, ""))
    model_recipe = recipe
    paths = [it.path for it in items]
    allow = dm_preflight.Allow(colour=args.allow_colour, stored_bits=args.stored_bits,
                               small=args.allow_small, blank=args.allow_blank)
    depths = dm_preflight.check_images(paths, [loaded], [model_recipe], allow,
                                       [dm_pixels.file_bit_depth(p) for p in paths],
                                       check_patches=False,   # mapping mammograms is the point
                                       reference=reference)
    # The model's bit depth: another depth is refused in one line (before any image is
    # mapped), or converted.
    recipes = [dm_scoring.recipe_for_image(p, model_recipe, args.convert_bit_depth, args.dl_state,
                                           depth=d) for p, d in zip(paths, depths)]
    bar = dm_cli.progress(len(items), "heatmaps")
    for i, it in enumerate(items):
        recipe = recipes[i]
        img = dm_pixels.read_image(it.path)
        vmax, heat = 1.0, None
        if mode == "sliding":
            full = dm_recipe.resize(img, size) if (args.img_size or img_height) else img
            hm = dm_heatmaps.sliding_window_heatmap(loaded.model, full, recipe, ps, args.stride,
                                            args.batch_size, args.segment, args.pad)
            maps.append(hm.probs)
            meta["centre0"].append(list(hm.centre0))
            # where the breast crop sits on the scored image (dm_localisation places maps)
            meta.setdefault("bbox", []).append(list(hm.bbox) if hm.bbox is not None else None)
            if args.overlay_dir:
                ch, shown = _overlay_channel(hm.probs, classes, args.overlay_class, "patch")
                crop = dm_overlay.place_heatmap(ch, hm.image.shape, hm.centre0, hm.stride)
                x0, y0 = (hm.bbox[0], hm.bbox[1]) if hm.bbox is not None else (0, 0)
                heat = np.full(full.shape, np.nan, np.float32)
                heat[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop
                title = f"{_name(it)}: p({shown}) max {np.nanmax(ch):.3f}"
        else:
            x = dm_recipe.preprocess(img, recipe)[None]
            if mode == "fprop":
                probs = dm_scoring.forward_fn(net)(x.astype(np.float32)).numpy()[0]
                maps.append(probs)
                ch, shown = _overlay_channel(probs, meta["class_list"], args.overlay_class, "patch")
                title = f"{_name(it)}: p({shown}) max {np.max(ch):.3f}"
            else:
                if others[i] is not None:   # a bilateral model: the breast with its pair
                    x = (x, dm_recipe.preprocess(dm_pixels.read_image(others[i]), recipe)[None])
                ch = dm_heatmaps.grad_cam(net, x, cls, normalise=args.grad_cam_scale == "relative")[0]
                maps.append(ch)
                if i == 0:      # where the cells look (dm_localisation places maps by it)
                    meta["cell_offset"] = cell_offset(net, x)
                xf = tuple(np.asarray(v, np.float32) for v in x) if others[i] is not None else x.astype(np.float32)
                p = float(dm_scoring.forward_fn(net)(xf).numpy()[0, cls])
                shown = classes[cls]
                vmax = 1.0 if args.grad_cam_scale == "relative" else float(args.grad_cam_max)
                title = f"{_name(it)}: p({shown}) = {p:.3f}, Grad-CAM"
            if args.overlay_dir:
                heat = dm_overlay.place_heatmap(ch, tuple(recipe.img_size or img.shape))
        if args.overlay_dir:
            meta.setdefault("overlay_titles", []).append(title)
            stem = os.path.splitext(os.path.basename(it.path))[0]
            dm_pixels.write_png(os.path.join(args.overlay_dir, f"{stem}_{mode}.png"),
                          overlay_figure(img, _to_source(heat, img.shape), title, 0.0, vmax))
        bar.update(1)
        if bar.disable:              # no bar (not a terminal): one log line per image
            log.info("scored %d/%d: %s -> %s", i + 1, len(items), it.path, maps[-1].shape)
    bar.close()
    save_heatmaps(args.out, items, maps, meta)
    log.info("wrote %s in %s to %s", dm_cli.plural(len(maps), "heatmap"),
             dm_cli.plural(len(group_items(items)), "patient/side group"), args.out)
    return meta


def parse_original(img_folder, dl_state, **kw) -> argparse.Namespace:
    """Flags from the original's `run(img_folder, dl_state, **keywords)`.

    Keywords keep the original's names and meanings; None switches a recipe item off as
    the original's defaults did (img_scale, rescale_factor), and `featurewise_center=False`
    means no centring. Recipe items the original always set are set here too.
    """
    names = {"fprop_mode", "img_size", "img_height", "img_scale", "rescale_factor",
             "equalize_hist", "featurewise_center", "featurewise_mean", "net", "batch_size",
             "patch_size", "stride", "avg_pool_size", "hm_strides", "pat_csv", "pat_list", "out"}
    unknown = set(kw) - names - {a.dest for a in build_parser()._actions}
    if unknown:
        raise TypeError(f"run() got unexpected keyword(s) {sorted(unknown)}")
    args = build_parser().parse_args([os.fspath(img_folder), os.fspath(dl_state)])
    orig = dict(fprop_mode=False, img_size=(1152, 896), img_height=None, img_scale=None,
                rescale_factor=None, equalize_hist=False, featurewise_center=False,
                featurewise_mean=71.8, batch_size=128, patch_size=256, stride=8,
                avg_pool_size=(7, 7), hm_strides=(1, 1), pat_csv="./full_img/pat.csv",
                pat_list=None, out="./output/prob_heatmap.npz")
    orig.update(kw)
    for k, v in orig.items():
        setattr(args, k, v)
    for k in ("img_scale", "rescale_factor"):
        if getattr(args, k) is None:
            setattr(args, k, dm_cli.OFF)
    if not args.featurewise_center:
        args.featurewise_mean = None
    if not args.fprop_mode:
        args.img_size = None  # the original's sliding window used img_height only
    return args


def score(img_folder: str, model: str, **options: Any) -> dict:
    """The command as a function: `options` are its flags by destination name (`stride`,
    `img_size`, `out`, `overlay_dir`, `grad_cam`, ...), defaults as the command's."""
    return run(dm_cli.namespace(build_parser(), img_folder=str(img_folder), dl_state=str(model),
                                **options))


def main(argv=None) -> int:
    return dm_cli.run_tool("heatmap_score", build_parser().parse_args, score_images, argv,
                           tensorflow=True, precheck=precheck)


if __name__ == "__main__":
    sys.exit(main())
