"""Tools as typed functions: the Python entry points give exactly what the command lines
give (end2end composes them), and the trainers differ by a spec, not by `kind` branches."""
from __future__ import annotations

import pathlib

import pytest

import dm_cli
import dm_flags
import dm_stages

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_trainer_config_from_values_equals_the_parsed_command_line():
    argv = ["tr", "va", "te", "--patch-model-state", "p.keras", "--img-size", "64", "48",
            "--init-learningrate", "0.001", "--top-depths", "16", "16", "--top-repetitions",
            "1", "1", "--no-img-scale", "--featurewise-mean", "44.3300", "--seed", "7",
            "--auto-batch-balance", "--test-augment"]
    typed = dm_flags.config("image", "tr", "va", "te", patch_model_state="p.keras",
                            img_size=[64, 48], init_lr=0.001, top_depths=[16, 16],
                            top_repetitions=[1, 1], img_scale=None, featurewise_mean=44.33,
                            seed=7, auto_batch_balance=True, test_augment=True)
    assert typed == dm_flags.parse("image", argv)     # one config class per trainer
    assert typed != dm_flags.config("image", "tr", "va", "te", patch_model_state="p.keras")
    with pytest.raises(TypeError, match="nb_epochs"):
        dm_flags.config("patch", "a", "b", "c", nb_epochs=3)
    import dm_errors
    with pytest.raises(dm_errors.InputError, match="exactly one of"):
        dm_flags.config("image", "a", "b", "c")


@pytest.mark.parametrize("module,argv,values", [
    ("dm_predict", ["m.keras", "--image-dir", "d", "--test-augment", "--batch-size", "3"],
     dict(models=["m.keras"], image_dir="d", test_augment=True, batch_size=3)),
    ("dm_evaluate", ["p.csv", "--out-dir", "r", "--pos-class", "pos", "--html", "--seed", "5"],
     dict(preds="p.csv", out_dir="r", pos_class="pos", html=True, seed=5)),
    ("ddsm_train.heatmap_score", ["imgs", "m.keras", "--stride", "8", "--img-size", "64", "48",
                                  "--grad-cam"],
     dict(img_folder="imgs", dl_state="m.keras", stride=8, img_size=[64, 48], grad_cam=True)),
    ("ddsm_train.sample_patches_combined",
     ["r.csv", "masks", "p.txt", "full", "tr", "va", "--target-size", "64", "48",
      "--class-layout", "3class", "--no-verbose", "--val-size", "0"],
     dict(roi_mask_path_file="r.csv", roi_mask_dir="masks", pat_train_list_file="p.txt",
          full_img_dir="full", train_out_dir="tr", val_out_dir="va", target_size=[64, 48],
          class_layout="3class", verbose=False, val_size=0.0)),
])
def test_namespace_from_values_equals_the_parsed_command_line(module, argv, values):
    import importlib
    parser = importlib.import_module(module).build_parser()
    assert dm_cli.namespace(parser, **values) == parser.parse_args(argv)
    with pytest.raises(TypeError, match="unknown option"):
        dm_cli.namespace(parser, **values, no_such_flag=1)


def test_the_trainers_differ_by_spec_not_by_kind_branches():
    import dm_train
    source = (REPO / "dm_train.py").read_text()
    assert 'kind == "' not in source and "kind == '" not in source
    assert (dm_train.PATCH.best_by, dm_train.IMAGE.best_by) == ("accuracy", "AUROC")
    assert dm_train.PATCH.defaults is dm_flags.PATCH_DEFAULTS
    cfg = dm_flags.parse("patch", ["a", "b", "c", "--no-use-pretrained",
                                   "--top-layer-epochs", "3"])
    assert dm_train.useless_flags(cfg, dm_train.PATCH) == dm_train.useless_flags(cfg, "patch")
    assert any("--top-layer-epochs" in l for l in dm_train.useless_flags(cfg, dm_train.PATCH))


def test_stage_lists_take_explicit_values():
    cfg = dm_flags.parse("patch", ["a", "b", "c", "--init-learningrate", "0.5"])
    explicit = dm_stages.patch_stage_list(
        use_pretrained=True, nb_epoch=cfg.nb_epoch, init_lr=0.5, weight_decay=cfg.weight_decay,
        hidden_dropout=cfg.hidden_dropout, top_layer_epochs=cfg.top_layer_epochs,
        top_layer_multiplier=cfg.top_layer_multiplier, top_layer_nb=None,
        all_layer_epochs=cfg.all_layer_epochs, all_layer_multiplier=cfg.all_layer_multiplier,
        weight_decay2=cfg.weight_decay2, hidden_dropout2=cfg.hidden_dropout2)
    stage_list = dm_stages.patch_stage_list   # the CLI's one-line adapter gives the same
    assert explicit == stage_list(**dm_stages.values_for(stage_list, cfg, use_pretrained=True,
                                                            top_layer_nb=None))
    assert [s.lr for s in explicit] == pytest.approx([0.5, 0.05, 0.005])
