"""Images to batches: the RAM cache, the `tf.data` pipeline and the featurewise mean.

The RAM cache and the `tf.data` pipeline (parallel read and resize,
seeded augmentation, prefetch), and the featurewise mean of a training set.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Sequence

import cv2
import numpy as np

from dm_augment import Augment, AugParams, augment_numpy, draw_params_tf, element_seed
from dm_errors import InputError
from dm_listing import DatasetError, check_bit_depths
from dm_pixels import ImageReadError, read_image
from dm_recipe import Recipe, grey_steps, rescale_for_bits, resize, target_shape

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

log = logging.getLogger(__name__)


def steps_for(n: int, batch_size: int) -> int:
    """Batches needed to see n samples once (the last partial batch counts)."""
    return int(math.ceil(n / float(batch_size)))


def num_workers_default() -> int | None:
    """$NUM_CPU_CORES if set (positive int), else None (meaning tf.data.AUTOTUNE)."""
    v = os.environ.get("NUM_CPU_CORES", "").strip()
    if not v:
        return None
    try:
        n = int(v)
    except ValueError:
        raise InputError(f"NUM_CPU_CORES must be a positive integer, got {v!r}") from None
    if n < 1:
        raise InputError(f"NUM_CPU_CORES must be a positive integer, got {v!r}")
    return n


def read_resize(path: str, recipe: Recipe) -> np.ndarray:
    """Steps 1-2 of the recipe: read and resize, native dtype, one channel."""
    return resize(read_image(path), recipe)


def load_images(paths: Sequence[str], recipe: Recipe, num_workers: int | None = None
                ) -> np.ndarray:
    """Decode and resize every image once, kept as (N, H, W) at native dtype (e.g. uint16).

    This is the RAM cache: 2 bytes per pixel for 16-bit PNGs instead of 12 for three
    float32 channels. All images must end up the same size (set recipe.img_size).
    """
    if len(paths) == 0:
        raise DatasetError("no images to load")
    workers = num_workers or num_workers_default() or (os.cpu_count() or 1)
    out: np.ndarray | None = None
    with ThreadPoolExecutor(max_workers=workers) as ex:
        for i, img in enumerate(ex.map(lambda p: read_resize(p, recipe), paths)):
            if out is None:
                out = np.empty((len(paths),) + img.shape, dtype=img.dtype)
            if img.shape != out.shape[1:]:
                raise DatasetError(f"{paths[i]}: size {img.shape} differs from {out.shape[1:]}; "
                                   "set an image size to cache images of different sizes")
            if not np.can_cast(img.dtype, out.dtype, casting="safe"):
                out = out.astype(np.result_type(out.dtype, img.dtype))
            out[i] = img
    assert out is not None
    return out


def _cache_array(images: np.ndarray, recipe: Recipe) -> np.ndarray:
    """An in-memory (N, H, W) source, resized per the recipe, native dtype kept."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3:
        raise DatasetError(f"in-memory images must be (N, H, W), got shape {images.shape}")
    if images.dtype not in (np.uint8, np.uint16, np.float32):
        images = images.astype(np.float32)
    if target_shape(images.shape[1:], recipe) == images.shape[1:]:
        return images
    return np.stack([resize(im, recipe) for im in images])


def _fill_one(out: np.ndarray, img: np.ndarray, recipe: Recipe, params: np.ndarray | None,
              interpolation: str) -> None:
    """Steps 2-7 for one image, written into out (H, W, C) float32 of a batch.

    The same float32 operations as `preprocess`; centring is done in place on the grey image
    and the channels are written once with cv2.merge (far cheaper than a TF broadcast).
    """
    x = grey_steps(resize(img, recipe), recipe)
    p = AugParams.from_vector(params) if params is not None else None
    if p is not None:
        x = augment_numpy(x, p, interpolation, shift=recipe.channels != 3)
    if recipe.featurewise_center:
        np.subtract(x, np.float32(recipe.featurewise_mean), out=x)
    if out.shape[:2] != x.shape:
        raise ImageReadError(f"image size {x.shape} differs from the batch's {out.shape[:2]}; "
                             "set an image size (img_size) to batch images of different sizes")
    if recipe.channels == 3:
        if p is not None and any(p.shifts):
            _merge_shifted(out, x, p.shifts)   # one shift per channel, as Keras 2.0
        else:
            cv2.merge([x, x, x], dst=out)
    else:
        out[:, :, 0] = x


def _merge_shifted(out: np.ndarray, x: np.ndarray, shifts: Sequence[float]) -> None:
    """`channel_shifts` of the 3-channel copy of grey `x`, written into `out` (H, W, 3),
    bit for bit, at a fraction of its cost: the three channels are equal, so their common
    min and max are the grey image's; one merge, then one per-channel add and one clip pass
    each way over the interleaved array (cv2 scalars act per channel)."""
    lo, hi = (float(np.float32(v)) for v in cv2.minMaxLoc(x)[:2])
    s = tuple(float(np.float32(v)) for v in shifts[:3])
    cv2.merge([x, x, x], dst=out)
    cv2.add(out, s + (0.0,), dst=out)
    cv2.max(out, (lo, lo, lo, 0.0), dst=out)
    cv2.min(out, (hi, hi, hi, 0.0), dst=out)


def make_dataset(source: Sequence[str] | np.ndarray, labels: Sequence[int], recipe: Recipe,
                 nb_class: int, batch_size: int, *, training: bool,
                 augment: Augment | None = None, seed: int = 12345, load_ram: bool = False,
                 auto_batch_balance: bool = False, class_weight: dict | None = None,
                 num_workers: int | None = None, start_epoch: int = 0,
                 pairs: Sequence[int] | None = None) -> "tf.data.Dataset":
    """A tf.data pipeline yielding (x (B,H,W,C) float32, y one-hot (B,nb_class)[, w (B,)]).

    source: image paths, or an in-memory (N,H,W) array of raw images (always RAM mode).
    training: seeded reshuffle every epoch, infinite repeat, augmentation if `augment`;
    each epoch is steps_for(n, batch_size) batches; `start_epoch` starts the stream at
    that epoch (a resumed run sees the batches the uninterrupted run would have);
    otherwise finite, in order, the last partial batch included, never augmented.
    load_ram: decode+resize once, keep native dtype and one channel, augment from memory.
    auto_batch_balance: w = 1 / (fraction of the sample's class in its batch), exactly as
    the original (no further normalisation: the weights of a batch sum to B x the number of
    classes present). class_weight: w = class_weight[label] (missing classes weigh 1).
    Per-element randomness comes from stateless ops seeded by (seed, element position).
    pairs: for a bilateral model, the index in `source` of each image's other breast; x is
    then the pair (x, x_other), both through the same steps and the same augmentation
    draw (the model mirrors the other breast itself, `dm_mil`).
    """
    import tensorflow as tf  # deferred for --help (docs/modules.md)

    if auto_batch_balance and class_weight:
        raise InputError("use either auto_batch_balance or class_weight, not both")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    n = len(labels)
    if n == 0:
        raise DatasetError("empty dataset")
    if len(source) != n:
        raise DatasetError(f"{len(source)} images but {n} labels")
    if labels.min() < 0 or labels.max() >= nb_class:
        raise DatasetError(f"labels must be in [0, {nb_class}), got range "
                           f"[{labels.min()}, {labels.max()}]")
    if pairs is not None:
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1)
        if len(pairs) != n or (n and (pairs.min() < 0 or pairs.max() >= n)):
            raise DatasetError(f"pairs must give each of the {n} images the index of another "
                               "image of the same set")
    workers = num_workers or num_workers_default() or tf.data.AUTOTUNE
    interp = augment.interpolation if augment is not None else "bilinear"
    use_aug = training and augment is not None

    cache: np.ndarray | None = None
    paths: list[str] | None = None
    if isinstance(source, np.ndarray):
        cache = _cache_array(source, recipe)
    else:
        paths = [os.fspath(p) for p in source]
        bad = [p for p in paths if not os.path.isfile(p)]
        if bad:
            raise DatasetError(f"{bad[0]}: file not found ({len(bad)} of {n} images missing)")
        if load_ram:
            cache = load_images(paths, recipe, None if workers == tf.data.AUTOTUNE else workers)
            log.info("cached %d images in RAM: %.1f MB (%s)", n, cache.nbytes / 1e6, cache.dtype)
    if cache is not None:
        out_hw = target_shape(cache.shape[1:], recipe)
    elif recipe.img_size is not None:
        out_hw = recipe.img_size
    else:
        out_hw = (recipe.target_height, None)
    nch = recipe.channels

    def work(idx: np.ndarray, params: np.ndarray) -> np.ndarray:
        """One whole batch in numpy/cv2 (cv2 releases the GIL, batches run in parallel)."""
        out = None
        for b, i in enumerate(idx):
            img = cache[int(i)] if cache is not None else read_image(paths[int(i)])
            if out is None:
                hw = target_shape(img.shape, recipe)
                out = np.empty((len(idx),) + tuple(hw) + (nch,), dtype=np.float32)
            _fill_one(out[b], img, recipe, params[b] if use_aug else None, interp)
        return out

    def work_pairs(idx: np.ndarray, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A batch of images and the batch of their other breasts (same draws)."""
        return work(idx, params), work(pairs[np.asarray(idx)], params)

    def load(idx, params):
        if pairs is not None:
            x, xo = tf.numpy_function(work_pairs, [idx, params], (tf.float32, tf.float32),
                                      stateful=False)
            for t in (x, xo):
                t.set_shape((None,) + tuple(out_hw) + (nch,))
            return (x, xo), tf.gather(labels_t, idx)
        x = tf.numpy_function(work, [idx, params], tf.float32, stateful=False)
        x.set_shape((None,) + tuple(out_hw) + (nch,))
        return x, tf.gather(labels_t, idx)

    labels_t = tf.constant(labels)
    if training:
        # One data epoch = one Keras epoch of steps_for(n, batch_size) batches (the last
        # one partial), so training can restart at any epoch and see exactly the batches
        # an uninterrupted run would have seen.
        def epoch_batches(e):
            key = tf.random.experimental.stateless_fold_in(
                tf.constant([int(seed), 0x5F1E], dtype=tf.int64), e)
            order = tf.argsort(tf.random.stateless_uniform([n], seed=key))
            ds_e = tf.data.Dataset.from_tensor_slices(order).enumerate(start=e * n)
            if use_aug:
                ds_e = ds_e.map(lambda k, i: (i, draw_params_tf(augment, element_seed(seed, k))))
            else:
                ds_e = ds_e.map(lambda k, i: (i, tf.zeros([AugParams.VECTOR_LEN])))
            return ds_e.batch(batch_size, drop_remainder=False)
        ds = tf.data.Dataset.counter(start=int(start_epoch)).flat_map(epoch_batches)
    else:
        ds = tf.data.Dataset.range(n).map(lambda i: (i, tf.zeros([AugParams.VECTOR_LEN])))
        ds = ds.batch(batch_size, drop_remainder=False)
    ds = ds.map(load, num_parallel_calls=workers, deterministic=True)

    cw = None
    if class_weight:
        cw = tf.constant([float(class_weight.get(k, 1.0)) for k in range(nb_class)], tf.float32)

    def finish(x, y):
        onehot = tf.one_hot(y, nb_class, dtype=tf.float32)
        if auto_batch_balance:
            counts = tf.reduce_sum(tf.one_hot(y, nb_class, dtype=tf.float64), axis=0)
            frac = counts / tf.cast(tf.shape(y)[0], tf.float64)
            return x, onehot, tf.cast(1.0 / tf.gather(frac, y), tf.float32)
        if cw is not None:
            return x, onehot, tf.gather(cw, y)
        return x, onehot

    ds = ds.map(finish)
    return ds.prefetch(tf.data.AUTOTUNE)


def dataset_size(source: Sequence[str] | np.ndarray) -> int:
    """Number of images in a source (paths or an in-memory array)."""
    return len(source)


def mean_pixel(paths: Sequence[str], recipe: Recipe | None = None
               ) -> tuple[float, float, int | None]:
    """(mean, rescale factor used, bit depth) over every pixel of every image after the
    recipe's steps before centring (resize, img_scale, rescale, equalise; default: none),
    in the float32 the trainers subtract it from: the trainers' `--featurewise-mean`.

    The recipe's rescale None means "by bit depth" (0.003891 for 16-bit, 1 for 8-bit), or 1
    with img_scale (the images are then on its scale already). Raises `DatasetError` for no
    images, or for mixed 8/16-bit images unless img_scale scales each by its own maximum.
    """
    if not paths:
        raise DatasetError("no images to average")
    recipe = recipe if recipe is not None else Recipe(img_size=None)
    depths = check_bit_depths(paths, None if recipe.img_scale is not None else 1.0)
    bits = next(iter(depths)) if len(depths) == 1 else None
    factor = recipe.rescale_factor
    if factor is None and recipe.img_scale is not None:
        factor = 1.0
    elif factor is None:
        if bits is None:
            sample = read_image(paths[0])
            bits = 16 if sample.dtype == np.uint16 else 8 if sample.dtype == np.uint8 else None
        factor = rescale_for_bits(bits)
    steps = dataclasses.replace(recipe, rescale_factor=float(factor), featurewise_center=False)
    total, count = 0.0, 0
    for p in paths:
        x = grey_steps(resize(read_image(p), steps), steps)
        total += float(x.sum(dtype=np.float64))
        count += x.size
    return total / count, float(factor), bits
