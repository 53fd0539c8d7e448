"""The patch classifiers' networks: trunks, classifier, the `patch_trunk` sub-model.

The trunks (ResNet50, VGG16/19, Xception, InceptionV3
from keras.applications, YaroslavNet, the project's small ResNets), the classifier built on
a trunk, and where stage 2 of patch training starts inside each trunk (docs/fidelity.md).
"""
from __future__ import annotations

import logging
import os
import pathlib

import keras
from keras import layers
from keras.regularizers import L2

import dm_resnet
from dm_errors import InputError
from dm_layers import (IMAGENET_PREPROCESS, KERAS208_RESNET50_BN_EPSILON, ImageNetPreprocess)
from dm_modelfile import load_model

log = logging.getLogger(__name__)


# Where stage 2 ("top layers") of patch training starts inside each trunk, by layer name
# and offset: the places the original's indices pointed to in the Keras 2.0.8 layer
# lists (ResNet50 162 = the output of res5b, so only res5c trains; VGG16 15 and VGG19 17
# = block5_conv1; Xception 126 = block14_sepconv1; InceptionV3 194 = the last
# activations before mixed6, so the mixed7 block onwards trains; YaroslavNet: none, all
# layers train). See docs/fidelity.md.
TOP_LAYER_START: dict[str, tuple[str, int] | None] = {
    "resnet50": ("conv5_block2_out", 0),
    "vgg16": ("block5_conv1", 0),
    "vgg19": ("block5_conv1", 0),
    "xception": ("block14_sepconv1", 0),
    "inception": ("mixed6", 1),
    "yaroslav": None,
}


def _resnet50_keras208_names() -> list[str]:
    """Today's ResNet50 layer names in the order of Keras 2.0.8's ResNet50 layer list.

    Keras 2.0.8 had no zero padding layers (conv1 and the max pooling padded 'same'),
    added the main branch before the shortcut, and ordered layers by depth with ties
    in traversal order, so a projection unit lists 2c conv, shortcut conv, 2c BN,
    shortcut BN. 173 layers, input first.
    """
    names = ["input", "conv1_conv", "conv1_bn", "conv1_relu", "pool1_pool"]
    for stage, units in ((2, 3), (3, 4), (4, 6), (5, 3)):
        for u in range(1, units + 1):
            b = f"conv{stage}_block{u}_"
            names += [b + "1_conv", b + "1_bn", b + "1_relu", b + "2_conv", b + "2_bn",
                      b + "2_relu"]
            names += ([b + "3_conv", b + "0_conv", b + "3_bn", b + "0_bn"] if u == 1
                      else [b + "3_conv", b + "3_bn"])
            names += [b + "add", b + "out"]
    return names


def keras208_trunk_layout(trunk: keras.Model, net: str) -> list:
    """The trunk's layers in the order the original's Keras 2.0.8 model listed them.

    ResNet50 is reordered by name (its zero-padding layers had no Keras 2.0.8
    counterpart and are left out); the other nets list the same layers in the same
    order today (same construction, same depth-then-traversal ordering).
    """
    if net != "resnet50" or not has_layer(trunk, "conv5_block2_out"):
        return list(trunk.layers)
    by_name = {l.name: l for l in trunk.layers}
    return [trunk.layers[0]] + [by_name[n] for n in _resnet50_keras208_names()[1:]]


def legacy_top_layer_nb(trunk: keras.Model, net: str, top_layer_nb: int,
                        dropout: bool = True) -> int:
    """Translate the original's `--top-layer-nb` (an index into the Keras 2.0.8 flat
    patch model: trunk layers, then ResNet50's 7x7 `avg_pool`, the global pooling, the
    dropout when there was one, the Dense layer) into an index in today's trunk.

    An index into the head means no trunk layer trains in stage 2.
    """
    layout = keras208_trunk_layout(trunk, net)
    head = (["avg_pool"] if net == "resnet50" else []) + ["pool"] + \
        (["dropout"] if dropout and net != "yaroslav" else []) + ["dense"]
    view = layout + head
    if not -len(view) <= top_layer_nb <= len(view):
        raise InputError(f"--top-layer-nb {top_layer_nb} is outside the {net} patch model "
                         f"({len(view)} layers in the original's layout)")
    if top_layer_nb == len(view):
        return len(trunk.layers)
    chosen = view[top_layer_nb]
    if isinstance(chosen, str):
        return len(trunk.layers)
    return list(trunk.layers).index(chosen)


_APPLICATIONS = {
    "resnet50": ("ResNet50", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "vgg16": ("VGG16", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "vgg19": ("VGG19", "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "xception": ("Xception", "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    "inception": ("InceptionV3", "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"),
}


PATCH_NETS = tuple(_APPLICATIONS) + ("yaroslav",) + tuple(dm_resnet.RESNET_CONFIGS)


class PretrainedWeightsError(InputError, FileNotFoundError):
    """ImageNet weights were requested but no local file was found (no internet at run time)."""


def imagenet_weights_path(net: str, weights_file: str | None = None) -> str:
    """Local path of a net's ImageNet 'notop' weights: `weights_file` or the Keras cache."""
    fname = _APPLICATIONS[net][1]
    if weights_file:
        path = pathlib.Path(weights_file).expanduser()
    else:
        cache = pathlib.Path(os.environ.get("KERAS_HOME", pathlib.Path.home() / ".keras"))
        path = cache / "models" / fname
    if not path.is_file():
        raise PretrainedWeightsError(
            f"{path}: ImageNet weights for {net} not found (no download at run time); "
            f"put {fname} there or pass --pretrained-weights PATH, or use --no-use-pretrained")
    return str(path)


def yaroslav_trunk(input_shape=(None, None, 1)) -> keras.Model:
    """YaroslavNet's convolutional trunk: six [conv3x3-BN-relu]x2 + maxpool blocks, with
    the original's Keras defaults (Glorot-uniform kernels, no weight decay)."""
    inp = keras.Input(shape=input_shape)
    x = inp
    for b, filters in enumerate((32, 64, 128, 256, 256, 512), start=1):
        for c in (1, 2):
            x = layers.Conv2D(filters, (3, 3), padding="same", name=f"block{b}_conv{c}")(x)
            x = layers.BatchNormalization(name=f"block{b}_bn{c}")(x)
            x = layers.Activation("relu", name=f"block{b}_relu{c}")(x)
        x = layers.MaxPooling2D((2, 2), strides=(2, 2), name=f"block{b}_pool")(x)
    return keras.Model(inp, x, name=dm_resnet.TRUNK_NAME)


def _custom_resnet_trunk(net: str, input_shape, **kw) -> keras.Model:
    block_fn, reps = dm_resnet.RESNET_CONFIGS[net]
    c = input_shape[-1]
    inp, pooled = dm_resnet.ResNetBuilder._shared_conv_layers(
        (c, input_shape[0], input_shape[1]), block_fn, reps, **kw)
    gap = keras.Model(inp, pooled).layers[-1]
    return keras.Model(inp, gap.input, name=dm_resnet.TRUNK_NAME)


def build_trunk(net: str, input_shape=(224, 224, 3), use_pretrained: bool = False,
                weights_file: str | None = None, **resnet_kw) -> keras.Model:
    """The convolutional part of a patch net, as a model named `patch_trunk`."""
    input_shape = (None, None, input_shape[-1])   # the trunk takes any image size
    if net == "yaroslav":
        return yaroslav_trunk((None, None, 1))
    if net in dm_resnet.RESNET_CONFIGS:
        return _custom_resnet_trunk(net, input_shape, **resnet_kw)
    if net not in _APPLICATIONS:
        raise InputError(f"unknown patch net {net!r}; choose from {', '.join(PATCH_NETS)}")
    cls = getattr(keras.applications, _APPLICATIONS[net][0])
    weights = imagenet_weights_path(net, weights_file) if use_pretrained else None
    base = cls(include_top=False, weights=weights, input_shape=tuple(input_shape))
    if net == "resnet50":   # Keras 2.0.8's ResNet50 BN epsilon (docs/fidelity.md)
        for layer in base.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.epsilon = KERAS208_RESNET50_BN_EPSILON
    return keras.Model(base.inputs, base.output, name=dm_resnet.TRUNK_NAME)


def get_dl_model(net: str, nb_class: int = 3, use_pretrained: bool = True,
                 resume_from: str | None = None, img_size=(224, 224),
                 top_layer_nb: int | None = None, weight_decay: float = 0.01,
                 hidden_dropout: float = 0.0, weights_file: str | None = None,
                 imagenet_preprocess: bool = False,
                 **kw_args) -> tuple[keras.Model, None, int | None]:
    """A patch classifier: trunk -> global average pooling -> dropout -> Dense softmax.

    Returns `(model, preprocess_input, top_layer_nb)` like the original;
    `preprocess_input` is always None (the recipe does preprocessing) and
    `top_layer_nb` is the index in the trunk's layers where stage 2 starts.
    The dropout layer is always present (rate may be 0) so a later stage can change it.
    `imagenet_preprocess` (the original's --no-featurewise-center) puts the net's
    ImageNet `preprocess_input` in front of the trunk (`ImageNetPreprocess`).
    """
    if resume_from is not None:
        model = load_model(resume_from)
        if not any(isinstance(l, keras.Model) for l in model.layers):
            model = nest_flat_patch_model(model, net)   # e.g. a downloaded original .h5
        trunk = find_trunk_layer(model)
    else:
        channels = 1 if net == "yaroslav" else 3
        shape = (int(img_size[0]), int(img_size[1]), channels)
        if net in dm_resnet.RESNET_CONFIGS:  # the original used one dropout for trunk and head
            kw_args = dict(kw_args, hidden_dropout=hidden_dropout,
                           weight_decay=kw_args.get("weight_decay", 1e-4))
        if use_pretrained and net not in _APPLICATIONS:
            log.info("%s has no ImageNet weights: random start (the staged schedule still "
                     "applies)", net)
        trunk = build_trunk(net, shape, use_pretrained and net in _APPLICATIONS,
                            weights_file, **kw_args)
        inp = keras.Input(shape=shape, name="patch_input")
        x = inp
        if imagenet_preprocess and net in IMAGENET_PREPROCESS:
            x = ImageNetPreprocess(IMAGENET_PREPROCESS[net], name="imagenet_preprocess")(x)
        x = trunk(x)
        x = layers.GlobalAveragePooling2D(name="patch_pool")(x)
        yaroslav = net == "yaroslav"   # the original's head: no dropout, no weight decay
        x = layers.Dropout(0.0 if yaroslav else hidden_dropout, name="patch_dropout")(x)
        out = layers.Dense(nb_class, activation="softmax", name="patch_clf",
                           kernel_regularizer=None if yaroslav else L2(weight_decay))(x)
        model = keras.Model(inp, out, name=f"patch_{net}")
    if trunk is not None:
        top_layer_nb = (default_top_layer_nb(trunk, net) if top_layer_nb is None else
                        legacy_top_layer_nb(trunk, net, top_layer_nb))
    return model, None, top_layer_nb


def nest_flat_patch_model(model: keras.Model, net: str = "resnet50") -> keras.Model:
    """A flat patch classifier (as the original saved it: one list of layers) rebuilt as
    `patch_input -> patch_trunk -> head`, sharing its layers and weights.

    The trunk ends at the last convolutional feature map (`dm_resnet.find_trunk_output`);
    the head layers after it are applied in order. A Dropout layer (rate 0) is put before
    the classifier when the head has none, so the later stages can set a rate.
    """
    cut = dm_resnet.find_trunk_output(model, patch_net=net)
    trunk = dm_resnet.get_trunk(model, patch_net=net)
    inp = keras.Input(shape=tuple(model.inputs[0].shape[1:]), name="patch_input")
    x = trunk(inp)
    head = model.layers[model.layers.index(cut) + 1:]
    has_dropout = any(isinstance(l, layers.Dropout) for l in head)
    for layer in head:
        if isinstance(layer, layers.Dense) and layer is head[-1] and not has_dropout:
            x = layers.Dropout(0.0, name="patch_dropout")(x)
        x = layer(x)
    return keras.Model(inp, x, name=f"patch_{net}")


def has_layer(model: keras.Model, name: str) -> bool:
    return any(layer.name == name for layer in model.layers)


def find_trunk_layer(model: keras.Model) -> keras.Model:
    """The trunk sub-model: the layer named `patch_trunk`, else the only nested model.

    Models converted from the original's checkpoints nest the trunk under another name.
    """
    if has_layer(model, dm_resnet.TRUNK_NAME):
        return model.get_layer(dm_resnet.TRUNK_NAME)
    nested = [l for l in model.layers if isinstance(l, keras.Model)]
    if len(nested) == 1:
        return nested[0]
    raise InputError(f"model '{model.name}' has no '{dm_resnet.TRUNK_NAME}' sub-model to "
                     "freeze; it is not a patch or whole-image model of this project")


def _last_stage_start(trunk: keras.Model) -> int | None:
    """ResNetBuilder trunks: the index right after the last residual sum of the
    second-to-last stage (stages are told apart by their channel count)."""
    adds = [i for i, l in enumerate(trunk.layers) if isinstance(l, layers.Add)]
    if not adds:
        return None
    final = trunk.layers[adds[-1]].output.shape[-1]
    earlier = [i for i in adds if trunk.layers[i].output.shape[-1] != final]
    return earlier[-1] + 1 if earlier else None


def default_top_layer_nb(trunk: keras.Model, net: str) -> int | None:
    """Index in `trunk.layers` where the net's top layers (stage 2) start: by layer name
    for the ImageNet nets (0 for YaroslavNet: all layers), the last residual stage for
    ResNetBuilder nets."""
    if net in dm_resnet.RESNET_CONFIGS:
        return _last_stage_start(trunk)
    if net not in TOP_LAYER_START:
        return None
    if TOP_LAYER_START[net] is None:
        return 0
    name, offset = TOP_LAYER_START[net]
    for i, layer in enumerate(trunk.layers):
        if layer.name == name:
            return i + offset
    raise InputError(f"layer {name!r} (start of the top layers of {net}) not found in trunk")
