"""Front door: the original's `dm_keras_ext` names, as adapters over the training rooms.

The original's `dm_keras_ext` names (docs/original.md), as thin adapters over the project's
rooms: patch nets (`dm_patch_nets`), staged training (`dm_stages`), callbacks
(`dm_callbacks`) and model files (`dm_modelfile`). Project code imports from those rooms,
never from here; code written for the original keeps importing this.
"""
from __future__ import annotations

import contextlib
import logging

import keras
import numpy as np
from keras import ops

import dm_scoring
from dm_callbacks import (  # noqa: F401 (the original's names)
    BestModelCheckpoint,
    DMAucModelCheckpoint,
    DMFlush,
    ResumableEarlyStopping,
    ResumableReduceLROnPlateau,
)
from dm_errors import OriginalAPIError, refuse, retired
from dm_modelfile import load_model
from dm_patch_nets import (  # noqa: F401
    default_top_layer_nb,
    find_trunk_layer,
    get_dl_model,
    has_layer,
)
from dm_stages import (  # noqa: F401
    create_optimizer,
    image_stage_list,
    original_behaviour,
    patch_stage_list,
    run_stages,
)

data_format = keras.backend.image_data_format()

log = logging.getLogger(__name__)


make_parallel = retired("dm_keras_ext.make_parallel",
                        "--distribute (tf.distribute.MirroredStrategy)")


def flip_all_img(X: np.ndarray) -> list[np.ndarray]:
    """[X, left-right, up-down, both] flips of a (B, H, W, C) batch (`dm_scoring.FLIPS`)."""
    return [np.asarray(dm_scoring.flip(X, m)) for m in dm_scoring.FLIPS]


def robust_load_model(filepath, custom_objects: dict | None = None, compile: bool = False):
    """Load a model file like `load_model`: `.keras`, Keras 3 `.h5` or Keras 1.2/2.x `.h5`
    (`load_model`); the optimizer state of old files is ignored."""
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
        pred = ops.round(ops.clip(y_pred, 0, 1))
        pos = ops.round(ops.clip(y_true, 0, 1))
        return ops.sum(pos * pred) / (ops.sum(pos) + 1e-7)

    @staticmethod
    def specificity(y_true, y_pred):
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
    for gen in (train_generator, validation_set):
        if getattr(gen, "preprocess", None) is not None:  # the stage loop reads `.dataset`
            raise refuse("a generator with preprocess=<function> in do_*stage_training",
                         "the recipe's featurewise_center (DMImageDataGenerator.mean)")
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
                       hidden_dropout2=.0, keep_regularization=True):
    """Whole-image training: the new top layers with the trunk frozen (`nb_epoch`), then all
    layers (`all_layer_epochs`), through today's stage loop (`image_stage_list`).

    The epoch counts mean what they mean to today's trainers (`run_stages`);
    epoch numbers continue across stages. `keep_regularization` (default, as the
    original: its `.l2` / `.rate` assignments on built layers had no effect) trains with
    the L2 and dropout the model was built with; False applies `weight_decay`,
    `hidden_dropout` and their stage-2 forms (docs/fidelity.md). Returns (model, history
    dict).
    """
    top = 2 if top_layer_nb is None else top_layer_nb  # model.layers[:top] frozen in stage 1
    stages = image_stage_list(nb_epoch=nb_epoch, init_lr=init_lr, weight_decay=weight_decay,
                              hidden_dropout=hidden_dropout, all_layer_epochs=all_layer_epochs,
                              all_layer_multiplier=all_layer_multiplier,
                              weight_decay2=weight_decay2, hidden_dropout2=hidden_dropout2,
                              top_layer_nb=top)
    stages = original_behaviour(stages, keep_regularization=keep_regularization)
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
                       neg_cls_weight=1., nb_worker=1, weight_decay2=.01, hidden_dropout2=.0,
                       keep_regularization=True):
    """Patch training: Dense only, then the trunk from `top_layer_nb` (an index into
    today's trunk, as `get_dl_model` returns it), then all layers (today's
    `patch_stage_list`). `keep_regularization`: as `do_2stage_training` (False applies
    `weight_decay2` and `hidden_dropout2` from stage 2 on). Returns (model, history
    dict)."""
    if top_layer_nb is None and use_pretrained:
        trunk = find_trunk_layer(model)
        top_layer_nb = default_top_layer_nb(trunk, net or "")
    drop = (model.get_layer("patch_dropout").rate if has_layer(model, "patch_dropout")
            else 0.0)
    stages = patch_stage_list(
        use_pretrained=use_pretrained, nb_epoch=nb_epoch, init_lr=init_lr,
        weight_decay=_dense_l2(model), hidden_dropout=drop, top_layer_epochs=top_layer_epochs,
        top_layer_multiplier=top_layer_multiplier, top_layer_nb=top_layer_nb,
        all_layer_epochs=all_layer_epochs, all_layer_multiplier=all_layer_multiplier,
        weight_decay2=weight_decay2, hidden_dropout2=hidden_dropout2)
    stages = original_behaviour(stages, keep_regularization=keep_regularization)
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
