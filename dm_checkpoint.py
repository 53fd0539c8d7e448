"""Load model files from any Keras era into ordinary Keras 3 models.

The published whole-image checkpoints were written by Keras 2.0.8: today's Keras refuses
them (nested sub-models called on a new input, Sequential configs stored as plain lists,
retired config keys, Lambda layers holding Python 2 bytecode). `load_model` rebuilds such
files layer by layer from their JSON `model_config` and copies the saved weights, so the
result is a plain Keras 3 model that saves to `.keras` and reloads without this module
(except where Keras 2 semantics have no Keras 3 built-in: `hard_sigmoid`, see below).

Supported: `.keras` zips and Keras 3 `.h5` (delegated to Keras), Keras 2.x `.h5` (back to
2.0.0, TensorFlow backend), and Keras 1.2 Sequential/functional files with common layers
(Dense, Conv2D, pooling, Dropout, Flatten, Activation, BatchNormalization, LSTM, Merge).
Not supported: Theano-backend convolution kernels, custom layer classes, Lambda functions
that are not simple arithmetic in Python 2 bytecode, weights-only files (no model_config).
"""
from __future__ import annotations

import base64
import inspect
import json
import logging
import os
import pathlib
import re
import struct
import zipfile
from typing import Any

import h5py
import keras
import numpy as np
from keras.src.legacy.saving import legacy_h5_format  # suffix-independent .h5 loader

import dm_errors
import dm_layers  # noqa: F401  registers the project's own layers (ImageNetPreprocess)
from dm_errors import InputError

log = logging.getLogger(__name__)

__all__ = ["CheckpointError", "UnsafeCheckpointError", "CheckpointNotFoundError",
           "load_model", "model_from_keras2_config", "read_keras2_info", "keras2_hard_sigmoid"]


class CheckpointError(InputError):
    """A model file that cannot be turned into a Keras 3 model (message names file and layer)."""


class UnsafeCheckpointError(CheckpointError):
    """The file holds Python code (Lambda layers) and the caller did not opt in."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The model file does not exist."""


@keras.saving.register_keras_serializable(package="dm_checkpoint")
def keras2_hard_sigmoid(x):
    """Keras 1/2 hard sigmoid, clip(0.2 x + 0.5, 0, 1); Keras 3's has slope 1/6 instead."""
    return keras.ops.clip(0.2 * x + 0.5, 0.0, 1.0)


_MODEL_CLASSES = ("Model", "Functional", "Sequential")
_H5_SUFFIXES = (".h5", ".hdf5")


# --------------------------------------------------------------------------- entry points
def load_model(path: str | os.PathLike, safe_mode: bool = True, compile: bool = False) -> keras.Model:
    """Load a `.keras`, Keras 3 `.h5` or Keras 1.2/2.x `.h5` model file as a Keras 3 model.

    safe_mode=True refuses files with Lambda layers (`UnsafeCheckpointError`); pass False
    only for files you trust. Optimizer state of old files is ignored; `compile` applies to
    files Keras 3 loads itself (old files are always returned uncompiled).
    """
    p = pathlib.Path(path)
    if not p.exists():
        raise CheckpointNotFoundError(f"{p}: model file not found")
    if not p.is_file():
        raise CheckpointError(f"{p}: not a file")
    if zipfile.is_zipfile(p):
        cfg = _keras_zip_config(p)
        if safe_mode:
            _refuse_lambda(cfg, p)
        try:
            return keras.saving.load_model(p, compile=compile, safe_mode=safe_mode)
        except Exception as e:  # noqa: BLE001 - turn any Keras failure into one clear line
            raise CheckpointError(f"{p}: Keras could not load this .keras file: {_one_line(e)}") from e
    if not h5py.is_hdf5(p):
        raise CheckpointError(f"{p}: not a model file (neither a .keras zip nor HDF5)")
    with h5py.File(p, "r") as f:
        version = _attr_str(f.attrs.get("keras_version")) or ""
        raw = f.attrs.get("model_config")
        if raw is None:
            what = "a weights-only file" if "layer_names" in f.attrs else "not a Keras model file"
            raise CheckpointError(f"{p}: no model_config attribute ({what}); cannot build a model from it")
        try:
            cfg = json.loads(_attr_str(raw))
        except ValueError as e:
            raise CheckpointError(f"{p}: model_config is not valid JSON: {e}") from e
        if safe_mode:
            _refuse_lambda(cfg, p)
        if version.startswith("3."):
            return _load_keras3_h5(p, compile=compile, safe_mode=safe_mode)
        backend = _attr_str(f.attrs.get("backend")) or "tensorflow"
        ctx = _Ctx(source=str(p), safe_mode=safe_mode, keras1=version.startswith("1.") or _looks_keras1(cfg),
                   backend=backend)
        model = _build_model(cfg, ctx)
        weights_group = f["model_weights"] if "model_weights" in f else f
        _load_weights(model, weights_group, ctx)
    log.info("loaded %s (Keras %s) as %s with %d layers", p, version or "?", type(model).__name__,
             len(model.layers))
    return model


def model_from_keras2_config(config: dict | str, safe_mode: bool = True,
                             source: str = "<config>") -> keras.Model:
    """Build (uninitialised) a Keras 3 model from a Keras 1/2 `model.to_json()` config."""
    cfg = json.loads(config) if isinstance(config, str) else config
    if safe_mode:
        _refuse_lambda(cfg, source)
    ctx = _Ctx(source=source, safe_mode=safe_mode, keras1=_looks_keras1(cfg),
               backend=cfg.get("backend", "tensorflow") if isinstance(cfg, dict) else "tensorflow")
    return _build_model(cfg, ctx)


def read_keras2_info(path: str | os.PathLike) -> dict:
    """keras_version, backend and top-level class of an HDF5 model file (for messages/CLIs)."""
    with h5py.File(path, "r") as f:
        cfg = f.attrs.get("model_config")
        return {"keras_version": _attr_str(f.attrs.get("keras_version")),
                "backend": _attr_str(f.attrs.get("backend")),
                "class_name": json.loads(_attr_str(cfg)).get("class_name") if cfg is not None else None}


# --------------------------------------------------------------------------- helpers
class _Ctx:
    def __init__(self, source: str, safe_mode: bool, keras1: bool, backend: str):
        self.source, self.safe_mode, self.keras1, self.backend = source, safe_mode, keras1, backend

    def error(self, layer: str | None, msg: str, cls: type = CheckpointError) -> CheckpointError:
        where = f"layer '{layer}': " if layer else ""
        return cls(f"{self.source}: {where}{msg}")


def _attr_str(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.ndarray) and v.shape == ():
        return _attr_str(v.item())
    return str(v)


def _one_line(e: BaseException) -> str:
    return dm_errors.shorten(str(e), 300)   # cut in the middle: the reason is at the end


def _keras_zip_config(p: pathlib.Path) -> dict:
    try:
        with zipfile.ZipFile(p) as z:
            return json.loads(z.read("config.json"))
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{p}: zip file without a Keras config.json; not a .keras model") from e


def _load_keras3_h5(p: pathlib.Path, compile: bool, safe_mode: bool) -> keras.Model:
    try:
        if p.suffix.lower() in _H5_SUFFIXES:
            return keras.saving.load_model(p, compile=compile, safe_mode=safe_mode)
        return legacy_h5_format.load_model_from_hdf5(str(p), compile=compile, safe_mode=safe_mode)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{p}: Keras could not load this Keras 3 .h5 file: {_one_line(e)}") from e


def _iter_layer_cfgs(cfg: Any):
    """Every layer config (recursively into nested models) of a saved model config."""
    if not isinstance(cfg, dict):
        return
    conf = cfg.get("config")
    layers = conf if isinstance(conf, list) else (conf or {}).get("layers") if isinstance(conf, dict) else None
    for lc in layers or []:
        if not isinstance(lc, dict):
            continue
        yield lc
        if lc.get("class_name") in _MODEL_CLASSES:
            yield from _iter_layer_cfgs(lc)


def _layer_name(lc: dict) -> str:
    return lc.get("name") or (lc.get("config") or {}).get("name") or "?"


def _refuse_lambda(cfg: dict, source: Any) -> None:
    for lc in _iter_layer_cfgs(cfg):
        if lc.get("class_name") == "Lambda":
            raise UnsafeCheckpointError(
                f"{source}: layer '{_layer_name(lc)}' is a Lambda layer (saved Python code); refusing "
                "to load it in safe mode. Load with safe_mode=False (--unsafe-load) only if you trust "
                "the file")


def _looks_keras1(cfg: dict) -> bool:
    keys = ("nb_filter", "border_mode", "init", "input_dtype", "dim_ordering", "W_regularizer", "inner_init")
    return any(k in (lc.get("config") or {}) for lc in _iter_layer_cfgs(cfg) for k in keys) or any(
        "output_dim" in (lc.get("config") or {}) for lc in _iter_layer_cfgs(cfg) if lc.get("class_name") != "Embedding")


# --------------------------------------------------------------------------- model graph
def _build_model(cfg: dict, ctx: _Ctx, nested: bool = False) -> keras.Model:
    """A Keras 3 model for a saved model config.

    Nested sub-models are first built on inputs with free spatial sizes: Keras 2 let a patch
    trunk built on 224x224 be called on a 1152x896 image, Keras 3 checks input shapes. If
    the sub-model needs its saved sizes (e.g. Flatten then Dense), those are used instead.
    """
    if not isinstance(cfg, dict) or "class_name" not in cfg:
        raise ctx.error(None, "model_config has no class_name")
    cn = cfg["class_name"]
    if cn not in _MODEL_CLASSES:
        raise ctx.error(None, f"top-level class '{cn}' is not a Model or Sequential")
    build = _build_sequential if cn == "Sequential" else _build_functional
    conf = cfg.get("config") if cn == "Sequential" else cfg.get("config") or {}
    if nested:
        try:
            return build(conf, ctx, relax=True)
        except CheckpointError as e:
            log.debug("nested model needs its saved input shape: %s", e)
    return build(conf, ctx)


def _input_spec_from(conf: dict, ctx: _Ctx, keep_batch: bool = False,
                     relax: bool = False) -> tuple[tuple, int | None, str]:
    """(shape without batch, batch size or None, dtype) from old input-shape keys."""
    dtype = conf.get("dtype") or conf.get("input_dtype") or "float32"
    if not isinstance(dtype, str):
        dtype = "float32"
    if conf.get("batch_input_shape") is not None:
        bis = list(conf["batch_input_shape"])
        batch, shape = bis[0], tuple(bis[1:])
    elif conf.get("batch_shape") is not None:
        bis = list(conf["batch_shape"])
        batch, shape = bis[0], tuple(bis[1:])
    elif conf.get("input_shape") is not None:
        batch, shape = None, tuple(conf["input_shape"])
    elif conf.get("input_dim") is not None:  # Keras 1; recurrent layers also had input_length
        batch = None
        shape = (conf["input_length"], conf["input_dim"]) if "input_length" in conf else (conf["input_dim"],)
    else:
        raise ctx.error(conf.get("name"), "no input shape in the saved config")
    if relax and len(shape) >= 2:
        shape = (None,) * (len(shape) - 1) + (shape[-1],)
    return shape, (batch if keep_batch else None), dtype


def _build_sequential(conf: Any, ctx: _Ctx, relax: bool = False) -> keras.Model:
    layer_cfgs = conf if isinstance(conf, list) else (conf or {}).get("layers", [])
    name = None if isinstance(conf, list) else (conf or {}).get("name")
    if not layer_cfgs:
        raise ctx.error(None, "Sequential model without layers")
    first = layer_cfgs[0]
    stateful = any((lc.get("config") or {}).get("stateful") for lc in layer_cfgs)
    if first["class_name"] == "InputLayer":
        shape, batch, dtype = _input_spec_from(first["config"], ctx, keep_batch=stateful, relax=relax)
        layer_cfgs = layer_cfgs[1:]
        in_name = first["config"].get("name")
    else:
        shape, batch, dtype = _input_spec_from(first.get("config") or {}, ctx, keep_batch=stateful, relax=relax)
        in_name = None
    layers = [keras.Input(shape=shape, batch_size=batch, dtype=dtype, name=in_name)]
    for lc in layer_cfgs:
        if lc["class_name"] in _MODEL_CLASSES:
            layers.append(_build_model(lc, ctx, nested=True))
        else:
            layers.extend(_make_layers(lc["class_name"], lc.get("config") or {}, ctx))
    try:
        return keras.Sequential(layers, name=name) if name else keras.Sequential(layers)
    except Exception as e:  # noqa: BLE001
        raise ctx.error(None, f"cannot assemble the Sequential model: {_one_line(e)}") from e


def _as_node_list(entry: Any) -> list:
    """One saved inbound node -> list of [name, node_index, tensor_index, kwargs]."""
    if entry and isinstance(entry[0], str):  # a single tensor reference, not a list
        entry = [entry]
    out = []
    for ref in entry:
        ref = list(ref)
        while len(ref) < 4:
            ref.append(0 if len(ref) < 3 else {})
        out.append(ref)
    return out


def _build_functional(conf: dict, ctx: _Ctx, relax: bool = False) -> keras.Model:
    layer_cfgs = conf.get("layers") or []
    tensors: dict[tuple[str, int], list] = {}
    objects: dict[str, Any] = {}
    offsets: dict[str, int] = {}
    pending: list[tuple[str, list, int]] = []  # (layer name, node refs, saved node index)
    for lc in layer_cfgs:
        cn, name = lc["class_name"], _layer_name(lc)
        if cn == "InputLayer":
            shape, batch, dtype = _input_spec_from(lc.get("config") or {}, ctx, relax=relax)
            tensors[(name, 0)] = [keras.Input(shape=shape, batch_size=batch, dtype=dtype, name=name)]
            continue
        if cn in _MODEL_CLASSES:
            objects[name] = _build_model(lc, ctx, nested=True)
            offsets[name] = 1  # containers keep their own construction node as node 0
        else:
            made = _make_layers(cn, lc.get("config") or {}, ctx)
            if len(made) != 1:
                raise ctx.error(name, f"{cn} expands to several layers inside a functional model")
            objects[name] = made[0]
            offsets[name] = 0
        for k, node in enumerate(lc.get("inbound_nodes") or []):
            if isinstance(node, dict):
                raise ctx.error(name, "Keras 3 style inbound nodes in a Keras 2 file")
            pending.append((name, _as_node_list(node), k + offsets[name]))
    while pending:
        progressed, rest = False, []
        for name, refs, idx in pending:
            if any(n == name and i < idx for n, _, i in rest):  # keep each layer's call order
                rest.append((name, refs, idx))
                continue
            try:
                inputs = [tensors[(r[0], int(r[1]))][int(r[2])] for r in refs]
            except KeyError:
                rest.append((name, refs, idx))
                continue
            kwargs = {}
            for r in refs:
                if isinstance(r[3], dict):
                    kwargs.update({k: v for k, v in r[3].items() if k == "training" and isinstance(v, bool)})
            try:
                out = objects[name](inputs[0] if len(inputs) == 1 else inputs, **kwargs)
            except Exception as e:  # noqa: BLE001
                raise ctx.error(name, f"cannot call the rebuilt layer on its inputs: {_one_line(e)}") from e
            tensors[(name, idx)] = list(out) if isinstance(out, (list, tuple)) else [out]
            progressed = True
        if not progressed:
            missing = sorted({n for n, _, _ in rest})
            raise ctx.error(missing[0], "inbound nodes refer to layers or node indices that do not exist "
                            f"(unresolved: {', '.join(missing)})")
        pending = rest

    def pick(refs: Any) -> list:
        if refs and isinstance(refs[0], str):
            refs = [refs]
        try:
            return [tensors[(r[0], int(r[1]))][int(r[2]) if len(r) > 2 else 0] for r in refs]
        except KeyError as e:
            raise ctx.error(None, f"model input/output {e} not found in the rebuilt graph") from e

    ins, outs = pick(conf.get("input_layers") or []), pick(conf.get("output_layers") or [])
    try:
        return keras.Model(inputs=ins[0] if len(ins) == 1 else ins,
                           outputs=outs[0] if len(outs) == 1 else outs, name=conf.get("name"))
    except Exception as e:  # noqa: BLE001
        raise ctx.error(None, f"cannot assemble the functional model: {_one_line(e)}") from e


# --------------------------------------------------------------------------- layer configs
_RENAMED_CLASSES = {"Convolution1D": "Conv1D", "Convolution2D": "Conv2D", "Convolution3D": "Conv3D",
                    "Deconvolution2D": "Conv2DTranspose", "AtrousConvolution2D": "Conv2D",
                    "SeparableConvolution2D": "SeparableConv2D"}
_MERGE_MODES = {"sum": "Add", "mul": "Multiply", "concat": "Concatenate", "ave": "Average",
                "max": "Maximum", "dot": "Dot"}
_K1_KEYS = {"output_dim": "units", "init": "kernel_initializer", "inner_init": "recurrent_initializer",
            "inner_activation": "recurrent_activation", "bias": "use_bias", "W_regularizer": "kernel_regularizer",
            "b_regularizer": "bias_regularizer", "U_regularizer": "recurrent_regularizer",
            "W_constraint": "kernel_constraint", "b_constraint": "bias_constraint",
            "U_constraint": "recurrent_constraint", "dropout_W": "dropout", "dropout_U": "recurrent_dropout",
            "nb_filter": "filters", "subsample": "strides", "border_mode": "padding", "p": "rate",
            "atrous_rate": "dilation_rate", "pool_length": "pool_size", "filter_length": "kernel_size",
            "subsample_length": "strides", "gamma_init": "gamma_initializer", "beta_init": "beta_initializer"}
_K1_INITS = {"one": "ones", "zero": "zeros", "normal": "random_normal", "uniform": "random_uniform"}
_RETIRED = {"input_dtype", "batch_input_shape", "input_shape", "input_dim", "input_length", "batch_shape",
            "implementation", "consume_less", "mode", "dim_ordering", "sparse", "ragged",
            "time_major", "forget_bias_init", "nb_row", "nb_col", "weights", "cache"}
_BASE_KEYS = {"name", "trainable", "dtype", "activity_regularizer", "autocast"}


def _accepted_keys(cls: type) -> set[str] | None:
    keys = set(_BASE_KEYS)
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters
        keys.update(n for n, prm in params.items() if prm.kind in (prm.POSITIONAL_OR_KEYWORD, prm.KEYWORD_ONLY))
        if klass is keras.layers.Layer:
            break
    return keys


def _fix_initializer(v: Any) -> Any:
    if isinstance(v, str):
        return _K1_INITS.get(v, v)
    if isinstance(v, dict) and "class_name" in v:
        v = {"class_name": v["class_name"], "config": dict(v.get("config") or {})}
        c = v["config"]
        if v["class_name"] == "VarianceScaling" and c.get("distribution") == "normal":
            c["distribution"] = "truncated_normal"  # Keras 2's "normal" was truncated
        if v["class_name"] in ("Orthogonal",) and "gain" not in c:
            c["gain"] = 1.0
        try:
            keras.initializers.deserialize(v)
        except Exception:  # noqa: BLE001 - initialisers do not change loaded predictions
            log.warning("unknown initializer %s replaced by the layer default", v["class_name"])
            return None
    return v


def _fix_activation(v: Any) -> Any:
    if v == "hard_sigmoid":
        return keras2_hard_sigmoid
    if isinstance(v, dict) and v.get("config") == "hard_sigmoid":
        return keras2_hard_sigmoid
    return v


def _convert_keras1(cn: str, conf: dict, ctx: _Ctx, name: str) -> dict:
    c = {}
    for k, v in conf.items():
        c[k if cn == "Embedding" and k == "output_dim" else _K1_KEYS.get(k, k)] = v
    if "nb_row" in conf:
        c["kernel_size"] = (conf["nb_row"], conf["nb_col"])
    if conf.get("dim_ordering") == "th":
        if cn.startswith(("Conv", "Separable", "Deconv", "Atrous")):
            raise ctx.error(name, "Theano dim_ordering convolutions are not supported")
        c["data_format"] = "channels_first"
    elif conf.get("dim_ordering") == "tf":
        c["data_format"] = "channels_last"
    if "forget_bias_init" in conf:
        c["unit_forget_bias"] = conf["forget_bias_init"] == "one"
    if cn == "BatchNormalization" and conf.get("mode", 0) not in (0, None):
        raise ctx.error(name, f"Keras 1 BatchNormalization mode={conf['mode']} is not supported")
    if cn in ("MaxPooling1D", "AveragePooling1D") and "stride" in conf:
        c["strides"] = c.pop("stride")
    return c


def _make_layers(cn: str, conf: dict, ctx: _Ctx) -> list:
    """Keras 3 layer(s) for one saved layer config (Merge may need none of its own state)."""
    name = conf.get("name", "?")
    try:
        return _make_layers_inner(cn, conf, ctx, name)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001
        raise ctx.error(name, f"cannot rebuild {cn} layer: {_one_line(e)}") from e


def _make_layers_inner(cn: str, conf: dict, ctx: _Ctx, name: str) -> list:
    if cn == "Lambda":
        return [_rebuild_lambda(conf, ctx, name)]
    conf = dict(conf)
    if ctx.keras1 or cn in _RENAMED_CLASSES:
        conf = _convert_keras1(cn, conf, ctx, name)
    cn = _RENAMED_CLASSES.get(cn, cn)
    if cn == "Merge":
        mode = conf.get("mode", "sum")
        if not isinstance(mode, str) or mode not in _MERGE_MODES:
            raise ctx.error(name, f"Merge mode {mode!r} is not supported (only {sorted(_MERGE_MODES)})")
        cn = _MERGE_MODES[mode]
        new = {"name": name, "trainable": conf.get("trainable", True)}
        if cn == "Concatenate":
            new["axis"] = conf.get("concat_axis", -1)
        if cn == "Dot":
            new["axes"] = conf.get("dot_axes", -1)
        conf = new
    cls = getattr(keras.layers, cn, None)
    if cls is None or not (isinstance(cls, type) and issubclass(cls, keras.layers.Layer)):
        raise ctx.error(name, f"layer class '{cn}' does not exist in Keras 3 (custom layer?); "
                        "cannot rebuild it")
    if cn == "LeakyReLU" and "alpha" in conf:
        conf["negative_slope"] = conf.pop("alpha")
    if cn == "BatchNormalization" and isinstance(conf.get("axis"), (list, tuple)):
        if len(conf["axis"]) != 1:
            raise ctx.error(name, f"BatchNormalization over several axes {conf['axis']} is not supported")
        conf["axis"] = conf["axis"][0]
    if isinstance(conf.get("dtype"), dict):  # tf.keras 2.x DTypePolicy
        conf["dtype"] = (conf["dtype"].get("config") or {}).get("name", "float32")
    if not str(conf.get("dtype", "float32")).startswith(("float", "mixed", "bfloat")):
        conf.pop("dtype")  # Keras 2 stored the *input* dtype here (e.g. int32 before Embedding)
    accepted = _accepted_keys(cls)
    retired = _RETIRED - {"input_dim"} if cn == "Embedding" else _RETIRED
    if cn == "Embedding":
        conf = {k: v for k, v in conf.items() if k not in ("batch_input_shape", "input_length")}
    dropped = sorted(k for k in conf if k not in accepted and k not in retired)
    if dropped:
        log.warning("%s: layer '%s' (%s): ignoring retired config keys %s", ctx.source, name, cn, dropped)
    conf = {k: v for k, v in conf.items() if k in accepted}
    for k in list(conf):
        if k.endswith("_initializer"):
            fixed = _fix_initializer(conf[k])
            if fixed is None:
                del conf[k]
            else:
                conf[k] = fixed
        elif k in ("activation", "recurrent_activation"):
            conf[k] = _fix_activation(conf[k])
    for k in ("kernel_size", "strides", "pool_size", "dilation_rate", "size", "cropping", "padding"):
        if isinstance(conf.get(k), list):
            conf[k] = tuple(tuple(x) if isinstance(x, list) else x for x in conf[k])
    if cn in ("LSTM", "GRU") and ctx.keras1:
        conf.setdefault("recurrent_activation", keras2_hard_sigmoid)
    return [cls.from_config(conf)]


# --------------------------------------------------------------------------- Lambda
def _rebuild_lambda(conf: dict, ctx: _Ctx, name: str) -> keras.layers.Layer:
    if ctx.safe_mode:  # callers check first; keep the guard local too
        raise ctx.error(name, "is a Lambda layer; refusing in safe mode", UnsafeCheckpointError)
    ftype = conf.get("function_type", "lambda")
    fn_saved = conf.get("function")
    if ftype != "lambda" or not isinstance(fn_saved, (list, tuple)) or not fn_saved:
        raise ctx.error(name, f"Lambda function of type '{ftype}' refers to code outside the file; "
                        "rebuild this layer by hand")
    raw = _lambda_bytes(fn_saved[0])
    if raw[:1] == b"c":
        try:
            params, expr = _py2_lambda_expression(raw)
        except ValueError as e:
            raise ctx.error(name, f"Lambda holds Python 2 bytecode this loader cannot translate ({e}); "
                            "rebuild this layer by hand") from e
    else:
        raise ctx.error(name, "Lambda holds Python 3 bytecode from another Python version, which "
                        "Python 3.11 cannot run; rebuild this layer by hand")
    if fn_saved[1] is not None or (len(fn_saved) > 2 and fn_saved[2] is not None):
        raise ctx.error(name, "Lambda function with default arguments or a closure is not supported")
    src = f"lambda {', '.join(params)}: {expr}"
    fn = eval(compile(src, f"<keras2 Lambda {name}>", "eval"), {"__builtins__": {}})  # noqa: S307 - whitelisted
    log.info("%s: layer '%s': rebuilt Lambda as `%s`", ctx.source, name, src)
    out_shape = conf.get("output_shape")
    if conf.get("output_shape_type", "raw") != "raw" or not isinstance(out_shape, (list, tuple)):
        out_shape = None
    return keras.layers.Lambda(fn, output_shape=tuple(out_shape) if out_shape else None,
                               arguments=conf.get("arguments") or None, name=name,
                               trainable=conf.get("trainable", True))


def _lambda_bytes(code: str) -> bytes:
    if re.fullmatch(r"[A-Za-z0-9+/=\s]+", code):  # Keras >= 2.1 stored base64
        try:
            return base64.b64decode(code)
        except ValueError:
            pass
    return code.encode("raw_unicode_escape")


class _Py2Reader:
    """Just enough of Python 2.7's marshal format to read one lambda's code object."""

    def __init__(self, data: bytes):
        self.d, self.i, self.interned = data, 0, []

    def byte(self) -> str:
        c = chr(self.d[self.i])
        self.i += 1
        return c

    def int32(self) -> int:
        v = struct.unpack_from("<i", self.d, self.i)[0]
        self.i += 4
        return v

    def obj(self) -> Any:
        t = self.byte()
        if t == "N":
            return None
        if t in "TF":
            return t == "T"
        if t == "i":
            return self.int32()
        if t == "I":
            v = struct.unpack_from("<q", self.d, self.i)[0]
            self.i += 8
            return v
        if t == "g":
            v = struct.unpack_from("<d", self.d, self.i)[0]
            self.i += 8
            return v
        if t == "f":
            n = self.d[self.i]
            s = self.d[self.i + 1:self.i + 1 + n]
            self.i += 1 + n
            return float(s)
        if t in "stu":
            n = self.int32()
            s = self.d[self.i:self.i + n]
            self.i += n
            if t == "t":
                self.interned.append(s)
            return s.decode("latin-1") if t != "u" else s.decode("utf-8")
        if t == "R":
            return self.interned[self.int32()].decode("latin-1")
        if t in "([":
            return tuple(self.obj() for _ in range(self.int32()))
        if t == "c":
            argcount, nlocals, stacksize, flags = (self.int32() for _ in range(4))
            code, consts, names, varnames = self.obj(), self.obj(), self.obj(), self.obj()
            freevars, cellvars = self.obj(), self.obj()
            self.obj(), self.obj(), self.int32(), self.obj()  # filename, name, firstlineno, lnotab
            return {"argcount": argcount, "flags": flags, "code": code.encode("latin-1"), "consts": consts,
                    "names": names, "varnames": varnames, "freevars": freevars, "cellvars": cellvars}
        raise ValueError(f"marshal type {t!r}")


_PY2_BINOPS = {19: "**", 20: "*", 21: "/", 22: "%", 23: "+", 24: "-", 26: "//", 27: "/"}
_PY2_UNOPS = {10: "+", 11: "-"}


def _py2_lambda_expression(raw: bytes) -> tuple[list[str], str]:
    """Translate straight-line arithmetic Python 2 bytecode into a Python expression string."""
    co = _Py2Reader(raw).obj()
    if not isinstance(co, dict):
        raise ValueError("not a code object")
    if co["flags"] & 0x0C or co["freevars"] or co["cellvars"]:
        raise ValueError("*args/**kwargs or closures")
    ident = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
    params = list(co["varnames"][:co["argcount"]])
    if not params or not all(ident.match(p) for p in params):
        raise ValueError("unusual parameter names")
    code, i, stack = co["code"], 0, []
    while i < len(code):
        op = code[i]
        arg = code[i + 1] | (code[i + 2] << 8) if op >= 90 else None
        i += 3 if op >= 90 else 1
        if op == 124:  # LOAD_FAST
            if arg >= len(params):
                raise ValueError("local variables")
            stack.append(params[arg])
        elif op == 100:  # LOAD_CONST
            c = co["consts"][arg]
            if isinstance(c, bool) or not isinstance(c, (int, float)):
                raise ValueError(f"constant {c!r}")
            stack.append(repr(c))
        elif op in _PY2_BINOPS:
            b, a = stack.pop(), stack.pop()
            stack.append(f"({a} {_PY2_BINOPS[op]} {b})")
        elif op in _PY2_UNOPS:
            stack.append(f"({_PY2_UNOPS[op]}{stack.pop()})")
        elif op == 83:  # RETURN_VALUE
            if len(stack) != 1 or i != len(code):
                raise ValueError("control flow")
            return params, stack[0]
        else:
            raise ValueError(f"opcode {op} (calls, attributes or control flow)")
    raise ValueError("no return")


# --------------------------------------------------------------------------- weights
def _leaf_layers(layer: Any) -> list:
    if isinstance(layer, keras.Model):
        out = []
        for sub in layer.layers:
            out.extend(_leaf_layers(sub))
        return out
    return [layer]


def _split_weight_name(n: str) -> tuple[str, str]:
    n = n[:-2] if re.search(r":\d+$", n) else n
    if "/" in n:
        layer, var = n.rsplit("/", 1)
        return layer, var
    return "", n


def _read_group(g: Any) -> list[tuple[str, np.ndarray]]:
    names = [_attr_str(n) for n in g.attrs.get("weight_names", [])]
    return [(n, np.asarray(g[n])) for n in names]


def _load_weights(model: keras.Model, group: Any, ctx: _Ctx) -> None:
    saved_layers = [_attr_str(n) for n in group.attrs.get("layer_names", [])] or list(group.keys())
    used = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in group:
            raise ctx.error(layer.name, "has weights in the rebuilt model but none in the file")
        used.add(layer.name)
        saved = _read_group(group[layer.name])
        if isinstance(layer, keras.Model):
            _assign_nested(layer, saved, ctx)
        else:
            _assign_layer(layer, saved, ctx)
    for n in saved_layers:
        if n not in used and n in group and len(group[n].attrs.get("weight_names", [])):
            raise ctx.error(n, "has saved weights but no matching layer in the rebuilt model")


def _assign_nested(sub: keras.Model, saved: list[tuple[str, np.ndarray]], ctx: _Ctx) -> None:
    leaves = [lay for lay in _leaf_layers(sub) if lay.weights]
    by_layer: dict[str, list] = {}
    for n, v in saved:
        lname, _ = _split_weight_name(n)
        by_layer.setdefault(lname, []).append((n, v))
    names = {lay.name for lay in leaves}

    def resolve(lname: str) -> str:
        return lname if lname in names else lname.rsplit("/", 1)[-1]

    grouped: dict[str, list] = {}
    for lname, items in by_layer.items():
        grouped.setdefault(resolve(lname), []).extend(items)
    if set(grouped) == names and all(len(grouped[lay.name]) == len(lay.weights) for lay in leaves):
        for lay in leaves:
            _assign_layer(lay, grouped[lay.name], ctx)
        return
    # Fall back to Keras 2's order: trainable weights of all layers, then the non-trainable ones.
    targets = list(sub.trainable_weights) + list(sub.non_trainable_weights)
    if len(targets) != len(saved) or any(tuple(t.shape) != v.shape for t, (_, v) in zip(targets, saved)):
        raise ctx.error(sub.name, f"nested model weights do not match: file has {len(saved)}, "
                        f"model needs {len(targets)}")
    for t, (_, v) in zip(targets, saved):
        t.assign(v)


def _keras1_lstm(saved: list[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
    d = {}
    for n, v in saved:
        m = re.search(r"_([WUb])_([ifco])(:\d+)?$", n)
        if m:
            d[(m.group(1), m.group(2))] = v
    if len(d) != 12:
        return saved
    cat = {k: np.concatenate([d[(k, g)] for g in "ifco"], axis=-1) for k in "WUb"}
    return [("kernel", cat["W"]), ("recurrent_kernel", cat["U"]), ("bias", cat["b"])]


_VAR_ALIASES = {"W": "kernel", "b": "bias", "U": "recurrent_kernel", "running_mean": "moving_mean",
                "running_std": "moving_variance", "depthwise_kernel": "depthwise_kernel"}


def _assign_layer(layer: Any, saved: list[tuple[str, np.ndarray]], ctx: _Ctx) -> None:
    if isinstance(layer, (keras.layers.LSTM,)) and len(saved) == 12:
        saved = _keras1_lstm(saved)
    targets = list(layer.weights)
    if len(saved) != len(targets):
        raise ctx.error(layer.name, f"file has {len(saved)} weights, {type(layer).__name__} needs {len(targets)}")
    by_name: dict[str, np.ndarray] = {}
    for n, v in saved:
        var = _split_weight_name(n)[1]
        var = re.sub(rf"^{re.escape(layer.name)}_", "", var)  # Keras 1: dense_1_W
        by_name[_VAR_ALIASES.get(var, var)] = v
    if len(by_name) == len(targets) and all(t.name in by_name for t in targets):
        pairs = [(t, by_name[t.name]) for t in targets]
    else:
        pairs = list(zip(targets, (v for _, v in saved)))
    for t, v in pairs:
        if tuple(t.shape) != tuple(v.shape):
            raise ctx.error(layer.name, f"weight '{t.name}' has shape {tuple(v.shape)} in the file, "
                            f"{tuple(t.shape)} in the rebuilt layer")
        t.assign(v.astype(t.dtype) if hasattr(v, "astype") else v)
