"""Multiple-instance whole-image heads on a patch classifier's map, one view or both breasts.

The patch classifier, run over a whole image, gives a map of patch-class probabilities (one
instance per window). These heads turn that map into an image score with few parameters
(docs/mias.md, "Multiple-instance heads and the bilateral model"):

- pooling "top": the mean of the top `top_fraction` of the map's windows, per class;
- pooling "attention": a gated-attention weighted mean of the map (the weights are computed
  from the trunk's features), per class;
- then a small softmax head. One view: on the pooled vector `v`. Bilateral: on
  `[v_own, v_own - v_other]`, where the same trunk and pooling run on the woman's other
  breast, mirrored left-right to the same orientation.

Window maps are the patch classifier's own: the trunk's feature map, averaged over a
patch-sized window (`hm_avg_pool`), then the patch classifier's Dense at every position
(`hm_dense`, started from its weights), as the original's fprop heatmap. Channel 0 (the
patch classes' background) is read as its complement, the lesion score 1 - p(background).
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import keras
from keras import layers

import dm_resnet
from dm_errors import InputError
from dm_layers import (GatedAttentionPooling, LesionMap, MirrorWidth, TopFractionPooling,
                       he_normal)

POOLINGS = ("top", "attention")
BILATERAL_INPUTS = ("image_input", "other_input")


def window_pool_size(patch_model: keras.Model, trunk: keras.Model) -> tuple[int, int]:
    """The trunk's feature-map size on one patch: averaging that many positions of the
    whole image's feature map makes each position one patch-sized window."""
    h, w, c = (int(d) for d in patch_model.inputs[0].shape[1:])
    out = trunk.compute_output_shape((1, h, w, c))
    return int(out[1]), int(out[2])


def _preprocess_layers(patch_model: keras.Model, trunk: keras.Model) -> list:
    """Layers a patch model applies between its input and its trunk (e.g. the ImageNet
    `preprocess_input` of --no-featurewise-center), reused so the head sees what it saw."""
    out = []
    for layer in patch_model.layers[1:]:
        if layer is trunk or layer.name == trunk.name:
            return out
        out.append(layer)
    return []


def build_mil_model(patch_model: keras.Model, image_size: Sequence[int], *, nb_class: int,
                    pooling: str = "top", top_fraction: float = 0.02, attention_units: int = 16,
                    bilateral: bool = False, weight_decay: float = 1e-4,
                    avg_pool_size: Sequence[int] | None = None) -> tuple[keras.Model, int]:
    """A whole-image classifier (one view, or bilateral) on a patch classifier's window map.

    Returns `(model, top_layer_nb)`: stage 1 freezes `model.layers[:top_layer_nb]` (inputs,
    trunk and the copied patch classifier), so it trains the pooling and the head only; the
    model's inputs are `image_input` (and `other_input`, the other breast as stored)."""
    if pooling not in POOLINGS:
        raise InputError(f"unknown pooling {pooling!r} (use one of {', '.join(POOLINGS)})")
    trunk = dm_resnet.get_trunk(patch_model)
    pre = _preprocess_layers(patch_model, trunk)
    clf = dm_resnet.find_classifier(patch_model)
    pool = tuple(avg_pool_size) if avg_pool_size else window_pool_size(patch_model, trunk)
    channels = int(patch_model.inputs[0].shape[-1])
    shape = (int(image_size[0]), int(image_size[1]), channels)
    inputs = [keras.Input(shape=shape, name=BILATERAL_INPUTS[0])]
    if bilateral:
        inputs.append(keras.Input(shape=shape, name=BILATERAL_INPUTS[1]))

    avg = layers.AveragePooling2D(pool, strides=(1, 1), name="hm_avg_pool")
    dense = layers.Dense(clf.units, activation="softmax", name="hm_dense",
                         kernel_regularizer=keras.regularizers.L2(weight_decay))
    lesion = LesionMap(name="lesion_map")
    if pooling == "top":
        pooler = TopFractionPooling(top_fraction, name="mil_pool")
    else:
        pooler = GatedAttentionPooling(attention_units, weight_decay, name="mil_pool")

    def view(x):
        for layer in pre:
            x = layer(x)
        feat = avg(trunk(x))
        probs = lesion(dense(feat))
        return pooler(probs) if pooling == "top" else pooler([feat, probs])

    try:
        own = view(inputs[0])
    except ValueError as e:
        if "negative" not in str(e) and "smaller" not in str(e):
            raise
        raise InputError(f"image size {tuple(image_size)} is smaller than one patch window of "
                         f"this patch model ({pool} trunk positions)") from None
    dense.set_weights(clf.get_weights())
    if bilateral:
        other = view(MirrorWidth(name="mirror_other")(inputs[1]))
        diff = layers.Subtract(name="own_minus_other")([own, other])
        own = layers.Concatenate(name="own_and_difference")([own, diff])
    # pooled scores differ little between images (0.6 against 0.7): standardised, the
    # head's few weights reach a useful size in a few hundred optimiser steps
    own = layers.BatchNormalization(momentum=0.9, name="mil_norm")(own)
    out = layers.Dense(nb_class, activation="softmax", kernel_initializer=he_normal(),
                       kernel_regularizer=keras.regularizers.L2(weight_decay),
                       name="clf_dense")(own)
    model = keras.Model(inputs, out, name="mil_bilateral" if bilateral else "mil_clf")
    return model, stage_one_frozen(model)


def mil_stages(model: keras.Model, stages: list) -> list:
    """A multiple-instance model's stages keep the trunk's BatchNormalization layers frozen
    in inference mode throughout: whole images have other batch statistics than the
    patches the trunk learnt on, and the window map must stay the patch classifier's."""
    trunk = model.get_layer(dm_resnet.TRUNK_NAME)
    bns = tuple(l.name for l in trunk._flatten_layers(include_self=False)
                if isinstance(l, layers.BatchNormalization))
    return [dataclasses.replace(s, keep_frozen=tuple(s.keep_frozen) + bns,
                                frozen_bn="inference") for s in stages]


def stage_one_frozen(model: keras.Model) -> int | None:
    """How many first layers whole-image stage 1 keeps frozen in a multiple-instance model
    (up to the copied patch classifier `hm_dense`); None for any other model."""
    names = [l.name for l in model.layers]
    if "mil_pool" not in names or "hm_dense" not in names:
        return None
    top = names.index("hm_dense") + 1
    if any(n in names[:top] for n in ("mil_pool", "clf_dense")):
        raise AssertionError("layer order: the head precedes the patch classifier")
    return top


def is_bilateral(model: keras.Model) -> bool:
    """Whether a model scores a breast with the other breast of the same woman."""
    return len(model.inputs) == 2
