"""Keras extensions: patch nets, optimisers and the staged training loop.

The model-file format lives in `dm_modelfile`, the callbacks in `dm_callbacks`, the
ImageNet preprocessing layer in `dm_layers`; their names are re-exported here, so
`dm_keras_ext.save_model`, `dm_keras_ext.AucCheckpoint`, ... keep working (docs/modules.md).
"""
from __future__ import annotations

import logging
import os
import pathlib
from dataclasses import dataclass
from typing import Any, Callable

import keras
import numpy as np
from keras import layers
from keras.regularizers import L1, L1L2, L2

import dm_resnet
from dm_errors import InputError, OriginalAPIError, refuse, retired
from dm_callbacks import (AucCheckpoint, BestModelCheckpoint, LastCheckpoint,  # noqa: F401
                          NanGuard, ResumableEarlyStopping, ResumableReduceLROnPlateau,
                          mean_auroc)
from dm_callbacks import DMAucModelCheckpoint, DMFlush, calc_test_auc  # noqa: F401 (original API)
from dm_layers import (IMAGENET_PREPROCESS, KERAS208_RESNET50_BN_EPSILON,  # noqa: F401
                       Adagrad208, ImageNetPreprocess, RMSprop208)
from dm_modelfile import (META_ATTR, META_MEMBER, ModelFileError, ModelKindError,  # noqa: F401
                          ModelMeta, check_model_kind, load_model, read_model_meta,
                          read_resume_state, save_model, set_precision, write_model_meta)

log = logging.getLogger(__name__)

# ------------------------------------------------------------------ patch nets
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
    if net != "resnet50" or not _has_layer(trunk, "conv5_block2_out"):
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


def _has_layer(model: keras.Model, name: str) -> bool:
    return any(layer.name == name for layer in model.layers)


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


# ------------------------------------------------------------------ optimisers
def create_optimizer(optim_name: str, lr: float) -> keras.optimizers.Optimizer:
    """The seven optimisers of the original, by name (sgd: Nesterov, momentum 0.9), with
    Keras 2.0.8's defaults where Keras 3's differ: epsilon 1e-8 (Keras 3: 1e-7),
    Adagrad's accumulators starting at 0 (Keras 3: 0.1), and RMSprop's and Adagrad's
    epsilon outside the square root (`dm_layers.RMSprop208`, `Adagrad208`)."""
    name = optim_name.lower()
    if name == "sgd":
        return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True)
    table = {"rmsprop": keras.optimizers.RMSprop, "adagrad": keras.optimizers.Adagrad,
             "adadelta": keras.optimizers.Adadelta, "adamax": keras.optimizers.Adamax,
             "adam": keras.optimizers.Adam, "nadam": keras.optimizers.Nadam}
    if name not in table:
        raise InputError(f"unknown optimizer {optim_name!r}; choose sgd, {', '.join(table)}")
    if name == "adagrad":
        return Adagrad208(lr, initial_accumulator_value=0.0, epsilon=1e-8)
    if name == "rmsprop":
        return RMSprop208(lr, epsilon=1e-8)
    return table[name](lr, epsilon=1e-8)


# ------------------------------------------------------------------ staged training
@dataclass(frozen=True)
class Stage:
    """One training stage: what trains, for how long, with which lr, L2 and dropout.

    trainable: 'head' (everything but the `patch_trunk` sub-model), 'top' (the head and
    the trunk's layers from `trunk_from` on), 'first' (the model's own layers from
    `trunk_from` on) or 'all'. `epochs` is the epoch of the run the stage ends at.
    `weight_decay` / `dropout` None: the model keeps its own (--keep-regularization);
    `keep_frozen`: names of trunk layers that stay frozen whatever the stage
    (--saved-trainable). See `original_behaviour`.
    """

    name: str
    epochs: int
    lr: float
    weight_decay: float | None
    dropout: float | None
    trainable: str = "all"
    trunk_from: int | None = None
    keep_frozen: tuple[str, ...] = ()


def patch_stage_list(*, use_pretrained: bool, nb_epoch: int, init_lr: float,
                     weight_decay: float, hidden_dropout: float, top_layer_epochs: int = 0,
                     top_layer_multiplier: float = 0.1, top_layer_nb: int | None = None,
                     all_layer_epochs: int = 0, all_layer_multiplier: float = 0.01,
                     weight_decay2: float = 1e-4, hidden_dropout2: float = 0.0) -> list[Stage]:
    """Dense layer only, then the trunk's top, then all (one stage if not pretrained);
    docs/method.md "Stages". Epoch counts are final epoch numbers (docs/fidelity.md)."""
    if not use_pretrained:
        return [Stage("all layers", nb_epoch, init_lr, weight_decay, hidden_dropout)]
    return [
        Stage("dense layer", nb_epoch, init_lr, weight_decay, hidden_dropout, "head"),
        Stage("top layers", top_layer_epochs, init_lr * top_layer_multiplier,
              weight_decay2, hidden_dropout2, "top", top_layer_nb),
        Stage("all layers", all_layer_epochs, init_lr * all_layer_multiplier,
              weight_decay2, hidden_dropout2, "all"),
    ]


def image_stage_list(*, nb_epoch: int, init_lr: float, weight_decay: float,
                     hidden_dropout: float, all_layer_epochs: int, all_layer_multiplier: float,
                     weight_decay2: float, hidden_dropout2: float,
                     top_layer_nb: int | None = 2) -> list[Stage]:
    """New top layers with `model.layers[:top_layer_nb]` frozen (the input and the
    trunk, or also the heatmap branch), then all layers; docs/method.md "Stages"."""
    return [
        Stage("top layers", nb_epoch, init_lr, weight_decay, hidden_dropout, "first",
              top_layer_nb),
        Stage("all layers", all_layer_epochs, init_lr * all_layer_multiplier,
              weight_decay2, hidden_dropout2, "all"),
    ]


def values_for(fn: Callable, cfg: Any, **override: Any) -> dict:
    """The fields of a config object that `fn` takes as keywords (the one-line adapter
    from a CLI config to a library function with explicit values)."""
    import inspect
    names = [n for n, p in inspect.signature(fn).parameters.items()
             if p.kind is inspect.Parameter.KEYWORD_ONLY and n not in override]
    return dict({n: getattr(cfg, n) for n in names if hasattr(cfg, n)}, **override)


def find_trunk_layer(model: keras.Model) -> keras.Model:
    """The trunk sub-model: the layer named `patch_trunk`, else the only nested model.

    Models converted from the original's checkpoints nest the trunk under another name.
    """
    if _has_layer(model, dm_resnet.TRUNK_NAME):
        return model.get_layer(dm_resnet.TRUNK_NAME)
    nested = [l for l in model.layers if isinstance(l, keras.Model)]
    if len(nested) == 1:
        return nested[0]
    raise InputError(f"model '{model.name}' has no '{dm_resnet.TRUNK_NAME}' sub-model to "
                     "freeze; it is not a patch or whole-image model of this project")


def _set_layer_trainable(layer: keras.layers.Layer, value: bool) -> None:
    """`layer.trainable = value`, recursively, always.

    Plain assignment is skipped by TensorFlow's attribute tracking when the new value
    `is` the old one (True is True), which would leave sub-layers frozen. Unfreezing also
    drops the Keras 2.0.8 frozen-BN behaviour (see `_freeze`).
    """
    keras.layers.Layer.trainable.fset(layer, value)
    if value:
        layer.__dict__.pop("call", None)
    for sub in getattr(layer, "_layers", []):
        _set_layer_trainable(sub, value)


FROZEN_BN_MODES = ("batch", "inference")


def _batch_statistics_when_frozen(bn: layers.BatchNormalization) -> None:
    """Make a frozen BN layer behave as Keras 2.0.8's did in the training phase.

    The layer stays frozen (not trainable: its scale and offset are not optimised, and
    its saved config and the optimiser's variables are those of a frozen layer), but
    its call in the training phase runs as a trainable BN: normalise with the batch
    statistics and update the moving averages. The override lives on the instance only
    and is not saved; every stage sets it again.
    """
    cls_call = type(bn).call

    def call(inputs, training=None, mask=None):
        if not training or bn._trainable:
            return cls_call(bn, inputs, training=training, mask=mask)
        bn._trainable = True
        try:
            return cls_call(bn, inputs, training=training, mask=mask)
        finally:
            bn._trainable = False

    object.__setattr__(bn, "call", call)


def _freeze(layer: keras.layers.Layer, frozen_bn: str = "batch") -> None:
    """Freeze a layer (recursively) for a training stage.

    `frozen_bn="batch"` is Keras 2.0.8's behaviour (docs/fidelity.md): a frozen
    BatchNormalization layer still normalises with the mini-batch statistics in the
    training phase and still updates its moving averages; only its scale and offset are
    not trained. `"inference"` is Keras 3's own behaviour: a frozen BN layer uses and
    keeps its moving statistics.
    """
    if frozen_bn not in FROZEN_BN_MODES:
        raise InputError(f"unknown frozen BatchNormalization mode {frozen_bn!r}; "
                         f"choose {' or '.join(FROZEN_BN_MODES)}")
    _set_layer_trainable(layer, False)
    if frozen_bn == "batch":
        for sub in layer._flatten_layers(include_self=True):
            if isinstance(sub, layers.BatchNormalization):
                _batch_statistics_when_frozen(sub)


def set_trainable(model: keras.Model, stage: Stage, frozen_bn: str = "batch") -> None:
    """Freeze what the stage does not train: by the named sub-model `patch_trunk`
    ('head', 'top') or by index in the model's own layers ('first', the original's
    `model.layers[:top_layer_nb]` of the whole-image model)."""
    _set_layer_trainable(model, True)
    _set_trainable_by_spec(model, stage, frozen_bn)
    if stage.keep_frozen:
        keep = set(stage.keep_frozen)
        for layer in find_trunk_layer(model)._flatten_layers(include_self=False):
            if layer.name in keep and not isinstance(layer, keras.Model):
                _freeze(layer, frozen_bn)


def _set_trainable_by_spec(model: keras.Model, stage: Stage, frozen_bn: str) -> None:
    if stage.trainable == "all":
        return
    if stage.trainable not in ("first", "head", "top"):
        raise InputError(f"unknown trainable spec {stage.trainable!r}")
    if stage.trainable == "head":
        _freeze(find_trunk_layer(model), frozen_bn)
        return
    if stage.trunk_from is None:
        what = ("which layers are frozen" if stage.trainable == "first"
                else "where the top layers start")
        raise InputError(f"stage '{stage.name}': {what} is unknown; pass --top-layer-nb")
    owner = model if stage.trainable == "first" else find_trunk_layer(model)
    for layer in owner.layers[:stage.trunk_from]:
        _freeze(layer, frozen_bn)


def set_weight_decay(model: keras.Model, weight_decay: float) -> int:
    """Set the L2 factor of every top-level conv/dense kernel that carries a penalty.

    Every regulariser kind counts: Keras 2.0.8 files store `l2(x)` as `L1L2(l1=0, l2=x)`
    (published and converted checkpoints), and the original set `.l2` on whatever
    regulariser a kernel had; an L1 part is kept. Both the layer attribute (saved in
    its config) and the variable's regulariser (what the loss reads when the train
    step is traced) change, so unlike the original's mutation of built layers this
    takes effect. Returns the number of kernels changed.
    """
    n = 0
    wd = float(weight_decay)
    for layer in model.layers:
        reg = getattr(layer, "kernel_regularizer", None)
        if reg is None or getattr(layer, "kernel", None) is None:
            continue
        if isinstance(reg, L2):
            new = L2(wd)
        elif isinstance(reg, (L1L2, L1)):
            l1 = float(getattr(reg, "l1", 0.0))
            new = L1L2(l1=l1, l2=wd)
        else:
            continue
        layer.kernel_regularizer = new
        layer.kernel.regularizer = new
        n += 1
    return n


def set_dropout(model: keras.Model, rate: float) -> int:
    """Set the rate of every top-level Dropout layer (read at call time, so it takes effect)."""
    n = 0
    for layer in model.layers:
        if isinstance(layer, layers.Dropout):
            layer.rate = float(rate)
            n += 1
    return n


def regularization_loss(model: keras.Model) -> float:
    """Sum of the weight penalties the loss currently includes (trainable weights only)."""
    return float(sum(keras.ops.convert_to_numpy(l) for l in model.losses)) if model.losses else 0.0


def compile_for_stage(model: keras.Model, stage: Stage, optim: str,
                      jit_compile: bool | str = False, optimizer=None,
                      frozen_bn: str = "batch") -> None:
    """Apply a stage's trainability, L2 and dropout, then compile with its optimiser.

    `optimizer`: continue with this (restored) optimiser instead of a new one (resume).
    """
    set_trainable(model, stage, frozen_bn)
    if stage.weight_decay is not None:
        set_weight_decay(model, stage.weight_decay)
    if stage.dropout is not None:
        set_dropout(model, stage.dropout)
    model.compile(optimizer=optimizer or create_optimizer(optim, stage.lr),
                  loss="categorical_crossentropy", metrics=["accuracy"], jit_compile=jit_compile)


def _or_model(value: float | None) -> str:
    return "the model's own" if value is None else f"{value:g}"


def saved_frozen_layers(path: str, safe_mode: bool = True) -> tuple[str, ...]:
    """Names of the layers with weights that a model file saved as frozen (`trainable`
    false), nested models looked into and not themselves listed."""
    model = load_model(path, safe_mode=safe_mode)
    return tuple(l.name for l in model._flatten_layers(include_self=False)
                 if not l.trainable and l.weights and not isinstance(l, keras.Model))


def original_behaviour(stages: list[Stage], *, keep_regularization: bool = False,
                       keep_frozen: tuple[str, ...] = ()) -> list[Stage]:
    """The stages with two Keras 2.0.8 behaviours of the original (docs/fidelity.md).

    keep_regularization: the stages do not change the model's L2 factors and dropout
    rates (the original set `.l2` and `.rate` on built layers, which had no effect, so
    a model trained with what it was built or saved with). keep_frozen: trunk layers
    (by name) that stay frozen in every stage (Keras 2.0.8 honoured the `trainable` flag
    each inner layer of a nested model was saved with; the original's stage loops
    toggled only the whole-image model's top-level layers).
    """
    import dataclasses
    return [dataclasses.replace(
        s, weight_decay=None if keep_regularization else s.weight_decay,
        dropout=None if keep_regularization else s.dropout,
        keep_frozen=tuple(keep_frozen)) for s in stages]


def apply_fidelity_flags(cfg: Any, kind: str, stages: list[Stage]) -> list[Stage]:
    """A trainer's --keep-regularization and --saved-trainable applied to its stages.

    --keep-regularization unset: on for the image trainer's --resume-from (the original's
    finetuning of a whole-image model trained with the checkpoint's own L2 and dropout:
    its stage flags had no effect), off otherwise (the stage flags take effect).
    """
    keep = getattr(cfg, "keep_regularization", None)
    if keep is None:
        keep = kind == "image" and getattr(cfg, "resume_from", None) is not None
        if keep:
            log.info("--resume-from: the model keeps its own L2 factors and dropout rates "
                     "in every stage, as in the original (--no-keep-regularization applies "
                     "--weight-decay, --hidden-dropout and their stage-2 forms)")
    elif keep:
        log.info("--keep-regularization: the stages leave the L2 factors and dropout rates "
                 "the model was built or saved with (--weight-decay2 and --hidden-dropout2 "
                 "have no effect)")
    frozen: tuple[str, ...] = ()
    if getattr(cfg, "saved_trainable", False):
        source = cfg.resume_from if cfg.resume_from is not None else cfg.patch_model_state
        frozen = saved_frozen_layers(source, safe_mode=not cfg.unsafe_load)
        log.info("--saved-trainable: %d layers saved frozen in %s stay frozen in every "
                 "stage", len(frozen), source)
    return original_behaviour(stages, keep_regularization=keep, keep_frozen=frozen)


def stage_span(stage: Stage, done: int) -> tuple[int, int]:
    """(first epoch, end epoch) of a stage that starts after `done` epochs of the run.

    As in the original (Keras 2 `fit(epochs=<flag>, initial_epoch=len(history))`), a
    stage's epoch flag is the epoch number it ends at, counted from the start of the
    run, and a stage starts where the previous one actually ended (also after early
    stopping); a stage whose end is not past its start trains nothing.
    """
    return done, max(done, int(stage.epochs))


def run_stages(model: keras.Model, stages: list[Stage], train_ds, steps_per_epoch: int,
               val_ds, callbacks: list, optim: str = "sgd", jit_compile: bool = False,
               resume_at: tuple = (0, 0), verbose: int | str = "auto",
               frozen_bn: str = "batch") -> dict[str, list]:
    """The one data-driven stage loop of both trainers; epoch numbering continues.

    Each stage ends at epoch `stage.epochs` of the run (see `stage_span`).
    `train_ds` is a dataset or a function of the first epoch returning one (so each
    stage, and a resumed run, sees the batches of its own epochs). `resume_at` is
    (stage index, epoch[, inside the stage]) to continue from: earlier stages are skipped
    and, inside a stage, the model's restored optimiser is kept. If a stage stops early, the next one
    still runs from there (as in the original); a callback with a true `abort`
    attribute (NaN loss) stops all. `frozen_bn`: see `set_trainable`. Returns this
    call's history.
    """
    history: dict[str, list] = {}
    r_stage, done = resume_at[:2]
    resumed_mid_stage = resume_at[2] if len(resume_at) > 2 else done > 0
    for i, stage in enumerate(stages):
        if i < r_stage:
            continue
        first, end = stage_span(stage, done)
        if first >= end:
            log.info("stage %d (%s): ends at epoch %d, %d epochs already run: nothing to "
                     "train", i + 1, stage.name, stage.epochs, done)
            continue
        mid_stage = i == r_stage and resumed_mid_stage
        compile_for_stage(model, stage, optim, jit_compile,
                          optimizer=model.optimizer if mid_stage else None, frozen_bn=frozen_bn)
        log.info("stage %d (%s): epochs %d-%d, lr %.3g, weight decay %s, dropout %s, "
                 "%d trainable weights%s", i + 1, stage.name, first + 1, end,
                 float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)),
                 _or_model(stage.weight_decay), _or_model(stage.dropout),
                 len(model.trainable_weights),
                 " (resumed)" if mid_stage else "")
        for cb in callbacks:
            if hasattr(cb, "stage"):
                cb.stage = i
        ds = train_ds(first) if callable(train_ds) else train_ds
        hist = model.fit(ds, steps_per_epoch=steps_per_epoch, epochs=end, initial_epoch=first,
                         validation_data=val_ds, callbacks=callbacks, verbose=verbose,
                         shuffle=False)
        for k, v in hist.history.items():
            history.setdefault(k, []).extend(float(x) for x in v)
        history.setdefault("stage", []).extend([i + 1] * len(hist.epoch))
        history.setdefault("epoch", []).extend(e + 1 for e in hist.epoch)
        done = first + len(hist.epoch)
        if any(getattr(cb, "abort", False) for cb in callbacks):
            break
    return history


# ------------------------------------------------------------------ the original's API
# The original's `dm_keras_ext` names, as thin adapters over the code above (docs/original.md, "Code
# written for the original"): one loader, one stage loop. Its callbacks are in `dm_callbacks`.

make_parallel = retired("dm_keras_ext.make_parallel",
                        "--distribute (tf.distribute.MirroredStrategy)")


def flip_all_img(X: np.ndarray) -> list[np.ndarray]:
    """[X, left-right, up-down, both] flips of a (B, H, W, C) batch (`dm_inference.FLIPS`)."""
    import dm_inference as inf
    return [np.asarray(inf.flip(X, m)) for m in inf.FLIPS]


def robust_load_model(filepath, custom_objects: dict | None = None, compile: bool = False):
    """Load a model file like `load_model`: `.keras`, Keras 3 `.h5` or Keras 1.2/2.x `.h5`
    (`load_model`); the optimizer state of old files is ignored."""
    import contextlib
    scope = (keras.saving.custom_object_scope(custom_objects) if custom_objects
             else contextlib.nullcontext())
    with scope:
        return load_model(filepath, compile=compile)


def load_dat_ram(generator, nb_samples: int):
    """Draw `nb_samples` images from a generator into RAM: (X, y[, w])."""
    xs, ys, ws = [], [], []
    seen = 0
    while seen < nb_samples:
        blob = generator.next()
        xs.append(blob[0])
        ys.append(blob[1])
        if len(blob) > 2:
            ws.append(blob[2])
        seen += len(blob[1])
    data = (np.concatenate(xs), np.concatenate(ys)) + ((np.concatenate(ws),) if ws else ())
    if len(data[0]) != nb_samples:
        raise OriginalAPIError(f"load_dat_ram: {len(data[0])} images drawn for "
                               f"{nb_samples} requested (nb_samples must be whole batches)")
    return data


def Yaroslav(input_shape=None, classes: int = 5):
    """YaroslavNet patch classifier (`get_dl_model('yaroslav')`), one channel."""
    size = (224, 224) if input_shape is None or input_shape[0] is None else input_shape[:2]
    return get_dl_model("yaroslav", nb_class=classes, use_pretrained=False, img_size=size)[0]


class DMMetrics:
    """Sensitivity and specificity as Keras metrics (rounded predictions), as the original."""

    @staticmethod
    def sensitivity(y_true, y_pred):
        from keras import ops
        pred = ops.round(ops.clip(y_pred, 0, 1))
        pos = ops.round(ops.clip(y_true, 0, 1))
        return ops.sum(pos * pred) / (ops.sum(pos) + 1e-7)

    @staticmethod
    def specificity(y_true, y_pred):
        from keras import ops
        pred = 1 - ops.round(ops.clip(y_pred, 0, 1))
        neg = 1 - ops.round(ops.clip(y_true, 0, 1))
        return ops.sum(neg * pred) / (ops.sum(neg) + 1e-7)


def _train_stages(model, stages, train_generator, validation_set, validation_steps,
                  best_model_out, steps_per_epoch, optim, es_patience, lr_patience,
                  monitor: str, auc_checkpointer=None, class_weight=None):
    """The stage loop (`run_stages`) on the original's generators."""
    if class_weight:
        raise refuse("pos_cls_weight/neg_cls_weight with do_*stage_training",
                     "flow_from_directory(auto_batch_balance=True), or the trainers' "
                     "--pos-cls-weight")
    train_ds = getattr(train_generator, "dataset", None)
    if train_ds is None or not getattr(train_generator, "shuffle", False):
        raise refuse("a training generator other than flow_from_directory(shuffle=True)",
                     "DMImageDataGenerator().flow_from_directory(..., shuffle=True)")
    if isinstance(validation_set, tuple):
        val_ds = validation_set
    else:
        val_ds = getattr(validation_set, "dataset", None)
        if val_ds is None or validation_set.shuffle:
            raise refuse("this validation generator", "flow_from_directory(..., shuffle="
                         "False) or a (X, y) tuple")
    # Keras 2.0.8's counting, as the trainers (`dm_train.make_callbacks`), reset every stage.
    callbacks = [ResumableEarlyStopping(monitor="val_loss", patience=es_patience, verbose=1)]
    if optim == "sgd":
        callbacks.append(ResumableReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                                    patience=lr_patience, verbose=1))
    if auc_checkpointer is not None:
        callbacks.append(auc_checkpointer)
    elif best_model_out not in (None, "NOSAVE"):
        callbacks.append(BestModelCheckpoint(best_model_out, monitor=monitor))
    history = run_stages(model, stages, train_ds, int(steps_per_epoch), val_ds, callbacks,
                         optim=optim)
    return model, history


def do_2stage_training(model, org_model, train_generator, validation_set, validation_steps,
                       best_model_out, steps_per_epoch, top_layer_nb=None, nb_epoch=10,
                       all_layer_epochs=0, optim="sgd", init_lr=.01, all_layer_multiplier=.1,
                       es_patience=5, lr_patience=2, auto_batch_balance=True, nb_class=2,
                       pos_cls_weight=1., neg_cls_weight=1., nb_worker=1, auc_checkpointer=None,
                       weight_decay=.0001, hidden_dropout=.0, weight_decay2=.0001,
                       hidden_dropout2=.0):
    """Whole-image training: the new top layers with the trunk frozen (`nb_epoch`), then all
    layers (`all_layer_epochs`), through today's stage loop (`image_stage_list`).

    The epoch counts mean what they mean to today's trainers (`run_stages`);
    epoch numbers continue across stages. Returns (model, history dict).
    """
    top = 2 if top_layer_nb is None else top_layer_nb  # model.layers[:top] frozen in stage 1
    stages = image_stage_list(nb_epoch=nb_epoch, init_lr=init_lr, weight_decay=weight_decay,
                              hidden_dropout=hidden_dropout, all_layer_epochs=all_layer_epochs,
                              all_layer_multiplier=all_layer_multiplier,
                              weight_decay2=weight_decay2, hidden_dropout2=hidden_dropout2,
                              top_layer_nb=top)
    weights = None if (pos_cls_weight, neg_cls_weight) == (1., 1.) else True
    return _train_stages(model, stages, train_generator, validation_set,
                         validation_steps, best_model_out, steps_per_epoch, optim, es_patience,
                         lr_patience, "val_accuracy", auc_checkpointer, weights)


def do_3stage_training(model, org_model, train_generator, validation_set, validation_steps,
                       best_model_out, steps_per_epoch, top_layer_nb=None, net=None,
                       nb_epoch=10, top_layer_epochs=0, all_layer_epochs=0,
                       use_pretrained=True, optim="sgd", init_lr=.01, top_layer_multiplier=.01,
                       all_layer_multiplier=.0001, es_patience=5, lr_patience=2,
                       auto_batch_balance=True, nb_class=3, pos_cls_weight=1.,
                       neg_cls_weight=1., nb_worker=1, weight_decay2=.01, hidden_dropout2=.0):
    """Patch training: Dense only, then the trunk from `top_layer_nb` (an index into
    today's trunk, as `get_dl_model` returns it), then all layers (today's
    `patch_stage_list`). Returns (model, history dict)."""
    if top_layer_nb is None and use_pretrained:
        trunk = find_trunk_layer(model)
        top_layer_nb = default_top_layer_nb(trunk, net or "")
    drop = (model.get_layer("patch_dropout").rate if _has_layer(model, "patch_dropout")
            else 0.0)
    stages = patch_stage_list(
        use_pretrained=use_pretrained, nb_epoch=nb_epoch, init_lr=init_lr,
        weight_decay=_dense_l2(model), hidden_dropout=drop, top_layer_epochs=top_layer_epochs,
        top_layer_multiplier=top_layer_multiplier, top_layer_nb=top_layer_nb,
        all_layer_epochs=all_layer_epochs, all_layer_multiplier=all_layer_multiplier,
        weight_decay2=weight_decay2, hidden_dropout2=hidden_dropout2)
    weights = None if (pos_cls_weight, neg_cls_weight) == (1., 1.) else True
    return _train_stages(model, stages, train_generator, validation_set,
                         validation_steps, best_model_out, steps_per_epoch, optim, es_patience,
                         lr_patience, "val_accuracy", None, weights)


def _dense_l2(model) -> float:
    """The L2 factor of the model's last Dense (the value the model was built with)."""
    for layer in reversed(model.layers):
        reg = getattr(layer, "kernel_regularizer", None)
        if reg is not None and "l2" in reg.get_config():
            return float(reg.get_config()["l2"])
    return 0.0
