"""Model heatmaps: sliding-window patch scores, fprop and Grad-CAM.

Sliding-window patch scores, one forward pass of the all-convolutional patch
classifier ("fprop"), and Grad-CAM on a whole-image model's trunk (drawing them is
`dm_overlay`'s job).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

import dm_resnet
import dm_sweep
from dm_inputs import InferenceError
from dm_recipe import Recipe
from dm_scoring import forward_fn


@dataclass
class PatchHeatmap:
    """A sliding-window probability map and where its cells sit on the scored image.

    probs: (rows, cols, classes). Cell (r, c) is the patch whose centre is at
    (centre0[0] + r*stride, centre0[1] + c*stride) in the coordinates of `image`
    (the resized, segmented, unpadded grey image that was swept).
    """

    probs: np.ndarray
    centre0: tuple[int, int]
    stride: int
    patch_size: int
    image: np.ndarray
    bbox: tuple[int, int, int, int] | None = None


def sliding_window_heatmap(model, img: np.ndarray, recipe: Recipe, patch_size: int,
                           stride: int, batch_size: int = 64, segment: bool = True,
                           pad: bool = True, low_int_threshold: float = 0.05) -> PatchHeatmap:
    """Score every patch of a grey image (already resized) with a patch classifier, on the
    sweep of `dm_sweep.sweep_image` (optional breast crop, half-patch padding, centred)."""
    sweep = dm_sweep.sweep_image(img, patch_size, stride, segment, pad, low_int_threshold)
    forward = forward_fn(model)                     # one trace, whatever the batch size
    probs = dm_sweep.sweep_probs(lambda b: forward(b).numpy(), sweep, recipe, batch_size)
    return PatchHeatmap(probs, sweep.centre0, stride, patch_size, sweep.image, sweep.bbox)


def _classifier_dense(model):
    """The last Dense layer of a model (a patch classifier's head)."""
    for layer in reversed(model.layers):
        if isinstance(layer, keras.layers.Dense):
            return layer
    return None


def fprop_model(model, img_size: Sequence[int], avg_pool_size: Sequence[int] = (7, 7),
                hm_strides: Sequence[int] = (1, 1), patch_model=None, kind: str | None = None):
    """A model mapping a whole image to a (rows, cols, patch classes) softmax map.

    Patch model: its trunk on the whole image, average pooling `avg_pool_size` /
    `hm_strides`, then its own Dense at every position (`add_top_layers(...,
    return_heatmap=True)`, the original's fprop mode). Whole-image model: it has no
    patch Dense of its own, so this needs either its `hm_dense` layer (built with
    --add-heatmap) or `patch_model`, whose Dense is applied to the finetuned trunk's
    features (an approximation: end-to-end training moved the trunk away from what that
    Dense was trained on). A multiple-instance model (`dm_mil`, bilateral or not) has both:
    its map is its own window map of the scored breast, at its own window size.
    """

    names = [l.name for l in model.layers]
    if kind is None:
        is_image = "clf_dense" in names or "hm_dense" in names or "image_input" in names
    else:
        is_image = kind == "image"
    if not is_image:
        hm = dm_resnet.add_top_layers(model, img_size, return_heatmap=True,
                                         avg_pool_size=avg_pool_size, hm_strides=hm_strides)
        return hm
    if dm_resnet.TRUNK_NAME not in names:
        raise InferenceError("the whole-image model has no 'patch_trunk' sub-model")
    trunk = model.get_layer(dm_resnet.TRUNK_NAME)
    if "mil_pool" in names:     # a multiple-instance head: its own window (dm_mil)
        own = model.get_layer("hm_avg_pool")
        avg_pool_size, hm_strides = own.pool_size, own.strides
    if "hm_dense" in names:
        weights = model.get_layer("hm_dense").get_weights()
    elif patch_model is not None:
        dense = _classifier_dense(patch_model)
        if dense is None:
            raise InferenceError("the patch model has no Dense classifier")
        weights = dense.get_weights()
    else:
        raise InferenceError("fprop heatmaps need a patch classifier's Dense layer: this "
                             "whole-image model has none (no --add-heatmap); pass the patch "
                             "model it was built from (--patch-model)")
    if weights[0].shape[0] != trunk.outputs[0].shape[-1]:
        raise InferenceError(f"the patch Dense takes {weights[0].shape[0]} features but the "
                             f"trunk gives {trunk.outputs[0].shape[-1]}")
    channels = int(model.inputs[0].shape[-1])
    inp = keras.Input((int(img_size[0]), int(img_size[1]), channels), name="image_input")
    x = keras.layers.AveragePooling2D(tuple(avg_pool_size), tuple(hm_strides),
                                      name="hm_avg_pool")(trunk(inp))
    dense = keras.layers.Dense(weights[0].shape[1], activation="softmax", name="hm_dense")
    out = dense(x)
    dense.set_weights(weights)
    return keras.Model(inp, out, name="heatmap_model")


def fprop_grid(feature_hw: Sequence[int], avg_pool_size: Sequence[int],
               hm_strides: Sequence[int]) -> tuple[int, int]:
    """Rows and columns of an fprop heatmap from the trunk's feature-map size ('valid' pooling)."""
    return tuple((int(f) - int(p)) // int(s) + 1
                 for f, p, s in zip(feature_hw, avg_pool_size, hm_strides))


def _outer_output(model, layer):
    """The symbolic output of `layer`'s call inside `model`'s graph (a layer may have been
    called elsewhere too, e.g. a trunk first called on the patch input); in a bilateral
    model the call on the scored breast (the first input), not on the other breast."""
    for inputs in (model.inputs[:1], model.inputs):
        for node in reversed(layer._inbound_nodes):
            t = node.output_tensors[0]
            try:
                keras.Model(inputs, t)
            except ValueError:
                continue
            return t
    raise InferenceError(f"layer {layer.name!r} is not connected to the model's input")


def grad_cam_model(model):
    """(model -> [trunk feature map, logits input]) and the final Dense, for `grad_cam`."""

    names = [l.name for l in model.layers]
    if dm_resnet.TRUNK_NAME in names:
        feat = _outer_output(model, model.get_layer(dm_resnet.TRUNK_NAME))
    else:
        layer = dm_resnet.find_trunk_output(model)
        feat = _outer_output(model, layer)
    last = model.layers[-1]
    if isinstance(last, keras.layers.Dense) and last.get_config().get("activation") == "softmax":
        pre = None
        for node in reversed(last._inbound_nodes):
            pre = node.input_tensors[0]
            try:
                keras.Model(model.inputs, pre)
                break
            except ValueError:
                pre = None
        if pre is not None:
            return keras.Model(model.inputs, [feat, pre]), last
    return keras.Model(model.inputs, [feat, model.outputs[0]]), None


def grad_cam(model, x: np.ndarray, class_index: int, _cache: dict | None = None,
             normalise: bool = True) -> np.ndarray:
    """Grad-CAM on the trunk's last feature map: (B, h, w) in [0, 1] at feature-map size.
    For a bilateral model `x` is the pair (images, other breasts); the map is the scored
    breast's.

    The score is the class logit (pre-softmax) when the model ends in a softmax Dense, so
    confident predictions still give gradients; weights are the spatially averaged
    gradients; the map is ReLU(sum_k w_k A_k), divided by its maximum (0 if all <= 0).
    `normalise=False` keeps ReLU(sum_k w_k A_k) in the score's own units (absolute scale).
    """
    sub, dense = grad_cam_model(model)
    x = (tf.convert_to_tensor(np.asarray(x, np.float32)) if len(model.inputs) == 1 else
         [tf.convert_to_tensor(np.asarray(v, np.float32)) for v in x])
    with tf.GradientTape() as tape:
        feat, out = sub(x, training=False)
        tape.watch(feat)
        if dense is not None:
            out = tf.matmul(out, dense.kernel) + dense.bias
        score = out[:, class_index]
    grads = tape.gradient(score, feat)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * feat, axis=-1)).numpy()
    if not normalise:
        return cam.astype(np.float32)
    mx = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
    return np.where(mx > 0, cam / np.where(mx > 0, mx, 1), 0.0).astype(np.float32)
