"""Train a whole-image classifier in two stages, from a patch classifier or a saved model.

Train a whole-image classifier in two stages (docs/training.md), from a patch classifier
(--patch-model-state) or a saved whole-image model (--resume-from, e.g. to finetune a
published checkpoint with --nb-epoch 0).

    python image_clf_train.py TRAIN_DIR VAL_DIR TEST_DIR --patch-model-state PATCH.keras ...

Flags and their defaults are in `dm_flags.py` (`--help` lists them).
"""
from __future__ import annotations

import logging
import os
import sys

import dm_cli
import dm_flags

log = logging.getLogger("image_clf_train")


def build_image_model(cfg):
    """add_top_layers on the patch model, or the whole-image model to resume from."""
    import keras  # deferred for --help (docs/modules.md)

    import dm_modelfile  # deferred for --help (docs/modules.md)
    import dm_resnet  # deferred for --help (docs/modules.md)
    import dm_train  # deferred for --help (docs/modules.md)
    safe = not cfg.unsafe_load
    if cfg.resume_from is not None:
        dm_modelfile.check_model_kind(cfg.resume_from, "image", "--resume-from",
                                      "--patch-model-state")
        model = dm_modelfile.load_model(cfg.resume_from, safe_mode=safe)
        if not any(isinstance(l, keras.Model) for l in model.layers):
            raise dm_train.RunError(f"{cfg.resume_from}: not a whole-image model (no nested "
                                    "patch trunk); a patch model goes to --patch-model-state")
        return model
    dm_modelfile.check_model_kind(cfg.patch_model_state, "patch", "--patch-model-state",
                                  "--resume-from")
    patch = dm_modelfile.load_model(cfg.patch_model_state, safe_mode=safe)
    if cfg.mil_pooling or cfg.bilateral:
        import dm_mil  # deferred for --help (docs/modules.md)
        return dm_mil.build_mil_model(
            patch, cfg.img_size, nb_class=len(cfg.class_list),
            pooling=cfg.mil_pooling or "top", top_fraction=cfg.top_fraction,
            attention_units=cfg.attention_units, bilateral=cfg.bilateral,
            weight_decay=cfg.weight_decay)[0]
    model, _ = dm_resnet.add_top_layers(
        patch, cfg.img_size, patch_net=cfg.patch_net, block_type=cfg.block_type,
        depths=cfg.top_depths, repetitions=cfg.top_repetitions,
        nb_class=len(cfg.class_list), bottleneck_enlarge_factor=cfg.bottleneck_enlarge_factor,
        dropout=cfg.hidden_dropout, weight_decay=cfg.weight_decay, add_heatmap=cfg.add_heatmap,
        avg_pool_size=cfg.avg_pool_size, add_conv=cfg.add_conv, add_shortcut=cfg.add_shortcut,
        hm_strides=cfg.hm_strides, hm_pool_size=cfg.hm_pool_size,
        fc_init_units=cfg.fc_init_units, fc_layers=cfg.fc_layers,
        kept_layer_idx=cfg.kept_layer_idx)
    return model


def image_top_layer_nb(cfg) -> int:
    """How many of the model's first layers stage 1 keeps frozen, as in the original:
    what `add_top_layers` returns (2: input and trunk; 8 with --add-heatmap), or with
    --resume-from the --top-layer-nb given (default 2 here; the original required it
    when --nb-epoch > 0, see docs/fidelity.md). A multiple-instance head (`dm_mil`) is
    found in the model itself: None here."""
    if cfg.resume_from is None and (cfg.mil_pooling or cfg.bilateral):
        return None
    if cfg.resume_from is None:
        return 8 if cfg.add_heatmap else 2
    if cfg.top_layer_nb is None:
        if cfg.nb_epoch > 0:
            log.warning("--resume-from with --nb-epoch %d and no --top-layer-nb: stage 1 "
                        "freezes the input and the trunk (--top-layer-nb 2)", cfg.nb_epoch)
        return 2
    return cfg.top_layer_nb


def run(cfg, *dirs, **original_kw) -> dict:
    """Train, keep the best model by validation AUROC, report the test AUROC.

    Also the original's `run(train_dir, val_dir, test_dir, **keywords)`
    (`dm_flags.original_run_config`)."""
    if isinstance(cfg, (str, os.PathLike)):
        cfg = dm_flags.original_run_config("image", cfg, *dirs, **original_kw)
    dm_flags.check_run(cfg)
    return train(cfg)


def train(cfg) -> dict:
    """`run` after its checks (`dm_flags.check_run`)."""
    import dm_modelfile  # deferred for --help (docs/modules.md)
    import dm_stages  # deferred for --help (docs/modules.md)
    import dm_train  # deferred for --help (docs/modules.md)
    extra = {"patch_net": cfg.patch_net, "block_type": cfg.block_type,
             "top_depths": list(cfg.top_depths), "top_repetitions": list(cfg.top_repetitions)}
    top = image_top_layer_nb(cfg)
    if cfg.resume_from is not None:   # the model's kind, then its size, before any data
        dm_modelfile.check_model_kind(cfg.resume_from, "image", "--resume-from",
                                      "--patch-model-state")
    dm_train.check_resume_size(cfg.resume_from, cfg.img_size)
    if cfg.mil_pooling or cfg.bilateral:
        extra.update(mil_pooling=cfg.mil_pooling or "top", bilateral=cfg.bilateral)

    def stages(model):
        import dm_mil  # deferred for --help (docs/modules.md)
        frozen = dm_mil.stage_one_frozen(model)
        plan = dm_stages.image_stage_list(**dm_stages.values_for(
            dm_stages.image_stage_list, cfg,
            top_layer_nb=frozen if frozen is not None and cfg.top_layer_nb is None else top))
        return plan if frozen is None else dm_mil.mil_stages(model, plan)
    return dm_train.train_and_test(cfg, dm_train.IMAGE, lambda: build_image_model(cfg),
                                   stages, extra)


def main(argv=None) -> int:
    """Parse first (so --help needs no TensorFlow), then train; input problems exit 2,
    Ctrl-C exits 130 with one line."""
    return dm_cli.run_tool("image_clf_train", lambda a: dm_flags.parse("image", a), train, argv,
                           tensorflow=True, resumable=True, precheck=dm_flags.check_run)


if __name__ == "__main__":
    sys.exit(main())
