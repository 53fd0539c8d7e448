"""The model-file format: what a saved model carries, and saving, loading and checking it.

Saved models carry their class list and preprocessing recipe (`ModelMeta`): inside the
`.keras` zip as an extra member `dm_meta.json` (Keras ignores it on load), and as the root
attribute `dm_meta` of an `.h5` file. A last-epoch checkpoint also carries the run's resume
position in `ModelMeta.extra["resume"]`. Every write is atomic (`dm_output`). See
docs/training.md and docs/reliability.md.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil
import zipfile
from dataclasses import dataclass, field

import h5py
import keras

import dm_checkpoint
import dm_output
from dm_errors import InputError, InputFileNotFoundError
from dm_recipe import Recipe

log = logging.getLogger(__name__)

META_MEMBER = "dm_meta.json"
META_ATTR = "dm_meta"


@dataclass(frozen=True)
class ModelMeta:
    """What a saved model needs to be used correctly: output column order, recipe (whose
    img_size is the size it was trained at) and kind (patch or whole-image classifier)."""

    class_list: tuple[str, ...]
    recipe: Recipe
    kind: str | None = "image"     # "patch" or "image"; None: a file that records none
    extra: dict = field(default_factory=dict)
    calibration: dict | None = None   # fitted by calibrate.py (dm_calibration); optional

    def to_json(self) -> str:
        d = {"class_list": list(self.class_list), "recipe": self.recipe.to_dict(),
             "kind": self.kind, "extra": self.extra}
        if self.calibration is not None:
            d["calibration"] = self.calibration
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> "ModelMeta":
        d = json.loads(s)
        return cls(class_list=tuple(d["class_list"]), recipe=Recipe.from_dict(d["recipe"]),
                   kind=d.get("kind"), extra=d.get("extra", {}),
                   calibration=d.get("calibration"))


def save_model(model: keras.Model, path: str | os.PathLike, meta: ModelMeta | None = None) -> None:
    """Save atomically (temporary file in the same folder, then rename) with `meta` inside.

    `.h5` paths use the legacy HDF5 format; anything else is saved as `.keras`.
    """
    path = pathlib.Path(path)
    is_h5 = path.suffix.lower() in (".h5", ".hdf5")

    def write(tmp: str) -> None:
        model.save(tmp)
        if meta is None:
            return
        if is_h5:
            with h5py.File(tmp, "a") as f:
                f.attrs[META_ATTR] = meta.to_json()
        else:
            with zipfile.ZipFile(tmp, "a") as z:
                z.writestr(META_MEMBER, meta.to_json())
    dm_output.write_named(str(path), write, ".h5" if is_h5 else ".keras")


class ModelFileError(InputError):
    """A file that is not a model file, or whose stored class list/recipe is unreadable."""


class ModelKindError(InputError):
    """A patch model where a whole-image model is expected, or the reverse."""


def check_model_kind(path: str | os.PathLike, expected: str, flag: str, other: str) -> None:
    """Refuse a model file whose stored kind is not `expected` (files without one pass)."""
    if not os.path.isfile(path):
        raise InputFileNotFoundError(f"{path}: model file not found ({flag})")
    try:
        meta = read_model_meta(path)
    except ModelFileError:  # not a zip / not HDF5: the loader will say what is wrong
        return
    if meta is not None and meta.kind is not None and meta.kind != expected:
        raise ModelKindError(f"{path}: this is a {meta.kind} model, but {flag} takes a "
                             f"{expected} model; use {other} for it")


def read_model_meta(path: str | os.PathLike) -> ModelMeta | None:
    """The class list and recipe stored with a model file, or None if it has none.

    Raises `ModelFileError` for a file that is neither a `.keras` zip nor HDF5, or whose
    stored metadata cannot be parsed.
    """
    path = pathlib.Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if META_MEMBER not in z.namelist():
                return None
            raw = z.read(META_MEMBER).decode()
    else:
        if not h5py.is_hdf5(path):
            raise ModelFileError(f"{path}: not a model file (neither a .keras zip nor HDF5)")
        with h5py.File(path, "r") as f:
            raw = f.attrs.get(META_ATTR)
        if raw is None:
            return None
        raw = raw if isinstance(raw, str) else raw.decode()
    try:
        return ModelMeta.from_json(raw)
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise ModelFileError(f"{path}: cannot read the model's stored class list/recipe "
                             f"({type(e).__name__}: {e})") from None



def write_model_meta(path: str | os.PathLike, meta: ModelMeta,
                     out: str | os.PathLike | None = None) -> None:
    """Replace the metadata of a saved model file (the weights are copied unchanged), into
    `out` or in place; atomic (temporary file in the same folder, then rename)."""
    path = pathlib.Path(path)
    out = pathlib.Path(out) if out is not None else path

    def write(tmp: str) -> None:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w") as dst:
                for info in src.infolist():
                    if info.filename != META_MEMBER:
                        dst.writestr(info, src.read(info.filename))
                dst.writestr(META_MEMBER, meta.to_json())
        else:
            shutil.copyfile(path, tmp)
            with h5py.File(tmp, "a") as f:
                f.attrs[META_ATTR] = meta.to_json()
    dm_output.write_named(str(out), write, out.suffix)


def load_model(path: str | os.PathLike, safe_mode: bool = True, compile: bool = False) -> keras.Model:
    """Load a model file: `.keras`, or `.h5` from Keras 3 or Keras 2.0-2.x (`dm_checkpoint`).

    Lambda layers are refused unless `safe_mode=False` (`--unsafe-load`).
    """
    model = dm_checkpoint.load_model(path, safe_mode=safe_mode, compile=compile)
    if not compile:
        set_precision(model, None)   # a model trained in mixed precision predicts in float32
    return model


PRECISIONS = ("float16", "bfloat16")


def set_precision(model: keras.Model, precision: str | None) -> keras.Model:
    """Compute every layer in float32 (`precision` None) or in mixed `precision`
    ("float16" or "bfloat16": float32 weights, low-precision compute), keeping the output
    layer (the softmax) in float32 either way. Takes effect at the next call or trace;
    returns the model."""
    if precision not in (None, *PRECISIONS):
        raise ValueError(f"unknown precision {precision!r}; choose {', '.join(PRECISIONS)}")
    policy = f"mixed_{precision}" if precision else "float32"
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if not isinstance(layer, keras.layers.InputLayer):
            layer.dtype_policy = policy
    if precision:
        model.layers[-1].dtype_policy = "float32"
    return model


def read_resume_state(path: str | os.PathLike) -> dict | None:
    """The run position stored in a last-epoch checkpoint, or None."""
    if not os.path.exists(path):
        return None
    try:
        meta = read_model_meta(path)
    except (InputError, OSError):  # a damaged file is as good as none: start over
        log.warning("%s: unreadable last checkpoint, ignored", path)
        return None
    return None if meta is None else meta.extra.get("resume")
