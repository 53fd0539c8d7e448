"""Reading, preprocessing, augmentation and tf.data datasets for mammograms.

The preprocessing recipe (docs/method.md, section 2) is one small frozen object, `Recipe`, shared by
training, inference and saved models, so a model can never be scored with a recipe
other than the one it was trained with.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import cv2
import numpy as np
from dm_errors import InputError, OriginalAPIError, refuse, retired

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

log = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".dcm", ".dicom")
DICOM_EXTS = (".dcm", ".dicom")


@dataclass(frozen=True)
class Recipe:
    """How a raw grey image becomes network input, in the order of docs/method.md, section 2.

    img_size: (H, W) to resize to (cubic); None keeps the size (or see target_height).
    target_height: resize to this height keeping the aspect ratio (used when img_size is None).
    img_scale: scale so the image maximum equals this value (None: off).
    rescale_factor: multiply by this factor (None: off), e.g. 255/65535 for 16-bit PNG.
    equalize_hist: histogram-equalise the image cast to 8 bits.
    channels: 3 (grey duplicated) or 1 (YaroslavNet).
    featurewise_center / featurewise_mean: subtract one scalar mean.
    input_bits: bit depth of the training images (8 or 16; None: unknown or not relevant), so
    prediction can refuse or convert images of another depth (README "Prediction").
    """

    img_size: tuple[int, int] | None = (1152, 896)
    target_height: int | None = None
    img_scale: float | None = None
    rescale_factor: float | None = None
    equalize_hist: bool = False
    channels: int = 3
    featurewise_center: bool = False
    featurewise_mean: float = 0.0
    input_bits: int | None = None

    def __post_init__(self) -> None:
        if self.img_size is not None:
            object.__setattr__(self, "img_size", tuple(int(v) for v in self.img_size))
        if self.channels not in (1, 3):
            raise InputError(f"channels must be 1 or 3, got {self.channels}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["img_size"] is not None:
            d["img_size"] = list(d["img_size"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise InputError(f"unknown recipe keys: {sorted(unknown)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> "Recipe":
        return cls.from_dict(json.loads(s))


@dataclass(frozen=True)
class Augment:
    """Training augmentation with the paper's parameters (docs/method.md, section 2, step 5)."""

    horizontal_flip: bool = True
    vertical_flip: bool = True
    rotation_range: float = 25.0        # degrees, +/-
    shear_range: float = 0.2            # radians, +/-
    zoom_range: tuple[float, float] = (0.8, 1.2)
    channel_shift_range: float = 20.0   # intensity units, +/-, one draw per channel (Keras 2.0)
    fill_mode: str = "nearest"
    interpolation: str = "bilinear"     # or "nearest" (the Keras 2.0 generator's order 0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "zoom_range", tuple(float(v) for v in self.zoom_range))
        if len(self.zoom_range) != 2 or self.zoom_range[0] > self.zoom_range[1]:
            raise InputError(f"zoom_range must be (low, high), got {self.zoom_range}")
        if self.fill_mode != "nearest":
            raise InputError(f"only fill_mode='nearest' is supported, got {self.fill_mode!r}")
        if self.interpolation not in ("bilinear", "nearest"):
            raise InputError(f"interpolation must be 'bilinear' or 'nearest', got {self.interpolation!r}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["zoom_range"] = list(d["zoom_range"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Augment":
        return cls(**d)


# --------------------------------------------------------------------------- errors


class ImageReadError(InputError):
    """An image file could not be read; the message is '<path>: <problem>'."""


class DatasetError(InputError):
    """A dataset folder or list is unusable (missing root or class, no images, bad CSV)."""


# --------------------------------------------------------------------------- reading


def _to_grey(img: np.ndarray, path: str) -> np.ndarray:
    """Colour (BGR/BGRA from cv2) to one grey channel, keeping the dtype."""
    if img.ndim == 2:
        return img
    if img.ndim == 3:
        if img.shape[2] == 1:
            return img[:, :, 0]
        if img.shape[2] == 2:           # grey + alpha
            return np.ascontiguousarray(img[:, :, 0])
        if img.shape[2] == 3:
            return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        if img.shape[2] == 4:
            return cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY)
    raise ImageReadError(f"{path}: unsupported image shape {img.shape}")


def _dicom_value_range(ds) -> tuple[float, float] | None:
    """Possible stored-value range from BitsStored/PixelRepresentation (None if unknown)."""
    bits = ds.get("BitsStored", None) or ds.get("BitsAllocated", None)
    if bits is None:
        return None
    bits = int(bits)
    if int(ds.get("PixelRepresentation", 0)) == 1:
        return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return 0.0, 2.0 ** bits - 1


def _read_dicom(path: str, data: bytes) -> np.ndarray:
    """DICOM pixel data with modality rescale applied and MONOCHROME1 inverted (bright = dense)."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as e:  # noqa: BLE001 - any parse failure is a read error
        raise ImageReadError(f"{path}: not a readable DICOM file ({e})") from None
    if "PixelData" not in ds:
        raise ImageReadError(f"{path}: DICOM file has no pixel data")
    try:
        arr = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - missing codec, truncated data, ...
        raise ImageReadError(f"{path}: cannot decode DICOM pixel data ({e})") from None
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_RGB2GRAY)
    if arr.ndim != 2:
        raise ImageReadError(f"{path}: expected a single 2-D frame, got pixel array of shape {arr.shape}")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    x = arr.astype(np.float64)
    if slope != 1.0 or intercept != 0.0:
        x = x * slope + intercept
    if str(ds.get("PhotometricInterpretation", "")).strip().upper() == "MONOCHROME1":
        # Invert within the range the stored bits allow (mapped through the rescale), so the
        # result does not depend on image content and stays in the same range.
        rng = _dicom_value_range(ds)
        if rng is None:
            lo, hi = float(arr.min()), float(arr.max())
        else:
            lo, hi = rng
        lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
        x = (lo + hi) - x
    if np.all(x == np.round(x)) and x.min() >= 0 and x.max() <= 65535:
        return x.astype(np.uint16)
    return x.astype(np.float32)


def _is_dicom_bytes(data: bytes) -> bool:
    return len(data) >= 132 and data[128:132] == b"DICM"


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read one image as a 2-D grey array at its native dtype.

    PNG/JPEG/BMP keep their bit depth (uint8/uint16; colour is converted to grey).
    DICOM (.dcm/.dicom or a 'DICM' preamble) gets the modality rescale and MONOCHROME1
    inversion; it is uint16 when integral and in range, else float32.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found") from None
    except OSError as e:
        raise ImageReadError(f"{path}: cannot open ({e.strerror or e})") from None
    if not data:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    if os.path.splitext(path)[1].lower() in DICOM_EXTS or _is_dicom_bytes(data):
        return _read_dicom(path, data)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageReadError(f"{path}: cannot decode image (truncated, corrupt or unsupported format)")
    img = _to_grey(img, path)
    if img.dtype not in (np.uint8, np.uint16, np.float32):
        img = img.astype(np.float32)
    return img


# --------------------------------------------------------------------------- recipe


def target_shape(shape: tuple[int, int], recipe: Recipe) -> tuple[int, int]:
    """(H, W) after the resize step of the recipe for an image of the given shape."""
    if recipe.img_size is not None:
        return recipe.img_size
    if recipe.target_height is not None:
        h = int(recipe.target_height)
        return h, int(float(h) / shape[0] * shape[1])
    return int(shape[0]), int(shape[1])


def resize(img: np.ndarray, recipe: Recipe) -> np.ndarray:
    """Step 2 of the recipe (docs/method.md): cubic resize to img_size, or to target_height
    with the width truncated as the original did (aspect kept); dtype kept."""
    th, tw = target_shape(img.shape, recipe)
    if (th, tw) == img.shape:
        return img
    return cv2.resize(img, dsize=(tw, th), interpolation=cv2.INTER_CUBIC)


def resize_to(img: np.ndarray, target_size: Sequence[int] | None = None,
              target_height: int | None = None) -> np.ndarray:
    """`resize` with the recipe's two size fields given directly (the recipes and the patch
    sampler use this, so they resize exactly as training does)."""
    return resize(img, Recipe(img_size=tuple(target_size) if target_size is not None else None,
                              target_height=None if target_size is not None else target_height))


def resize_mask(mask: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """An ROI mask onto its resized image's (H, W) grid: 0/255, linear then cut at half."""
    h, w = int(shape[0]), int(shape[1])
    m = (mask > 0).astype(np.uint8) * 255
    if m.shape[:2] == (h, w):
        return m
    out = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
    return ((out >= 128) * 255).astype(np.uint8)


def dicom_shape(path: str | os.PathLike) -> tuple[int, int]:
    """(rows, cols) from a DICOM header without decoding its pixels."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        return int(ds.Rows), int(ds.Columns)
    except Exception as e:  # noqa: BLE001 - any parse failure is a read error
        raise ImageReadError(f"{path}: cannot read DICOM header ({type(e).__name__}: {e})") from None


def _cast_uint8(x: np.ndarray) -> np.ndarray:
    """The original's `astype('uint8')` for histogram equalisation.

    Identical for values in [0, 255]; out-of-range values (a wrong recipe) are clipped here
    rather than wrapped as the original's undefined C cast did.
    """
    return np.clip(x, 0, 255).astype(np.uint8)


def grey_steps(img: np.ndarray, recipe: Recipe) -> np.ndarray:
    """Recipe steps 3-4 (docs/method.md) on an already resized grey image: float32, img_scale, rescale, equalise."""
    if recipe.img_scale is None and recipe.rescale_factor is not None:
        # the same float32 product as copy-then-multiply, in one pass
        x = np.multiply(img, np.float32(recipe.rescale_factor), dtype=np.float32)
        return cv2.equalizeHist(_cast_uint8(x)).astype(np.float32) if recipe.equalize_hist else x
    x = np.array(img, dtype=np.float32, copy=True)
    if recipe.img_scale is not None:
        m = float(x.max())
        m = m if m != 0 else float(recipe.img_scale)
        x *= np.float32(float(recipe.img_scale) / m)
    if recipe.rescale_factor is not None:
        x *= np.float32(recipe.rescale_factor)
    if recipe.equalize_hist:
        x = cv2.equalizeHist(_cast_uint8(x)).astype(np.float32)
    return x


def finish_channels(x: np.ndarray, recipe: Recipe) -> np.ndarray:
    """Recipe steps 6-7 (docs/method.md): channels (1 or duplicated to 3) and featurewise centring."""
    x = np.asarray(x, dtype=np.float32)
    if recipe.featurewise_center:
        x = x - np.float32(recipe.featurewise_mean)
    return np.repeat(x[:, :, None], recipe.channels, axis=2)


def preprocess(img: np.ndarray, recipe: Recipe, aug_params: "AugParams | None" = None,
               interpolation: str = "bilinear") -> np.ndarray:
    """The reference recipe (docs/method.md, section 2): raw grey image -> float32 HxWxC network input.

    With `aug_params`, the augmentation (step 5) is applied to the grey image between
    equalisation and channels, exactly where the tf.data pipeline applies it.
    """
    if img.ndim != 2:
        raise InputError(f"expected a 2-D grey image, got shape {img.shape}")
    x = grey_steps(resize(img, recipe), recipe)
    per_channel = aug_params is not None and recipe.channels == 3
    if aug_params is not None:
        x = augment_numpy(x, aug_params, interpolation, shift=not per_channel)
    out = finish_channels(x, recipe)
    return channel_shifts(out, aug_params.shifts) if per_channel else out


# --------------------------------------------------------------------------- augmentation


@dataclass(frozen=True)
class AugParams:
    """One explicit draw of the augmentation (Keras 2.0 `random_transform` semantics).

    theta: rotation in degrees; shear in radians; zx/zy: zoom of the row/column axis
    (>1 zooms out, as in Keras); shift, shift2, shift3: intensity added to channel 1, 2
    and 3 (each then clipped to the image's min/max: Keras 2.0 drew one shift per channel
    of the three duplicated grey channels; a 1-channel image uses `shift`);
    flip_h/flip_v: mirror columns/rows (applied after the affine warp).
    """

    theta: float = 0.0
    shear: float = 0.0
    zx: float = 1.0
    zy: float = 1.0
    shift: float = 0.0
    flip_h: bool = False
    flip_v: bool = False
    shift2: float = 0.0
    shift3: float = 0.0

    VECTOR_LEN = 9

    def to_vector(self) -> np.ndarray:
        return np.array([self.theta, self.shear, self.zx, self.zy, self.shift,
                         float(self.flip_h), float(self.flip_v), self.shift2, self.shift3],
                        dtype=np.float32)

    @classmethod
    def from_vector(cls, v: Sequence[float]) -> "AugParams":
        v = [float(t) for t in v] + [0.0] * (9 - len(v))
        return cls(v[0], v[1], v[2], v[3], v[4], v[5] >= 0.5, v[6] >= 0.5, v[7], v[8])

    @property
    def shifts(self) -> tuple[float, float, float]:
        return (self.shift, self.shift2, self.shift3)


def affine_matrix(p: AugParams, h: int, w: int, include_flips: bool = False
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(A, o) mapping an output (row, col) to the input (row, col) it samples: in = A @ out + o.

    A = rotation @ shear @ zoom as in Keras 2.0, about the image centre ((h-1)/2, (w-1)/2)
    (Keras 2.0 used h/2+0.5, one pixel past the centre; we use the true centre).
    With include_flips the later flips are folded in, so one warp does everything.
    """
    th = math.radians(p.theta)
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    shear = np.array([[1.0, -math.sin(p.shear)], [0.0, math.cos(p.shear)]])
    zoom = np.diag([p.zx, p.zy])
    a = rot @ shear @ zoom
    c = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    fm, fo = np.eye(2), np.zeros(2)
    if include_flips:
        if p.flip_v:
            fm[0, 0], fo[0] = -1.0, h - 1.0
        if p.flip_h:
            fm[1, 1], fo[1] = -1.0, w - 1.0
    return a @ fm, a @ (fo - c) + c


def channel_shifts(x: np.ndarray, shifts: Sequence[float]) -> np.ndarray:
    """Keras 2.0 channel shift of an HxWxC image, in place: channel c gets `shifts[c]`
    added and is clipped to the image's own min and max (over all channels)."""
    if not any(shifts[:x.shape[-1]]):
        return x
    lo, hi = np.float32(x.min()), np.float32(x.max())
    for c in range(x.shape[-1]):
        ch = x[:, :, c]
        np.add(ch, np.float32(shifts[c]), out=ch)
        np.clip(ch, lo, hi, out=ch)
    return x


def _shift_clip(x: np.ndarray, shift: float) -> np.ndarray:
    """Keras 2.0 channel shift of a one-channel image: add, then clip to its own range."""
    if shift == 0.0:
        return x
    lo, hi = float(x.min()), float(x.max())
    np.add(x, np.float32(shift), out=x)
    np.clip(x, np.float32(lo), np.float32(hi), out=x)
    return x


def augment_reference(x: np.ndarray, p: AugParams, interpolation: str = "bilinear") -> np.ndarray:
    """Slow, plain reference of one augmentation: scipy.ndimage like Keras 2.0 (nearest fill)."""
    import scipy.ndimage as ndi

    x = np.asarray(x, dtype=np.float32)
    a, o = affine_matrix(p, *x.shape)
    order = 1 if interpolation == "bilinear" else 0
    y = ndi.affine_transform(x.astype(np.float64), a, offset=o, order=order, mode="nearest")
    y = _shift_clip(y.astype(np.float32), p.shift)
    if p.flip_h:
        y = y[:, ::-1]
    if p.flip_v:
        y = y[::-1, :]
    return np.ascontiguousarray(y)


def augment_numpy(x: np.ndarray, p: AugParams, interpolation: str = "bilinear",
                  shift: bool = True) -> np.ndarray:
    """Fast augmentation of one float32 grey image, as used by the pipeline.

    One cv2.warpAffine with the flips folded into the matrix (replicate border = nearest
    fill), then the clipped intensity shift (unless `shift` is False: 3-channel inputs
    are shifted per channel after duplication, `channel_shifts`). Agrees with
    `augment_reference`: nearest is
    identical except at rounding ties; bilinear differs by cv2's 1/32-pixel weight
    quantisation (at most ~1/64 of a neighbour difference).
    """
    x = np.asarray(x, dtype=np.float32)
    h, w = x.shape
    a, o = affine_matrix(p, h, w, include_flips=True)
    if np.allclose(a, np.eye(2), rtol=0, atol=1e-12) and np.allclose(o, 0, rtol=0, atol=1e-9):
        y = x.copy()
    elif (np.allclose(np.abs(a), np.eye(2), rtol=0, atol=1e-12)
          and p.theta == 0 and p.shear == 0 and p.zx == 1 and p.zy == 1):
        code = {(True, False): 1, (False, True): 0, (True, True): -1}[(p.flip_h, p.flip_v)]
        y = cv2.flip(x, code)
    else:
        m = np.array([[a[1, 1], a[1, 0], o[1]], [a[0, 1], a[0, 0], o[0]]], dtype=np.float64)
        flag = cv2.INTER_LINEAR if interpolation == "bilinear" else cv2.INTER_NEAREST
        y = cv2.warpAffine(x, m, (w, h), flags=flag | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_REPLICATE)
    return _shift_clip(y, p.shift) if shift else y


def draw_params_tf(augment: Augment, seed: "tf.Tensor") -> "tf.Tensor":
    """Draw one AugParams vector (float32[7]) from a stateless seed (int[2])."""
    import tensorflow as tf

    u = tf.random.stateless_uniform([AugParams.VECTOR_LEN], seed=seed, dtype=tf.float32)
    z0, z1 = augment.zoom_range
    zero = tf.constant(0.0)
    theta = (2.0 * u[0] - 1.0) * augment.rotation_range if augment.rotation_range else zero
    shear = (2.0 * u[1] - 1.0) * augment.shear_range if augment.shear_range else zero
    if z0 == 1.0 and z1 == 1.0:
        zx = zy = tf.constant(1.0)
    else:
        zx, zy = z0 + (z1 - z0) * u[2], z0 + (z1 - z0) * u[3]
    shift = ((2.0 * u[4] - 1.0) * augment.channel_shift_range
             if augment.channel_shift_range else zero)
    fh = tf.cast(u[5] < 0.5, tf.float32) if augment.horizontal_flip else zero
    fv = tf.cast(u[6] < 0.5, tf.float32) if augment.vertical_flip else zero
    shift2, shift3 = (((2.0 * u[7] - 1.0) * augment.channel_shift_range,
                       (2.0 * u[8] - 1.0) * augment.channel_shift_range)
                      if augment.channel_shift_range else (zero, zero))
    return tf.stack([theta, shear, zx, zy, shift, fh, fv, shift2, shift3])


def element_seed(seed: int, index) -> "tf.Tensor":
    """Stateless seed of the index-th element drawn by a training pipeline."""
    import tensorflow as tf

    return tf.random.experimental.stateless_fold_in(
        tf.constant([int(seed), 0x5EED], dtype=tf.int64), tf.cast(index, tf.int64))


def draw_params(augment: Augment, seed: int, index: int) -> AugParams:
    """The AugParams a training pipeline with this seed uses for its index-th element."""
    return AugParams.from_vector(draw_params_tf(augment, element_seed(seed, index)).numpy())


# --------------------------------------------------------------------------- listing


def is_image_name(name: str) -> bool:
    """An image file by its extension; hidden names (".x", e.g. macOS "._x.png" resource
    forks) are not images and are skipped by every lister."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTS)


def list_class_folders(root: str | os.PathLike, class_list: Sequence[str]
                       ) -> tuple[list[str], np.ndarray]:
    """All images under ROOT/<class>/** (recursive, whitelisted extensions, sorted).

    The label of an image is the index of its class in `class_list`, never folder order.
    A class folder without images is allowed (see `empty_classes`); no images at all is not.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise DatasetError(f"{root}: dataset folder not found")
    if not class_list:
        raise DatasetError(f"{root}: empty class list")
    if len(set(class_list)) != len(class_list):
        raise DatasetError(f"{root}: duplicate class names in class list {list(class_list)}")
    paths: list[str] = []
    labels: list[int] = []
    for k, cls in enumerate(class_list):
        cdir = os.path.join(root, cls)
        if not os.path.isdir(cdir):
            raise DatasetError(f"{cdir}: class folder '{cls}' not found")
        found = []
        for dirpath, dirnames, filenames in os.walk(cdir, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found.extend(os.path.join(dirpath, f) for f in filenames if is_image_name(f))
        found.sort()
        paths.extend(found)
        labels.extend([k] * len(found))
    if not paths:
        raise DatasetError(f"{root}: no images ({', '.join(e[1:] for e in IMAGE_EXTS)}) "
                           f"in class folders {list(class_list)}")
    return paths, np.asarray(labels, dtype=np.int64)


def header_bit_depth(path: str) -> int | None:
    """Bit depth from the file header without decoding (8/16; None for DICOM or unknown).

    Refuses files that cannot be images: missing, empty, or with a wrong signature.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError as e:
        raise ImageReadError(f"{path}: cannot open ({e.strerror})") from None
    if not head:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    ext = os.path.splitext(path)[1].lower()
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        if len(head) < 26:
            raise ImageReadError(f"{path}: truncated PNG header")
        if _tail(path, 12)[4:8] != b"IEND":
            raise ImageReadError(f"{path}: truncated PNG (no end marker)")
        return 16 if head[24] == 16 else 8
    if head[:2] == b"\xff\xd8":
        if b"\xff\xd9" not in _tail(path, 16):
            raise ImageReadError(f"{path}: truncated JPEG (no end marker)")
        return 8
    if head[:2] == b"BM":
        return 8
    if ext in (".dcm", ".dicom") or head[128:132] == b"DICM":
        import pydicom
        try:
            ds = pydicom.dcmread(path, defer_size=1024, force=True)
        except Exception as e:  # noqa: BLE001 - any parse failure is an unreadable file
            raise ImageReadError(f"{path}: unreadable DICOM ({type(e).__name__})") from None
        if "PixelData" not in ds:
            raise ImageReadError(f"{path}: DICOM without pixel data")
        return None
    raise ImageReadError(f"{path}: not a PNG, JPEG, BMP or DICOM file (unknown signature)")


def _tail(path: str, n: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - n))
        return f.read()


def check_bit_depths(paths: Sequence[str], rescale_factor: float | None) -> set[int]:
    """Check every file's header up front; with a rescale factor, refuse mixed 8/16 bits.

    A single factor (e.g. 255/65535) fits one bit depth only, so a folder mixing 8- and
    16-bit images would be silently mis-scaled.
    """
    seen: dict[int, str] = {}
    for p in paths:
        depth = header_bit_depth(p)
        if depth is not None:
            seen.setdefault(depth, p)
    if rescale_factor is not None and len(seen) > 1:
        raise DatasetError(f"{seen[16]}: 16-bit image among 8-bit ones (e.g. {seen[8]}); one "
                           f"--rescale-factor ({rescale_factor}) cannot fit both: convert them "
                           "to one bit depth or use --img-scale")
    return set(seen)


def class_counts(labels: Sequence[int], class_list: Sequence[str]) -> dict[str, int]:
    """Number of images per class name, in class_list order."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(class_list))
    return {c: int(counts[i]) for i, c in enumerate(class_list)}


def empty_classes(labels: Sequence[int], class_list: Sequence[str]) -> list[str]:
    """Classes with no images (fine for training, worth a warning; fatal for AUROC)."""
    return [c for c, n in class_counts(labels, class_list).items() if n == 0]


def read_csv_list(csv_path: str | os.PathLike, class_list: Sequence[str] | None = None
                  ) -> tuple[list[str], np.ndarray]:
    """Read a CSV with columns path,label; labels are indices or class names (needs class_list).

    Relative paths are taken relative to the CSV file's folder.
    """
    csv_path = os.fspath(csv_path)
    if not os.path.isfile(csv_path):
        raise DatasetError(f"{csv_path}: CSV file not found")
    base = os.path.dirname(os.path.abspath(csv_path))
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [c.strip().lower() for c in (reader.fieldnames or [])]
        if "path" not in fields or "label" not in fields:
            raise DatasetError(f"{csv_path}: expected columns 'path,label', got {reader.fieldnames}")
        reader.fieldnames = fields
        paths: list[str] = []
        labels: list[int] = []
        for line, row in enumerate(reader, start=2):
            p, lab = (row["path"] or "").strip(), (row["label"] or "").strip()
            if not p:
                raise DatasetError(f"{csv_path}: line {line}: empty path")
            try:
                k = int(lab)
            except ValueError:
                if class_list is None or lab not in class_list:
                    raise DatasetError(f"{csv_path}: line {line}: unknown label {lab!r}"
                                       + ("" if class_list is None else f" (classes {list(class_list)})")
                                       ) from None
                k = list(class_list).index(lab)
            if k < 0 or (class_list is not None and k >= len(class_list)):
                raise DatasetError(f"{csv_path}: line {line}: label {k} out of range")
            paths.append(p if os.path.isabs(p) else os.path.join(base, p))
            labels.append(k)
    if not paths:
        raise DatasetError(f"{csv_path}: no rows")
    return paths, np.asarray(labels, dtype=np.int64)


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


# --------------------------------------------------------------------------- RAM cache


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


# --------------------------------------------------------------------------- tf.data


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
    min and max are the grey image's, and each shifted channel is computed contiguously
    before one interleaving merge (instead of strided adds over the 3-channel array)."""
    lo, hi = np.float32(x.min()), np.float32(x.max())
    chans = _scratch_planes(x.shape)
    for c in range(3):
        np.add(x, np.float32(shifts[c]), out=chans[c])
        np.clip(chans[c], lo, hi, out=chans[c])
    cv2.merge(list(chans), dst=out)


_SCRATCH = threading.local()


def _scratch_planes(shape: tuple[int, int]) -> np.ndarray:
    """Three float32 planes reused by this thread (fresh large arrays cost page faults)."""
    buf = getattr(_SCRATCH, "planes", None)
    if buf is None or buf.shape[1:] != tuple(shape):
        buf = _SCRATCH.planes = np.empty((3,) + tuple(shape), np.float32)
    return buf


def make_dataset(source: Sequence[str] | np.ndarray, labels: Sequence[int], recipe: Recipe,
                 nb_class: int, batch_size: int, *, training: bool,
                 augment: Augment | None = None, seed: int = 12345, load_ram: bool = False,
                 auto_batch_balance: bool = False, class_weight: dict | None = None,
                 num_workers: int | None = None, start_epoch: int = 0) -> "tf.data.Dataset":
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
    """
    import tensorflow as tf

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

    def load(idx, params):
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


# --------------------------------------------------------------------------- dataset statistics
RESCALE_16 = 255.0 / 65535.0


def rescale_for_bits(bits: int | None) -> float:
    """The factor that maps pixels of this bit depth to 0-255 (16 -> 0.003891, else 1)."""
    return RESCALE_16 if bits == 16 else 1.0


def mean_pixel(paths: Sequence[str], rescale_factor: float | None = None,
               img_size: Sequence[int] | None = None) -> tuple[float, float, int | None]:
    """(mean, rescale factor used, bit depth) over every pixel of every image.

    Raises `DatasetError` for no images or mixed 8/16-bit images.
    """
    if not paths:
        raise DatasetError("no images to average")
    depths = check_bit_depths(paths, 1.0)   # refuses a mix of 8 and 16 bits
    bits = next(iter(depths)) if len(depths) == 1 else None
    if rescale_factor is None:
        if bits is None:
            sample = read_image(paths[0])
            bits = 16 if sample.dtype == np.uint16 else 8 if sample.dtype == np.uint8 else None
        rescale_factor = rescale_for_bits(bits)
    recipe = Recipe(img_size=tuple(img_size) if img_size else None)
    total, count = 0.0, 0
    for p in paths:
        img = resize(read_image(p), recipe).astype(np.float64)
        total += float(img.sum())
        count += img.size
    return total / count * float(rescale_factor), float(rescale_factor), bits


# --------------------------------------------------------------------------- breast and patches
# Segmentation and the sliding-window sweep are image steps shared by the patch sampler,
# heatmaps and inference (docs/method.md); `dm_preprocess` and `dm_inference` re-export them.

Bbox = tuple[int, int, int, int]  # x, y, w, h (OpenCV order)


def breast_mask(img: np.ndarray, low_int_threshold: float = 0.05) -> tuple[np.ndarray, Bbox]:
    """Filled largest contour of the thresholded image (the breast) and its bounding box.

    The image is first scaled to 8 bits by its maximum; a threshold < 1 is a fraction of
    the 8-bit maximum, >= 1 an 8-bit intensity.
    """
    mx = float(img.max())
    if mx <= 0:
        h, w = img.shape[:2]
        return np.zeros((h, w), np.uint8), (0, 0, w, h)
    img8 = (img.astype(np.float32) / mx * 255).astype(np.uint8)
    th = int(img8.max() * low_int_threshold) if low_int_threshold < 1 else int(low_int_threshold)
    _, binary = cv2.threshold(img8, th, 255, cv2.THRESH_BINARY)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        h, w = img.shape[:2]
        return np.zeros((h, w), np.uint8), (0, 0, w, h)
    idx = int(np.argmax([cv2.contourArea(c) for c in contours]))
    mask = cv2.drawContours(np.zeros_like(binary), contours, idx, 255, thickness=-1)
    x, y, w, h = cv2.boundingRect(contours[idx])
    return mask, (int(x), int(y), int(w), int(h))


def segment_breast(img: np.ndarray, low_int_threshold: float = 0.05,
                   crop: bool = True) -> tuple[np.ndarray, Bbox]:
    """Zero everything outside the breast and (optionally) crop to its bounding box.

    Returns (image, bbox); apply the same crop to masks with `crop_img(mask, bbox)`.
    """
    mask, bbox = breast_mask(img, low_int_threshold)
    out = img.copy()
    out[mask == 0] = 0
    if crop:
        out = crop_img(out, bbox)
    return out, bbox


def crop_img(img: np.ndarray, bbox: Bbox) -> np.ndarray:
    """Crop by an (x, y, w, h) box."""
    x, y, w, h = bbox
    return img[y:y + h, x:x + w]


def add_img_margins(img: np.ndarray, margin: int) -> np.ndarray:
    """Zero-pad every side by `margin` pixels (so patches centred at the border fit)."""
    m = int(margin)
    return cv2.copyMakeBorder(img, m, m, m, m, cv2.BORDER_CONSTANT, value=0) if m > 0 else img


class SweepError(InputError):
    """A sliding-window sweep that cannot be laid out (image smaller than a patch, ...)."""


def sweep_grid(shape: tuple[int, int], patch_size: int, stride: int
               ) -> tuple[int, int, int, int]:
    """(rows, cols, y0, x0): every full patch position at `stride`, the sweep centred.

    (y0, x0) is the top-left corner of the first patch. (The original rounded
    (H - patch)/stride + 0.49, which drops the last position when the division is exact.)
    """
    h, w = int(shape[0]), int(shape[1])
    if h < patch_size or w < patch_size:
        raise SweepError(f"image of size {(h, w)} is smaller than the patch size {patch_size}")
    if stride < 1:
        raise SweepError(f"stride must be >= 1, got {stride}")
    rows = (h - patch_size) // stride + 1
    cols = (w - patch_size) // stride + 1
    y0 = (h - (patch_size + (rows - 1) * stride)) // 2
    x0 = (w - (patch_size + (cols - 1) * stride)) // 2
    return rows, cols, y0, x0


def prepare_patch(patch: np.ndarray, recipe: Recipe) -> np.ndarray:
    """A raw grey patch as network input: the recipe's steps 3-7 on the patch itself
    (img_scale uses the patch's own maximum, as patches were scaled in training)."""
    return finish_channels(grey_steps(patch, recipe), recipe)


@dataclass(frozen=True)
class Sweep:
    """Where the patches of a sliding window lie: `rows` x `cols` positions from (y0, x0)
    at `stride` on `padded` (`image`, the segmented grey image, with `margin` zero pixels
    on every side)."""

    image: np.ndarray
    padded: np.ndarray
    bbox: Bbox | None
    patch_size: int
    stride: int
    rows: int
    cols: int
    y0: int
    x0: int
    margin: int

    @property
    def centre0(self) -> tuple[int, int]:
        """Centre of the first patch in the coordinates of `image`."""
        half = self.patch_size // 2
        return self.y0 + half - self.margin, self.x0 + half - self.margin

    def patches(self, recipe: Recipe, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Patches start..stop-1 (row-major) as network input (`prepare_patch`)."""
        stop = self.rows * self.cols if stop is None else stop
        p, s = self.patch_size, self.stride
        corners = [(self.y0 + (i // self.cols) * s, self.x0 + (i % self.cols) * s)
                   for i in range(start, stop)]
        return np.stack([prepare_patch(self.padded[y:y + p, x:x + p], recipe)
                         for y, x in corners])


def sweep_image(img: np.ndarray, patch_size: int, stride: int, segment: bool = True,
                pad: bool = True, low_int_threshold: float = 0.05) -> Sweep:
    """Lay out a centred sweep over a grey image (already resized): optional breast
    segmentation (crop to the breast), then padding by half a patch so border pixels get
    centred patches."""
    if img.ndim != 2:
        raise SweepError(f"expected a 2-D grey image, got shape {img.shape}")
    bbox = None
    if segment:
        img, bbox = segment_breast(img, low_int_threshold)
    margin = patch_size // 2 if pad else 0
    padded = add_img_margins(img, margin)
    rows, cols, y0, x0 = sweep_grid(padded.shape, patch_size, stride)
    return Sweep(img, padded, bbox, patch_size, stride, rows, cols, y0, x0, margin)


def sweep_probs(predict_batch: Callable[[np.ndarray], np.ndarray], sweep: Sweep,
                recipe: Recipe, batch_size: int = 64) -> np.ndarray:
    """Class probabilities (rows, cols, classes) of every patch of a sweep, `batch_size`
    patches per call of `predict_batch` (float32 batch -> probabilities)."""
    n = sweep.rows * sweep.cols
    out = None
    for start in range(0, n, batch_size):
        batch = sweep.patches(recipe, start, min(n, start + batch_size))
        p = np.asarray(predict_batch(batch.astype(np.float32)))
        if out is None:
            out = np.empty((n, p.shape[-1]), np.float32)
        out[start:start + len(p)] = p
    return out.reshape(sweep.rows, sweep.cols, -1)


# --------------------------------------------------------------------------- the original's API
# The original's `dm_image` names, as thin adapters over the functions above (README, "Code
# written for the original"); no second pipeline. Where a name cannot keep its behaviour it
# raises `OriginalAPIError`, one line naming the replacement.

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
    """Sliding-window probability maps, as `dm_inference.sliding_window_heatmap`: resize to
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

    def flow(self, X, y=None, batch_size=32, shuffle=True, seed=None,
             auto_batch_balance=False, **ignored):
        """Batches of in-memory grey images (N, H, W[, 1]) with labels (one-hot or sparse);
        `auto_batch_balance` adds the original's per-batch sample weights."""
        if y is None:
            raise refuse("flow(X) without labels", "flow(X, y)")
        centre, mean = self._centre()
        X = np.asarray(X)
        recipe = Recipe(img_size=tuple(X.shape[1:3]), channels=1, featurewise_center=centre,
                        featurewise_mean=mean)
        labels = to_sparse(np.asarray(y)).astype(np.int64)
        names = [str(k) for k in range(max(int(labels.max()) + 1,
                                           np.asarray(y).shape[-1] if np.ndim(y) == 2 else 0))]
        return DMDirectoryIterator(None, self, recipe, names, "categorical", auto_batch_balance,
                                   batch_size, None, shuffle, seed, paths=X, labels=labels)

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
