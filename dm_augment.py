"""Training augmentation: the paper's parameters, seeded draws, the reference warp.

Training augmentation with the paper's parameters: the `Augment` settings, one explicit
draw (`AugParams`), its seeded draws in NumPy and TensorFlow, and the NumPy reference warp
(docs/method.md, section 2, step 5).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import cv2
import numpy as np

from dm_errors import InputError

# OpenCV splits a warp among its own threads in stripes whose layout depends on how busy the
# machine is, and its fixed-point interpolation rounds differently per stripe layout: on a
# loaded CPU the same augmentation gave different pixels from run to run. The input pipeline
# already runs batches in parallel (dm_dataset), so OpenCV's own threads are turned off.
cv2.setNumThreads(0)
if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf


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
    import scipy.ndimage as ndi  # deferred for --help (docs/modules.md)

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
    import tensorflow as tf  # deferred for --help (docs/modules.md)

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
    import tensorflow as tf  # deferred for --help (docs/modules.md)

    return tf.random.experimental.stateless_fold_in(
        tf.constant([int(seed), 0x5EED], dtype=tf.int64), tf.cast(index, tf.int64))


def draw_params(augment: Augment, seed: int, index: int) -> AugParams:
    """The AugParams a training pipeline with this seed uses for its index-th element."""
    return AugParams.from_vector(draw_params_tf(augment, element_seed(seed, index)).numpy())
