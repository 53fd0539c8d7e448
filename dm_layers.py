"""The project's own Keras layers, registered for loading (so any module that loads a model
file can import this without the trainers' code)."""
from __future__ import annotations

import keras
from keras import layers

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
