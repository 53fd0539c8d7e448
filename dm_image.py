"""Reading, preprocessing, augmentation and tf.data datasets for mammograms.

The preprocessing recipe (SPEC §2) is one small frozen object, `Recipe`, shared by
training, inference and saved models, so a model can never be scored with a recipe
other than the one it was trained with.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    """How a raw grey image becomes network input, in the order of SPEC §2.

    img_size: (H, W) to resize to (cubic); None keeps the size (or see target_height).
    target_height: resize to this height keeping the aspect ratio (used when img_size is None).
    img_scale: scale so the image maximum equals this value (None: off).
    rescale_factor: multiply by this factor (None: off), e.g. 255/65535 for 16-bit PNG.
    equalize_hist: histogram-equalise the image cast to 8 bits.
    channels: 3 (grey duplicated) or 1 (YaroslavNet).
    featurewise_center / featurewise_mean: subtract one scalar mean.
    """

    img_size: tuple[int, int] | None = (1152, 896)
    target_height: int | None = None
    img_scale: float | None = None
    rescale_factor: float | None = None
    equalize_hist: bool = False
    channels: int = 3
    featurewise_center: bool = False
    featurewise_mean: float = 0.0

    def __post_init__(self) -> None:
        if self.img_size is not None:
            object.__setattr__(self, "img_size", tuple(int(v) for v in self.img_size))
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")

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
            raise ValueError(f"unknown recipe keys: {sorted(unknown)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> "Recipe":
        return cls.from_dict(json.loads(s))


@dataclass(frozen=True)
class Augment:
    """Training augmentation with the paper's parameters (SPEC §2 step 6)."""

    horizontal_flip: bool = True
    vertical_flip: bool = True
    rotation_range: float = 25.0        # degrees, +/-
    shear_range: float = 0.2            # radians, +/-
    zoom_range: tuple[float, float] = (0.8, 1.2)
    channel_shift_range: float = 20.0   # intensity units, +/-
    fill_mode: str = "nearest"
    interpolation: str = "bilinear"     # or "nearest" (the Keras 2.0 generator's order 0)
