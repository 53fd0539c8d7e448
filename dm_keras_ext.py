"""Keras extensions: patch nets, optimisers, staged training, callbacks, model I/O.

Saved models carry their class list and preprocessing recipe (`ModelMeta`): inside the
`.keras` zip as an extra member `dm_meta.json` (Keras ignores it on load), and as the
root attribute `dm_meta` of an `.h5` file.
"""
from __future__ import annotations

import json
import os
import pathlib
import tempfile
import zipfile
from dataclasses import dataclass, field

import keras

from dm_image import Recipe

META_MEMBER = "dm_meta.json"
META_ATTR = "dm_meta"


@dataclass(frozen=True)
class ModelMeta:
    """What a saved model needs to be used correctly: output column order and recipe."""

    class_list: tuple[str, ...]
    recipe: Recipe
    kind: str = "image"            # "patch" or "image"
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"class_list": list(self.class_list), "recipe": self.recipe.to_dict(),
                           "kind": self.kind, "extra": self.extra}, sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> "ModelMeta":
        d = json.loads(s)
        return cls(class_list=tuple(d["class_list"]), recipe=Recipe.from_dict(d["recipe"]),
                   kind=d.get("kind", "image"), extra=d.get("extra", {}))


def save_model(model: keras.Model, path: str | os.PathLike, meta: ModelMeta | None = None) -> None:
    """Save atomically (temporary file in the same folder, then rename) with `meta` inside.

    `.h5` paths use the legacy HDF5 format; anything else is saved as `.keras`.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    is_h5 = path.suffix.lower() in (".h5", ".hdf5")
    suffix = ".h5" if is_h5 else ".keras"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        if is_h5:
            model.save(tmp)
            if meta is not None:
                import h5py
                with h5py.File(tmp, "a") as f:
                    f.attrs[META_ATTR] = meta.to_json()
        else:
            model.save(tmp)
            if meta is not None:
                with zipfile.ZipFile(tmp, "a") as z:
                    z.writestr(META_MEMBER, meta.to_json())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read_model_meta(path: str | os.PathLike) -> ModelMeta | None:
    """The class list and recipe stored with a model file, or None if it has none."""
    path = pathlib.Path(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if META_MEMBER not in z.namelist():
                return None
            return ModelMeta.from_json(z.read(META_MEMBER).decode())
    import h5py
    with h5py.File(path, "r") as f:
        raw = f.attrs.get(META_ATTR)
    if raw is None:
        return None
    return ModelMeta.from_json(raw if isinstance(raw, str) else raw.decode())
