"""Train a patch classifier in three stages (docs/training.md, docs/fidelity.md).

    python patch_clf_train.py TRAIN_DIR VAL_DIR TEST_DIR --net resnet50 ...

Flags and their defaults are in `dm_flags.py` (`--help` lists them).
"""
from __future__ import annotations

import os
import sys

import dm_cli
import dm_flags


def build_patch_model(cfg):
    """A new patch net, or the model given by --resume-from."""
    import dm_modelfile  # deferred for --help (docs/modules.md)
    import dm_patch_nets  # deferred for --help (docs/modules.md)
    import dm_resnet  # deferred for --help (docs/modules.md)
    if cfg.resume_from is not None:
        dm_modelfile.check_model_kind(cfg.resume_from, "patch", "--resume-from",
                                      "image_clf_train.py --resume-from")
    kw = {}
    if cfg.net in dm_resnet.RESNET_CONFIGS:
        kw = dict(nb_init_filter=cfg.nb_init_filter, init_filter_size=cfg.init_filter_size,
                  init_conv_stride=cfg.init_conv_stride, pool_size=cfg.pool_size,
                  pool_stride=cfg.pool_stride, inp_dropout=cfg.inp_dropout)
    model, _, _ = dm_patch_nets.get_dl_model(
        cfg.net, nb_class=len(cfg.class_list), use_pretrained=cfg.use_pretrained,
        resume_from=cfg.resume_from, img_size=cfg.img_size, weight_decay=cfg.weight_decay,
        hidden_dropout=cfg.hidden_dropout, weights_file=cfg.pretrained_weights,
        imagenet_preprocess=not cfg.featurewise_center, **kw)
    return model


def run(cfg, *dirs, **original_kw) -> dict:
    """Train, keep the best model by validation accuracy, report test accuracy and AUROC.

    Also the original's `run(train_dir, val_dir, test_dir, **keywords)`
    (`dm_flags.original_run_config`)."""
    if isinstance(cfg, (str, os.PathLike)):
        cfg = dm_flags.original_run_config("patch", cfg, *dirs, **original_kw)
    dm_flags.check_run(cfg)
    return train(cfg)


def train(cfg) -> dict:
    """`run` after its checks (`dm_flags.check_run`)."""
    import dm_layers  # deferred for --help (docs/modules.md)
    import dm_modelfile  # deferred for --help (docs/modules.md)
    import dm_patch_nets  # deferred for --help (docs/modules.md)
    import dm_stages  # deferred for --help (docs/modules.md)
    import dm_train  # deferred for --help (docs/modules.md)

    def stages(model):
        stage_list = dm_stages.patch_stage_list
        if not cfg.use_pretrained:
            return stage_list(**dm_stages.values_for(stage_list, cfg))
        trunk = dm_patch_nets.find_trunk_layer(model)
        if cfg.top_layer_nb is None:
            top = dm_patch_nets.default_top_layer_nb(trunk, cfg.net)
        else:   # the original's index, into its Keras 2.0.8 layer list
            top = dm_patch_nets.legacy_top_layer_nb(trunk, cfg.net, cfg.top_layer_nb,
                                                   dropout=cfg.hidden_dropout > 0)
        return stage_list(**dm_stages.values_for(stage_list, cfg, top_layer_nb=top))
    extra = {"net": cfg.net}
    if not cfg.featurewise_center and cfg.net in dm_layers.IMAGENET_PREPROCESS:
        extra["imagenet_preprocess"] = dm_layers.IMAGENET_PREPROCESS[cfg.net]  # in the model
    if cfg.resume_from is not None:   # the model's kind, then its size, before any data
        dm_modelfile.check_model_kind(cfg.resume_from, "patch", "--resume-from",
                                      "image_clf_train.py --resume-from")
    dm_train.check_resume_size(cfg.resume_from, cfg.img_size)
    return dm_train.train_and_test(cfg, dm_train.PATCH, lambda: build_patch_model(cfg), stages, extra)


def main(argv=None) -> int:
    """Parse first (so --help needs no TensorFlow), then train; input problems exit 2,
    Ctrl-C exits 130 with one line."""
    return dm_cli.run_tool("patch_clf_train", lambda a: dm_flags.parse("patch", a), train, argv,
                           tensorflow=True, resumable=True, precheck=dm_flags.check_run)


if __name__ == "__main__":
    sys.exit(main())
