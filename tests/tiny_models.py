"""Tiny patch and whole-image models (saved with their meta) and tiny mammogram-like images."""
from __future__ import annotations

import pathlib

import cv2
import keras
import numpy as np
from keras import layers

import dm_resnet
from dm_recipe import Recipe
from dm_modelfile import ModelMeta
import dm_modelfile

PATCH = 16           # patch size of the tiny patch model
IMG = (64, 48)       # whole-image size of the tiny image model
PATCH_CLASSES = ("background", "malignant", "benign")
IMAGE_CLASSES = ("neg", "pos")


def tiny_patch_model(channels: int = 1, seed: int = 1) -> keras.Model:
    """Trunk (two conv+maxpool, stride 4) -> GAP -> Dropout -> Dense(3) softmax."""
    keras.utils.set_random_seed(seed)
    tin = keras.Input((None, None, channels), name="trunk_input")
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(tin)
    x = layers.MaxPooling2D(2, name="p1")(x)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="c2")(x)
    x = layers.MaxPooling2D(2, name="p2")(x)
    trunk = keras.Model(tin, x, name=dm_resnet.TRUNK_NAME)
    inp = keras.Input((PATCH, PATCH, channels), name="patch_input")
    y = layers.GlobalAveragePooling2D(name="patch_pool")(trunk(inp))
    y = layers.Dropout(0.0, name="patch_dropout")(y)
    out = layers.Dense(len(PATCH_CLASSES), activation="softmax", name="patch_clf")(y)
    return keras.Model(inp, out, name="patch_tiny")


def tiny_image_model(patch: keras.Model | None = None, seed: int = 2, **kw) -> keras.Model:
    """A VGG-top whole-image model (one block of 8) on the tiny patch trunk."""
    patch = patch or tiny_patch_model()
    keras.utils.set_random_seed(seed)
    model, _ = dm_resnet.add_top_layers(patch, IMG, block_type="vgg", depths=[8],
                                        repetitions=[1], nb_class=2, **kw)
    return model


PATCH_RECIPE = Recipe(img_size=(PATCH, PATCH), rescale_factor=255 / 65535, channels=1,
                      featurewise_center=True, featurewise_mean=40.0)
IMAGE_RECIPE = Recipe(img_size=IMG, rescale_factor=255 / 65535, channels=1,
                      featurewise_center=True, featurewise_mean=50.0)


def save(model, path, kind: str) -> pathlib.Path:
    meta = ModelMeta(PATCH_CLASSES if kind == "patch" else IMAGE_CLASSES,
                     PATCH_RECIPE if kind == "patch" else IMAGE_RECIPE, kind=kind)
    dm_modelfile.save_model(model, path, meta)
    return pathlib.Path(path)


def mammogram(shape=(90, 70), seed: int = 0) -> np.ndarray:
    """16-bit grey: a bright half-ellipse 'breast' on the left edge, noise and a blob."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    breast = ((yy - h / 2) / (h * 0.45)) ** 2 + (xx / (w * 0.8)) ** 2 <= 1
    img = np.where(breast, 20000 + rng.normal(0, 3000, shape), rng.normal(300, 100, shape))
    cy, cx = int(h * 0.4), int(w * 0.3)
    img[(yy - cy) ** 2 + (xx - cx) ** 2 <= (min(h, w) // 8) ** 2] += 25000
    return np.clip(img, 0, 65535).astype(np.uint16)


def write_images(folder, n: int, shape=(90, 70), seed: int = 0) -> list[str]:
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"img_{i:02d}.png"
        cv2.imwrite(str(p), mammogram(shape, seed + i))
        paths.append(str(p))
    return paths
