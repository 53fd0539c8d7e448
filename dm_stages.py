"""Staged training: optimisers, stage plans, freezing by sub-model, the one stage loop.

The optimisers, the stage plans of the 3-stage patch and 2-stage image
training, freezing by named sub-model (`patch_trunk`), weight decay and dropout per stage,
and the one loop that runs the stages (docs/training.md).
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
from dataclasses import dataclass
from typing import Any, Callable

import keras
from keras import layers
from keras.regularizers import L1, L1L2, L2

from dm_errors import InputError
from dm_layers import Adagrad208, RMSprop208
from dm_modelfile import load_model, record_trunk_frozen, recorded_trunk_frozen
from dm_patch_nets import find_trunk_layer

log = logging.getLogger(__name__)


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
    (--saved-trainable; a multiple-instance head's trunk BatchNormalization, `dm_mil`);
    `frozen_bn`: this stage's frozen-BN mode instead of the run's --frozen-bn. See `original_behaviour`. `whole_image`: a stage of the
    whole-image model, where the original's trunk was a nested model whose inner layers'
    own `trainable` flags no stage changed (see `set_trainable`).
    """

    name: str
    epochs: int
    lr: float
    weight_decay: float | None
    dropout: float | None
    trainable: str = "all"
    trunk_from: int | None = None
    keep_frozen: tuple[str, ...] = ()
    whole_image: bool = False
    frozen_bn: str | None = None    # how this stage's frozen BN layers run (None: the run's)


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
              top_layer_nb, whole_image=True),
        Stage("all layers", all_layer_epochs, init_lr * all_layer_multiplier,
              weight_decay2, hidden_dropout2, "all", whole_image=True),
    ]


def values_for(fn: Callable, cfg: Any, **override: Any) -> dict:
    """The fields of a config object that `fn` takes as keywords (the one-line adapter
    from a CLI config to a library function with explicit values)."""
    names = [n for n, p in inspect.signature(fn).parameters.items()
             if p.kind is inspect.Parameter.KEYWORD_ONLY and n not in override]
    return dict({n: getattr(cfg, n) for n in names if hasattr(cfg, n)}, **override)


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


def _has_trunk(model: keras.Model) -> bool:
    try:
        find_trunk_layer(model)
    except InputError:   # an original-API model without a nested trunk: no record
        return False
    return True


def trunk_frozen_now(model: keras.Model) -> tuple[str, ...]:
    """Names of the trunk's layers with weights that are frozen now (nested models
    looked into, not themselves listed)."""
    return tuple(l.name for l in find_trunk_layer(model)._flatten_layers(include_self=False)
                 if not l.trainable and l.weights and not isinstance(l, keras.Model))


def set_trainable(model: keras.Model, stage: Stage, frozen_bn: str = "batch") -> None:
    """Freeze what the stage does not train: by the named sub-model `patch_trunk`
    ('head', 'top') or by index in the model's own layers ('first', the original's
    `model.layers[:top_layer_nb]` of the whole-image model).

    The trunk's own flags, as Keras 2.0.8 kept them, travel with the model
    (`dm_modelfile.record_trunk_frozen`): a whole-image stage leaves them as the model
    was built or loaded with (the original toggled only the nested model as a whole);
    in a patch stage they are the flags set here (the original's patch model was flat).
    """
    frozen_bn = stage.frozen_bn or frozen_bn
    own = None
    if stage.whole_image and _has_trunk(model):
        own = recorded_trunk_frozen(model)
        own = trunk_frozen_now(model) if own is None else own
    _set_layer_trainable(model, True)
    _set_trainable_by_spec(model, stage, frozen_bn)
    if stage.keep_frozen:
        keep = set(stage.keep_frozen)
        for layer in find_trunk_layer(model)._flatten_layers(include_self=False):
            if layer.name in keep and not isinstance(layer, keras.Model):
                _freeze(layer, frozen_bn)
    record_trunk_frozen(model, own)


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
    false), nested models looked into and not themselves listed; for a whole-image
    model trained here, its trunk's recorded own flags (`set_trainable`)."""
    model = load_model(path, safe_mode=safe_mode)
    own = recorded_trunk_frozen(model)
    if own is not None:
        return own
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
    return [dataclasses.replace(
        s, weight_decay=None if keep_regularization else s.weight_decay,
        dropout=None if keep_regularization else s.dropout,
        keep_frozen=tuple(s.keep_frozen) + tuple(keep_frozen)) for s in stages]


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
