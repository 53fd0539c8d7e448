"""Command-line flags shared by `patch_clf_train.py` and `image_clf_train.py`.

Every flag is defined once here, with the original's spelling and meaning (numbers with
their valid range, checked at parse time); the two trainers differ only in their default
values, which are the two tables below. Parsed flags become a frozen `Config` handed to
`run(config)`; `check_run` refuses, before TensorFlow loads, what a config cannot do
(missing inputs, an output that would write over an input).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import pathlib
from typing import Any, Sequence

import dm_cli
import dm_convert_checkpoint
import dm_listing
import dm_output
from dm_errors import InputError, OriginalAPIError

# The ranges of the numeric flags, checked at parse time (dm_cli's argparse types).
COUNT = dm_cli.int_at_least(0)          # epochs, patience, layers: 0 allowed
POSITIVE = dm_cli.int_at_least(1)       # batch sizes, filters, strides, units
RATE = dm_cli.float_in(0, low_open=True)     # learning rates, the batch multiplier
NONNEG = dm_cli.float_in(0)             # weight decays, lr multipliers, class weights
DROPOUT = dm_cli.float_in(0, 1, high_open=True)
FINITE = dm_cli.float_in()

# Defaults shared by both trainers (--seed: `dm_cli.default_seed`, as in every tool).
COMMON_DEFAULTS: dict[str, Any] = dict(
    img_scale=None, rescale_factor=None, featurewise_center=True, batch_size=64,
    train_bs_multiplier=0.5, nb_epoch=5, all_layer_epochs=20, load_val_ram=False,
    load_train_ram=False, weight_decay=1e-4, weight_decay2=1e-4, hidden_dropout=0.0,
    hidden_dropout2=0.0, optim="sgd", init_lr=0.01, lr_patience=10, es_patience=25,
    pos_cls_weight=1.0, neg_cls_weight=1.0, final_model=None, resume_from=None,
    top_layer_nb=None, bias_multiplier=None, distribute=False,
    mixed_precision=None, jit_compile=False, tensorboard=None, history_csv=None,
    test_augment=False, unsafe_load=False, interpolation="bilinear", resume=False,
    frozen_bn="batch", deterministic=True,
)

PATCH_DEFAULTS: dict[str, Any] = dict(
    COMMON_DEFAULTS, img_size=[256, 256], featurewise_mean=59.6, equalize_hist=True,
    augmentation=False, class_list=["background", "malignant", "benign"], net="resnet50",
    top_layer_epochs=10, nb_init_filter=32, init_filter_size=5, init_conv_stride=2,
    pool_size=2, pool_stride=2, alpha=1e-4, l1_ratio=0.0, inp_dropout=0.0,
    use_pretrained=True, pretrained_weights=None, top_layer_multiplier=0.1,
    all_layer_multiplier=0.01, auto_batch_balance=False,
    best_model="./modelState/patch_clf.keras",
)

IMAGE_DEFAULTS: dict[str, Any] = dict(
    COMMON_DEFAULTS, img_size=[1152, 896], featurewise_mean=52.16, equalize_hist=False,
    augmentation=True, class_list=["neg", "pos"], patch_model_state=None, patch_net="resnet50",
    block_type="resnet", top_depths=[512, 512], top_repetitions=[3, 3],
    bottleneck_enlarge_factor=4, add_heatmap=False, avg_pool_size=[7, 7], add_conv=True,
    add_shortcut=False, hm_strides=[1, 1], hm_pool_size=[5, 5], fc_init_units=64, fc_layers=2,
    kept_layer_idx=None, all_layer_multiplier=0.1, auto_batch_balance=True,
    best_model="./modelState/image_clf.keras", mil_pooling=None, top_fraction=dm_cli.TOP_FRACTION,
    attention_units=16, bilateral=False, pairs=None,
)


def _bool(g, name: str, dest: str, help: str) -> None:
    g.add_argument(f"--{name}", dest=dest, action="store_true", help=help)
    g.add_argument(f"--no-{name}", dest=dest, action="store_false", help=f"turn off --{name}")


def _values(g, *rows: tuple) -> None:
    """Plain value flags, one row each: (names separated by spaces, dest, type, help)."""
    for names, dest, type_, help_ in rows:
        g.add_argument(*names.split(), dest=dest, type=type_, help=help_)


def _optional(g, name: str, dest: str, type, help: str, **kw) -> None:
    """A value flag with a `--no-NAME` twin that sets it to None, as the original had."""
    g.add_argument(f"--{name}", dest=dest, type=type, help=help, **kw)
    g.add_argument(f"--no-{name}", dest=dest, action="store_const", const=None,
                   help=f"unset --{name}")


def _data_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("train_dir", help="training set: ROOT/<class>/**/*.png|jpg|bmp|dcm")
    p.add_argument("val_dir", help="validation set, same layout")
    p.add_argument("test_dir", help="test set, same layout")
    g = p.add_argument_group("preprocessing recipe (stored with every saved model)")
    dm_cli.add_recipe_flags(g, trainer=True)
    _bool(g, "augmentation", "augmentation",
          "random flips, rotation 25 deg, shear 0.2, zoom 0.8-1.2, intensity shift 20")
    g.add_argument("--interpolation", dest="interpolation", choices=["bilinear", "nearest"],
                   help="augmentation resampling (the original's generator used nearest)")
    g.add_argument("--class-list", dest="class_list", nargs="+",
                   help="class folder names; output column i is class i")
    g = p.add_argument_group("data loading")
    g.add_argument("--batch-size", "-bs", dest="batch_size", type=POSITIVE,
                   help="validation/test batch; training uses batch-size x train-bs-multiplier")
    g.add_argument("--train-bs-multiplier", dest="train_bs_multiplier", type=RATE,
                   help="training batch = int(batch-size x this)")
    _bool(g, "load-train-ram", "load_train_ram", "decode the training set once into memory")
    _bool(g, "load-val-ram", "load_val_ram", "decode the validation set once into memory")
    _bool(g, "auto-batch-balance", "auto_batch_balance",
          "weight samples by 1/(class fraction in the batch) so classes count equally")
    g.add_argument("--pos-cls-weight", dest="pos_cls_weight", type=NONNEG,
                   help="class weight of class 1 (without --auto-batch-balance)")
    g.add_argument("--neg-cls-weight", dest="neg_cls_weight", type=NONNEG,
                   help="class weight of class 2 (without --auto-batch-balance)")


def _training_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training stages")
    g.add_argument("--nb-epoch", "-ne", dest="nb_epoch", type=COUNT,
                   help="epochs of stage 1 (0 skips it, as when finetuning)")
    g.add_argument("--all-layer-epochs", dest="all_layer_epochs", type=COUNT,
                   help="epochs of the last stage (all layers train)")
    g.add_argument("--optimizer", dest="optim",
                   choices=["sgd", "rmsprop", "adagrad", "adadelta", "adamax", "adam", "nadam"],
                   help="sgd is Nesterov with momentum 0.9")
    _values(g,
        ("--init-learningrate -ilr", "init_lr", RATE,
         "learning rate of stage 1"),
        ("--all-layer-multiplier", "all_layer_multiplier", NONNEG,
         "last-stage learning rate = init-learningrate x this"),
        ("--weight-decay -wd", "weight_decay", NONNEG,
         "L2 penalty of the trained conv/dense kernels in stage 1"),
        ("--weight-decay2 -wd2", "weight_decay2", NONNEG,
         "L2 penalty in the later stages (really applied)"),
        ("--hidden-dropout -hd", "hidden_dropout", DROPOUT,
         "dropout rate in stage 1"),
        ("--hidden-dropout2 -hd2", "hidden_dropout2", DROPOUT,
         "dropout rate in the later stages (really applied)"),
        ("--lr-patience -lrp", "lr_patience", COUNT,
         "sgd: halve the lr once more than this many epochs made no val-loss "
         "progress, then every this many (Keras 2.0.8 counting)"),
        ("--es-patience -esp", "es_patience", COUNT,
         "stop once more than this many epochs of a stage made no val-loss "
         "progress (Keras 2.0.8 counting)"),
    )
    _optional(g, "top-layer-nb", "top_layer_nb", int,
              "where the trained layers start, counted as in the original's Keras 2.0.8 "
              "layout (patch: index in the flat patch model; image: in the whole-image "
              "model); default: by name")
    g.add_argument("--frozen-bn", dest="frozen_bn", choices=["batch", "inference"],
                   help="frozen BatchNormalization layers: 'batch' normalise with batch "
                        "statistics and update their moving averages (Keras 2.0.8, the "
                        "original); 'inference' use their moving statistics (Keras 3)")
    g.add_argument("--bias-multiplier", dest="bias_multiplier", type=FINITE,
                   help="accepted for the original scripts; has no effect (Keras has no "
                        "per-weight learning rates)")
    g = p.add_argument_group("outputs")
    g.add_argument("--best-model", "-bm", dest="best_model",
                   help="where the best model is saved (.keras, or .h5); NOSAVE disables")
    g.add_argument("--final-model", "-fm", dest="final_model",
                   help="where the last state is saved; NOSAVE disables")
    g.add_argument("--history-csv", dest="history_csv",
                   help="per-epoch history (default: next to the best model, .history.csv)")
    g.add_argument("--tensorboard", dest="tensorboard", help="TensorBoard log folder")
    _bool(g, "test-augment", "test_augment",
          "also report the test AUROC with 4-flip test-time augmentation")
    _bool(g, "resume", "resume", "continue an interrupted run from its last completed epoch")
    g = p.add_argument_group("reproducibility and scale")
    dm_cli.add_seed_flag(g, "random seed")
    _bool(g, "distribute", "distribute",
          "data-parallel over all local devices (MirroredStrategy; TF_CONFIG: multi-worker)")
    g.add_argument("--mixed-precision", dest="mixed_precision", nargs="?", const="float16",
                   choices=["float16", "bfloat16"],
                   help="mixed-precision compute: float16 (GPUs; the flag alone) or bfloat16 "
                        "(CPUs with AVX512-BF16/AMX, TPUs, recent GPUs); weights, softmax, loss "
                        "and metrics stay float32, saved models predict in float32")
    g.add_argument("--no-mixed-precision", dest="mixed_precision", action="store_const",
                   const=None, help="turn off --mixed-precision")
    _bool(g, "jit-compile", "jit_compile", "compile the train step with XLA (needs "
          "--no-deterministic: Keras turns XLA off under deterministic ops)")
    _bool(g, "deterministic", "deterministic",
          "TensorFlow's deterministic ops: a seed repeats to the last digit, also on a "
          "loaded machine (about 2%% slower on this CPU; docs/training.md)")
    _bool(g, "unsafe-load", "unsafe_load", "allow Lambda layers in loaded model files")


def _patch_model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("patch classifier")
    g.add_argument("--net", dest="net",
                   help="resnet50, vgg16, vgg19, xception, inception, yaroslav, or a "
                        "ResNetBuilder net (resnet_18, dm_resnet_14, ...)")
    _bool(g, "use-pretrained", "use_pretrained", "start from ImageNet weights (local file)")
    g.add_argument("--pretrained-weights", dest="pretrained_weights",
                   help="local ImageNet 'notop' weights file (default: the Keras cache)")
    _optional(g, "resume-from", "resume_from", str, "start from this saved patch model")
    _values(g,
        ("--top-layer-epochs", "top_layer_epochs", COUNT,
         "epochs of stage 2 (top of the trunk trains)"),
        ("--top-layer-multiplier", "top_layer_multiplier", NONNEG,
         "stage-2 learning rate = init-learningrate x this"),
        ("--nb-init-filter -nif", "nb_init_filter", POSITIVE,
         "ResNetBuilder nets: filters of the first convolution"),
        ("--init-filter-size -ifs", "init_filter_size", POSITIVE,
         "ResNetBuilder nets: size of the first convolution"),
        ("--init-conv-stride -ics", "init_conv_stride", POSITIVE,
         "ResNetBuilder nets: stride of the first convolution"),
        ("--max-pooling-size -mps", "pool_size", COUNT,
         "ResNetBuilder nets: first max pooling size (0: none)"),
        ("--max-pooling-stride -mpr", "pool_stride", POSITIVE,
         "ResNetBuilder nets: first max pooling stride"),
        ("--alpha", "alpha", NONNEG,
         "ResNetBuilder nets: elastic-net penalty of the classifier"),
        ("--l1-ratio", "l1_ratio", dm_cli.float_in(0, 1),
         "ResNetBuilder nets: L1 share of the elastic-net penalty"),
        ("--inp-dropout -id", "inp_dropout", DROPOUT,
         "ResNetBuilder nets: dropout on the input"),
    )


def _image_model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("whole-image classifier (exactly one of the first two)")
    _optional(g, "patch-model-state", "patch_model_state", str,
              "build the whole-image model from this patch model")
    _optional(g, "resume-from", "resume_from", str,
              "continue from this whole-image model (e.g. a published checkpoint)")
    g.add_argument("--patch-net", dest="patch_net",
                   help="the patch net's family (only used to translate --kept-layer-idx)")
    g.add_argument("--kept-layer-idx", dest="kept_layer_idx", type=int,
                   help="cut the patch model after this layer, counted as in the original's "
                        "Keras 2.0.8 layout (ResNet50 -5 = last relu, VGG -4 = block5_pool); "
                        "default: found by meaning")
    g.add_argument("--block-type", dest="block_type", choices=["resnet", "vgg"],
                   help="top blocks: resnet bottlenecks or vgg conv blocks")
    g.add_argument("--top-depths", dest="top_depths", nargs="+", type=POSITIVE,
                   help="filters of each top block")
    g.add_argument("--top-repetitions", dest="top_repetitions", nargs="+", type=POSITIVE,
                   help="units in each top block")
    g.add_argument("--bottleneck-enlarge-factor", dest="bottleneck_enlarge_factor",
                   type=POSITIVE, help="bottleneck output = depth x this")
    _bool(g, "add-heatmap", "add_heatmap", "insert the patch-classifier heatmap layer")
    g.add_argument("--avg-pool-size", dest="avg_pool_size", nargs=2, type=dm_cli.pixels,
                   help="heatmap average pooling size")
    g.add_argument("--hm-strides", dest="hm_strides", nargs=2, type=dm_cli.pixels,
                   help="heatmap average pooling strides")
    g.add_argument("--hm-pool-size", dest="hm_pool_size", nargs=2, type=dm_cli.pixels,
                   help="max pooling after the heatmap layer")
    _bool(g, "add-conv", "add_conv", "convolutional top blocks (else fully connected)")
    _bool(g, "add-shortcut", "add_shortcut", "with --no-add-conv: a Dense shortcut to the logits")
    g.add_argument("--fc-init-units", dest="fc_init_units", type=POSITIVE,
                   help="units of the first FC layer (halving after)")
    g.add_argument("--fc-layers", dest="fc_layers", type=COUNT, help="number of FC layers")
    g = p.add_argument_group("multiple-instance head and bilateral model, instead of the top "
                             "blocks (docs/mias.md)")
    dm_cli.add_mil_flags(g)
    g.add_argument("--attention-units", dest="attention_units", type=POSITIVE,
                   help="with --mil-pooling attention: units of the attention layer")
    g.add_argument("--pairs", dest="pairs",
                   help="where each image's other breast is: a recipe's images.csv "
                        "(patient_id, side, view) or a CSV with path,other_path; needed "
                        "by a bilateral model")


def _fidelity_flags(p: argparse.ArgumentParser, kind: str) -> None:
    """Switches to the original's Keras 2.0.8 behaviour where results depend on it
    (docs/fidelity.md); applied by `dm_stages.apply_fidelity_flags`."""
    g = p.add_argument_group("the original's Keras 2.0.8 behaviour (docs/fidelity.md)")
    _bool(g, "keep-regularization", "keep_regularization",
          "the stages leave the L2 factors and dropout rates the model was built or saved "
          "with, as in the original (its stage flags were set on built layers: no effect); "
          "default: on with the image trainer's --resume-from, else off")
    defaults: dict[str, Any] = {"keep_regularization": None}
    if kind == "image":
        _bool(g, "saved-trainable", "saved_trainable",
              "trunk layers saved frozen in the model file (--patch-model-state or "
              "--resume-from) stay frozen in stage 2, as in the original (Keras 2.0.8 kept "
              "a nested layer's saved flag)")
        defaults["saved_trainable"] = False
    p.set_defaults(**defaults)


_TRAINERS = {   # kind: (description, model flags, defaults)
    "patch": ("Train a patch classifier in 3 stages.", _patch_model_flags, PATCH_DEFAULTS),
    "image": ("Train a whole-image classifier in 2 stages.", _image_model_flags,
              IMAGE_DEFAULTS),
}


def build_parser(kind: str) -> argparse.ArgumentParser:
    """The parser of `patch_clf_train.py` (kind='patch') or `image_clf_train.py` ('image')."""
    description, model_flags, defaults = _TRAINERS[kind]
    p = argparse.ArgumentParser(description=description, formatter_class=dm_cli.HelpFormatter)
    _data_flags(p)
    model_flags(p)
    _training_flags(p)
    _fidelity_flags(p, kind)
    p.set_defaults(**defaults)
    p.epilog = "Environment: RANDOM_SEED, NUM_CPU_CORES, NUM_GPU_DEVICES, TF_CONFIG."
    return p


@functools.cache
def config_class(kind: str) -> type:
    """A frozen dataclass with one field per flag of that trainer (one class per trainer,
    so two configs with the same values compare equal)."""
    names = sorted(vars(build_parser(kind).parse_args(["a", "b", "c"])))
    return dataclasses.make_dataclass(f"{kind.capitalize()}Config", names, frozen=True)


_ONE_SOURCE = "exactly one of --patch-model-state and --resume-from is required"


def parse(kind: str, argv: Sequence[str] | None = None):
    """Parse a trainer's command line into its frozen config."""
    parser = build_parser(kind)
    args = parser.parse_args(argv)
    if kind == "image" and (args.patch_model_state is None) == (args.resume_from is None):
        parser.error(_ONE_SOURCE)
    return _frozen(kind, args)


def config(kind: str, train_dir: str, val_dir: str, test_dir: str, **values: Any):
    """A trainer's frozen config from Python values (no command line): every flag at its
    default except `values`, given by destination name (`img_size=[H, W]`, `init_lr=0.001`,
    ...). An unknown name is a TypeError; a missing model source an InputError."""
    args = build_parser(kind).parse_args([str(train_dir), str(val_dir), str(test_dir)])
    unknown = sorted(set(values) - set(vars(args)))
    if unknown:
        raise TypeError(f"{kind} trainer: unknown option(s) {unknown}")
    vars(args).update(values)
    if kind == "image" and (args.patch_model_state is None) == (args.resume_from is None):
        raise InputError(_ONE_SOURCE)
    return _frozen(kind, args)


NOSAVE = "NOSAVE"
NO_SAVE_FLAGS = ("best_model", "final_model")


def _frozen(kind: str, args: argparse.Namespace):
    if args.img_size is None or len(args.img_size) != 2 or min(args.img_size) <= 0:
        raise InputError(f"img_size {args.img_size}: give two positive sizes (H, W)")
    if args.seed is None:
        args.seed = dm_cli.default_seed()
    for name in NO_SAVE_FLAGS:         # the original's "NOSAVE" means: no file
        if getattr(args, name) == NOSAVE:
            setattr(args, name, None)
    return config_class(kind)(**vars(args))


# Where the original's `run()` keyword defaults differ from its command line's: the image
# trainer's `run(auto_batch_balance=False)`, while its parser sets it on.
RUN_KEYWORD_DEFAULTS: dict[str, dict[str, Any]] = {"image": {"auto_batch_balance": False}}


def original_run_config(kind: str, train_dir, val_dir, test_dir, **kw):
    """A trainer's config from the original's `run(train_dir, val_dir, test_dir, **kw)`:
    the keyword names are the original's (= the flags' names); missing ones take the
    original `run()`'s defaults (the flags' defaults, except `RUN_KEYWORD_DEFAULTS`)."""
    parser = build_parser(kind)
    args = vars(parser.parse_args([os.fspath(train_dir), os.fspath(val_dir),
                                   os.fspath(test_dir)]))
    unknown = set(kw) - set(args)
    if unknown:
        raise TypeError(f"run() got unexpected keyword(s) {sorted(unknown)}")
    args.update(RUN_KEYWORD_DEFAULTS.get(kind, {}))
    args.update(kw)
    if args.get("seed") is None:
        args["seed"] = dm_cli.default_seed()
    if kind == "image" and (args["patch_model_state"] is None) == (args["resume_from"] is None):
        raise OriginalAPIError("run(): give exactly one of patch_model_state and resume_from")
    return config_class(kind)(**args)


def history_path(history_csv: str | None, best_model: str | None) -> str:
    """--history-csv, else `<best model>.history.csv`."""
    if history_csv:
        return history_csv
    if best_model:
        return str(pathlib.Path(best_model).with_suffix("")) + ".history.csv"
    return "history.csv"


def last_checkpoint_path(best_model: str | None, final_model: str | None,
                         history_csv: str | None) -> str | None:
    """`<best model>.last.keras`: the model, optimiser and run position after each epoch."""
    for p in (best_model, final_model, history_csv):
        if p:
            return str(pathlib.Path(p).with_suffix("")) + ".last.keras"
    return None


def check_run(cfg) -> None:
    """A trainer's refusals before TensorFlow loads: each model file it starts from (missing,
    with how a published one is made, or truncated), the three class-folder sets, and every
    file it writes (best, final and last models, history, TensorBoard folder) checked
    against what it reads: no run writes over its own input (`dm_output.check_not_input`),
    e.g. `--best-model` equal to `--resume-from`."""
    models = [(f"--{k.replace('_', '-')}", getattr(cfg, k, None))
              for k in ("resume_from", "patch_model_state", "pretrained_weights")]
    for flag, path in models[:2]:
        if path is not None:
            dm_convert_checkpoint.require_model_file(path, flag)
    if cfg.jit_compile and cfg.deterministic:
        raise InputError("--jit-compile needs --no-deterministic: with TensorFlow's "
                         "deterministic ops on, Keras trains without XLA")
    if getattr(cfg, "bilateral", False) and not cfg.pairs:
        raise InputError("--bilateral needs --pairs (a recipe's images.csv or a "
                         "path,other_path CSV)")
    if getattr(cfg, "pairs", None) and not os.path.isfile(cfg.pairs):
        raise InputError(f"--pairs {cfg.pairs}: file not found")
    for folder in (cfg.train_dir, cfg.val_dir, cfg.test_dir):
        dm_listing.list_class_folders(folder, cfg.class_list)
    inputs = models + [("TRAIN_DIR", cfg.train_dir), ("VAL_DIR", cfg.val_dir),
                       ("TEST_DIR", cfg.test_dir)]
    outputs = [("--best-model", cfg.best_model), ("--final-model", cfg.final_model),
               ("--history-csv", history_path(cfg.history_csv, cfg.best_model)),
               ("the last-epoch checkpoint", last_checkpoint_path(
                   cfg.best_model, cfg.final_model, cfg.history_csv)),
               ("--tensorboard", cfg.tensorboard)]
    for flag, path in outputs:
        dm_output.check_not_input(path, inputs, flag)
