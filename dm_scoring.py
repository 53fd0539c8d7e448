"""Scoring whole images: batched forward passes, flip TTA, model averaging.

Batched forward passes, 4-flip test-time augmentation, model
averaging, and each model's recipe matched to the files (size overrides, bit depths).
Every model file carries its class list and recipe (`dm_modelfile.ModelMeta`), so scoring
needs no flags; flags only override.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import tensorflow as tf

import dm_cli
import dm_convert_checkpoint
import dm_dataset
import dm_modelfile
import dm_pixels
from dm_inputs import InferenceError
from dm_recipe import Recipe, apply_overrides

log = logging.getLogger(__name__)


FLIPS = ("none", "horizontal", "vertical", "both")


def _images_only(ds):
    """A dataset of images from one that yields (x, y[, w])."""
    return ds.map(lambda x, *rest: x)


def flip(x, mode: str):
    """Flip a (B, H, W, C) batch: horizontal = left-right, vertical = up-down."""
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
    the model; with `tta` the four flips go through the network as one batch. A bilateral
    model (two inputs) takes the pair (x, x_other); TTA flips both images alike."""
    cache = model.__dict__.setdefault("_dm_forward", {})
    key = (tta, tuple(l.dtype_policy.name for l in model.layers))  # a new trace per precision
    if key not in cache:
        specs = tuple(tf.TensorSpec((None, *t.shape[1:]), tf.float32) for t in model.inputs)
        single = len(specs) == 1

        def stacked(x):
            if single:
                return tf.concat([flip(x, m) for m in FLIPS], axis=0)
            return tuple(tf.concat([flip(v, m) for m in FLIPS], axis=0) for v in x)

        @tf.function(input_signature=[specs[0] if single else specs])
        def forward(x):
            if not tta:
                return tf.cast(model(x, training=False), tf.float32)
            n = tf.shape(x if single else x[0])[0]
            p = tf.cast(model(stacked(x), training=False), tf.float32)
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
        bits = overrides.get("input_bits")
        if bits not in (None, base.input_bits) and base.input_bits is not None \
                and not self.__dict__.get("_bits_said"):      # once per model
            self.__dict__["_bits_said"] = True
            log.warning("%s was trained on %d-bit images; --input-bits %s replaces that: "
                        "images are checked and converted as if it had been trained on "
                        "%s-bit ones", self.path, base.input_bits, bits, bits)
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


def load_models(paths: Sequence[str], safe_mode: bool = True) -> list[LoadedModel]:
    """Load model files with their stored class lists and recipes."""
    out = []
    for p in paths:
        dm_convert_checkpoint.require_model_file(p)   # missing (with a hint), truncated
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
                progress=None, others: Sequence[str] | None = None) -> np.ndarray:
    """(N, classes) mean probabilities of several models, each with its own recipe.

    `others`: each image's other breast (`dm_pairs`), needed by a bilateral model; both
    breasts go through the same recipe and bit-depth conversion.

    Images of another bit depth than a model was trained on are refused, or with
    `convert_bits` scaled to that depth (see `depth_groups`). `depths`: each file's bit
    depth when already known (`dm_preflight`), else read from the headers. `progress`: a
    `dm_cli.progress` bar advanced by one per image and model.
    """
    if not models:
        raise InferenceError("no model given")
    paths = list(paths)
    depths = list(depths) if depths is not None else [dm_pixels.file_bit_depth(p) for p in paths]
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
            pairs = None
            if len(m.model.inputs) == 2:
                if others is None:
                    raise InferenceError(f"{m.path} is a bilateral model: it scores each "
                                         "image with the other breast (give the pairs)")
                sub, pairs = pair_sources(sub, [others[i] for i in idx])
            ds = dm_dataset.make_dataset(sub, np.zeros(len(sub), np.int64), r, nb_class,
                                       bs, training=False, pairs=pairs)
            log.info("scoring %s with %s (%s%s%s)", dm_cli.plural(len(idx), "image"), m.path,
                     recipe_brief(r), ", 4-flip TTA" if tta else "",
                     ", each with its other breast" if pairs is not None else "")
            p = predict(m.model, ds, tta=tta, progress=progress)[:len(idx)]
            if out is None:
                out = np.empty((len(paths), p.shape[-1]), np.float32)
            out[idx] = p
        preds.append(out)
    return np.mean(preds, axis=0)


def recipe_brief(r: Recipe) -> str:
    """The recipe in a few words for a log line (the whole of it is in the model file):
    the size and the bit depth the images are taken as."""
    size = (f"{r.img_size[0]}x{r.img_size[1]}" if r.img_size else
            f"height {r.target_height}" if r.target_height else "own size")
    return f"{size}, {r.input_bits}-bit input" if r.input_bits else size


def pair_sources(paths: Sequence[str], others: Sequence[str]
                 ) -> tuple[list[str], np.ndarray]:
    """The images to read for scoring `paths` with their `others`: `paths` first, then the
    other breasts not already among them, and each one's partner index in that list."""
    combined = list(paths)
    where = {p: i for i, p in enumerate(combined)}
    for o in others:
        if o not in where:
            where[o] = len(combined)
            combined.append(o)
    pairs = np.empty(len(combined), np.int64)
    for p, o in zip(paths, others):
        pairs[where[p]], pairs[where[o]] = where[o], where[p]
    return combined, pairs


def bit_conversion(recipe: Recipe, depth: int) -> Recipe:
    """The recipe applied to a `depth`-bit image as if it had been converted to
    `recipe.input_bits` bits first (pixels x (2^in - 1) / (2^depth - 1))."""
    factor = (2.0 ** recipe.input_bits - 1) / (2.0 ** depth - 1)
    return dataclasses.replace(recipe, rescale_factor=(recipe.rescale_factor or 1.0) * factor)


#: How else to keep another depth (predict.py and heatmap_score.py share the flags).
KEEP_DEPTH_HINT = "or give a matching --rescale-factor with --input-bits"


def depth_groups(paths: Sequence[str], depths: Sequence[int | None], recipe: Recipe,
                 convert: bool, model_path: str = "the model") -> list[tuple[list[int], Recipe]]:
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
                f"images; add --convert-bit-depth to scale it to {want} bits "
                f"({KEEP_DEPTH_HINT})")
    return [(idx, recipe if d == want else bit_conversion(recipe, d))
            for d, idx in sorted(groups.items())]


def recipe_for_image(path: str, recipe: Recipe, convert: bool = False,
                     model_path: str = "the model", depth: int | None = None) -> Recipe:
    """The recipe to apply to one image file after the bit-depth check of `depth_groups`
    (refused, or converted with `convert`), for tools that read images one at a time
    (heatmaps). `depth`: the file's depth when known, else read from its header."""
    d = depth if depth is not None else dm_pixels.file_bit_depth(path)
    [(_, r)] = depth_groups([path], [d], recipe, convert, model_path)
    return r
