"""The preprocessing recipe: `Recipe` and its steps from raw grey image to network input.

`Recipe`, the one frozen description of how a raw grey image
becomes network input (docs/method.md, section 2), and its steps (resize, scale, rescale,
equalise, channels, centring), with `preprocess` as the reference chain.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np

from dm_augment import AugParams, augment_numpy, channel_shifts
from dm_cli import OFF
from dm_errors import InputError


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
    prediction can refuse or convert images of another depth (docs/prediction.md).
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


# --------------------------------------------------------------------------- dataset statistics
RESCALE_16 = 255.0 / 65535.0


def rescale_for_bits(bits: int | None) -> float:
    """The factor that maps pixels of this bit depth to 0-255 (16 -> 0.003891, else 1)."""
    return RESCALE_16 if bits == 16 else 1.0


#: The recipe's flags (`dm_cli.add_recipe_flags`), by their Recipe field names.
RECIPE_FLAGS = ("img_size", "img_scale", "rescale_factor", "equalize_hist",
                "featurewise_center", "featurewise_mean", "input_bits")


def flag_values(flags: Any) -> dict[str, Any]:
    """The recipe flags of parsed arguments or a trainer's config (missing ones None)."""
    return {k: getattr(flags, k, None) for k in RECIPE_FLAGS}


#: The fields an override can switch off (`OFF`, from a `--no-X` flag): the optional ones.
SWITCHABLE = ("img_size", "target_height", "img_scale", "rescale_factor", "input_bits")


def apply_overrides(recipe: Recipe, **overrides: Any) -> Recipe:
    """`recipe` with the fields given as non-None keyword arguments replaced; `OFF` (a
    `--no-X` flag) switches an optional field off (None).

    `featurewise_mean` given alone also turns centring on; `img_size` given turns
    `target_height` off, and vice versa.
    """
    fields = {f.name for f in dataclasses.fields(Recipe)}
    unknown = set(overrides) - fields
    if unknown:
        raise TypeError(f"unknown recipe fields: {sorted(unknown)}")
    fixed = sorted(k for k, v in overrides.items() if v is OFF and k not in SWITCHABLE)
    if fixed:
        raise TypeError(f"recipe fields that cannot be switched off: {fixed}")
    changes = {k: None if v is OFF else v for k, v in overrides.items() if v is not None}
    if "featurewise_mean" in changes and "featurewise_center" not in changes:
        changes["featurewise_center"] = True
    if changes.get("img_size") is not None:
        changes["img_size"] = tuple(int(v) for v in changes["img_size"])
        changes.setdefault("target_height", None)
    elif changes.get("target_height") is not None:
        changes["img_size"] = None
    return dataclasses.replace(recipe, **changes)


def recipe_from_flags(flags: Any, base: Recipe | None = None, **fields: Any) -> Recipe:
    """The one mapping of the recipe flags to a `Recipe`: a new recipe, every flag's value
    taken as is (trainers: None means off), or `base` with the flags that were given (not
    None) replacing its values and `OFF` switching them off (prediction tools). `fields`
    sets what no flag carries (channels, the training images' bit depth), or what a tool
    decides instead of a flag (taking precedence over it; with `base`, None keeps the
    base's value)."""
    values = {**flag_values(flags), **fields}
    if base is not None:
        return apply_overrides(base, **values)
    values = {k: None if v is OFF else v for k, v in values.items()}
    if values["img_size"] is not None:
        values["img_size"] = tuple(values["img_size"])
    for switch in ("equalize_hist", "featurewise_center"):   # unset: the Recipe default
        if values[switch] is None:
            del values[switch]
    return Recipe(**values)
