"""Heatmaps of mammograms, grouped per patient and side (CC and MLO), saved as .npz.

    python ddsm_train/heatmap_score.py IMG_FOLDER MODEL [--pat-csv pat.csv] \
        [--fprop-mode --avg-pool-size 7 7 --hm-strides 1 1 | --grad-cam] \
        [--patch-size 256 --stride 8 --batch-size 128 --img-height 4096] \
        --out heatmaps.npz [--overlay-dir overlays/]

Modes (SPEC §7): sliding window (default) scores every patch of the resized,
breast-segmented image padded by half a patch with a patch classifier, giving a
(rows, cols, classes) map; `--fprop-mode` runs the all-convolutional patch classifier
once over the whole image (average pooling + the patch Dense at every position);
`--grad-cam` gives Grad-CAM saliency of a whole-image model on its trunk's last
feature map. Recipes come from the model file; flags override.

Images: a CSV (`--pat-csv`) with patient_id, side and either path or view (then the
file is IMG_FOLDER/<patient_id>_<side>_<view>.png, views CC and MLO), optional cancer;
or, without a CSV, every image in IMG_FOLDER, grouped by names <patient>_<side>_<view>.

Output .npz (no pickle): `hm_<i>` per image, arrays `path`, `patient_id`, `side`,
`view`, `group` (index of the image's patient/side group), group arrays
`group_patient_id`, `group_side`, `group_cancer`, `group_cc`, `group_mlo` (image index or
-1), and `meta` (JSON). `load_heatmaps` turns it back into the original's list of dicts.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

log = logging.getLogger("heatmap_score")


class HeatmapError(ValueError):
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
    import pandas as pd
    import dm_inference
    if pat_csv is None:
        items = []
        for p in dm_inference.list_images(img_folder):
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
    import dm_inference
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
    dm_inference.atomic_write(path, write)


def load_heatmaps(path: str) -> list[dict]:
    """The original's structure: [{'patient_id', 'side', 'cancer', 'cc', 'mlo'}] (maps or None)."""
    with np.load(path, allow_pickle=False) as z:
        def hm(i):
            return None if i < 0 else z[f"hm_{i}"]
        return [dict(patient_id=str(p), side=str(s), cancer=float(c), cc=hm(int(a)), mlo=hm(int(b)))
                for p, s, c, a, b in zip(z["group_patient_id"], z["group_side"], z["group_cancer"],
                                         z["group_cc"], z["group_mlo"])]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Heatmap scoring (sliding window, fprop, Grad-CAM)")
    p.add_argument("img_folder")
    p.add_argument("dl_state", metavar="MODEL", help="patch model (or whole-image model)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--fprop-mode", action="store_true")
    mode.add_argument("--grad-cam", action="store_true",
                      help="Grad-CAM of a whole-image model on its trunk's last feature map")
    p.add_argument("--patch-model", help="fprop with a whole-image MODEL: the patch model "
                   "whose Dense classifies the trunk's features")
    p.add_argument("--img-size", nargs=2, type=int, metavar=("H", "W"),
                   help="resize (fprop: default 1152 896 for patch models; sliding: none)")
    p.add_argument("--img-height", type=int, help="sliding window: resize to this height")
    p.add_argument("--patch-size", type=int, help="default: the patch model's input size")
    p.add_argument("--stride", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--segment", dest="segment", action="store_true", default=True)
    p.add_argument("--no-segment", dest="segment", action="store_false")
    p.add_argument("--pad", dest="pad", action="store_true", default=True,
                   help="pad by half a patch (default)")
    p.add_argument("--no-pad", dest="pad", action="store_false")
    p.add_argument("--avg-pool-size", nargs=2, type=int, default=[7, 7])
    p.add_argument("--hm-strides", nargs=2, type=int, default=[1, 1])
    p.add_argument("--pat-csv", help="CSV with patient_id, side, view or path [, cancer]")
    p.add_argument("--pat-list", help="CSV whose first column lists the patients to keep")
    p.add_argument("--out", default="./output/prob_heatmap.npz")
    p.add_argument("--overlay-dir", help="write a colour overlay PNG per image here")
    p.add_argument("--overlay-class", help="class shown in overlays (default: 1 - first "
                   "class for patch models, the last class for whole-image models)")
    p.add_argument("--unsafe-load", action="store_true")
    r = p.add_argument_group("recipe overrides")
    r.add_argument("--img-scale", type=float)
    r.add_argument("--rescale-factor", type=float)
    r.add_argument("--equalize-hist", dest="equalize_hist", action="store_const", const=True)
    r.add_argument("--no-equalize-hist", dest="equalize_hist", action="store_const", const=False)
    r.add_argument("--featurewise-mean", type=float)
    return p


def _overlay_channel(probs: np.ndarray, class_list, name: str | None, kind: str) -> np.ndarray:
    if name is not None:
        if name not in class_list:
            raise HeatmapError(f"--overlay-class {name!r} is not one of {list(class_list)}")
        return probs[..., list(class_list).index(name)]
    if kind == "patch" and probs.shape[-1] > 1:
        return 1.0 - probs[..., 0]
    return probs[..., -1]


def run(args) -> dict:
    import dm_image
    import dm_inference as inf
    if args.stride < 1 or args.batch_size < 1:
        raise HeatmapError("--stride and --batch-size must be >= 1")
    loaded = inf.load_models([args.dl_state], safe_mode=not args.unsafe_load)[0]
    kind = loaded.meta.kind if loaded.meta is not None else None
    classes = inf.common_class_list([loaded])
    items = list_items(args.img_folder, args.pat_csv, args.pat_list)
    over = dict(img_scale=args.img_scale, rescale_factor=args.rescale_factor,
                equalize_hist=args.equalize_hist, featurewise_mean=args.featurewise_mean)
    mode = "fprop" if args.fprop_mode else "gradcam" if args.grad_cam else "sliding"
    meta = dict(mode=mode, model=os.path.abspath(args.dl_state), class_list=list(classes))
    maps = []
    if mode == "sliding":
        recipe = loaded.recipe(**over)
        ps = args.patch_size or loaded.input_hw[0]
        if ps is None:
            raise HeatmapError("give --patch-size (the model's input size is not fixed)")
        if loaded.input_hw[0] not in (None, ps):
            raise HeatmapError(f"--patch-size {ps} differs from the model's input size "
                               f"{loaded.input_hw[0]}")
        size = dm_image.Recipe(img_size=args.img_size, target_height=args.img_height)
        meta.update(patch_size=ps, stride=args.stride, segment=args.segment, pad=args.pad,
                    img_size=args.img_size, img_height=args.img_height, recipe=recipe.to_dict(),
                    centre0=[])
    else:
        if mode == "fprop":
            if kind == "patch" or (kind is None and args.img_size):
                size = tuple(args.img_size or (1152, 896))
            else:
                size = tuple(args.img_size or loaded.recipe().img_size)
            recipe = loaded.recipe(img_size=size, **over)
            patch_model = inf.load_models([args.patch_model], not args.unsafe_load)[0].model \
                if args.patch_model else None
            net = inf.fprop_model(loaded.model, size, args.avg_pool_size, args.hm_strides,
                                  patch_model=patch_model, kind=kind)
            if patch_model is not None:
                classes = inf.common_class_list(inf.load_models([args.patch_model],
                                                                not args.unsafe_load))
                meta["class_list"] = list(classes)
            meta.update(avg_pool_size=args.avg_pool_size, hm_strides=args.hm_strides)
        else:
            recipe = loaded.recipe(img_size=args.img_size, **over)
            net = loaded.model
            cls = list(classes).index(args.overlay_class) if args.overlay_class else len(classes) - 1
            meta.update(grad_cam_class=classes[cls])
        meta.update(recipe=recipe.to_dict())
    for i, it in enumerate(items):
        img = dm_image.read_image(it.path)
        if mode == "sliding":
            img = dm_image.resize(img, size) if (args.img_size or args.img_height) else img
            hm = inf.sliding_window_heatmap(loaded.model, img, recipe, ps, args.stride,
                                            args.batch_size, args.segment, args.pad)
            maps.append(hm.probs)
            meta["centre0"].append(list(hm.centre0))
            grey, heat = hm.image, None
            if args.overlay_dir:
                ch = _overlay_channel(hm.probs, classes, args.overlay_class, "patch")
                heat = inf.place_heatmap(ch, grey.shape, hm.centre0, hm.stride)
        else:
            x = dm_image.preprocess(img, recipe)[None]
            if mode == "fprop":
                probs = net.predict_on_batch(x)[0]
                maps.append(probs)
                ch = _overlay_channel(probs, meta["class_list"], args.overlay_class, "patch")
            else:
                ch = inf.grad_cam(net, x, cls)[0]
                maps.append(ch)
            grey = dm_image.resize(img, recipe)
            heat = inf.place_heatmap(ch, grey.shape) if args.overlay_dir else None
        if args.overlay_dir:
            stem = os.path.splitext(os.path.basename(it.path))[0]
            inf.write_png(os.path.join(args.overlay_dir, f"{stem}_{mode}.png"),
                          inf.overlay_heatmap(grey, heat))
        log.info("scored %d/%d: %s -> %s", i + 1, len(items), it.path, maps[-1].shape)
    save_heatmaps(args.out, items, maps, meta)
    log.info("wrote %d heatmaps in %d patient/side groups to %s", len(maps),
             len(group_items(items)), args.out)
    return meta


def main(argv=None) -> int:
    import dm_train
    return dm_train.run_command(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
