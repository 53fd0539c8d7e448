"""Behaviours that must match the original (Keras 2.0.8) where results depend on them:
the stage schedule, where stage 2 starts, frozen BatchNorm, regularisers of old files,
the heatmap branch. See docs/fidelity.md."""
import keras
import numpy as np
import pytest
from keras import layers

import dm_resnet
from dm_stages import Stage
import dm_callbacks
import dm_layers
import dm_modelfile
import dm_patch_nets
import dm_stages


def _bn_patch_model(seed: int = 0) -> keras.Model:
    """A tiny patch model whose trunk has a BatchNormalization layer."""
    keras.utils.set_random_seed(seed)
    tin = keras.Input((None, None, 1), name="trunk_input")
    x = layers.Conv2D(4, 3, padding="same", name="c1")(tin)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.Activation("relu", name="r1")(x)
    trunk = keras.Model(tin, x, name=dm_resnet.TRUNK_NAME)
    inp = keras.Input((8, 8, 1))
    y = layers.GlobalAveragePooling2D()(trunk(inp))
    y = layers.Dropout(0.0)(y)
    out = layers.Dense(2, activation="softmax", kernel_regularizer=keras.regularizers.L2(0.0))(y)
    return keras.Model(inp, out)


def _data(n=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(3.0, 2.0, size=(n, 8, 8, 1)).astype("float32")
    y = np.eye(2)[rng.integers(0, 2, n)].astype("float32")
    return x, y


def _run(model, epochs, callbacks=(), resume_at=(0, 0)):
    import tensorflow as tf
    x, y = _data()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4).repeat()
    val = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    stages = [Stage(f"s{i}", e, 0.01, 0.0, 0.0, "all") for i, e in enumerate(epochs)]
    return dm_stages.run_stages(model, stages, ds, 2, val, list(callbacks), optim="adam",
                                   resume_at=resume_at, verbose=0)


# ------------------------------------------------------------------ item 1: schedule
def test_stage_epoch_flags_are_final_epoch_numbers():
    h = _run(_bn_patch_model(), [1, 3, 5])     # the shipped patch script's 1/5/15, scaled
    assert h["epoch"] == [1, 2, 3, 4, 5] and h["stage"] == [1, 2, 2, 3, 3]


def test_a_stage_that_ends_before_it_starts_trains_nothing():
    h = _run(_bn_patch_model(), [2, 1, 3])     # the image script: --nb-epoch 1 --all-layer-epochs 2 style
    assert h["epoch"] == [1, 2, 3] and h["stage"] == [1, 1, 3]
    h = _run(_bn_patch_model(), [1, 2])        # train_image_clf_im1152.sh: 2 epochs, not 3
    assert h["epoch"] == [1, 2]


class _StopAfter(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.at = epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.at:
            self.model.stop_training = True


def test_after_early_stopping_the_next_stage_starts_where_it_stopped():
    h = _run(_bn_patch_model(), [4, 6], callbacks=[_StopAfter(2)])
    assert h["epoch"] == [1, 2, 3, 4, 5, 6] and h["stage"] == [1, 1, 2, 2, 2, 2]


def test_resume_follows_the_same_numbering():
    # stage 1 stopped early after epoch 2: the checkpoint says stage 2, epoch 2, new stage
    h = _run(_bn_patch_model(), [4, 5], resume_at=(1, 2, False))
    assert h["epoch"] == [3, 4, 5] and h["stage"] == [2, 2, 2]


def test_last_checkpoint_moves_to_the_next_stage_at_the_stage_end(tmp_path):
    from dm_recipe import Recipe
    from dm_modelfile import ModelMeta
    model = _bn_patch_model()
    best = dm_callbacks.BestModelCheckpoint(None)
    meta = ModelMeta(("a", "b"), Recipe(img_size=(8, 8), channels=1), kind="patch")
    stages = [Stage("a", 2, .01, 0, 0), Stage("b", 3, .01, 0, 0)]
    last = dm_callbacks.LastCheckpoint(str(tmp_path / "l.keras"), meta, "f", stages, best, [])
    _run(model, [2, 3], callbacks=[best, last])
    state = dm_modelfile.read_resume_state(tmp_path / "l.keras")
    assert state["stage"] == 2 and state["epoch"] == 3 and not state["inside_stage"]


# ------------------------------------------------------------------ item 3: stage 2
@pytest.mark.parametrize("net,size,first_trained,original_index", [
    ("resnet50", 64, "conv5_block3_1_conv", 162),
    ("vgg16", 32, "block5_conv1", 15),
    ("vgg19", 32, "block5_conv1", 17),
    ("xception", 71, "block14_sepconv1", 126),
    ("inception", 75, None, 194),
])
def test_stage2_trains_what_the_original_trained(net, size, first_trained, original_index):
    model, _, top = dm_patch_nets.get_dl_model(net, nb_class=3, use_pretrained=False,
                                              img_size=(size, size))
    trunk = dm_patch_nets.find_trunk_layer(model)
    dm_stages.set_trainable(model, Stage("top", 1, .1, 0, 0, "top", top))
    trained = [l.name for l in trunk.layers if l.trainable_weights]
    if net == "resnet50":   # only the last residual unit, res5c
        assert trained and all(n.startswith("conv5_block3_") for n in trained)
        assert len(trained) == 6   # three convs, three BNs
    elif net == "inception":   # the mixed7 block onwards
        names = [l.name for l in trunk.layers]
        assert all(names.index(n) > names.index("mixed6") for n in trained)
        assert len([l for l in trunk.layers[names.index("mixed6"):] if l.weights]) == len(trained)
    else:
        assert trained[0] == first_trained
        names = [l.name for l in trunk.layers]
        assert len(trained) == len([l for l in trunk.layers[names.index(first_trained):]
                                    if l.weights])
    # the original's index, given as --top-layer-nb, trains the same layers
    legacy = dm_patch_nets.legacy_top_layer_nb(trunk, net, original_index)
    dm_stages.set_trainable(model, Stage("top", 1, .1, 0, 0, "top", legacy))
    assert [l.name for l in trunk.layers if l.trainable_weights] == trained


def test_resnet50_keras208_layout_has_173_trunk_layers_and_162_is_res5b_out():
    names = dm_patch_nets._resnet50_keras208_names()
    assert len(names) == 173 and names[162] == "conv5_block2_out"
    assert names[141:153] == ["conv5_block1_1_conv", "conv5_block1_1_bn", "conv5_block1_1_relu",
                              "conv5_block1_2_conv", "conv5_block1_2_bn", "conv5_block1_2_relu",
                              "conv5_block1_3_conv", "conv5_block1_0_conv", "conv5_block1_3_bn",
                              "conv5_block1_0_bn", "conv5_block1_add", "conv5_block1_out"]


def test_yaroslav_stage2_trains_all_layers():
    model, _, top = dm_patch_nets.get_dl_model("yaroslav", nb_class=3, use_pretrained=False,
                                              img_size=(64, 64))
    assert top == 0
    dm_stages.set_trainable(model, Stage("top", 1, .1, 0, 0, "top", top))
    assert len(model.trainable_weights) == len(model.weights) - 24   # all but BN moving stats


def test_top_layer_nb_into_the_head_trains_no_trunk_layer():
    model, _, top = dm_patch_nets.get_dl_model("vgg16", nb_class=3, use_pretrained=False,
                                              img_size=(32, 32), top_layer_nb=-1)
    assert top == len(dm_patch_nets.find_trunk_layer(model).layers)


# ------------------------------------------------------------------ item 4: frozen BN
@pytest.mark.parametrize("mode", ["batch", "inference"])
def test_frozen_trunk_batchnorm_in_stage_one(mode):
    model = _bn_patch_model()
    bn = model.get_layer(dm_resnet.TRUNK_NAME).get_layer("bn1")
    conv = model.get_layer(dm_resnet.TRUNK_NAME).get_layer("c1")
    dm_stages.compile_for_stage(model, Stage("dense", 1, 0.1, 0, 0, "head"), "sgd",
                                   frozen_bn=mode)
    before = {w.path: np.array(w) for w in bn.weights + conv.weights}
    x, y = _data()
    # the training-phase output uses batch statistics (Keras 2.0.8) or moving ones (Keras 3)
    out_train = keras.ops.convert_to_numpy(model.get_layer(dm_resnet.TRUNK_NAME)(x, training=True))
    out_infer = keras.ops.convert_to_numpy(model.get_layer(dm_resnet.TRUNK_NAME)(x, training=False))
    model.train_on_batch(x, y)
    after = {w.path: np.array(w) for w in bn.weights + conv.weights}
    for k in before:   # scale, offset and the conv kernel are frozen either way
        if "moving" not in k:
            np.testing.assert_array_equal(before[k], after[k])
    moved = not np.allclose(before["bn1/moving_mean"], after["bn1/moving_mean"])
    assert moved == (mode == "batch")
    assert np.allclose(out_train, out_infer) == (mode == "inference")
    assert len(model.trainable_weights) == 2    # only the Dense layer is optimised


def test_frozen_bn_default_is_the_original_behaviour():
    import dm_flags
    assert dm_flags.parse("patch", ["a", "b", "c"]).frozen_bn == "batch"
    assert dm_flags.parse("image", ["a", "b", "c", "--resume-from", "m",
                                    "--frozen-bn", "inference"]).frozen_bn == "inference"


# ------------------------------------------------------------------ item 7: heatmap
def test_add_heatmap_freezes_the_heatmap_branch_in_stage_one():
    from tiny_models import tiny_patch_model
    patch = tiny_patch_model()
    model, nb = dm_resnet.add_top_layers(patch, (64, 48), block_type="resnet", depths=[8, 8],
                                         repetitions=[1, 1], add_heatmap=True,
                                         avg_pool_size=(2, 2), hm_pool_size=(2, 2))
    assert nb == 8
    stage1 = dm_stages.image_stage_list(
        nb_epoch=1, all_layer_epochs=2, init_lr=.01, all_layer_multiplier=.1, weight_decay=0,
        weight_decay2=0, hidden_dropout=0, hidden_dropout2=0, top_layer_nb=nb)[0]
    dm_stages.set_trainable(model, stage1)
    assert not model.get_layer("hm_dense").trainable
    trained = {w.path for w in model.trainable_weights}
    assert not any(p.startswith("hm_dense") for p in trained)
    assert dm_resnet.add_top_layers(patch, (64, 48), block_type="vgg", depths=[8],
                                    repetitions=[1])[1] == 2


# ------------------------------------------------------------------ item 5: regularisers
def test_weight_decay_reaches_kernels_of_a_keras208_checkpoint(tmp_path):
    from keras2_fixture import write_keras2_h5
    patch = dm_patch_nets.get_dl_model("yaroslav", nb_class=3, use_pretrained=False,
                                      img_size=(64, 64))[0]
    model, _ = dm_resnet.add_top_layers(patch, (128, 128), patch_net="yaroslav",
                                        block_type="vgg", depths=[8], repetitions=[1])
    path = tmp_path / "k2.h5"
    write_keras2_h5(model, path, nested_input_shapes={"patch_trunk": (64, 64, 1)})
    loaded = dm_modelfile.load_model(path)
    kinds = {type(l.kernel_regularizer).__name__ for l in loaded.layers
             if getattr(l, "kernel_regularizer", None) is not None}
    assert kinds == {"L1L2"}          # how Keras 2.0.8 stored l2()
    stages = dm_stages.image_stage_list(
        nb_epoch=0, all_layer_epochs=1, init_lr=.01, all_layer_multiplier=.1, weight_decay=0.0,
        weight_decay2=0.05, hidden_dropout=0, hidden_dropout2=0.0)
    dm_stages.compile_for_stage(loaded, stages[1], "adam")
    kernels = [l.kernel for l in loaded.layers if getattr(l, "kernel_regularizer", None)
               is not None]
    expected = 0.05 * sum(float(np.sum(np.square(k))) for k in kernels)
    assert len(kernels) == 2
    assert dm_stages.regularization_loss(loaded) == pytest.approx(expected, rel=1e-4)
    l1 = keras.layers.Dense(2, kernel_regularizer=keras.regularizers.L1L2(l1=0.3, l2=0.0))
    m = keras.Sequential([keras.Input((3,)), l1])
    assert dm_stages.set_weight_decay(m, 0.2) == 1
    assert l1.kernel_regularizer.l1 == pytest.approx(0.3) and l1.kernel_regularizer.l2 == pytest.approx(0.2)


# ------------------------------------------------------------------ item 10: patience
def _drive(cb, losses):
    """Feed a callback a val_loss sequence; returns the epochs (1-based) at which it
    stopped training or reduced the lr."""
    model = _bn_patch_model()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="categorical_crossentropy")
    cb.set_model(model)
    cb.on_train_begin()
    events = []
    for e, v in enumerate(losses):
        lr = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
        cb.on_epoch_end(e, {"val_loss": v})
        if model.stop_training or float(keras.ops.convert_to_numpy(
                model.optimizer.learning_rate)) != lr:
            events.append(e + 1)
            model.stop_training = False
    return events


def test_early_stopping_counts_patience_as_keras_208():
    es = dm_callbacks.ResumableEarlyStopping(monitor="val_loss", patience=2)
    # Keras 2.0.8: stops at the 3rd epoch without progress (Keras 3 at the 2nd)
    assert _drive(es, [1.0, 2.0, 2.0, 2.0, 2.0])[0] == 4
    es0 = dm_callbacks.ResumableEarlyStopping(monitor="val_loss", patience=0)
    assert _drive(es0, [1.0, 2.0])[0] == 2


def test_lr_plateau_counts_patience_as_keras_208():
    rlr = dm_callbacks.ResumableReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2)
    # first reduction after patience+1 epochs without progress, then every `patience`
    assert _drive(rlr, [1.0] + [2.0] * 7) == [4, 6, 8]
    # progress smaller than epsilon 1e-4 is no progress
    rlr = dm_callbacks.ResumableReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1)
    assert _drive(rlr, [1.0, 0.99995, 0.99993, 0.99992]) == [3, 4]


# ------------------------------------------------------------------ item 6: channel shift
def test_channel_shift_is_drawn_per_channel_and_clipped_to_the_image_range():
    import dm_augment as A
    import dm_dataset
    import dm_recipe as R
    p = A.draw_params(A.Augment(), seed=3, index=0)
    assert len(set(p.shifts)) == 3 and all(-20 <= s <= 20 for s in p.shifts)
    img = (np.arange(24 * 20, dtype=np.float64).reshape(24, 20) * 100).astype(np.uint16)
    recipe = R.Recipe(img_size=(24, 20), rescale_factor=255 / 65535, channels=3,
                      featurewise_center=True, featurewise_mean=30.0)
    p = A.AugParams(shift=20.0, shift2=-20.0, shift3=5.0)
    x = R.preprocess(img, recipe, p)
    base = R.preprocess(img, recipe)[:, :, 0]
    lo, hi = base.min(), base.max()
    for c, s in enumerate(p.shifts):
        np.testing.assert_allclose(x[:, :, c], np.clip(base + s, lo, hi), atol=1e-4)
    # the tf.data pipeline does the same
    import tempfile, pathlib, cv2
    d = pathlib.Path(tempfile.mkdtemp())
    cv2.imwrite(str(d / "a.png"), img)
    aug = A.Augment(horizontal_flip=False, vertical_flip=False, rotation_range=0, shear_range=0,
                    zoom_range=(1, 1))
    ds = dm_dataset.make_dataset([str(d / "a.png")], [0], recipe, 2, 1, training=True, augment=aug, seed=7)
    xb = next(iter(ds))[0].numpy()[0]
    q = A.draw_params(aug, 7, 0)
    for c, s in enumerate(q.shifts):
        np.testing.assert_allclose(xb[:, :, c], np.clip(base + s, lo, hi), atol=1e-3)
    assert not np.allclose(xb[:, :, 0], xb[:, :, 1])


# ------------------------------------------------------------------ item 8: flat patch model
def _flat_patch_model(seed=4):
    """An original-style flat patch classifier: conv/BN/relu/pool blocks, GAP, Dense."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((32, 32, 1))
    x = inp
    for i, f in enumerate((4, 8), start=1):
        x = layers.Conv2D(f, 3, padding="same", name=f"block{i}_conv1")(x)
        x = layers.BatchNormalization()(x)
        x = layers.Activation("relu")(x)
        x = layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(3, activation="softmax", name="predictions")(x)
    return keras.Model(inp, out, name="yaroslav")


def test_patch_resume_from_a_flat_original_style_model(tmp_path):
    import dm_flags
    import patch_clf_train
    from keras2_fixture import write_keras2_h5
    from synth import write_class_folders
    flat = _flat_patch_model()
    path = tmp_path / "orig_patch.h5"
    write_keras2_h5(flat, path)
    model, _, top = dm_patch_nets.get_dl_model("yaroslav", nb_class=3, resume_from=str(path))
    assert dm_patch_nets.find_trunk_layer(model).name == dm_resnet.TRUNK_NAME and top == 0
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 1)).astype("float32")
    np.testing.assert_allclose(model.predict(x, verbose=0), flat.predict(x, verbose=0), atol=1e-5)
    data = write_class_folders(tmp_path / "d", ["background", "malignant", "benign"], 3, (32, 32))
    res = patch_clf_train.run(dm_flags.parse("patch", [
        str(data["train"]), str(data["val"]), str(data["test"]), "--net", "yaroslav",
        "--resume-from", str(path), "--img-size", "32", "32", "--rescale-factor", "0.003891",
        "--no-equalize-hist", "--batch-size", "9", "--train-bs-multiplier", "1",
        "--nb-epoch", "1", "--top-layer-epochs", "1", "--all-layer-epochs", "2",
        "--optimizer", "adam", "--best-model", str(tmp_path / "p.keras")]))
    assert res["history"]["stage"] == [1, 3]


# ------------------------------------------------------------------ item 10: the rest
def test_yaroslav_has_the_original_initialisers_and_head():
    model = dm_patch_nets.get_dl_model("yaroslav", nb_class=3, use_pretrained=False,
                                      img_size=(64, 64), hidden_dropout=0.5, weight_decay=0.1)[0]
    trunk = dm_patch_nets.find_trunk_layer(model)
    convs = [l for l in trunk.layers if isinstance(l, layers.Conv2D)]
    assert len(convs) == 12
    assert all(l.get_config()["kernel_initializer"]["class_name"] == "GlorotUniform" for l in convs)
    assert all(l.kernel_regularizer is None for l in convs)
    assert model.get_layer("patch_clf").kernel_regularizer is None
    assert model.get_layer("patch_dropout").rate == 0.0


def test_vgg_block_default_weight_decay_is_the_originals():
    import inspect
    assert inspect.signature(dm_resnet._vgg_block).parameters["weight_decay"].default == 0.01


def test_inbreast_script_also_at_the_original_path(tmp_path):
    """Both names run the same command (a fake $PYTHON records it), from any folder."""
    import os
    import pathlib
    import subprocess
    repo = pathlib.Path(__file__).resolve().parents[1]
    fake = tmp_path / "python"
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$ARGV_OUT"\n')
    fake.chmod(0o755)
    got = []
    for script in ("ddsm_train/train_image_clf_inbreast.sh",
                   "inbreast_train/train_image_clf_inbreast.sh"):
        out = tmp_path / (script.split("/")[0] + ".txt")
        subprocess.run(["bash", str(repo / script)], cwd=tmp_path, check=True, timeout=60,
                       env=dict(os.environ, PYTHON=str(fake), ARGV_OUT=str(out)))
        got.append(out.read_text().splitlines())
    assert got[0] == got[1]
    assert got[0][0] == str(repo / "image_clf_train.py") and "--resume-from" in got[0]
    assert got[0][got[0].index("--nb-epoch") + 1] == "0"


def test_optimisers_have_keras_208_defaults():
    for name in ("rmsprop", "adagrad", "adadelta", "adamax", "adam", "nadam"):
        assert dm_stages.create_optimizer(name, 0.01).epsilon == pytest.approx(1e-8)
    assert dm_stages.create_optimizer("adagrad", 0.01).initial_accumulator_value == 0.0


# ------------------------------------------------------------------ item 9: preprocess_input
def test_no_featurewise_center_applies_the_nets_imagenet_preprocess(tmp_path):
    x = np.random.default_rng(0).uniform(0, 255, size=(2, 32, 32, 3)).astype("float32")
    for net, expect in (("vgg16", x[..., ::-1] - np.array([103.939, 116.779, 123.68])),
                        ("xception", x / 255.0 * 2 - 1)):
        model = dm_patch_nets.get_dl_model(net, nb_class=3, use_pretrained=False,
                                          img_size=(32 if net == "vgg16" else 71,) * 2,
                                          imagenet_preprocess=True)[0]
        pre = model.get_layer("imagenet_preprocess")
        np.testing.assert_allclose(keras.ops.convert_to_numpy(pre(x)), expect, rtol=1e-5,
                                   atol=1e-4)
    # saved and reloaded with the model (so prediction and heatmaps repeat it)
    model = dm_patch_nets.get_dl_model("vgg16", nb_class=3, use_pretrained=False,
                                      img_size=(32, 32), imagenet_preprocess=True)[0]
    dm_modelfile.save_model(model, tmp_path / "p.keras")
    again = dm_modelfile.load_model(tmp_path / "p.keras")
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    # the whole-image model takes the trunk only, as the original's image trainer did
    image, _ = dm_resnet.add_top_layers(again, (64, 64), block_type="vgg", depths=[8],
                                        repetitions=[1])
    assert not any(isinstance(l, dm_layers.ImageNetPreprocess) for l in image.layers)
    assert dm_patch_nets.get_dl_model("vgg16", nb_class=3, use_pretrained=False,
                                     img_size=(32, 32))[0].layers[1].name == "patch_trunk"


def test_image_trainer_honours_top_layer_nb_with_resume_from():
    import dm_flags
    import image_clf_train
    base = ["a", "b", "c", "--resume-from", "m.keras", "--nb-epoch", "3"]
    assert image_clf_train.image_top_layer_nb(dm_flags.parse("image", base + ["--top-layer-nb", "5"])) == 5
    assert image_clf_train.image_top_layer_nb(dm_flags.parse("image", base)) == 2
    built = ["a", "b", "c", "--patch-model-state", "p.keras", "--top-layer-nb", "5"]
    assert image_clf_train.image_top_layer_nb(dm_flags.parse("image", built)) == 2  # add_top_layers' value
    assert image_clf_train.image_top_layer_nb(dm_flags.parse("image", built + ["--add-heatmap"])) == 8
    from tiny_models import tiny_image_model
    model = tiny_image_model()
    stage1 = dm_stages.image_stage_list(
        nb_epoch=3, all_layer_epochs=4, init_lr=.01, all_layer_multiplier=.1, weight_decay=0,
        weight_decay2=0, hidden_dropout=0, hidden_dropout2=0, top_layer_nb=5)[0]
    dm_stages.set_trainable(model, stage1)
    assert [l.trainable for l in model.layers[:5]] == [False] * 5
    assert all(l.trainable for l in model.layers[5:])
