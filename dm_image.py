"""Front door: the original's `dm_image` names, as adapters over the image rooms.

The original's `dm_image` names (docs/original.md), as thin adapters over the project's
rooms: pixels (`dm_pixels`), the recipe (`dm_recipe`), augmentation (`dm_augment`), listing
(`dm_listing`), datasets (`dm_dataset`) and the sweep (`dm_sweep`). Project code imports
from those rooms, never from here; code written for the original keeps importing this.
"""
from __future__ import annotations

import logging
import os
from typing import Callable

import numpy as np

from dm_augment import Augment, augment_numpy, draw_params
from dm_dataset import make_dataset, steps_for
from dm_errors import OriginalAPIError, refuse, retired
from dm_listing import DatasetError, list_class_folders
from dm_pixels import read_image
from dm_recipe import Recipe, finish_channels, grey_steps, resize
from dm_sweep import add_img_margins, crop_img, sweep_image, sweep_probs  # noqa: F401 (the original names crop_img, add_img_margins)

log = logging.getLogger(__name__)


def to_sparse(y: np.ndarray) -> np.ndarray:
    """One-hot labels to class indices; sparse labels pass through."""
    y = np.asarray(y)
    if y.ndim == 1:
        return y
    if y.ndim != 2:
        raise ValueError(f"labels must be sparse or one-hot, got shape {y.shape}")
    ok = (np.count_nonzero(y, axis=1) == 1) & (y.max(axis=1) == 1)
    if not ok.all():
        raise ValueError(f"expected one-hot rows, got {y[~ok][0]}")
    return y.argmax(axis=1)


def index_balancer(index_array: np.ndarray, classes: np.ndarray, ratio: float,
                   rng: np.random.RandomState) -> np.ndarray:
    """Resample a batch's indices so negatives weigh `ratio` x positives (class 1 positive),
    sorted, as the original."""
    classes = np.asarray(classes)
    n = len(index_array)
    pos_w = n / (np.sum(classes == 1) + 1e-7)
    neg_w = n / (np.sum(classes != 1) + 1e-7) * ratio
    probs = np.where(classes == 1, pos_w, neg_w).astype(float)
    out = rng.choice(index_array, n, p=probs / probs.sum())
    out.sort()
    return out


def _size_recipe(target_size, target_height) -> Recipe:
    if target_size is None and target_height is None:
        raise ValueError("one of target_size, target_height must be given")
    return Recipe(img_size=None if target_size is None else tuple(target_size),
                  target_height=None if target_size is not None else target_height)


def read_resize_img(fname: str, target_size=None, target_height=None, target_scale=None,
                    gs_255: bool = False, rescale_factor=None) -> np.ndarray:
    """Read (`read_image`), resize, scale: a float32 grey image (recipe steps 1-4)."""
    if gs_255:
        raise refuse("gs_255=True", "give 8-bit images, or rescale_factor=255/65535 for 16-bit")
    img = resize(read_image(fname), _size_recipe(target_size, target_height))
    return grey_steps(img, Recipe(img_size=None, img_scale=target_scale,
                                           rescale_factor=rescale_factor))


def read_img_for_pred(fname: str, equalize_hist: bool = False, data_format: str = "channels_last",
                      dup_3_channels: bool = True, transformer: Callable | None = None,
                      standardizer: Callable | None = None, **kwargs) -> np.ndarray:
    """One image as network input (H, W, 3 or 1), through the recipe's own steps."""
    if data_format not in ("channels_last", "default"):
        raise refuse(f"data_format={data_format!r}", "channels_last (the only layout here)")
    x = read_resize_img(fname, **kwargs)
    if equalize_hist:
        x = grey_steps(x, Recipe(img_size=None, equalize_hist=True))
    x = finish_channels(x, Recipe(img_size=None, channels=3 if dup_3_channels else 1))
    x = transformer(x) if transformer is not None else x
    return standardizer(x) if standardizer is not None else x


def sweep_img_patches(img: np.ndarray, patch_size: int, stride: int, target_scale=None,
                      equalize_hist: bool = False) -> tuple[np.ndarray, int, int]:
    """(patches (N, p, p) float32, rows, cols) on the centred grid of `sweep_grid` (which
    keeps the last position when (H - p) / stride is whole; the original dropped it)."""
    sweep = sweep_image(img, int(patch_size), int(stride), segment=False, pad=False)
    recipe = Recipe(img_size=None, img_scale=target_scale, equalize_hist=equalize_hist)
    return sweep.patches(recipe)[..., 0], sweep.rows, sweep.cols


def get_prob_heatmap(img_list, target_height, target_scale, patch_size, stride, model,
                     batch_size, featurewise_center=False, featurewise_mean=91.6,
                     preprocess=None, parallelized=False, equalize_hist=False):
    """Sliding-window probability maps, as `dm_heatmaps.sliding_window_heatmap`: resize to
    `target_height`, breast segmentation, half-patch margins, centred sweep."""
    if img_list is None:
        return [None]
    single = isinstance(img_list, (str, os.PathLike))
    if preprocess is not None and not featurewise_center:
        raise refuse("preprocess=<function>", "featurewise_center=True with featurewise_mean")
    channels = int(model.inputs[0].shape[-1])
    recipe = Recipe(img_size=None, img_scale=target_scale, equalize_hist=equalize_hist,
                    channels=channels, featurewise_center=bool(featurewise_center),
                    featurewise_mean=float(featurewise_mean))
    size = Recipe(img_size=None, target_height=target_height)
    maps = []
    for fn in ([img_list] if single else img_list):
        sweep = sweep_image(resize(read_image(fn), size), int(patch_size), int(stride))
        maps.append(sweep_probs(model.predict_on_batch, sweep, recipe, int(batch_size)))
    return maps[0] if single else maps


class DMImageDataGenerator:
    """The original's generator: augmentation keywords, `.mean`, `flow_from_directory`.

    Batches come from `make_dataset` with the recipe the keywords describe.
    """

    def __init__(self, featurewise_center=False, samplewise_center=False,
                 featurewise_std_normalization=False, samplewise_std_normalization=False,
                 zca_whitening=False, rotation_range=0., width_shift_range=0.,
                 height_shift_range=0., shear_range=0., zoom_range=0., channel_shift_range=0.,
                 fill_mode="nearest", cval=0., horizontal_flip=False, vertical_flip=False,
                 rescale=None, data_format="default"):
        for name, value, instead in (
                ("samplewise_center", samplewise_center, "featurewise_center with .mean"),
                ("featurewise_std_normalization", featurewise_std_normalization,
                 "featurewise_center (no std normalisation in the recipe)"),
                ("samplewise_std_normalization", samplewise_std_normalization,
                 "featurewise_center (no std normalisation in the recipe)"),
                ("zca_whitening", zca_whitening, "featurewise_center"),
                ("width_shift_range", width_shift_range, "zoom_range / rotation_range"),
                ("height_shift_range", height_shift_range, "zoom_range / rotation_range"),
                ("rescale", rescale, "flow_from_directory(rescale_factor=...)")):
            if value:
                raise refuse(f"DMImageDataGenerator({name}={value!r})", instead)
        if fill_mode != "nearest":
            raise refuse(f"fill_mode={fill_mode!r}", "fill_mode='nearest'")
        if data_format not in ("default", "channels_last"):
            raise refuse(f"data_format={data_format!r}", "channels_last")
        self.featurewise_center = bool(featurewise_center)
        self.mean: float | None = None
        zoom = (1 - zoom_range, 1 + zoom_range) if np.isscalar(zoom_range) else tuple(zoom_range)
        self.augment = Augment(
            horizontal_flip=bool(horizontal_flip), vertical_flip=bool(vertical_flip),
            rotation_range=float(rotation_range), shear_range=float(shear_range),
            zoom_range=zoom, channel_shift_range=float(channel_shift_range))
        self.augments = bool(horizontal_flip or vertical_flip or rotation_range or shear_range
                             or zoom != (1.0, 1.0) or channel_shift_range)
        self._draws = 0

    def _centre(self) -> tuple[bool, float]:
        if not self.featurewise_center:
            return False, 0.0
        if self.mean is None:
            raise OriginalAPIError("featurewise_center=True needs .mean set (e.g. "
                                   "gen.mean = 52.18); fit() is not supported")
        return True, float(np.asarray(self.mean).mean())

    def standardize(self, x: np.ndarray) -> np.ndarray:
        """Featurewise centring (the recipe's last step)."""
        centre, mean = self._centre()
        return x - np.float32(mean) if centre else x

    def random_transform(self, x: np.ndarray) -> np.ndarray:
        """One random draw of this generator's augmentation on an (H, W, C) image."""
        if not self.augments:
            return x
        p = draw_params(self.augment, 12345, self._draws)
        self._draws += 1
        grey = augment_numpy(x[..., 0], p, self.augment.interpolation)
        return np.repeat(grey[..., None], x.shape[-1], axis=-1)

    def fit(self, *a, **k):
        raise refuse("DMImageDataGenerator.fit", "set .mean to the training images' mean "
                      "after rescaling")

    def flow_from_img_list(self, img_list, lab_list, target_size=(1152, 896), target_scale=None,
                           gs_255=False, equalize_hist=False, rescale_factor=None,
                           data_format="default", dup_3_channels=False, classes=None,
                           class_mode="categorical", auto_batch_balance=False, batch_size=32,
                           preprocess=None, shuffle=True, seed=None, **ignored
                           ) -> "DMDirectoryIterator":
        """Batches of listed image files with integer labels (same iterator as below)."""
        recipe = self._recipe(target_size, target_scale, gs_255, equalize_hist, rescale_factor,
                              dup_3_channels, data_format)
        labels = np.asarray(lab_list, np.int64)
        names = list(classes) if classes else [str(k) for k in range(int(labels.max()) + 1)]
        return DMDirectoryIterator(None, self, recipe, names, class_mode, auto_batch_balance,
                                   batch_size, preprocess, shuffle, seed,
                                   paths=[os.fspath(p) for p in img_list], labels=labels)

    def flow(self, X, y=None, batch_size=32, auto_batch_balance=True, no_pos_skip=0.,
             balance_classes=0., preprocess=None, shuffle=True, seed=None, save_to_dir=None,
             save_prefix="", save_format="jpeg"):
        """Batches of in-memory grey images (N, H, W[, 1]) with labels (one-hot or sparse).

        Defaults as the original's: `auto_batch_balance=True` adds its per-batch sample
        weights, `preprocess` is applied to every batch of images. `no_pos_skip` and
        `balance_classes` (batches redrawn or resampled inside the original's iterator)
        are refused, not ignored (docs/fidelity.md).
        """
        if y is None:
            raise refuse("flow(X) without labels", "flow(X, y)")
        for name, value in (("no_pos_skip", no_pos_skip), ("balance_classes", balance_classes)):
            if value:
                raise refuse(f"flow({name}={value!r})", "auto_batch_balance=True (per-batch "
                             "class weights), or repeat the positive images in X")
        if save_to_dir:
            raise refuse("save_to_dir", "preprocess on single images")
        centre, mean = self._centre()
        X = np.asarray(X)
        recipe = Recipe(img_size=tuple(X.shape[1:3]), channels=1, featurewise_center=centre,
                        featurewise_mean=mean)
        labels = to_sparse(np.asarray(y)).astype(np.int64)
        names = [str(k) for k in range(max(int(labels.max()) + 1,
                                           np.asarray(y).shape[-1] if np.ndim(y) == 2 else 0))]
        return DMDirectoryIterator(None, self, recipe, names, "categorical", auto_batch_balance,
                                   batch_size, preprocess, shuffle, seed, paths=X, labels=labels)

    def flow_from_exam_list(self, *a, **k):
        raise refuse("flow_from_exam_list", _EXAM_LIST_INSTEAD)

    def flow_from_candid_roi(self, *a, **k):
        raise refuse("flow_from_candid_roi", _CANDID_ROI_INSTEAD)

    def _recipe(self, target_size, target_scale, gs_255, equalize_hist, rescale_factor,
                dup_3_channels, data_format) -> Recipe:
        if gs_255:
            raise refuse("gs_255=True", "rescale_factor")
        if data_format not in ("default", "channels_last"):
            raise refuse(f"data_format={data_format!r}", "channels_last")
        centre, mean = self._centre()
        return Recipe(img_size=tuple(target_size), img_scale=target_scale,
                      rescale_factor=rescale_factor, equalize_hist=bool(equalize_hist),
                      channels=3 if dup_3_channels else 1, featurewise_center=centre,
                      featurewise_mean=mean)

    def flow_from_directory(self, directory, target_size=(256, 256), target_scale=None,
                            gs_255=False, equalize_hist=False, rescale_factor=None,
                            dup_3_channels=False, data_format="default", classes=None,
                            class_mode="categorical", auto_batch_balance=False, batch_size=32,
                            preprocess=None, shuffle=True, seed=None, save_to_dir=None,
                            save_prefix="", save_format="jpeg", follow_links=False
                            ) -> "DMDirectoryIterator":
        if save_to_dir:
            raise refuse("save_to_dir", "preprocess on single images")
        recipe = self._recipe(target_size, target_scale, gs_255, equalize_hist, rescale_factor,
                              dup_3_channels, data_format)
        return DMDirectoryIterator(directory, self, recipe, classes, class_mode,
                                   auto_batch_balance, batch_size, preprocess, shuffle, seed)


class DMDirectoryIterator:
    """Batches (x, y[, w]) of ROOT/<class>/** images through `make_dataset`.

    Attributes as the original: `nb_sample` (also `n`), `classes` (the class names),
    `labels` (one per image), `class_indices`, `filenames` (relative to the folder),
    `batch_size`. `shuffle=False`: every image once per pass, in order (then it starts
    over, as Keras iterators did); `shuffle=True`: the seeded training stream with the
    generator's augmentation.
    """

    def __init__(self, directory, image_data_generator: DMImageDataGenerator, recipe: Recipe,
                 classes=None, class_mode="categorical", auto_batch_balance=False,
                 batch_size=32, preprocess=None, shuffle=True, seed=None, paths=None,
                 labels=None):
        if class_mode not in ("categorical", "binary", "sparse", None):
            raise ValueError(f"invalid class_mode {class_mode!r}")
        directory = None if directory is None else os.fspath(directory)
        if not classes:
            if not os.path.isdir(directory):
                raise DatasetError(f"{directory}: dataset folder not found")
            classes = sorted(d for d in os.listdir(directory) if not d.startswith(".")
                             and os.path.isdir(os.path.join(directory, d)))
        if image_data_generator.augments and not shuffle:
            raise refuse("augmentation with shuffle=False", "shuffle=True for training "
                          "batches, or a generator without augmentation for testing")
        self.directory, self.recipe, self.class_mode = directory, recipe, class_mode
        self.classes = list(classes)
        self.nb_class = len(self.classes)
        self.class_indices = {c: i for i, c in enumerate(self.classes)}
        if paths is None:
            paths, labels = list_class_folders(directory, self.classes)
        self.paths, self.labels = paths, np.asarray(labels, np.int64)
        self.filenames = ([os.path.relpath(p, directory) for p in paths] if directory
                          else [] if isinstance(paths, np.ndarray) else list(paths))
        self.nb_sample = self.n = len(paths)
        self.batch_size, self.shuffle = int(batch_size), bool(shuffle)
        self.seed = 12345 if seed is None else int(seed)
        self.preprocess = preprocess
        self.auto_batch_balance = bool(auto_batch_balance)
        self.image_data_generator = image_data_generator
        self.dataset = make_dataset(
            paths, self.labels, recipe, self.nb_class, self.batch_size, training=self.shuffle,
            augment=image_data_generator.augment if image_data_generator.augments else None,
            seed=self.seed, auto_batch_balance=self.auto_batch_balance)
        log.info("Found %d images belonging to %d classes.", self.nb_sample, self.nb_class)
        self._it = None

    def __len__(self) -> int:
        return steps_for(self.nb_sample, self.batch_size)

    def reset(self) -> None:
        self._it = None

    def __iter__(self):
        return self

    def __next__(self):
        if self._it is None:
            self._it = iter(self.dataset)
        try:
            batch = next(self._it)
        except StopIteration:  # shuffle=False: start the next pass, as Keras iterators
            self._it = iter(self.dataset)
            batch = next(self._it)
        x, y, *w = (np.asarray(t) for t in batch)
        if self.preprocess is not None:
            x = self.preprocess(x)
        if self.class_mode is None:
            return x
        if self.class_mode == "sparse":
            y = y.argmax(-1)
        elif self.class_mode == "binary":
            y = y.argmax(-1).astype(np.float32)
        return (x, y, *w)

    next = __next__


_EXAM_LIST_INSTEAD = ("predict.py --csv with patient_id/side columns, then evaluate.py "
                      "--aggregate (exam-level scores)")


_CANDID_ROI_INSTEAD = "ddsm_train/heatmap_score.py (ROI candidates from heatmaps)"


get_roi_patches = retired("dm_image.get_roi_patches",
                          "ddsm_train/sample_patches_combined.py (patches around ROIs)")


clust_kpts = retired("dm_image.clust_kpts", "ddsm_train/sample_patches_combined.py")


DMImgListIterator = retired("dm_image.DMImgListIterator",
                            "DMImageDataGenerator().flow_from_img_list")


DMNumpyArrayIterator = retired("dm_image.DMNumpyArrayIterator", "DMImageDataGenerator().flow")


DMExamListIterator = retired("dm_image.DMExamListIterator", _EXAM_LIST_INSTEAD)


DMCandidROIIterator = retired("dm_image.DMCandidROIIterator", _CANDID_ROI_INSTEAD)
