"""The model-file format: what a saved model carries, and saving, loading and checking it.

Saved models carry their class list and preprocessing recipe (`ModelMeta`): inside the
`.keras` zip as an extra member `dm_meta.json` (Keras ignores it on load), and as the root
attribute `dm_meta` of an `.h5` file. A last-epoch checkpoint also carries the run's resume
position in `ModelMeta.extra["resume"]`. A whole-image model trained here also records its
trunk's own `trainable` flags as Keras 2.0.8 would have saved them (`dm_trainable.json` /
`dm_trainable`; see `record_trunk_frozen`). Every write is atomic (`dm_output`). See
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
TRAINABLE_MEMBER = "dm_trainable.json"
TRAINABLE_ATTR = "dm_trainable"
ZIP_START = b"PK\x03\x04"          # how every .keras file (a zip) begins
_TRUNK_FROZEN = "_dm_trunk_frozen"   # the record, carried on the model object


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

    frozen = recorded_trunk_frozen(model)
    extras = {}
    if meta is not None:
        extras[(META_MEMBER, META_ATTR)] = meta.to_json()
    if frozen is not None:
        extras[(TRAINABLE_MEMBER, TRAINABLE_ATTR)] = json.dumps({"trunk_frozen": list(frozen)})

    def write(tmp: str) -> None:
        model.save(tmp)
        for (member, attr), text in extras.items():
            if is_h5:
                with h5py.File(tmp, "a") as f:
                    f.attrs[attr] = text
            else:
                with zipfile.ZipFile(tmp, "a") as z:
                    z.writestr(member, text)
    dm_output.write_named(str(path), write, ".h5" if is_h5 else ".keras")


def record_trunk_frozen(model: keras.Model, names: "tuple[str, ...] | None") -> None:
    """Carry with `model` the names of its trunk layers whose own `trainable` flag is
    false as Keras 2.0.8 would have kept it, for `save_model` to write (None: no record).

    Freezing the trunk sub-model in Keras 3 sets the flag of every layer inside it, so
    a whole-image model saved while its trunk is frozen (image stage 1) would read as
    all-frozen; Keras 2.0.8 froze only the nested model and saved each inner layer's own
    flag (docs/fidelity.md, "saved `trainable` flags"). The stage loop keeps this record
    (`dm_stages.set_trainable`); `load_model` restores it.
    """
    object.__setattr__(model, _TRUNK_FROZEN, None if names is None else tuple(sorted(names)))


def recorded_trunk_frozen(model: keras.Model) -> "tuple[str, ...] | None":
    """The record `record_trunk_frozen` set or `load_model` read, else None."""
    return model.__dict__.get(_TRUNK_FROZEN)


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

    Raises `ModelFileError` for a file that is neither a `.keras` zip nor HDF5 (a zip cut
    short is called truncated or corrupt), or whose stored metadata cannot be parsed.
    """
    raw = _read_extra(path, META_MEMBER, META_ATTR)
    if raw is None:
        return None
    try:
        return ModelMeta.from_json(raw)
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise ModelFileError(f"{path}: cannot read the model's stored class list/recipe "
                             f"({type(e).__name__}: {e})") from None


def _read_extra(path: str | os.PathLike, member: str, attr: str) -> str | None:
    """The text the project stored beside the model: a `.keras` zip member or an `.h5`
    root attribute (None if absent)."""
    path = pathlib.Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return z.read(member).decode() if member in z.namelist() else None
    if not h5py.is_hdf5(path):
        with open(path, "rb") as f:
            zip_start = f.read(len(ZIP_START)) == ZIP_START
        if zip_start:   # an interrupted download or copy, not another kind of file
            raise ModelFileError(f"{path}: a truncated or corrupt .keras file (it begins as one "
                                 "but its end is missing or damaged)")
        raise ModelFileError(f"{path}: not a model file (neither a .keras zip nor HDF5)")
    with h5py.File(path, "r") as f:
        raw = f.attrs.get(attr)
    return raw if raw is None or isinstance(raw, str) else raw.decode()


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
    raw = _read_extra(path, TRAINABLE_MEMBER, TRAINABLE_ATTR)
    if raw is not None:
        try:
            record_trunk_frozen(model, tuple(json.loads(raw)["trunk_frozen"]))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ModelFileError(f"{path}: cannot read the model's stored trainable flags "
                                 f"({type(e).__name__}: {e})") from None
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
