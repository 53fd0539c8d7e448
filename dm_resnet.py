"""Residual/VGG building blocks, the custom ResNet builders and `add_top_layers`.

`add_top_layers` turns a patch classifier into a whole-image classifier (docs/training.md, "Models"): the
patch model is cut at its last convolutional feature map, wrapped as a nested
sub-model named `patch_trunk` (so training stages can freeze it by name), called on a
whole-image input, and new convolutional "top" layers are stacked on its output.
"""
from __future__ import annotations

from typing import Callable, Sequence

import keras
from keras import layers
from keras.regularizers import L1, L2, L1L2

from dm_errors import InputError
from dm_layers import he_normal# Keras 2.0.8's he_normal (docs/fidelity.md)

TRUNK_NAME = "patch_trunk"
CHANNEL_AXIS = -1

# Layers that make up a classifier *head* (after the last convolutional feature map).
# MaxPooling is deliberately absent: VGG's block5_pool and YaroslavNet's last pool are
# part of the feature extractor, as they were in the original's cut.
_HEAD_LAYER_TYPES = (
    layers.Dense, layers.Dropout, layers.Flatten, layers.GlobalAveragePooling2D,
    layers.GlobalMaxPooling2D, layers.AveragePooling2D, layers.Reshape,
    layers.BatchNormalization,
)


def _l2(weight_decay: float):
    """Always a regulariser (possibly 0), so a later training stage can change its factor."""
    return L2(float(weight_decay))


# ----------------------------------------------------------------- basic units
def _conv_bn_relu(nb_filter: int, nb_row: int, nb_col: int, strides=(1, 1),
                  weight_decay: float = 1e-4, dropout: float = 0.0, last_block: bool = False):
    """conv -> BN -> relu -> dropout (original ordering); `last_block` stops after BN."""
    def f(x):
        x = layers.Conv2D(nb_filter, (nb_row, nb_col), strides=strides, padding="same",
                          kernel_initializer=he_normal(),
                          kernel_regularizer=_l2(weight_decay))(x)
        x = layers.BatchNormalization(axis=CHANNEL_AXIS)(x)
        if last_block:
            return x
        x = layers.Activation("relu")(x)
        return layers.Dropout(dropout)(x)
    return f


def _bn_relu_conv(nb_filter: int, nb_row: int, nb_col: int, strides=(1, 1),
                  weight_decay: float = 1e-4, dropout: float = 0.0):
    """BN -> relu -> dropout -> conv (pre-activation ordering, He et al. 2016)."""
    def f(x):
        x = layers.BatchNormalization(axis=CHANNEL_AXIS)(x)
        x = layers.Activation("relu")(x)
        x = layers.Dropout(dropout)(x)
        return layers.Conv2D(nb_filter, (nb_row, nb_col), strides=strides, padding="same",
                             kernel_initializer=he_normal(),
                             kernel_regularizer=_l2(weight_decay))(x)
    return f


def _shortcut(inp, residual, weight_decay: float = 1e-4, dropout: float = 0.0,
              identity: bool = True, strides=(1, 1), with_bn: bool = False, org: bool = False):
    """Add a shortcut to `residual`; a projection (1x1 conv [+BN]) unless `identity`.

    With `org` (original ResNet ordering) the sum is followed by relu and dropout.
    """
    shortcut = inp
    if not identity:
        shortcut = layers.Conv2D(residual.shape[CHANNEL_AXIS], (1, 1), strides=strides,
                                 padding="valid", kernel_initializer=he_normal(),
                                 kernel_regularizer=_l2(weight_decay))(inp)
        if with_bn:
            shortcut = layers.BatchNormalization(axis=CHANNEL_AXIS)(shortcut)
    x = layers.Add()([shortcut, residual])
    if not org:
        return x
    x = layers.Activation("relu")(x)
    return layers.Dropout(dropout)(x)


def basic_block(nb_filters: int, init_strides=(1, 1), identity: bool = True,
                shortcut_with_bn: bool = False, enlarge_factor=None, **kw):
    """Two 3x3 convs, pre-activation ordering (ResNet <= 34)."""
    def f(x):
        y = _bn_relu_conv(nb_filters, 3, 3, strides=init_strides, **kw)(x)
        y = _bn_relu_conv(nb_filters, 3, 3, **kw)(y)
        return _shortcut(x, y, identity=identity, strides=init_strides,
                         with_bn=shortcut_with_bn, **kw)
    return f


def basic_block_org(nb_filters: int, init_strides=(1, 1), identity: bool = True,
                    shortcut_with_bn: bool = False, enlarge_factor=None, **kw):
    """Two 3x3 convs, original ordering (conv-BN-relu, relu after the sum)."""
    def f(x):
        y = _conv_bn_relu(nb_filters, 3, 3, strides=init_strides, **kw)(x)
        y = _conv_bn_relu(nb_filters, 3, 3, last_block=True, **kw)(y)
        return _shortcut(x, y, identity=identity, strides=init_strides,
                         with_bn=shortcut_with_bn, org=True, **kw)
    return f


def _bottleneck(org: bool, nb_filters: int, init_strides, identity: bool,
                shortcut_with_bn: bool, enlarge_factor: int, **kw):
    """1x1 -> 3x3 -> 1x1 (x enlarge_factor): BN-ReLU-conv units, or conv-BN-ReLU (`org`)."""
    unit = _conv_bn_relu if org else _bn_relu_conv
    last = {"last_block": True} if org else {}

    def f(x):
        y = unit(nb_filters, 1, 1, strides=init_strides, **kw)(x)
        y = unit(nb_filters, 3, 3, **kw)(y)
        y = unit(nb_filters * enlarge_factor, 1, 1, **last, **kw)(y)
        return _shortcut(x, y, identity=identity, strides=init_strides,
                         with_bn=shortcut_with_bn, org=org, **kw)
    return f


def bottleneck(nb_filters: int, init_strides=(1, 1), identity: bool = True,
               shortcut_with_bn: bool = False, enlarge_factor: int = 4, **kw):
    """1x1 -> 3x3 -> 1x1 (x enlarge_factor), pre-activation ordering."""
    return _bottleneck(False, nb_filters, init_strides, identity, shortcut_with_bn,
                       enlarge_factor, **kw)


def bottleneck_org(nb_filters: int, init_strides=(1, 1), identity: bool = True,
                   shortcut_with_bn: bool = False, enlarge_factor: int = 4, **kw):
    """1x1 -> 3x3 -> 1x1 (x enlarge_factor), original ordering; the top-layer unit."""
    return _bottleneck(True, nb_filters, init_strides, identity, shortcut_with_bn,
                       enlarge_factor, **kw)


def _residual_block(block_function: Callable, nb_filters: int, repetitions: int,
                    is_first_layer: bool = False, shortcut_with_bn: bool = False,
                    bottleneck_enlarge_factor: int = 4, **kw):
    """`repetitions` units; the first has a projection shortcut and (unless first layer) stride 2."""
    def f(x):
        for i in range(repetitions):
            strides = (2, 2) if (i == 0 and not is_first_layer) else (1, 1)
            x = block_function(nb_filters=nb_filters, init_strides=strides, identity=(i != 0),
                               shortcut_with_bn=shortcut_with_bn,
                               enlarge_factor=bottleneck_enlarge_factor, **kw)(x)
        return x
    return f


def _vgg_block(nb_filters: int, repetitions: int, dropout: float = 0.0,
               weight_decay: float = 0.01):
    """`repetitions` x (conv3x3-BN-relu-dropout), then 2x2 max pooling."""
    def f(x):
        for _ in range(repetitions):
            x = layers.Conv2D(nb_filters, (3, 3), padding="same", kernel_initializer=he_normal(),
                              kernel_regularizer=_l2(weight_decay))(x)
            x = layers.BatchNormalization(axis=CHANNEL_AXIS)(x)
            x = layers.Activation("relu")(x)
            x = layers.Dropout(dropout)(x)
        return layers.MaxPooling2D((2, 2), strides=(2, 2))(x)
    return f


# ------------------------------------------------------------ the trunk cut
def find_trunk_output(model: keras.Model, kept_layer_idx: int | None = None,
                      kept_layer_name: str | None = None, patch_net: str = "resnet50"
                      ) -> keras.layers.Layer:
    """The layer whose output is the patch model's last convolutional feature map.

    By meaning: a nested sub-model named `patch_trunk` if present; otherwise walk back
    from the output past the classifier head (dense, dropout, flatten, global and
    average pooling, softmax) to the first layer with a 4-D output. `kept_layer_name`
    or `kept_layer_idx` (see `legacy_kept_layer`) override.
    """
    if kept_layer_name is not None:
        if _has_trunk(model) and not any(l.name == kept_layer_name for l in model.layers):
            return model.get_layer(TRUNK_NAME).get_layer(kept_layer_name)
        return model.get_layer(kept_layer_name)
    if kept_layer_idx is not None:
        return legacy_kept_layer(model, kept_layer_idx, patch_net)
    for layer in model.layers:
        if layer.name == TRUNK_NAME and isinstance(layer, keras.Model):
            return layer
    for layer in reversed(model.layers):
        if isinstance(layer, layers.InputLayer):
            break
        if isinstance(layer, _HEAD_LAYER_TYPES):
            continue
        if isinstance(layer, layers.Activation) and \
                layer.get_config().get("activation") in ("softmax", "sigmoid", "linear"):
            continue
        out = layer.output
        if len(out.shape) == 4:
            return layer
    raise InputError(f"cannot find a 4-D convolutional feature map in model '{model.name}'; "
                     "pass kept_layer_idx or kept_layer_name")


def _is_size_free(model: keras.Model) -> bool:
    return all(d is None for d in model.inputs[0].shape[1:-1])


def _call_size_free(model: keras.Model, x):
    """Apply `model`'s layers to `x` (any spatial size), bypassing its fixed input shape.

    The layers are reused, not copied, so weights stay shared. Nested functional
    sub-models are applied the same way, recursively.
    """
    def as_op(op):
        if isinstance(op, keras.Model) and hasattr(op, "_run_through_graph"):
            return lambda inputs, *a, **k: _call_size_free(op, inputs)
        return op
    return model._run_through_graph([x], operation_fn=as_op)


def get_trunk(model: keras.Model, kept_layer_idx: int | None = None,
              kept_layer_name: str | None = None, patch_net: str = "resnet50") -> keras.Model:
    """The patch model's convolutional trunk as a sub-model named `patch_trunk`.

    The trunk takes inputs of any height and width (a patch-sized input layer would
    refuse a whole mammogram, and a saved whole-image model could not be reloaded).
    """
    layer = find_trunk_output(model, kept_layer_idx, kept_layer_name, patch_net)
    if isinstance(layer, keras.Model) and layer.name == TRUNK_NAME:
        if _is_size_free(layer):
            return layer
        cut = layer
    elif _has_trunk(model) and layer in model.get_layer(TRUNK_NAME).layers:
        trunk = model.get_layer(TRUNK_NAME)
        if layer is trunk.layers[-1] and _is_size_free(trunk):
            return trunk
        cut = keras.Model(trunk.inputs, layer.output)
    else:
        cut = keras.Model(model.inputs, layer.output)
    inp = keras.Input(shape=(None, None, cut.inputs[0].shape[-1]), name="trunk_input")
    return keras.Model(inp, _call_size_free(cut, inp), name=TRUNK_NAME)


def legacy_kept_layer(model: keras.Model, kept_layer_idx: int, patch_net: str = "resnet50"
                      ) -> keras.layers.Layer:
    """Resolve the original's `--kept-layer-idx` on a patch model.

    On a flat model (e.g. one saved by Keras 2.0.8) the index means what it meant then:
    `model.layers[idx]`. On a model built here (nested `patch_trunk`), the index is
    counted in the layout the original's Keras 2.0.8 patch model had: the trunk's
    layers, then (ResNet50 only) its 7x7 `avg_pool`, global pooling, dropout (not for
    YaroslavNet) and the Dense classifier. So ResNet50 -5, VGG -4 and YaroslavNet -3 all
    name the trunk's last layer, as they did.
    """
    if not _has_trunk(model):
        return model.layers[kept_layer_idx]
    trunk = model.get_layer(TRUNK_NAME)
    head = (["avg_pool"] if patch_net == "resnet50" else []) + ["pool"] + \
        ([] if patch_net == "yaroslav" else ["dropout"]) + ["dense"]
    view = list(trunk.layers) + head
    try:
        chosen = view[kept_layer_idx]
    except IndexError:
        raise InputError(f"--kept-layer-idx {kept_layer_idx} is outside the patch model "
                         f"({len(view)} layers in the original layout)") from None
    if isinstance(chosen, str):
        raise InputError(f"--kept-layer-idx {kept_layer_idx} points into the classifier head "
                         f"({chosen}), not at a convolutional feature map")
    return chosen


def _has_trunk(model: keras.Model) -> bool:
    return any(l.name == TRUNK_NAME and isinstance(l, keras.Model) for l in model.layers)


def find_classifier(model: keras.Model) -> layers.Dense:
    """The patch classifier's final Dense layer (its weights seed the heatmap layer)."""
    for layer in reversed(model.layers):
        if isinstance(layer, layers.Dense):
            return layer
    raise InputError(f"model '{model.name}' has no Dense classifier layer")


# ------------------------------------------------------------ add_top_layers
def _top_layers(model, block, *, nb_class, block_type, depths, repetitions, block_fn,
                shortcut_with_bn, bottleneck_enlarge_factor, dropout, weight_decay, add_heatmap,
                avg_pool_size, return_heatmap, add_conv, add_shortcut, hm_strides, hm_pool_size,
                fc_init_units, fc_layers):
    """The new layers on the trunk's feature map `block`; returns the output tensor."""
    if add_heatmap or return_heatmap:
        block = layers.AveragePooling2D(pool_size=tuple(avg_pool_size),
                                        strides=tuple(hm_strides), name="hm_avg_pool")(block)
        if not return_heatmap:
            block = layers.Dropout(dropout, name="hm_dropout")(block)
        clf = find_classifier(model)
        heat = layers.Dense(clf.units, activation="softmax" if return_heatmap else "relu",
                            kernel_regularizer=_l2(weight_decay), name="hm_dense")
        block = heat(block)
        heat.set_weights(clf.get_weights())
        if return_heatmap:
            return block
        block = layers.MaxPooling2D(pool_size=tuple(hm_pool_size), name="hm_max_pool")(block)

    flattened = None
    if add_conv:
        if block_type == "resnet":
            for depth, rep in zip(depths, repetitions):
                block = _residual_block(block_fn, depth, rep, dropout=dropout,
                                        weight_decay=weight_decay,
                                        shortcut_with_bn=shortcut_with_bn,
                                        bottleneck_enlarge_factor=bottleneck_enlarge_factor)(block)
        elif block_type == "vgg":
            for depth, rep in zip(depths, repetitions):
                block = _vgg_block(depth, rep, dropout=dropout, weight_decay=weight_decay)(block)
        else:
            raise InputError(f"unsupported block type: {block_type!r} (use 'resnet' or 'vgg')")
        block = layers.GlobalAveragePooling2D()(block)
        block = layers.Dropout(dropout)(block)
    else:
        flattened = layers.Flatten()(block)
        block = layers.Dropout(dropout)(flattened)
        units = fc_init_units
        for _ in range(fc_layers):
            block = layers.Dense(units, kernel_initializer=he_normal(),
                                 kernel_regularizer=_l2(weight_decay))(block)
            block = layers.BatchNormalization()(block)
            block = layers.Activation("relu")(block)
            block = layers.Dropout(dropout)(block)
            units = max(1, units // 2)

    if add_shortcut and flattened is not None:
        logits = layers.Dense(nb_class, kernel_initializer=he_normal(),
                              kernel_regularizer=_l2(weight_decay))(block)
        short = layers.Dense(nb_class, kernel_initializer=he_normal(),
                             kernel_regularizer=_l2(weight_decay))(flattened)
        out = layers.Activation("softmax", name="clf_softmax")(layers.Add()([logits, short]))
    else:
        out = layers.Dense(nb_class, kernel_initializer=he_normal(), activation="softmax",
                           kernel_regularizer=_l2(weight_decay), name="clf_dense")(block)
    return out


def add_top_layers(model: keras.Model, image_size: Sequence[int], patch_net: str = "resnet50",
                   block_type: str = "resnet", depths: Sequence[int] = (512, 512),
                   repetitions: Sequence[int] = (1, 1), block_fn: Callable = bottleneck_org,
                   nb_class: int = 2, shortcut_with_bn: bool = True,
                   bottleneck_enlarge_factor: int = 4, dropout: float = 0.0,
                   weight_decay: float = 1e-4, add_heatmap: bool = False,
                   avg_pool_size: Sequence[int] = (7, 7), return_heatmap: bool = False,
                   add_conv: bool = True, add_shortcut: bool = False,
                   hm_strides: Sequence[int] = (1, 1), hm_pool_size: Sequence[int] = (5, 5),
                   fc_init_units: int = 64, fc_layers: int = 2,
                   kept_layer_idx: int | None = None, kept_layer_name: str | None = None,
                   ) -> tuple[keras.Model, int] | keras.Model:
    """Convert a patch classifier into a whole-image classifier (docs/training.md, "Models").

    Returns `(image_model, top_layer_nb)` as the original did (with `return_heatmap`,
    the heatmap model alone, as the original's code returned it); `image_model.layers
    [top_layer_nb:]` are the new layers, the trunk is `image_model.get_layer('patch_trunk')`.
    The cut is found by meaning (`patch_net` only translates `kept_layer_idx`) and the
    input channels come from the patch model. With `return_heatmap` the model
    outputs the patch classifier's softmax map (fprop heatmap) instead.
    """
    trunk = get_trunk(model, kept_layer_idx, kept_layer_name, patch_net)
    channels = model.inputs[0].shape[-1]
    image_input = keras.Input(shape=(int(image_size[0]), int(image_size[1]), channels),
                              name="image_input")
    block = trunk(image_input)

    try:
        out = _top_layers(model, block, nb_class=nb_class, block_type=block_type, depths=depths,
                          repetitions=repetitions, block_fn=block_fn,
                          shortcut_with_bn=shortcut_with_bn,
                          bottleneck_enlarge_factor=bottleneck_enlarge_factor, dropout=dropout,
                          weight_decay=weight_decay, add_heatmap=add_heatmap,
                          avg_pool_size=avg_pool_size, return_heatmap=return_heatmap,
                          add_conv=add_conv, add_shortcut=add_shortcut, hm_strides=hm_strides,
                          hm_pool_size=hm_pool_size, fc_init_units=fc_init_units,
                          fc_layers=fc_layers)
    except ValueError as e:
        if "negative" not in str(e):
            raise
        raise InputError(f"image size {tuple(image_size)} is too small for these top layers: the "
                         f"trunk's feature map is {tuple(block.shape[1:3])}; use a larger "
                         "--img-size or fewer/smaller pooling steps") from None
    if return_heatmap:  # the model alone, as the original's code returned it
        return keras.Model(image_input, out, name="heatmap_model")
    image_model = keras.Model(image_input, out, name="image_clf")
    # As in the original: with the heatmap branch, stage 1 also keeps it frozen (the
    # copied patch classifier included): model.layers[:8]; else input and trunk.
    return image_model, (8 if add_heatmap else 2)


# ------------------------------------------------------------ ResNetBuilder
class ResNetBuilder:
    """Custom residual nets (single view) with the original's knobs."""

    @staticmethod
    def l1l2_penalty_reg(alpha: float = 1.0, l1_ratio: float = 0.5):
        """Elastic-net penalty in glmnet/sklearn form: alpha*(l1_ratio*|w| + (1-l1_ratio)/2*w^2)."""
        if l1_ratio == 0.0:
            return L2(alpha)
        if l1_ratio == 1.0:
            return L1(alpha)
        return L1L2(l1=l1_ratio * alpha, l2=0.5 * (1 - l1_ratio) * alpha)

    @staticmethod
    def _shared_conv_layers(input_shape, block_fn, repetitions, nb_init_filter=64,
                            init_filter_size=7, init_conv_stride=2, pool_size=3, pool_stride=2,
                            weight_decay=1e-4, inp_dropout=0.0, hidden_dropout=0.0,
                            shortcut_with_bn=False, bottleneck_enlarge_factor=4):
        """Stem + residual stages + global average pooling; returns (input, pooled).

        `input_shape` is (channels, rows, cols) as in the original; `pool_size=0` turns
        off the first max pooling.
        """
        if len(input_shape) != 3:
            raise InputError("input_shape must be (nb_channels, nb_rows, nb_cols)")
        c, h, w = input_shape
        inp = keras.Input(shape=(h, w, c))
        x = layers.Dropout(inp_dropout)(inp)
        x = _conv_bn_relu(nb_init_filter, init_filter_size, init_filter_size,
                          strides=(init_conv_stride, init_conv_stride),
                          weight_decay=weight_decay, dropout=hidden_dropout)(x)
        if pool_size:
            x = layers.MaxPooling2D((pool_size, pool_size), strides=(pool_stride, pool_stride),
                                    padding="same")(x)
        nb_filters = nb_init_filter
        for i, r in enumerate(repetitions):
            x = _residual_block(block_fn, nb_filters, r, is_first_layer=(i == 0),
                                shortcut_with_bn=shortcut_with_bn,
                                bottleneck_enlarge_factor=bottleneck_enlarge_factor,
                                weight_decay=weight_decay, dropout=hidden_dropout)(x)
            nb_filters *= 2
        return inp, layers.GlobalAveragePooling2D()(x)

    @classmethod
    def build(cls, input_shape, num_outputs, block_fn, repetitions, nb_init_filter=64,
              init_filter_size=7, init_conv_stride=2, pool_size=3, pool_stride=2,
              weight_decay=1e-4, alpha=1.0, l1_ratio=0.5, inp_dropout=0.0, hidden_dropout=0.0,
              shortcut_with_bn=False) -> keras.Model:
        """A residual net with an elastic-net penalised softmax (sigmoid if one output)."""
        inp, pooled = cls._shared_conv_layers(
            input_shape, block_fn, repetitions, nb_init_filter, init_filter_size,
            init_conv_stride, pool_size, pool_stride, weight_decay, inp_dropout,
            hidden_dropout, shortcut_with_bn)
        act = "softmax" if num_outputs > 1 else "sigmoid"
        out = layers.Dense(num_outputs, kernel_initializer=he_normal(), activation=act,
                           kernel_regularizer=cls.l1l2_penalty_reg(alpha, l1_ratio))(pooled)
        return keras.Model(inp, out)


class MultiViewResNetBuilder(ResNetBuilder):
    """Two inputs (CC and MLO views), two trunks, concatenated before the classifier."""

    @classmethod
    def build(cls, input_shape, num_outputs, block_fn, repetitions, nb_init_filter=64,
              init_filter_size=7, init_conv_stride=2, pool_size=3, pool_stride=2,
              weight_decay=1e-4, alpha=1.0, l1_ratio=0.5, inp_dropout=0.0, hidden_dropout=0.0,
              shortcut_with_bn=False) -> keras.Model:
        args = (input_shape, block_fn, repetitions, nb_init_filter, init_filter_size,
                init_conv_stride, pool_size, pool_stride, weight_decay, inp_dropout,
                hidden_dropout, shortcut_with_bn)
        in_cc, pooled_cc = ResNetBuilder._shared_conv_layers(*args)
        in_mlo, pooled_mlo = ResNetBuilder._shared_conv_layers(*args)
        merged = layers.Concatenate()([pooled_cc, pooled_mlo])
        act = "softmax" if num_outputs > 1 else "sigmoid"
        out = layers.Dense(num_outputs, kernel_initializer=he_normal(), activation=act,
                           kernel_regularizer=cls.l1l2_penalty_reg(alpha, l1_ratio))(merged)
        return keras.Model([in_cc, in_mlo], out)


# Named depths: (block function, repetitions per stage), as in the original.
RESNET_CONFIGS: dict[str, tuple[Callable, list[int]]] = {
    "resnet_18": (basic_block, [2, 2, 2, 2]),
    "resnet_34": (basic_block, [3, 4, 6, 3]),
    "resnet_38": (bottleneck, [3, 6, 3]),
    "resnet_50": (bottleneck, [3, 4, 6, 3]),
    "resnet_50_org": (bottleneck_org, [3, 4, 6, 3]),
    "resnet_101": (bottleneck, [3, 4, 23, 3]),
    "resnet_152": (bottleneck, [3, 8, 36, 3]),
    "dm_resnet_14": (bottleneck, [1, 1, 1, 1]),
    "dm_resnet_47rb5": (bottleneck, [3, 3, 3, 3, 3]),
    "dm_resnet_56rb6": (bottleneck, [3, 3, 3, 3, 3, 3]),
    "dm_resnet_65rb7": (bottleneck, [3, 3, 3, 3, 3, 3, 3]),
}


def _make_builder(name: str, block_fn: Callable, reps: list[int]):
    def build_named(cls, input_shape, num_outputs, nb_init_filter=64, init_filter_size=7,
                    init_conv_stride=2, pool_size=3, pool_stride=2, weight_decay=1e-4,
                    alpha=1.0, l1_ratio=0.5, inp_dropout=0.0, hidden_dropout=0.0,
                    shortcut_with_bn=False):
        return cls.build(input_shape, num_outputs, block_fn, reps,
                         nb_init_filter=nb_init_filter, init_filter_size=init_filter_size,
                         init_conv_stride=init_conv_stride, pool_size=pool_size,
                         pool_stride=pool_stride, weight_decay=weight_decay, alpha=alpha,
                         l1_ratio=l1_ratio, inp_dropout=inp_dropout,
                         hidden_dropout=hidden_dropout, shortcut_with_bn=shortcut_with_bn)
    build_named.__name__ = f"build_{name}"
    build_named.__doc__ = f"{name}: {block_fn.__name__} units, repetitions {reps}."
    return classmethod(build_named)


for _name, (_fn, _reps) in RESNET_CONFIGS.items():
    setattr(ResNetBuilder, f"build_{_name}", _make_builder(_name, _fn, _reps))
