"""Prediction: batched scoring, 4-flip test-time augmentation, model averaging, heatmaps.

Every model file carries its class list and preprocessing recipe (`dm_modelfile.ModelMeta`),
so scoring needs no flags; flags only override. Heatmaps come in three kinds:
sliding-window patch scores (`sliding_window_heatmap`), one forward pass of the
all-convolutional patch classifier ("fprop", `fprop_model`), and Grad-CAM saliency on the
trunk's last feature map of a whole-image model (`grad_cam`). `overlay_heatmap` renders
any of them on the mammogram.
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from dm_recipe import Recipe  # noqa: F401 (re-exported)
from dm_sweep import prepare_patch, sweep_grid  # noqa: F401 (re-exported)
from dm_errors import InputError
import dm_dataset
import dm_listing
import dm_pixels
import dm_sweep

log = logging.getLogger(__name__)

FLIPS = ("none", "horizontal", "vertical", "both")


class InferenceError(InputError):
    """Unusable inference input (models that disagree, bad list, bad sizes); one line."""


# --------------------------------------------------------------------------- whole images


def _images_only(ds):
    """A dataset of images from one that yields (x, y[, w])."""
    return ds.map(lambda x, *rest: x)


def flip(x, mode: str):
    """Flip a (B, H, W, C) batch: horizontal = left-right, vertical = up-down."""
    import tensorflow as tf
    axes = {"none": [], "horizontal": [2], "vertical": [1], "both": [1, 2]}[mode]
    return tf.reverse(x, axis=axes) if axes else x


def predict(model, ds, tta: bool = False, verbose: int = 0, progress=None) -> np.ndarray:
    """Class probabilities for every image of a finite dataset, in order.

    With `tta`, the mean of the predictions on the image and its horizontal, vertical
    and double flips (docs/method.md, section 2), all four in one batched network call.
    The forward function is traced once per model for any batch size (the last, partial
    batch included), so scoring runs at the network's speed (benchmarks/bench_inference.py).
    """
    forward = forward_fn(model, tta)
    out = []
    for x in _images_only(ds):
        out.append(forward(x).numpy())
        if progress is not None:            # a `dm_cli.progress` bar, counted in images
            progress.update(len(out[-1]))
    n_out = int(model.outputs[0].shape[-1])
    return np.concatenate(out) if out else np.zeros((0, n_out), np.float32)


def forward_fn(model, tta: bool = False):
    """The model's inference call as a `tf.function` with a batch-free signature, cached on
    the model; with `tta` the four flips go through the network as one batch."""
    import tensorflow as tf
    cache = model.__dict__.setdefault("_dm_forward", {})
    key = (tta, tuple(l.dtype_policy.name for l in model.layers))  # a new trace per precision
    if key not in cache:
        spec = tf.TensorSpec((None, *model.inputs[0].shape[1:]), tf.float32)

        @tf.function(input_signature=[spec])
        def forward(x):
            if not tta:
                return tf.cast(model(x, training=False), tf.float32)
            n = tf.shape(x)[0]
            flips = tf.concat([flip(x, m) for m in FLIPS], axis=0)
            p = tf.cast(model(flips, training=False), tf.float32)
            return tf.reduce_mean(tf.reshape(p, (len(FLIPS), n, -1)), axis=0)
        cache[key] = forward
    return cache[key]


def predict_models(models: Sequence, ds, tta: bool = False) -> np.ndarray:
    """Model averaging: the mean of several models' (optionally TTA) predictions."""
    return np.mean([predict(m, ds, tta=tta) for m in models], axis=0)


@dataclass
class LoadedModel:
    """A model with what its file says about it (meta is None for files without one)."""

    model: object
    meta: object | None
    path: str

    @property
    def channels(self) -> int:
        return int(self.model.inputs[0].shape[-1])

    @property
    def input_hw(self) -> tuple[int | None, int | None]:
        shape = self.model.inputs[0].shape
        return shape[1], shape[2]

    @property
    def kind(self) -> str | None:
        """"patch" or "image" as the file records it; files without one are recognised by
        the layers of this project's whole-image models, else None (unknown)."""
        if self.meta is not None and self.meta.kind:
            return self.meta.kind
        names = {l.name for l in self.model.layers}
        return "image" if names & {"clf_dense", "clf_softmax", "image_input"} else None

    @property
    def train_size(self) -> tuple[int, int] | None:
        """(H, W) the model was trained at: its recipe's size, else its fixed input size."""
        if self.meta is not None and self.meta.recipe.img_size is not None:
            return tuple(self.meta.recipe.img_size)
        h, w = self.input_hw
        return (int(h), int(w)) if h and w else None

    @property
    def class_list(self) -> tuple[str, ...] | None:
        return tuple(self.meta.class_list) if self.meta is not None else None

    def recipe(self, *, fixed_input: bool = True, **overrides) -> Recipe:
        """The model's own recipe with non-None `overrides` applied (see `apply_overrides`).

        The size must be one the model takes (`check_size`); `fixed_input=False` for a
        network rebuilt at another size (fprop heatmaps) checks only that it is positive."""
        base = self.meta.recipe if self.meta is not None else None
        if base is None:
            h, w = self.input_hw
            base = Recipe(img_size=(h, w) if h and w else (1152, 896), channels=self.channels)
            log.warning("%s has no stored recipe: using %s plus flags", self.path, base)
        recipe = apply_overrides(base, **overrides)
        check_size(recipe, self.input_hw if fixed_input else (None, None), self.path,
                   given=overrides.get("img_size") is not None)
        if recipe.channels != self.channels:
            raise InferenceError(f"{self.path}: the model takes {self.channels} channel(s) but "
                                 f"the recipe makes {recipe.channels}")
        return recipe


def check_size(recipe: Recipe, input_hw, model_path: str, given: bool = True,
               flag: str = "--img-size") -> None:
    """Refuse, in one line and before any image is read, a size that is not positive or
    that a model with a fixed input cannot take (it would fail deep inside TensorFlow)."""
    size = recipe.img_size
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise InferenceError(f"{flag} {' '.join(map(str, size))}: sizes must be positive")
    if recipe.target_height is not None and recipe.target_height < 1:
        raise InferenceError(f"target height {recipe.target_height}: must be positive")
    h, w = input_hw
    if size is not None and h and w and tuple(size) != (int(h), int(w)):
        what = f"{flag} {size[0]} {size[1]}" if given else f"its recipe's size {size[0]}x{size[1]}"
        raise InferenceError(f"{model_path}: the model takes {h}x{w} images only (its input "
                             f"size is fixed), so {what} cannot be used"
                             + ("; leave it out" if given else ""))


def apply_overrides(recipe: Recipe, **overrides) -> Recipe:
    """`recipe` with the fields given as non-None keyword arguments replaced.

    `featurewise_mean` given alone also turns centring on; `img_size` given turns
    `target_height` off, and vice versa.
    """
    fields = {f.name for f in dataclasses.fields(Recipe)}
    unknown = set(overrides) - fields
    if unknown:
        raise TypeError(f"unknown recipe fields: {sorted(unknown)}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    if "featurewise_mean" in changes and "featurewise_center" not in changes:
        changes["featurewise_center"] = True
    if "img_size" in changes:
        changes["img_size"] = tuple(int(v) for v in changes["img_size"])
        changes.setdefault("target_height", None)
    elif "target_height" in changes:
        changes["img_size"] = None
    return dataclasses.replace(recipe, **changes)


def load_models(paths: Sequence[str], safe_mode: bool = True) -> list[LoadedModel]:
    """Load model files with their stored class lists and recipes."""
    import dm_modelfile
    out = []
    for p in paths:
        if not os.path.isfile(p):
            raise InferenceError(f"{p}: model file not found")
        meta = dm_modelfile.read_model_meta(p)   # ModelFileError (one line) if unreadable
        out.append(LoadedModel(dm_modelfile.load_model(p, safe_mode=safe_mode), meta, p))
    return out


def common_class_list(models: Sequence[LoadedModel], override: Sequence[str] | None = None
                      ) -> tuple[str, ...]:
    """The class names the averaged output columns mean; every model must agree."""
    n_out = {int(m.model.outputs[0].shape[-1]) for m in models}
    if len(n_out) != 1:
        raise InferenceError(f"models have different numbers of outputs: {sorted(n_out)}")
    n = n_out.pop()
    if override:
        if len(override) != n:
            raise InferenceError(f"--class-list names {len(override)} classes but the models "
                                 f"have {n} outputs")
        return tuple(override)
    lists = {m.class_list for m in models if m.class_list is not None}
    if len(lists) > 1:
        desc = "; ".join(f"{m.path}: {list(m.class_list)}" for m in models if m.class_list)
        raise InferenceError(f"models disagree on the class list ({desc}); averaging would mix "
                             "columns")
    if lists:
        return lists.pop()
    log.warning("no model stores a class list: naming the columns class_0..class_%d", n - 1)
    return tuple(f"class_{k}" for k in range(n))


def score_paths(models: Sequence[LoadedModel], paths: Sequence[str], batch_size: int = 4,
                tta: bool = False, overrides: dict | None = None,
                convert_bits: bool = False, depths: Sequence[int | None] | None = None,
                progress=None) -> np.ndarray:
    """(N, classes) mean probabilities of several models, each with its own recipe.

    Images of another bit depth than a model was trained on are refused, or with
    `convert_bits` scaled to that depth (see `depth_groups`). `depths`: each file's bit
    depth when already known (`dm_preflight`), else read from the headers. `progress`: a
    `dm_cli.progress` bar advanced by one per image and model.
    """
    if not models:
        raise InferenceError("no model given")
    paths = list(paths)
    depths = list(depths) if depths is not None else [file_bit_depth(p) for p in paths]
    preds = []
    for m in models:
        recipe = m.recipe(**(overrides or {}))
        nb_class = int(m.model.outputs[0].shape[-1])
        out = None
        for idx, r in depth_groups(paths, depths, recipe, convert_bits, m.path):
            sub = [paths[i] for i in idx]
            # TTA sends each batch's four flips through the network as one call: a quarter
            # of the batch keeps that call at the network's usual batch size.
            bs = max(1, batch_size // len(FLIPS)) if tta else batch_size
            ds = dm_dataset.make_dataset(sub, np.zeros(len(sub), np.int64), r, nb_class,
                                       bs, training=False)
            log.info("scoring %d images with %s (recipe %s%s)", len(sub), m.path,
                     r.to_json(), ", 4-flip TTA" if tta else "")
            p = predict(m.model, ds, tta=tta, progress=progress)
            if out is None:
                out = np.empty((len(paths), p.shape[-1]), np.float32)
            out[idx] = p
        preds.append(out)
    return np.mean(preds, axis=0)


def file_bit_depth(path: str) -> int | None:
    """Bits per pixel of an image file from its header: 8 or 16 for PNG/JPEG/BMP, the
    stored bits of an integer DICOM; None when unknown (float DICOM values)."""
    depth = dm_pixels.header_bit_depth(path)
    if depth is not None:
        return depth
    import pydicom
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:  # noqa: BLE001 - header_bit_depth already read it once
        return None
    if float(ds.get("RescaleSlope", 1) or 1) != 1 or float(ds.get("RescaleIntercept", 0) or 0) != 0:
        return None
    bits = int(ds.get("BitsStored", 0) or ds.get("BitsAllocated", 0) or 0)
    return bits if 1 <= bits <= 16 else None


def bit_conversion(recipe: Recipe, depth: int) -> Recipe:
    """The recipe applied to a `depth`-bit image as if it had been converted to
    `recipe.input_bits` bits first (pixels x (2^in - 1) / (2^depth - 1))."""
    factor = (2.0 ** recipe.input_bits - 1) / (2.0 ** depth - 1)
    return dataclasses.replace(recipe, rescale_factor=(recipe.rescale_factor or 1.0) * factor)


#: How to keep another depth in predict.py; tools without --input-bits pass their own.
KEEP_DEPTH_HINT = "or give a matching --rescale-factor with --input-bits"


def depth_groups(paths: Sequence[str], depths: Sequence[int | None], recipe: Recipe,
                 convert: bool, model_path: str = "the model",
                 keep_hint: str = KEEP_DEPTH_HINT) -> list[tuple[list[int], Recipe]]:
    """Split images by bit depth into (indices, recipe) groups, refusing what does not fit.

    With `img_scale` every image is scaled by its own maximum, so depth does not matter.
    Otherwise an image whose depth differs from the model's `input_bits` is refused (one
    line naming the file, its depth and `--convert-bit-depth`), or converted with `convert`;
    a model that records no depth refuses a mix of depths, as training does.
    """
    everything = [(list(range(len(paths))), recipe)]
    if recipe.img_scale is not None or not paths:
        return everything
    known = {d for d in depths if d is not None}
    want = recipe.input_bits
    if want is None:
        if len(known) > 1 and recipe.rescale_factor is not None:
            d8 = min(known)
            first = {d: paths[depths.index(d)] for d in known}
            raise InferenceError(
                f"{first[max(known)]}: {max(known)}-bit image among {d8}-bit ones (e.g. "
                f"{first[d8]}); one --rescale-factor cannot fit both and {model_path} records no "
                "input bit depth: give --input-bits N (with --convert-bit-depth) or score them "
                "separately")
        return everything
    groups: dict[int, list[int]] = {}
    for i, d in enumerate(depths):
        groups.setdefault(want if d is None else d, []).append(i)
    for d, idx in groups.items():
        if d != want and not convert:
            raise InferenceError(
                f"{paths[idx[0]]}: {d}-bit image, but {model_path} was trained on {want}-bit "
                f"images; add --convert-bit-depth to scale it to {want} bits ({keep_hint})")
    return [(idx, recipe if d == want else bit_conversion(recipe, d))
            for d, idx in sorted(groups.items())]


def recipe_for_image(path: str, recipe: Recipe, convert: bool = False,
                     model_path: str = "the model", depth: int | None = None,
                     keep_hint: str = KEEP_DEPTH_HINT) -> Recipe:
    """The recipe to apply to one image file after the bit-depth check of `depth_groups`
    (refused, or converted with `convert`), for tools that read images one at a time
    (heatmaps). `depth`: the file's depth when known, else read from its header."""
    d = depth if depth is not None else file_bit_depth(path)
    [(_, r)] = depth_groups([path], [d], recipe, convert, model_path, keep_hint)
    return r


# --------------------------------------------------------------------------- input lists


@dataclass
class InputList:
    """Images to score: paths, optional integer labels, and pass-through columns."""

    paths: list[str]
    labels: np.ndarray | None = None
    extra: dict[str, list[str]] = dataclasses.field(default_factory=dict)


def list_images(root: str) -> list[str]:
    """All images under a folder, recursively, sorted (same extensions as training); hidden
    files and folders (names starting with '.', e.g. macOS `._scan.png`) are skipped."""
    if not os.path.isdir(root):
        raise InferenceError(f"{root}: image folder not found")
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames)
                     if f.lower().endswith(dm_pixels.IMAGE_EXTS) and not f.startswith("."))
    if not found:
        raise InferenceError(f"{root}: no images ({', '.join(e[1:] for e in dm_pixels.IMAGE_EXTS)})")
    return found


def gather_inputs(images: Sequence[str] | None = None, image_dir: str | None = None,
                  csv_path: str | None = None, class_list: Sequence[str] | None = None,
                  split: str | None = None) -> InputList:
    """Image paths (and labels when known) from exactly one of the three sources.

    A folder whose sub-folders are exactly the class names gives labels (training
    layout); any other folder is listed recursively without labels. A CSV needs a
    `path` column; `label` (index or class name) is optional; other columns (e.g.
    patient_id, side, view) are passed through to the predictions.
    """
    given = [s is not None and s != [] for s in (images, image_dir, csv_path)]
    if sum(given) != 1:
        raise InferenceError("give exactly one of --images, --image-dir, --csv")
    if images:
        bad = [p for p in images if not os.path.isfile(p)]
        if bad:
            raise InferenceError(f"{bad[0]}: image file not found")
        return InputList(list(images))
    if image_dir is not None:
        if class_list and os.path.isdir(image_dir) and all(
                os.path.isdir(os.path.join(image_dir, c)) for c in class_list):
            paths, labels = dm_listing.list_class_folders(image_dir, class_list)
            return InputList(paths, labels)
        return InputList(list_images(image_dir))
    return read_input_csv(csv_path, class_list, split)


def read_input_csv(csv_path: str, class_list: Sequence[str] | None = None,
                   split: str | None = None) -> InputList:
    """A CSV of images: `path` required, `label` optional, other columns kept as text.

    A recipe's own `images.csv` works too: without a `path` column, `full_img_file` names a
    file in the `full_images/` folder beside the CSV (docs/data.md). `split` keeps
    the rows whose `split` column has that value.
    """
    if not os.path.isfile(csv_path):
        raise InferenceError(f"{csv_path}: CSV file not found")
    base = os.path.dirname(os.path.abspath(csv_path))
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in (reader.fieldnames or [])]
        lower = [c.lower() for c in fields]
        rows = list(reader)
    lines = list(range(2, len(rows) + 2))
    if "path" in lower:
        pcol = fields[lower.index("path")]
    elif "full_img_file" in lower:
        pcol = fields[lower.index("full_img_file")]
        base = os.path.join(base, "full_images")
    else:
        raise InferenceError(f"{csv_path}: no 'path' (or recipe 'full_img_file') column "
                             f"(columns: {fields})")
    if split is not None:
        if "split" not in lower:
            raise InferenceError(f"{csv_path}: --split given but the CSV has no 'split' column")
        scol = fields[lower.index("split")]
        keep = [k for k, r in enumerate(rows) if (r.get(scol) or "").strip() == split]
        rows, lines = [rows[k] for k in keep], [lines[k] for k in keep]
        if not rows:
            raise InferenceError(f"{csv_path}: no rows with split {split!r}")
    if not rows:
        raise InferenceError(f"{csv_path}: no rows")
    lcol = fields[lower.index("label")] if "label" in lower else None
    others = [c for c in fields if c not in (pcol, lcol)]
    paths, labels = [], []
    for line, row in zip(lines, rows):
        p = (row.get(pcol) or "").strip()
        if not p:
            raise InferenceError(f"{csv_path}: line {line}: empty path")
        p = p if os.path.isabs(p) else os.path.join(base, p)
        if not os.path.isfile(p):
            raise InferenceError(f"{csv_path}: line {line}: image not found: {p}")
        paths.append(p)
        if lcol is not None:
            labels.append(_parse_label((row.get(lcol) or "").strip(), class_list,
                                       f"{csv_path}: line {line}"))
    extra = {c: [(r.get(c) or "").strip() for r in rows] for c in others}
    return InputList(paths, np.asarray(labels, np.int64) if lcol else None, extra)


def _parse_label(text: str, class_list: Sequence[str] | None, where: str) -> int:
    try:
        k = int(text)
    except ValueError:
        if class_list is None or text not in class_list:
            raise InferenceError(f"{where}: unknown label {text!r}"
                                 + (f" (classes {list(class_list)})" if class_list else "")) from None
        return list(class_list).index(text)
    if k < 0 or (class_list is not None and k >= len(class_list)):
        raise InferenceError(f"{where}: label {k} out of range")
    return k


def write_predictions_csv(path: str, inputs: InputList, probs: np.ndarray,
                          class_list: Sequence[str]) -> None:
    """`path`, one probability column per class name, `label` if known, pass-through columns."""
    if len(set(class_list)) != len(class_list) or {"path", "label"} & set(class_list):
        raise InferenceError(f"class names {list(class_list)} must be unique and not "
                             "'path' or 'label'")
    header = ["path", *class_list]
    if inputs.labels is not None:
        header.append("label")
    extra_cols = [c for c in inputs.extra if c not in header]
    header += extra_cols
    rows = []
    for i, p in enumerate(inputs.paths):
        row = [p, *(f"{v:.8g}" for v in probs[i])]
        if inputs.labels is not None:
            row.append(str(int(inputs.labels[i])))
        row += [inputs.extra[c][i] for c in extra_cols]
        rows.append(row)

    def write(f):
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    atomic_write(path, write, text=True)


def atomic_write(path: str, writer, text: bool = False) -> None:
    """Write through `writer(fileobj)` safely (`dm_output.atomic_write`: temporary file then
    rename, symlinks/devices/FIFOs written through, umask honoured, `-` = stdout)."""
    import dm_output
    dm_output.atomic_write(path, writer, text)


# --------------------------------------------------------------------------- sliding window


@dataclass
class PatchHeatmap:
    """A sliding-window probability map and where its cells sit on the scored image.

    probs: (rows, cols, classes). Cell (r, c) is the patch whose centre is at
    (centre0[0] + r*stride, centre0[1] + c*stride) in the coordinates of `image`
    (the resized, segmented, unpadded grey image that was swept).
    """

    probs: np.ndarray
    centre0: tuple[int, int]
    stride: int
    patch_size: int
    image: np.ndarray
    bbox: tuple[int, int, int, int] | None = None


def sliding_window_heatmap(model, img: np.ndarray, recipe: Recipe, patch_size: int,
                           stride: int, batch_size: int = 64, segment: bool = True,
                           pad: bool = True, low_int_threshold: float = 0.05) -> PatchHeatmap:
    """Score every patch of a grey image (already resized) with a patch classifier, on the
    sweep of `dm_sweep.sweep_image` (optional breast crop, half-patch padding, centred)."""
    sweep = dm_sweep.sweep_image(img, patch_size, stride, segment, pad, low_int_threshold)
    forward = forward_fn(model)                     # one trace, whatever the batch size
    probs = dm_sweep.sweep_probs(lambda b: forward(b).numpy(), sweep, recipe, batch_size)
    return PatchHeatmap(probs, sweep.centre0, stride, patch_size, sweep.image, sweep.bbox)


# --------------------------------------------------------------------------- fprop mode


def _classifier_dense(model):
    """The last Dense layer of a model (a patch classifier's head)."""
    import keras
    for layer in reversed(model.layers):
        if isinstance(layer, keras.layers.Dense):
            return layer
    return None


def fprop_model(model, img_size: Sequence[int], avg_pool_size: Sequence[int] = (7, 7),
                hm_strides: Sequence[int] = (1, 1), patch_model=None, kind: str | None = None):
    """A model mapping a whole image to a (rows, cols, patch classes) softmax map.

    Patch model: its trunk on the whole image, average pooling `avg_pool_size` /
    `hm_strides`, then its own Dense at every position (`add_top_layers(...,
    return_heatmap=True)`, the original's fprop mode). Whole-image model: it has no
    patch Dense of its own, so this needs either its `hm_dense` layer (built with
    --add-heatmap) or `patch_model`, whose Dense is applied to the finetuned trunk's
    features (an approximation: end-to-end training moved the trunk away from what that
    Dense was trained on).
    """
    import keras
    import dm_resnet
    names = [l.name for l in model.layers]
    if kind is None:
        is_image = "clf_dense" in names or "hm_dense" in names or "image_input" in names
    else:
        is_image = kind == "image"
    if not is_image:
        hm = dm_resnet.add_top_layers(model, img_size, return_heatmap=True,
                                         avg_pool_size=avg_pool_size, hm_strides=hm_strides)
        return hm
    if dm_resnet.TRUNK_NAME not in names:
        raise InferenceError("the whole-image model has no 'patch_trunk' sub-model")
    trunk = model.get_layer(dm_resnet.TRUNK_NAME)
    if "hm_dense" in names:
        weights = model.get_layer("hm_dense").get_weights()
    elif patch_model is not None:
        dense = _classifier_dense(patch_model)
        if dense is None:
            raise InferenceError("the patch model has no Dense classifier")
        weights = dense.get_weights()
    else:
        raise InferenceError("fprop heatmaps need a patch classifier's Dense layer: this "
                             "whole-image model has none (no --add-heatmap); pass the patch "
                             "model it was built from (--patch-model)")
    if weights[0].shape[0] != trunk.outputs[0].shape[-1]:
        raise InferenceError(f"the patch Dense takes {weights[0].shape[0]} features but the "
                             f"trunk gives {trunk.outputs[0].shape[-1]}")
    channels = int(model.inputs[0].shape[-1])
    inp = keras.Input((int(img_size[0]), int(img_size[1]), channels), name="image_input")
    x = keras.layers.AveragePooling2D(tuple(avg_pool_size), tuple(hm_strides),
                                      name="hm_avg_pool")(trunk(inp))
    dense = keras.layers.Dense(weights[0].shape[1], activation="softmax", name="hm_dense")
    out = dense(x)
    dense.set_weights(weights)
    return keras.Model(inp, out, name="heatmap_model")


def fprop_grid(feature_hw: Sequence[int], avg_pool_size: Sequence[int],
               hm_strides: Sequence[int]) -> tuple[int, int]:
    """Rows and columns of an fprop heatmap from the trunk's feature-map size ('valid' pooling)."""
    return tuple((int(f) - int(p)) // int(s) + 1
                 for f, p, s in zip(feature_hw, avg_pool_size, hm_strides))


# --------------------------------------------------------------------------- Grad-CAM


def _outer_output(model, layer):
    """The symbolic output of `layer`'s call inside `model`'s graph (a layer may have been
    called elsewhere too, e.g. a trunk first called on the patch input)."""
    import keras
    for node in reversed(layer._inbound_nodes):
        t = node.output_tensors[0]
        try:
            keras.Model(model.inputs, t)
        except ValueError:
            continue
        return t
    raise InferenceError(f"layer {layer.name!r} is not connected to the model's input")


def grad_cam_model(model):
    """(model -> [trunk feature map, logits input]) and the final Dense, for `grad_cam`."""
    import keras
    import dm_resnet
    names = [l.name for l in model.layers]
    if dm_resnet.TRUNK_NAME in names:
        feat = _outer_output(model, model.get_layer(dm_resnet.TRUNK_NAME))
    else:
        layer = dm_resnet.find_trunk_output(model)
        feat = _outer_output(model, layer)
    last = model.layers[-1]
    if isinstance(last, keras.layers.Dense) and last.get_config().get("activation") == "softmax":
        pre = None
        for node in reversed(last._inbound_nodes):
            pre = node.input_tensors[0]
            try:
                keras.Model(model.inputs, pre)
                break
            except ValueError:
                pre = None
        if pre is not None:
            return keras.Model(model.inputs, [feat, pre]), last
    return keras.Model(model.inputs, [feat, model.outputs[0]]), None


def grad_cam(model, x: np.ndarray, class_index: int, _cache: dict | None = None,
             normalise: bool = True) -> np.ndarray:
    """Grad-CAM on the trunk's last feature map: (B, h, w) in [0, 1] at feature-map size.

    The score is the class logit (pre-softmax) when the model ends in a softmax Dense, so
    confident predictions still give gradients; weights are the spatially averaged
    gradients; the map is ReLU(sum_k w_k A_k), divided by its maximum (0 if all <= 0).
    `normalise=False` keeps ReLU(sum_k w_k A_k) in the score's own units (absolute scale).
    """
    import tensorflow as tf
    sub, dense = grad_cam_model(model)
    x = tf.convert_to_tensor(np.asarray(x, np.float32))
    with tf.GradientTape() as tape:
        feat, out = sub(x, training=False)
        tape.watch(feat)
        if dense is not None:
            out = tf.matmul(out, dense.kernel) + dense.bias
        score = out[:, class_index]
    grads = tape.gradient(score, feat)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * feat, axis=-1)).numpy()
    if not normalise:
        return cam.astype(np.float32)
    mx = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
    return np.where(mx > 0, cam / np.where(mx > 0, mx, 1), 0.0).astype(np.float32)


# --------------------------------------------------------------------------- overlays


def to_display(grey: np.ndarray) -> np.ndarray:
    """A grey image as uint8 for display: min-max stretched (flat images become 0)."""
    g = np.asarray(grey, np.float32)
    lo, hi = float(g.min()), float(g.max())
    if hi <= lo:
        return np.zeros(g.shape, np.uint8)
    return np.round((g - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def place_heatmap(heat: np.ndarray, shape: tuple[int, int], centre0: tuple[int, int] | None = None,
                  step: int | None = None) -> np.ndarray:
    """A (rows, cols) map as an image of `shape`, bilinear, NaN where it has no value.

    Without `centre0`/`step` the grid is stretched over the whole image (fprop, Grad-CAM);
    with them cell (r, c) is centred at centre0 + (r, c)*step (sliding window).
    """
    heat = np.asarray(heat, np.float32)
    h, w = shape
    if centre0 is None:
        return cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)
    rows, cols = heat.shape
    out = np.full((h, w), np.nan, np.float32)
    y1, x1 = centre0[0] - step // 2, centre0[1] - step // 2
    big = cv2.resize(heat, (cols * step, rows * step), interpolation=cv2.INTER_LINEAR)
    ys, xs = max(0, y1), max(0, x1)
    ye, xe = min(h, y1 + rows * step), min(w, x1 + cols * step)
    if ye > ys and xe > xs:
        out[ys:ye, xs:xe] = big[ys - y1:ye - y1, xs - x1:xe - x1]
    return out


def overlay_heatmap(grey: np.ndarray, heat: np.ndarray, alpha: float = 0.4,
                    colormap: int = cv2.COLORMAP_JET, vmin: float = 0.0, vmax: float = 1.0
                    ) -> np.ndarray:
    """A BGR uint8 image: the colour-mapped heat (same size as `grey`) blended on the grey
    mammogram with weight `alpha`; NaN heat (no value) leaves the grey image."""
    if heat.shape != grey.shape:
        raise InferenceError(f"heatmap {heat.shape} and image {grey.shape} differ in size")
    base = cv2.cvtColor(to_display(grey), cv2.COLOR_GRAY2BGR)
    valid = np.isfinite(heat)
    h = np.clip((np.nan_to_num(heat, nan=vmin) - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    colour = cv2.applyColorMap(np.round(h * 255).astype(np.uint8), colormap)
    blend = cv2.addWeighted(colour, alpha, base, 1.0 - alpha, 0.0)
    return np.where(valid[..., None], blend, base)


def write_png(path: str, img: np.ndarray) -> None:
    """Write a PNG atomically (temporary file, then rename)."""
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise InferenceError(f"{path}: cannot encode image of shape {img.shape} as PNG")
    atomic_write(path, lambda f: f.write(buf.tobytes()))
