"""Export a model for serving: a TensorFlow SavedModel with the preprocessing recipe inside.

Raw grey images go in (B, H0, W0) as uint16, uint8 or float32; the graph resizes them to
the recipe's size, applies img_scale / rescale_factor / featurewise centring, makes the
channels and returns the class probabilities. Endpoints: `serve` (float32, no rounding,
e.g. DICOM with a modality rescale), `serve_uint16` and `serve_uint8` (the resized image
is rounded and clipped to the input's type, as cv2 does for integer images).

Resize: `cv2cubic` (default) is cv2.INTER_CUBIC re-implemented with gathers (Keys cubic
a = -0.75, half-pixel centres, edge replicate, no antialiasing), so the export matches
`predict.py`; `bicubic` / `bilinear` are tf.image.resize (bicubic there is Keys a = -0.5,
which differs from cv2 by up to a few percent of the local contrast).
"""
from __future__ import annotations

import json
import logging
import os
from typing import Sequence

import keras
import tensorflow as tf

import dm_output
from dm_errors import InputError
from dm_recipe import Recipe

log = logging.getLogger(__name__)

RESIZE_MODES = ("cv2cubic", "bicubic", "bilinear")
META_FILE = "dm_meta.json"


class ExportError(InputError):
    """A model/recipe combination that cannot be exported."""


def _cubic_taps(in_size, out_size: int, a: float = -0.75):
    """Source indices (out, 4) and weights (out, 4) of cv2's cubic resize along one axis."""
    in_f = tf.cast(in_size, tf.float32)
    scale = in_f / float(out_size)
    src = (tf.range(out_size, dtype=tf.float32) + 0.5) * scale - 0.5
    x0 = tf.floor(src)
    t = src - x0
    w0 = ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a
    w1 = ((a + 2) * t - (a + 3)) * t * t + 1
    u = 1 - t
    w2 = ((a + 2) * u - (a + 3)) * u * u + 1
    w3 = 1 - w0 - w1 - w2
    base = tf.cast(x0, tf.int32)
    idx = tf.stack([base - 1, base, base + 1, base + 2], axis=1)
    idx = tf.clip_by_value(idx, 0, tf.cast(in_size, tf.int32) - 1)
    return idx, tf.stack([w0, w1, w2, w3], axis=1)


def cv2_cubic_resize(x, out_hw: Sequence[int]):
    """Resize a (B, H, W) float32 batch like cv2.resize(..., INTER_CUBIC) on float32 input."""
    oh, ow = int(out_hw[0]), int(out_hw[1])
    shape = tf.shape(x)
    ridx, rw = _cubic_taps(shape[1], oh)
    cidx, cw = _cubic_taps(shape[2], ow)
    rows = tf.gather(x, ridx, axis=1)                        # (B, oh, 4, W)
    x = tf.einsum("bokw,ok->bow", rows, rw)
    cols = tf.gather(x, cidx, axis=2)                        # (B, oh, ow, 4)
    return tf.einsum("bhok,ok->bho", cols, cw)


def depth_factor(recipe: Recipe, int_max: float | None) -> float | None:
    """Pixel factor that converts an integer input with maximum `int_max` to the bit depth
    the model was trained on (None: no conversion needed or depth not recorded)."""
    if int_max is None or recipe.input_bits is None or recipe.img_scale is not None:
        return None
    want = 2.0 ** recipe.input_bits - 1
    return None if want == int_max else want / float(int_max)


def preprocess_graph(raw, recipe: Recipe, resize: str = "cv2cubic", int_max: float | None = None):
    """The recipe in TF ops: (B, H0, W0) raw grey -> (B, H, W, C) float32 network input.

    `int_max`: the input was integer with this maximum value: round and clip the resized
    image to [0, int_max] as cv2 does when it resizes an integer image, then convert it to
    the recipe's `input_bits` (as `predict.py --convert-bit-depth` does), so `serve_uint8`
    and `serve_uint16` both give the right answer whatever depth the model was trained on.
    """
    if recipe.equalize_hist:
        raise ExportError("equalize_hist is not supported in the exported graph "
                          "(cv2.equalizeHist has no exact TF equivalent); score with predict.py")
    if recipe.img_size is None:
        raise ExportError("the recipe has no fixed image size (img_size); export needs one")
    if resize not in RESIZE_MODES:
        raise ExportError(f"unknown resize {resize!r}; choose from {', '.join(RESIZE_MODES)}")
    x = tf.cast(raw, tf.float32)
    if resize == "cv2cubic":
        x = cv2_cubic_resize(x, recipe.img_size)
    else:
        x = tf.image.resize(x[..., None], recipe.img_size, method=resize)[..., 0]
    if int_max is not None:
        x = tf.clip_by_value(tf.round(x), 0.0, float(int_max))
        factor = depth_factor(recipe, int_max)
        if factor is not None:
            x = x * tf.constant(factor, tf.float32)
    if recipe.img_scale is not None:
        m = tf.reduce_max(x, axis=(1, 2), keepdims=True)
        m = tf.where(m == 0, tf.cast(recipe.img_scale, tf.float32), m)
        x = x * (float(recipe.img_scale) / m)
    if recipe.rescale_factor is not None:
        x = x * tf.constant(recipe.rescale_factor, tf.float32)
    if recipe.featurewise_center:
        x = x - tf.constant(recipe.featurewise_mean, tf.float32)
    return tf.repeat(x[..., None], recipe.channels, axis=-1)


def export_serving(model, recipe: Recipe, class_list: Sequence[str], out_dir: str,
                   resize: str = "cv2cubic") -> str:
    """Write a SavedModel (three endpoints, see module doc) and `assets/dm_meta.json`.

    Each endpoint returns {"probabilities": (B, classes)}, column i = class_list[i].

    Written to a temporary folder beside `out_dir`, then renamed into place.
    """
    export(model, recipe, class_list, out_dir=out_dir, resize=resize)
    return out_dir


def export(model, recipe: Recipe, class_list: Sequence[str], out_dir: str | None = None,
           onnx_path: str | None = None, resize: str = "cv2cubic", opset: int = 17) -> None:
    """The SavedModel (`out_dir`) and/or ONNX file (`onnx_path`), all-or-nothing: both are
    built and written under temporary names first and renamed into place together, so a
    failed export (tf2onnx missing, a recipe the graph cannot carry, a full disk) leaves
    every earlier export as it was."""
    if onnx_path is not None:
        _tf2onnx()                                  # refuse before anything is built
    write_saved = _serving_writer(model, recipe, class_list, resize) if out_dir else None
    proto = _onnx_proto(model, recipe, resize, opset) if onnx_path else None
    with dm_output.Staging() as stage:
        if write_saved is not None:
            write_saved(stage.folder(os.path.abspath(out_dir)))
        if proto is not None:
            with open(stage.file(onnx_path, ".onnx"), "wb") as f:
                f.write(proto.SerializeToString())
    if out_dir:
        log.info("call it with: m = tf.saved_model.load(%r); m.serve_uint16(images)"
                 "['probabilities'] (images: uint16 (B, H, W); serve_uint8 for 8-bit, serve "
                 "for float32 %s); column i is class %s", out_dir,
                 f"{recipe.input_bits}-bit values" if recipe.input_bits else "raw values",
                 ", ".join(f"{i}={c}" for i, c in enumerate(class_list)))


class _NoTempAssetsLine(logging.Filter):
    """TensorFlow's `Assets written to: <folder>` names our hidden temporary folder."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Assets written to")


def _serving_writer(model, recipe: Recipe, class_list: Sequence[str], resize: str):
    """A function filling a folder with the SavedModel (checks the recipe first)."""
    if int(model.inputs[0].shape[-1]) != recipe.channels:
        raise ExportError(f"the model takes {model.inputs[0].shape[-1]} channels, the recipe "
                          f"makes {recipe.channels}")
    preprocess_graph(tf.zeros([1, 8, 8]), recipe, resize)   # refuse bad recipes early
    archive = keras.export.ExportArchive()
    archive.track(model)

    def endpoint(dtype, int_max):
        def serve(raw):
            probs = model(preprocess_graph(raw, recipe, resize, int_max), training=False)
            return {"probabilities": probs}
        return serve

    archive.add_endpoint("serve", endpoint(tf.float32, None),
                         input_signature=[tf.TensorSpec([None, None, None], tf.float32)])
    archive.add_endpoint("serve_uint16", endpoint(tf.uint16, 65535.0),
                         input_signature=[tf.TensorSpec([None, None, None], tf.uint16)])
    archive.add_endpoint("serve_uint8", endpoint(tf.uint8, 255.0),
                         input_signature=[tf.TensorSpec([None, None, None], tf.uint8)])

    def write(tmp: str) -> None:
        tf_log, quiet = logging.getLogger("tensorflow"), _NoTempAssetsLine()
        tf_log.addFilter(quiet)
        try:
            archive.write_out(tmp, verbose=False)
        finally:
            tf_log.removeFilter(quiet)
        os.makedirs(os.path.join(tmp, "assets"), exist_ok=True)
        with open(os.path.join(tmp, "assets", META_FILE), "w") as f:
            json.dump({"class_list": list(class_list), "recipe": recipe.to_dict(),
                       "resize": resize, "output": "probabilities",
                       "serve_float_input_bits": recipe.input_bits,
                       "endpoints": ["serve", "serve_uint16", "serve_uint8"]}, f, indent=1)
    return write


def load_serving(path: str):
    """(loaded SavedModel, its meta dict) for calling `.serve(raw)` etc."""
    meta_path = os.path.join(path, "assets", META_FILE)
    if not os.path.isfile(meta_path):
        raise ExportError(f"{path}: not an exported model ({META_FILE} missing)")
    with open(meta_path) as f:
        meta = json.load(f)
    return tf.saved_model.load(path), meta


def export_onnx(model, recipe: Recipe, out_path: str, resize: str = "cv2cubic",
                opset: int = 17) -> str:
    """Write an ONNX model (raw float32 (B, H0, W0) in, probabilities out), recipe inside.

    Needs the optional packages tf2onnx and onnx (tf2onnx 1.17.0 + onnx 1.23.2 converted
    this graph under TF 2.21 with outputs equal to TF within 1.2e-7); they are not in
    requirements.txt, so this raises a clear error when they are missing.
    """
    export(model, recipe, (), onnx_path=out_path, resize=resize, opset=opset)
    return out_path


def _tf2onnx():
    try:
        import tf2onnx
    except ImportError:
        raise ExportError("ONNX export needs the optional package tf2onnx "
                          "(pip install tf2onnx onnx); nothing was exported") from None
    return tf2onnx


def _onnx_proto(model, recipe: Recipe, resize: str, opset: int):
    tf2onnx = _tf2onnx()
    preprocess_graph(tf.zeros([1, 8, 8]), recipe, resize)
    spec = (tf.TensorSpec((None, None, None), tf.float32, name="raw"),)
    fn = tf.function(lambda raw: model(preprocess_graph(raw, recipe, resize), training=False),
                     input_signature=spec)
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=opset)
    return proto
