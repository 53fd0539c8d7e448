"""Write a Keras 3 model as a Keras 2.0.8 `.h5` file, with h5py only (test utility).

Reproduces the layout of the published checkpoints so the loader can be tested without a
Python 2 environment: root attributes `keras_version='2.0.8'`, `backend='tensorflow'` and a
Keras 2 `model_config` (layer configs as Keras 2.0.8 wrote them; inbound nodes as
`[[name, node_index, tensor_index, {}]]`; a nested sub-model is a layer with its own config
and is referenced at node index 1, its node 0 being its own construction), and a
`model_weights` group with `layer_names`, one group per layer with `weight_names`
(`conv1/kernel:0`), a nested model's weights inside the sub-model's group, in Keras 2 order
(all trainable weights, then all non-trainable ones).
"""
from __future__ import annotations

import json
import os
from typing import Any

import h5py
import keras
import numpy as np

L = keras.layers

KERAS_VERSION = "2.0.8"
BACKEND = "tensorflow"

# Keras 2.0.8 `get_config()` keys (after name/trainable) of the layers the project uses.
_CONV = ["filters", "kernel_size", "strides", "padding", "data_format", "dilation_rate", "activation",
         "use_bias", "kernel_initializer", "bias_initializer", "kernel_regularizer", "bias_regularizer",
         "activity_regularizer", "kernel_constraint", "bias_constraint"]
_POOL = ["pool_size", "padding", "strides", "data_format"]
_KEYS: dict[str, list[str]] = {
    "Conv2D": _CONV,
    "Conv1D": _CONV,
    "Dense": ["units", "activation", "use_bias", "kernel_initializer", "bias_initializer",
              "kernel_regularizer", "bias_regularizer", "activity_regularizer", "kernel_constraint",
              "bias_constraint"],
    "BatchNormalization": ["axis", "momentum", "epsilon", "center", "scale", "beta_initializer",
                           "gamma_initializer", "moving_mean_initializer", "moving_variance_initializer",
                           "beta_regularizer", "gamma_regularizer", "beta_constraint", "gamma_constraint"],
    "Activation": ["activation"],
    "Dropout": ["rate"],
    "MaxPooling2D": _POOL,
    "AveragePooling2D": _POOL,
    "GlobalAveragePooling2D": ["data_format"],
    "GlobalMaxPooling2D": ["data_format"],
    "Add": [],
    "Multiply": [],
    "Average": [],
    "Maximum": [],
    "Concatenate": ["axis"],
    "Flatten": [],
    "ZeroPadding2D": ["padding", "data_format"],
}

_VS = {  # Keras 3 named initialisers -> Keras 2 VarianceScaling (scale, mode, distribution)
    "GlorotUniform": (1.0, "fan_avg", "uniform"), "GlorotNormal": (1.0, "fan_avg", "normal"),
    "HeNormal": (2.0, "fan_in", "normal"), "HeUniform": (2.0, "fan_in", "uniform"),
    "LecunNormal": (1.0, "fan_in", "normal"), "LecunUniform": (1.0, "fan_in", "uniform"),
}


def _k2_object(obj: Any) -> Any:
    """A Keras 3 serialized initializer/regularizer/constraint as Keras 2 wrote it."""
    if not isinstance(obj, dict) or "class_name" not in obj:
        return obj
    cn, cfg = obj["class_name"], dict(obj.get("config") or {})
    if cn in _VS:
        scale, mode, dist = _VS[cn]
        return {"class_name": "VarianceScaling",
                "config": {"scale": scale, "mode": mode, "distribution": dist, "seed": cfg.get("seed")}}
    if cn == "VarianceScaling":
        dist = cfg.get("distribution", "truncated_normal")
        cfg["distribution"] = "uniform" if dist == "uniform" else "normal"
        return {"class_name": cn, "config": {k: cfg.get(k) for k in ("scale", "mode", "distribution", "seed")}}
    if cn in ("L2", "L1", "L1L2"):
        return {"class_name": "L1L2", "config": {"l1": float(cfg.get("l1", 0.0)), "l2": float(cfg.get("l2", 0.0))}}
    return {"class_name": cn, "config": {k: v for k, v in cfg.items() if v is not None or k == "seed"}}


def _jsonable(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, np.generic):
        return v.item()
    return v


def _layer_config(layer: keras.layers.Layer) -> tuple[str, dict]:
    """(Keras 2 class name, Keras 2.0.8 config) of one non-model layer."""
    cn = type(layer).__name__
    k3 = layer.get_config()
    if cn == "InputLayer":
        return cn, {"batch_input_shape": list(k3["batch_shape"]), "dtype": "float32", "sparse": False,
                    "name": layer.name}
    keys = _KEYS.get(cn)
    if keys is None:  # generic: everything Keras 3 wrote except Keras 3-only bookkeeping
        keys = [k for k in k3 if k not in ("name", "trainable", "dtype", "quantization_config",
                                             "lora_rank", "lora_alpha", "synchronized", "groups")]
    cfg: dict[str, Any] = {"name": layer.name, "trainable": bool(layer.trainable)}
    for k in keys:
        v = k3.get(k)
        cfg[k] = _k2_object(v) if isinstance(v, dict) else v
    return cn, _jsonable(cfg)


def _history(t: dict) -> list:
    return list(t["config"]["keras_history"])


def _tensors_in(args: Any) -> list[list]:
    if isinstance(args, dict) and args.get("class_name") == "__keras_tensor__":
        return [_history(args)]
    if isinstance(args, (list, tuple)):
        return [h for a in args for h in _tensors_in(a)]
    return []


def _model_config(model: keras.Model, input_shapes: dict[str, tuple]) -> tuple[str, Any]:
    """(class name, config) of a model in Keras 2.0.8 format."""
    if isinstance(model, keras.Sequential):
        layers = []
        for i, layer in enumerate(model.layers):
            if isinstance(layer, keras.Model):
                cn, cfg = _model_config(layer, input_shapes)
            else:
                cn, cfg = _layer_config(layer)
            if i == 0:
                shape = input_shapes.get(model.name) or tuple(model.inputs[0].shape[1:])
                cfg = {**cfg, "batch_input_shape": [None, *shape], "dtype": "float32"}
            layers.append({"class_name": cn, "config": cfg})
        return "Sequential", layers
    k3 = model.get_config()
    nested = {lay.name for lay in model.layers if isinstance(lay, keras.Model)}
    layers = []
    for entry in k3["layers"]:
        layer = model.get_layer(entry["name"])
        if isinstance(layer, keras.Model):
            cn, cfg = _model_config(layer, input_shapes)
            cn = "Model" if cn != "Sequential" else cn
        else:
            cn, cfg = _layer_config(layer)
            if cn == "InputLayer" and layer.name in input_shapes:
                cfg["batch_input_shape"] = [None, *input_shapes[layer.name]]
        nodes = []
        for node in entry.get("inbound_nodes") or []:
            refs = []
            for name, node_index, tensor_index in _tensors_in(node.get("args", [])):
                # Keras 2 containers keep node 0 for their own construction: calls start at 1.
                refs.append([name, node_index + (1 if name in nested else 0), tensor_index, {}])
            nodes.append(refs)
        layers.append({"name": layer.name, "class_name": cn, "config": cfg, "inbound_nodes": nodes})

    def io(v: Any) -> list:
        v = list(v)
        v = [v] if v and isinstance(v[0], str) else v
        return [[n, i + (1 if n in nested else 0), t] for n, i, t in v]

    if isinstance(model, keras.Model) and model.name in input_shapes and len(model.inputs) == 1:
        for lay in layers:  # the shape a sub-model was first built on
            if lay["class_name"] == "InputLayer":
                lay["config"]["batch_input_shape"] = [None, *input_shapes[model.name]]
    return "Model", {"name": model.name, "layers": layers, "input_layers": io(k3["input_layers"]),
                     "output_layers": io(k3["output_layers"])}


def _leaf_owner(model: keras.Model) -> dict[int, str]:
    owner = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            owner.update(_leaf_owner(layer))
        else:
            for v in layer.weights:
                owner[id(v)] = layer.name
    return owner


def _layer_weights(layer: keras.layers.Layer) -> list[tuple[str, np.ndarray]]:
    if isinstance(layer, keras.Model):
        owner = _leaf_owner(layer)
        variables = list(layer.trainable_weights) + list(layer.non_trainable_weights)
        return [(f"{owner[id(v)]}/{v.name}:0", np.asarray(v.numpy())) for v in variables]
    return [(f"{layer.name}/{v.name}:0", np.asarray(v.numpy())) for v in layer.weights]


def randomise_weights(model: keras.Model, seed: int = 0) -> None:
    """Non-trivial weights and BN statistics so a wrong mapping cannot go unnoticed."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        shape = tuple(v.shape)
        val = rng.uniform(0.5, 1.5, shape) if "variance" in v.name else rng.normal(0, 0.3, shape)
        v.assign(val.astype("float32"))


def small_whole_image_model() -> tuple[keras.Model, keras.Model]:
    """(patch model, whole-image model) built the way the original project nests them.

    The patch model is built on its own 32x32 input; its convolutional trunk (shared layers)
    becomes the sub-model `patch_trunk` called on a new 64x48 input, with conv/BN/ReLU top
    layers, a residual Add, global pooling and a softmax Dense on top.
    """
    trunk_layers = [L.ZeroPadding2D(1, name="pad1"), L.Conv2D(8, 3, name="conv1"),
                    L.BatchNormalization(name="bn_conv1"), L.Activation("relu", name="act1"),
                    L.MaxPooling2D(2, name="pool1"), L.Conv2D(16, 3, padding="same", name="conv2"),
                    L.BatchNormalization(name="bn_conv2"), L.Activation("relu", name="act2")]

    def trunk_fn(x):
        for layer in trunk_layers:
            x = layer(x)
        return x

    patch_in = keras.Input((32, 32, 3), name="patch_input")
    patch_out = L.Dense(3, activation="softmax", name="patch_dense")(
        L.GlobalAveragePooling2D(name="patch_gap")(trunk_fn(patch_in)))
    patch_model = keras.Model(patch_in, patch_out, name="patch_model")
    trunk_in = keras.Input((None, None, 3), name="trunk_input")
    trunk = keras.Model(trunk_in, trunk_fn(trunk_in), name="patch_trunk")

    img = keras.Input((64, 48, 3), name="input_2")
    fmap = trunk(img)
    y = L.Conv2D(16, 3, padding="same", kernel_initializer="he_normal",
                 kernel_regularizer=keras.regularizers.L2(1e-4), name="top_conv")(fmap)
    y = L.BatchNormalization(name="top_bn")(y)
    y = L.Activation("relu", name="top_relu")(y)
    y = L.Add(name="top_add")([fmap, y])
    y = L.GlobalAveragePooling2D(name="top_gap")(y)
    y = L.Dropout(0.5, name="top_dropout")(y)
    out = L.Dense(2, activation="softmax", kernel_initializer="he_normal", name="top_dense")(y)
    model = keras.Model(img, out, name="whole_image")
    randomise_weights(model)
    return patch_model, model


def write_keras2_h5(model: keras.Model, path: str | os.PathLike,
                    nested_input_shapes: dict[str, tuple] | None = None) -> None:
    """Write `model` in the Keras 2.0.8 whole-model `.h5` layout (see module docstring).

    nested_input_shapes: {sub-model or input-layer name: shape without batch} to record the
    shape a sub-model was first built on (e.g. the 224x224 patch trunk of a whole-image
    model) when the Keras 3 model itself uses a flexible (None, None, C) input.
    """
    shapes = dict(nested_input_shapes or {})
    cn, cfg = _model_config(model, shapes)
    model_config = json.dumps({"class_name": cn, "config": cfg}).encode("utf8")
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = np.bytes_(KERAS_VERSION)
        f.attrs["backend"] = np.bytes_(BACKEND)
        f.attrs["model_config"] = np.bytes_(model_config)
        g = f.create_group("model_weights")
        g.attrs["layer_names"] = np.array([lay.name.encode("utf8") for lay in model.layers])
        g.attrs["backend"] = np.bytes_(BACKEND)
        g.attrs["keras_version"] = np.bytes_(KERAS_VERSION)
        for layer in model.layers:
            lg = g.create_group(layer.name)
            weights = _layer_weights(layer)
            lg.attrs["weight_names"] = (np.array([n.encode("utf8") for n, _ in weights]) if weights
                                        else np.array([], dtype="float64"))
            for name, value in weights:
                lg.create_dataset(name, data=value)
