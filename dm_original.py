"""The original project's Python API, as thin adapters over this project's code.

Code written against the original (notebooks, scripts) imports these names from
`dm_image`, `dm_keras_ext` and `dm_resnet`, which re-export them from here. Each
adapter calls today's code (the recipe, `make_dataset`, `dm_inference`, the stage loop,
`load_model`): there is no second pipeline or loader. Where an original name cannot keep
its behaviour it raises `OriginalAPIError`, one line naming the replacement. The
differences are listed in the README, section "Code written for the original".

TensorFlow is imported only when a function needs it, so `import dm_image` stays light.
"""
from __future__ import annotations

import logging
import os
from typing import Callable

import numpy as np

import dm_image
from dm_image import Recipe
from dm_errors import InputError

log = logging.getLogger(__name__)

IMAGE_NAMES = ("DMImageDataGenerator", "DMDirectoryIterator", "read_resize_img",
               "read_img_for_pred", "sweep_img_patches", "get_prob_heatmap", "crop_img",
               "add_img_margins", "index_balancer", "to_sparse")
KERAS_EXT_NAMES = ("flip_all_img", "robust_load_model", "load_dat_ram", "DMAucModelCheckpoint",
                   "DMMetrics", "Yaroslav", "do_2stage_training", "do_3stage_training",
                   "DMFlush")

# Original names that cannot keep their behaviour: calling one raises a one-line error
# naming what to use instead.
RETIRED = {
    "dm_image": {
        "get_roi_patches": "ddsm_train/sample_patches_combined.py (patches around ROIs)",
        "clust_kpts": "ddsm_train/sample_patches_combined.py",
        "DMImgListIterator": "DMImageDataGenerator().flow_from_img_list",
        "DMNumpyArrayIterator": "DMImageDataGenerator().flow",
        "DMExamListIterator": "predict.py --csv with patient_id/side columns, then "
                              "evaluate.py --aggregate (exam-level scores)",
        "DMCandidROIIterator": "ddsm_train/heatmap_score.py (ROI candidates from heatmaps)",
    },
    "dm_keras_ext": {
        "make_parallel": "--distribute (tf.distribute.MirroredStrategy)",
    },
}


def retired(module: str, name: str) -> Callable:
    """A stand-in for a retired original name: calling it raises OriginalAPIError."""
    instead = RETIRED[module][name]

    def stand_in(*args, **kwargs):
        raise _refuse(f"{module}.{name}", instead)
    stand_in.__name__ = name
    stand_in.__doc__ = f"Retired: use {instead}."
    return stand_in


class OriginalAPIError(InputError):
    """An original name used in a way this project cannot reproduce; names the replacement."""


def _refuse(what: str, instead: str) -> OriginalAPIError:
    return OriginalAPIError(f"{what} is not supported here; instead: {instead}")


# =========================================================================== dm_image


def crop_img(img: np.ndarray, bbox) -> np.ndarray:
    """Crop by an (x, y, w, h) box (`dm_preprocess.crop_img`)."""
    import dm_preprocess
    return dm_preprocess.crop_img(img, bbox)


def add_img_margins(img: np.ndarray, margin_size: int) -> np.ndarray:
    """Zero margins on every side (`dm_preprocess.add_img_margins`); the dtype is kept
    (the original returned float64)."""
    import dm_preprocess
    return dm_preprocess.add_img_margins(img, int(margin_size))


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
    """Read (`dm_image.read_image`), resize, scale: a float32 grey image (recipe steps 1-4)."""
    if gs_255:
        raise _refuse("gs_255=True", "give 8-bit images, or rescale_factor=255/65535 for 16-bit")
    img = dm_image.resize(dm_image.read_image(fname), _size_recipe(target_size, target_height))
    return dm_image.grey_steps(img, Recipe(img_size=None, img_scale=target_scale,
                                           rescale_factor=rescale_factor))


def read_img_for_pred(fname: str, equalize_hist: bool = False, data_format: str = "channels_last",
                      dup_3_channels: bool = True, transformer: Callable | None = None,
                      standardizer: Callable | None = None, **kwargs) -> np.ndarray:
    """One image as network input (H, W, 3 or 1), through the recipe's own steps."""
    if data_format not in ("channels_last", "default"):
        raise _refuse(f"data_format={data_format!r}", "channels_last (the only layout here)")
    x = read_resize_img(fname, **kwargs)
    if equalize_hist:
        x = dm_image.grey_steps(x, Recipe(img_size=None, equalize_hist=True))
    x = dm_image.finish_channels(x, Recipe(img_size=None, channels=3 if dup_3_channels else 1))
    x = transformer(x) if transformer is not None else x
    return standardizer(x) if standardizer is not None else x


def sweep_img_patches(img: np.ndarray, patch_size: int, stride: int, target_scale=None,
                      equalize_hist: bool = False) -> tuple[np.ndarray, int, int]:
    """(patches (N, p, p) float32, rows, cols) on the centred grid of `dm_inference.sweep_grid`
    (which keeps the last position when (H - p) / stride is whole; the original dropped it)."""
    import dm_inference as inf
    rows, cols, y0, x0 = inf.sweep_grid(img.shape, patch_size, stride)
    recipe = Recipe(img_size=None, img_scale=target_scale, equalize_hist=equalize_hist)
    patches = [dm_image.grey_steps(img[y:y + patch_size, x:x + patch_size], recipe)
               for y in range(y0, y0 + rows * stride, stride)
               for x in range(x0, x0 + cols * stride, stride)]
    return np.stack(patches), rows, cols


def get_prob_heatmap(img_list, target_height, target_scale, patch_size, stride, model,
                     batch_size, featurewise_center=False, featurewise_mean=91.6,
                     preprocess=None, parallelized=False, equalize_hist=False):
    """Sliding-window probability maps (`dm_inference.sliding_window_heatmap`: resize to
    `target_height`, breast segmentation, half-patch margins, centred sweep)."""
    import dm_inference as inf
    if img_list is None:
        return [None]
    single = isinstance(img_list, (str, os.PathLike))
    if preprocess is not None and not featurewise_center:
        raise _refuse("preprocess=<function>", "featurewise_center=True with featurewise_mean")
    channels = int(model.inputs[0].shape[-1])
    recipe = Recipe(img_size=None, img_scale=target_scale, equalize_hist=equalize_hist,
                    channels=channels, featurewise_center=bool(featurewise_center),
                    featurewise_mean=float(featurewise_mean))
    size = Recipe(img_size=None, target_height=target_height)
    maps = []
    for fn in ([img_list] if single else img_list):
        img = dm_image.resize(dm_image.read_image(fn), size)
        maps.append(inf.sliding_window_heatmap(model, img, recipe, int(patch_size), int(stride),
                                               int(batch_size), segment=True, pad=True).probs)
    return maps[0] if single else maps


class DMImageDataGenerator:
    """The original's generator: augmentation keywords, `.mean`, `flow_from_directory`.

    Batches come from `dm_image.make_dataset` with the recipe the keywords describe.
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
                raise _refuse(f"DMImageDataGenerator({name}={value!r})", instead)
        if fill_mode != "nearest":
            raise _refuse(f"fill_mode={fill_mode!r}", "fill_mode='nearest'")
        if data_format not in ("default", "channels_last"):
            raise _refuse(f"data_format={data_format!r}", "channels_last")
        self.featurewise_center = bool(featurewise_center)
        self.mean: float | None = None
        zoom = (1 - zoom_range, 1 + zoom_range) if np.isscalar(zoom_range) else tuple(zoom_range)
        self.augment = dm_image.Augment(
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
        p = dm_image.draw_params(self.augment, 12345, self._draws)
        self._draws += 1
        grey = dm_image.augment_numpy(x[..., 0], p, self.augment.interpolation)
        return np.repeat(grey[..., None], x.shape[-1], axis=-1)

    def fit(self, *a, **k):
        raise _refuse("DMImageDataGenerator.fit", "set .mean to the training images' mean "
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

    def flow(self, X, y=None, batch_size=32, shuffle=True, seed=None, **ignored):
        """Batches of in-memory grey images (N, H, W[, 1]) with labels (one-hot or sparse)."""
        if y is None:
            raise _refuse("flow(X) without labels", "flow(X, y)")
        centre, mean = self._centre()
        X = np.asarray(X)
        recipe = Recipe(img_size=tuple(X.shape[1:3]), channels=1, featurewise_center=centre,
                        featurewise_mean=mean)
        labels = to_sparse(np.asarray(y)).astype(np.int64)
        names = [str(k) for k in range(max(int(labels.max()) + 1,
                                           np.asarray(y).shape[-1] if np.ndim(y) == 2 else 0))]
        return DMDirectoryIterator(None, self, recipe, names, "categorical", False, batch_size,
                                   None, shuffle, seed, paths=X, labels=labels)

    def flow_from_exam_list(self, *a, **k):
        raise _refuse("flow_from_exam_list", RETIRED["dm_image"]["DMExamListIterator"])

    def flow_from_candid_roi(self, *a, **k):
        raise _refuse("flow_from_candid_roi", RETIRED["dm_image"]["DMCandidROIIterator"])

    def _recipe(self, target_size, target_scale, gs_255, equalize_hist, rescale_factor,
                dup_3_channels, data_format) -> Recipe:
        if gs_255:
            raise _refuse("gs_255=True", "rescale_factor")
        if data_format not in ("default", "channels_last"):
            raise _refuse(f"data_format={data_format!r}", "channels_last")
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
            raise _refuse("save_to_dir", "dm_image.preprocess on single images")
        recipe = self._recipe(target_size, target_scale, gs_255, equalize_hist, rescale_factor,
                              dup_3_channels, data_format)
        return DMDirectoryIterator(directory, self, recipe, classes, class_mode,
                                   auto_batch_balance, batch_size, preprocess, shuffle, seed)


class DMDirectoryIterator:
    """Batches (x, y[, w]) of ROOT/<class>/** images through `dm_image.make_dataset`.

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
                raise dm_image.DatasetError(f"{directory}: dataset folder not found")
            classes = sorted(d for d in os.listdir(directory)
                             if os.path.isdir(os.path.join(directory, d)))
        if image_data_generator.augments and not shuffle:
            raise _refuse("augmentation with shuffle=False", "shuffle=True for training "
                          "batches, or a generator without augmentation for testing")
        self.directory, self.recipe, self.class_mode = directory, recipe, class_mode
        self.classes = list(classes)
        self.nb_class = len(self.classes)
        self.class_indices = {c: i for i, c in enumerate(self.classes)}
        if paths is None:
            paths, labels = dm_image.list_class_folders(directory, self.classes)
        self.paths, self.labels = paths, np.asarray(labels, np.int64)
        self.filenames = ([os.path.relpath(p, directory) for p in paths] if directory
                          else [] if isinstance(paths, np.ndarray) else list(paths))
        self.nb_sample = self.n = len(paths)
        self.batch_size, self.shuffle = int(batch_size), bool(shuffle)
        self.seed = 12345 if seed is None else int(seed)
        self.preprocess = preprocess
        self.auto_batch_balance = bool(auto_batch_balance)
        self.image_data_generator = image_data_generator
        self.dataset = dm_image.make_dataset(
            paths, self.labels, recipe, self.nb_class, self.batch_size, training=self.shuffle,
            augment=image_data_generator.augment if image_data_generator.augments else None,
            seed=self.seed, auto_batch_balance=self.auto_batch_balance)
        log.info("Found %d images belonging to %d classes.", self.nb_sample, self.nb_class)
        self._it = None

    def __len__(self) -> int:
        return dm_image.steps_for(self.nb_sample, self.batch_size)

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


# =========================================================================== dm_keras_ext


def flip_all_img(X: np.ndarray) -> list[np.ndarray]:
    """[X, left-right, up-down, both] flips of a (B, H, W, C) batch (`dm_inference.FLIPS`)."""
    import dm_inference as inf
    return [np.asarray(inf.flip(X, m)) for m in inf.FLIPS]


def robust_load_model(filepath, custom_objects: dict | None = None, compile: bool = False):
    """Load a model file like `load_model`: `.keras`, Keras 3 `.h5` or Keras 1.2/2.x `.h5`
    (`dm_keras_ext.load_model`); the optimizer state of old files is ignored."""
    import contextlib
    import keras
    import dm_keras_ext
    scope = (keras.saving.custom_object_scope(custom_objects) if custom_objects
             else contextlib.nullcontext())
    with scope:
        return dm_keras_ext.load_model(filepath, compile=compile)


def load_dat_ram(generator, nb_samples: int):
    """Draw `nb_samples` images from a generator into RAM: (X, y[, w])."""
    xs, ys, ws = [], [], []
    seen = 0
    while seen < nb_samples:
        blob = generator.next()
        xs.append(blob[0])
        ys.append(blob[1])
        if len(blob) > 2:
            ws.append(blob[2])
        seen += len(blob[1])
    data = (np.concatenate(xs), np.concatenate(ys)) + ((np.concatenate(ws),) if ws else ())
    if len(data[0]) != nb_samples:
        raise OriginalAPIError(f"load_dat_ram: {len(data[0])} images drawn for "
                               f"{nb_samples} requested (nb_samples must be whole batches)")
    return data


def Yaroslav(input_shape=None, classes: int = 5):
    """YaroslavNet patch classifier (`get_dl_model('yaroslav')`), one channel."""
    import dm_keras_ext
    size = (224, 224) if input_shape is None or input_shape[0] is None else input_shape[:2]
    return dm_keras_ext.get_dl_model("yaroslav", nb_class=classes, use_pretrained=False,
                                     img_size=size)[0]


class DMMetrics:
    """Sensitivity and specificity as Keras metrics (rounded predictions), as the original."""

    @staticmethod
    def sensitivity(y_true, y_pred):
        from keras import ops
        pred = ops.round(ops.clip(y_pred, 0, 1))
        pos = ops.round(ops.clip(y_true, 0, 1))
        return ops.sum(pos * pred) / (ops.sum(pos) + 1e-7)

    @staticmethod
    def specificity(y_true, y_pred):
        from keras import ops
        pred = 1 - ops.round(ops.clip(y_pred, 0, 1))
        neg = 1 - ops.round(ops.clip(y_true, 0, 1))
        return ops.sum(neg * pred) / (ops.sum(neg) + 1e-7)


def calc_test_auc(test_set, model, batch_size=None, test_samples=None, return_y_res=False,
                  test_augment=False):
    """AUROC per class (`roc_auc_score(..., average=None)`) of a model on a RAM set
    (X, y[, w]) or a generator; with `return_y_res`, also (one-hot y_true, y_pred).
    `test_augment`: the mean over the 4 flips (`dm_inference.FLIPS`)."""
    import dm_metrics

    def per_class(y, p, w):
        """`roc_auc_score(y, p, average=None, sample_weight=w)` through dm_metrics.auroc."""
        y, p = np.asarray(y), np.asarray(p)
        if y.ndim == 2:
            return np.array([dm_metrics.auroc(y[:, k], p[:, k], w) for k in range(y.shape[1])])
        return dm_metrics.auroc(y, p.ravel() if p.ndim == 2 and p.shape[1] == 1 else p, w)

    def predict(X):
        views = flip_all_img(X) if test_augment else [X]
        if batch_size is None:
            return np.mean([np.asarray(model.predict_on_batch(v)) for v in views], axis=0)
        return np.mean([model.predict(v, batch_size=batch_size, verbose=0) for v in views], axis=0)

    if isinstance(test_set, tuple):
        if batch_size is None:
            raise OriginalAPIError("calc_test_auc: batch_size must be given for a RAM test set")
        y_true, y_pred = np.asarray(test_set[1]), predict(np.asarray(test_set[0]))
        weights = test_set[2] if len(test_set) > 2 else None
    else:
        if test_samples is None:
            raise OriginalAPIError("calc_test_auc: test_samples must be given for a generator")
        test_set.reset()
        ys, preds, ws, seen = [], [], [], 0
        while seen < test_samples:
            res = next(test_set)
            if len(res) > 2:
                ws.append(res[2])
            ys.append(res[1])
            preds.append(predict(res[0]))
            seen += len(res[1])
        y_true, y_pred = np.concatenate(ys), np.concatenate(preds)
        weights = np.concatenate(ws) if ws else None
    try:
        auc = per_class(y_true, y_pred, weights)
    except ValueError as e:  # the original's value for a one-class set
        log.warning("AUROC undefined (%s): 0.0 returned as the original did", e)
        auc = 0.0
    return (auc, y_true, y_pred) if return_y_res else auc


def _make_auc_checkpoint():
    import keras
    import dm_keras_ext

    class DMAucModelCheckpoint(keras.callbacks.Callback):
        """Keep the model with the best mean validation AUROC (saved with `save_model`)."""

        calc_test_auc = staticmethod(calc_test_auc)

        def __init__(self, filepath, test_data, test_samples=None, batch_size=None):
            super().__init__()
            if isinstance(test_data, tuple) and batch_size is None:
                raise OriginalAPIError("DMAucModelCheckpoint: batch_size must be given for "
                                       "validation data in RAM")
            if not isinstance(test_data, tuple) and test_samples is None:
                raise OriginalAPIError("DMAucModelCheckpoint: test_samples must be given for "
                                       "a generator")
            self.filepath, self.test_data = filepath, test_data
            self.test_samples, self.batch_size = test_samples, batch_size
            self.best_epoch, self.best_auc, self.best_all_auc = 0, -1.0, None

        def on_epoch_end(self, epoch, logs=None):
            auc = self.calc_test_auc(self.test_data, self.model, self.batch_size,
                                     self.test_samples)
            mean = float(np.mean(auc))
            log.info("AUROC = %s, mean %.4f", np.round(np.atleast_1d(auc), 4).tolist(), mean)
            if mean > self.best_auc:
                self.best_epoch, self.best_auc, self.best_all_auc = epoch + 1, mean, auc
                if self.filepath not in (None, "NOSAVE"):
                    dm_keras_ext.save_model(self.model, self.filepath)

        def on_train_end(self, logs=None):
            log.info(">>> Found best AUROC: %.4f at epoch: %d, saved to: %s <<<",
                     self.best_auc, self.best_epoch, self.filepath)

    return DMAucModelCheckpoint


def _make_flush():
    import keras

    class DMFlush(keras.callbacks.Callback):
        """Kept so code that adds it runs; logging already flushes every line."""

    return DMFlush


_LAZY_CLASSES: dict[str, Callable[[], type]] = {"DMAucModelCheckpoint": _make_auc_checkpoint,
                                                 "DMFlush": _make_flush}
_made: dict[str, type] = {}


def __getattr__(name: str):
    """The Keras callback classes, built on first use (this module imports no Keras)."""
    if name in _LAZY_CLASSES:
        if name not in _made:
            _made[name] = _LAZY_CLASSES[name]()
        return _made[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _stages_config(**kw):
    from types import SimpleNamespace
    return SimpleNamespace(**kw)


def _train_stages(model, stages, train_generator, validation_set, validation_steps,
                  best_model_out, steps_per_epoch, optim, es_patience, lr_patience,
                  monitor: str, auc_checkpointer=None, class_weight=None):
    """The stage loop (`dm_keras_ext.run_stages`) on the original's generators."""
    import keras
    import dm_keras_ext
    if class_weight:
        raise _refuse("pos_cls_weight/neg_cls_weight with do_*stage_training",
                      "flow_from_directory(auto_batch_balance=True), or the trainers' "
                      "--pos-cls-weight")
    train_ds = getattr(train_generator, "dataset", None)
    if train_ds is None or not getattr(train_generator, "shuffle", False):
        raise _refuse("a training generator other than flow_from_directory(shuffle=True)",
                      "DMImageDataGenerator().flow_from_directory(..., shuffle=True)")
    if isinstance(validation_set, tuple):
        val_ds = validation_set
    else:
        val_ds = getattr(validation_set, "dataset", None)
        if val_ds is None or validation_set.shuffle:
            raise _refuse("this validation generator", "flow_from_directory(..., shuffle="
                          "False) or a (X, y) tuple")
    callbacks = [keras.callbacks.EarlyStopping(monitor="val_loss", patience=es_patience)]
    if optim == "sgd":
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                                           patience=lr_patience, min_lr=1e-7))
    if auc_checkpointer is not None:
        callbacks.append(auc_checkpointer)
    elif best_model_out not in (None, "NOSAVE"):
        callbacks.append(dm_keras_ext.BestModelCheckpoint(best_model_out, monitor=monitor))
    history = dm_keras_ext.run_stages(model, stages, train_ds, int(steps_per_epoch), val_ds,
                                      callbacks, optim=optim)
    return model, history


def do_2stage_training(model, org_model, train_generator, validation_set, validation_steps,
                       best_model_out, steps_per_epoch, top_layer_nb=None, nb_epoch=10,
                       all_layer_epochs=0, optim="sgd", init_lr=.01, all_layer_multiplier=.1,
                       es_patience=5, lr_patience=2, auto_batch_balance=True, nb_class=2,
                       pos_cls_weight=1., neg_cls_weight=1., nb_worker=1, auc_checkpointer=None,
                       weight_decay=.0001, hidden_dropout=.0, weight_decay2=.0001,
                       hidden_dropout2=.0):
    """Whole-image training: the new top layers with the trunk frozen (`nb_epoch`), then all
    layers (`all_layer_epochs`), through today's stage loop (`dm_keras_ext.image_stages`).

    The epoch counts mean what they mean to today's trainers (`dm_keras_ext.run_stages`);
    epoch numbers continue across stages. Returns (model, history dict).
    """
    import dm_keras_ext
    cfg = _stages_config(nb_epoch=nb_epoch, all_layer_epochs=all_layer_epochs, init_lr=init_lr,
                         all_layer_multiplier=all_layer_multiplier, weight_decay=weight_decay,
                         hidden_dropout=hidden_dropout, weight_decay2=weight_decay2,
                         hidden_dropout2=hidden_dropout2)
    weights = None if (pos_cls_weight, neg_cls_weight) == (1., 1.) else True
    top = 2 if top_layer_nb is None else top_layer_nb  # model.layers[:top] frozen in stage 1
    return _train_stages(model, dm_keras_ext.image_stages(cfg, top), train_generator, validation_set,
                         validation_steps, best_model_out, steps_per_epoch, optim, es_patience,
                         lr_patience, "val_accuracy", auc_checkpointer, weights)


def do_3stage_training(model, org_model, train_generator, validation_set, validation_steps,
                       best_model_out, steps_per_epoch, top_layer_nb=None, net=None,
                       nb_epoch=10, top_layer_epochs=0, all_layer_epochs=0,
                       use_pretrained=True, optim="sgd", init_lr=.01, top_layer_multiplier=.01,
                       all_layer_multiplier=.0001, es_patience=5, lr_patience=2,
                       auto_batch_balance=True, nb_class=3, pos_cls_weight=1.,
                       neg_cls_weight=1., nb_worker=1, weight_decay2=.01, hidden_dropout2=.0):
    """Patch training: Dense only, then the trunk from `top_layer_nb` (an index into
    today's trunk, as `get_dl_model` returns it), then all layers (today's
    `dm_keras_ext.patch_stages`). Returns (model, history dict)."""
    import dm_keras_ext
    if top_layer_nb is None and use_pretrained:
        trunk = dm_keras_ext.find_trunk_layer(model)
        top_layer_nb = dm_keras_ext.default_top_layer_nb(trunk, net or "")
    drop = model.get_layer("patch_dropout").rate if _has(model, "patch_dropout") else 0.0
    wd = _dense_l2(model)
    cfg = _stages_config(use_pretrained=use_pretrained, nb_epoch=nb_epoch,
                         top_layer_epochs=top_layer_epochs, all_layer_epochs=all_layer_epochs,
                         init_lr=init_lr, top_layer_multiplier=top_layer_multiplier,
                         all_layer_multiplier=all_layer_multiplier, weight_decay=wd,
                         hidden_dropout=drop, weight_decay2=weight_decay2,
                         hidden_dropout2=hidden_dropout2, top_layer_nb=top_layer_nb)
    weights = None if (pos_cls_weight, neg_cls_weight) == (1., 1.) else True
    return _train_stages(model, dm_keras_ext.patch_stages(cfg), train_generator, validation_set,
                         validation_steps, best_model_out, steps_per_epoch, optim, es_patience,
                         lr_patience, "val_accuracy", None, weights)


def _has(model, name: str) -> bool:
    return any(l.name == name for l in model.layers)


def _dense_l2(model) -> float:
    """The L2 factor of the model's last Dense (the value the model was built with)."""
    for layer in reversed(model.layers):
        reg = getattr(layer, "kernel_regularizer", None)
        if reg is not None and "l2" in reg.get_config():
            return float(reg.get_config()["l2"])
    return 0.0


# =========================================================================== trainers


def trainer_config(kind: str, train_dir, val_dir, test_dir, **kw):
    """A trainer's config from the original's `run(train_dir, val_dir, test_dir, **kw)`:
    the keyword names are the original's (= the flags' names); missing ones take the
    trainer's defaults (`dm_flags`)."""
    import dm_flags
    parser = dm_flags.build_parser(kind)
    args = vars(parser.parse_args([os.fspath(train_dir), os.fspath(val_dir),
                                   os.fspath(test_dir)]))
    unknown = set(kw) - set(args)
    if unknown:
        raise TypeError(f"run() got unexpected keyword(s) {sorted(unknown)}")
    args.update(kw)
    if args.get("seed") is None:
        args["seed"] = int(os.environ.get("RANDOM_SEED", 12345))
    if kind == "image" and (args["patch_model_state"] is None) == (args["resume_from"] is None):
        raise OriginalAPIError("run(): give exactly one of patch_model_state and resume_from")
    return dm_flags.config_class(kind)(**args)
