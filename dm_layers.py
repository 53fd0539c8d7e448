"""The project's own Keras layers, registered for loading.

The project's own Keras layers, registered for loading (so any module that loads a model
file can import this without the trainers' code).
"""
from __future__ import annotations

import keras
from keras import layers, ops

from dm_errors import InputError

# The original's `preprocess_input` of each ImageNet net (Keras 2.0.8), applied by its
# patch trainer when --no-featurewise-center: 'caffe' (RGB->BGR, minus the ImageNet
# channel means) for ResNet50 and VGG, 'tf' (x/255 - 0.5, x2) for Xception/InceptionV3.
IMAGENET_PREPROCESS = {"resnet50": "caffe", "vgg16": "caffe", "vgg19": "caffe",
                       "xception": "tf", "inception": "tf"}


@keras.saving.register_keras_serializable(package="dm")
class ImageNetPreprocess(layers.Layer):
    """A net's ImageNet `preprocess_input` as the patch model's first layer, so the saved
    model carries it and prediction and heatmaps repeat it (docs/fidelity.md)."""

    def __init__(self, mode: str = "caffe", **kw):
        super().__init__(**kw)
        if mode not in ("caffe", "tf"):
            raise InputError(f"unknown ImageNet preprocessing {mode!r}")
        self.mode = mode

    def call(self, x):
        if self.mode == "tf":
            return x / 127.5 - 1.0
        mean = keras.ops.convert_to_tensor([103.939, 116.779, 123.68], dtype=x.dtype)
        return keras.ops.flip(x, axis=-1) - mean

    def get_config(self):
        return dict(super().get_config(), mode=self.mode)


# ------------------------------------------------------------ Keras 2.0.8 starting values
# Keras 2.0.8's `he_normal` drew from a normal truncated at two standard deviations with
# stddev sqrt(2 / fan_in) and did not correct for the truncation, so the kernels' actual
# spread was about 0.88 sqrt(2 / fan_in); Keras 3 divides by this factor. Scaling Keras 3's
# variance by its square gives back the 2.0.8 draw (docs/fidelity.md, "Starting values").
TRUNCATED_NORMAL_STD = 0.87962566103423978   # std of a unit normal truncated at +-2


def he_normal() -> keras.initializers.Initializer:
    """Keras 2.0.8's `he_normal`: truncated normal, stddev sqrt(2 / fan_in) before the
    truncation (a new instance per layer, so layers draw different values)."""
    return keras.initializers.VarianceScaling(
        scale=2.0 * TRUNCATED_NORMAL_STD ** 2, mode="fan_in", distribution="truncated_normal")


# Keras 2.0.8's ResNet50 built its BatchNormalization layers with the layer default
# epsilon 1e-3; Keras 3's ResNet50 uses 1.001e-5 (docs/fidelity.md, "Starting values").
KERAS208_RESNET50_BN_EPSILON = 1e-3


# ------------------------------------------------------------ Keras 2.0.8 optimisers
# RMSprop and Adagrad of Keras 2.0.8 add epsilon after the square root,
# `p - lr * g / (sqrt(a) + eps)`; Keras 3 adds it inside, `g / sqrt(a + eps)`. With
# eps 1e-8 the two differ where the accumulator is tiny (early steps, rarely active
# weights). Registered so last-epoch checkpoints with their optimiser load.
@keras.saving.register_keras_serializable(package="dm")
class RMSprop208(keras.optimizers.RMSprop):
    """RMSprop with Keras 2.0.8's update:
    `a = rho a + (1 - rho) g^2; p -= lr g / (sqrt(a) + eps)`."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        if self.centered or self.momentum:
            raise InputError("RMSprop208 is Keras 2.0.8's plain RMSprop (no momentum, "
                             "not centered)")

    def update_step(self, gradient, variable, learning_rate):
        ops = keras.ops
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        a = self._velocities[self._get_variable_index(variable)]
        self.assign(a, ops.add(ops.multiply(self.rho, a),
                               ops.multiply(1 - self.rho, ops.square(g))))
        self.assign_sub(variable, ops.divide(ops.multiply(lr, g),
                                             ops.add(ops.sqrt(a), self.epsilon)))


@keras.saving.register_keras_serializable(package="dm")
class Adagrad208(keras.optimizers.Adagrad):
    """Adagrad with Keras 2.0.8's update `a = a + g^2; p -= lr g / (sqrt(a) + eps)`."""

    def update_step(self, gradient, variable, learning_rate):
        ops = keras.ops
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        a = self._accumulators[self._get_variable_index(variable)]
        self.assign_add(a, ops.square(g))
        self.assign_sub(variable, ops.divide(ops.multiply(lr, g),
                                             ops.add(ops.sqrt(a), self.epsilon)))


# ------------------------------------------------------------ multiple-instance heads (dm_mil)
@keras.saving.register_keras_serializable(package="dm")
class LesionMap(layers.Layer):
    """Patch-class probabilities (B, h, w, K) with channel 0 (background) replaced by the
    lesion score 1 - p(background): a high value in every channel then means "lesion-like"."""

    def call(self, p):
        return ops.concatenate([1.0 - p[..., :1], p[..., 1:]], axis=-1)


@keras.saving.register_keras_serializable(package="dm")
class TopFractionPooling(layers.Layer):
    """(B, h, w, K) -> (B, K): per channel, the mean of the highest `fraction` of the h*w
    values (at least one; 1.0 is the mean, a tiny fraction the maximum)."""

    def __init__(self, fraction: float = 0.02, **kw):
        super().__init__(**kw)
        if not 0.0 < float(fraction) <= 1.0:
            raise InputError(f"top fraction must be in (0, 1], got {fraction}")
        self.fraction = float(fraction)

    def call(self, x):
        b, k = ops.shape(x)[0], ops.shape(x)[-1]
        flat = ops.transpose(ops.reshape(x, (b, -1, k)), (0, 2, 1))      # (B, K, n)
        n = ops.shape(flat)[-1]
        keep = ops.maximum(1, ops.cast(ops.round(self.fraction * ops.cast(n, "float32")),
                                       "int32"))
        desc = ops.flip(ops.sort(flat, axis=-1), axis=-1)
        mask = ops.cast(ops.arange(n) < keep, desc.dtype)
        return ops.sum(desc * mask, axis=-1) / ops.cast(keep, desc.dtype)

    def compute_output_shape(self, shape):
        return (shape[0], shape[-1])

    def get_config(self):
        return dict(super().get_config(), fraction=self.fraction)


@keras.saving.register_keras_serializable(package="dm")
class GatedAttentionPooling(layers.Layer):
    """Gated attention over window positions: weights a = softmax over positions of
    w . (tanh(V f) * sigmoid(U f)) from the features f (B, h, w, D); returns the weighted
    mean of the values (B, h, w, K) -> (B, K). `attention_map` gives a (B, h, w)."""

    def __init__(self, units: int = 16, weight_decay: float = 0.0, **kw):
        super().__init__(**kw)
        self.units = int(units)
        self.weight_decay = float(weight_decay)

    def build(self, shapes):
        d = int(shapes[0][-1])
        reg = keras.regularizers.L2(self.weight_decay) if self.weight_decay else None
        self.v = self.add_weight(name="v", shape=(d, self.units), initializer="glorot_uniform",
                                 regularizer=reg)
        self.u = self.add_weight(name="u", shape=(d, self.units), initializer="glorot_uniform",
                                 regularizer=reg)
        self.w = self.add_weight(name="w", shape=(self.units, 1), initializer="glorot_uniform",
                                 regularizer=reg)

    def attention_map(self, f):
        gate = ops.tanh(ops.matmul(f, self.v)) * ops.sigmoid(ops.matmul(f, self.u))
        logit = ops.matmul(gate, self.w)[..., 0]                          # (B, h, w)
        b = ops.shape(logit)[0]
        a = ops.softmax(ops.reshape(logit, (b, -1)), axis=-1)
        return ops.reshape(a, ops.shape(logit))

    def call(self, inputs):
        f, values = inputs
        a = self.attention_map(f)
        return ops.sum(values * a[..., None], axis=(1, 2))

    def compute_output_shape(self, shapes):
        return (shapes[1][0], shapes[1][-1])

    def get_config(self):
        return dict(super().get_config(), units=self.units, weight_decay=self.weight_decay)


@keras.saving.register_keras_serializable(package="dm")
class MirrorWidth(layers.Layer):
    """Flip images left-right: the other breast is turned to the orientation of this one."""

    def call(self, x):
        return ops.flip(x, axis=2)
