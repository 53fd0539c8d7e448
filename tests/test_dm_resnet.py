"""Model builders: the trunk cut, add_top_layers options, exact parameter counts."""
import numpy as np
import keras
import pytest

import dm_resnet
from dm_resnet import add_top_layers, find_trunk_output, ResNetBuilder
import dm_patch_nets

# The original's model names (its README: "Top Layers (two blocks)"; its INbreast script
# builds "512-512-1024x2" with --top-repetitions 2 2): two blocks each.
TOP_RESNET = dict(block_type="resnet", depths=[512, 512], repetitions=[2, 2],
                  bottleneck_enlarge_factor=2)          # "[512-512-1024]x2"
TOP_VGG = dict(block_type="vgg", depths=[512, 512], repetitions=[1, 1])  # "512x1"

# Parameters of the new top layers, counted by hand:
#  VGG conv 512 on C channels: conv3x3 (9*C*512 + 512) + BN (4*512); Dense (512*2 + 2).
#  Bottleneck unit d=512, enlarge 2, with projection on C channels: 1x1 (C*512+512) + BN 2048
#  + 3x3 (9*512*512+512) + BN 2048 + 1x1 (512*1024+1024) + BN 4096 + shortcut (C*1024+1024)
#  + BN 4096; an identity unit (on 1024 channels) has no shortcut conv and BN.
def _vgg_conv(c):
    return 9 * c * 512 + 512 + 4 * 512


def _bottleneck(c):
    return (c * 512 + 512) + 2048 + (9 * 512 * 512 + 512) + 2048 + (512 * 1024 + 1024) + 4096 \
        + (c * 1024 + 1024) + 4096


def _identity_unit():
    return (1024 * 512 + 512) + 2048 + (9 * 512 * 512 + 512) + 2048 + (512 * 1024 + 1024) + 4096


def _resnet_top(c):
    return _bottleneck(c) + _identity_unit() + _bottleneck(1024) + _identity_unit() + 1024 * 2 + 2


def _vgg_top(c):
    return _vgg_conv(c) + _vgg_conv(512) + 512 * 2 + 2


PINNED = {  # (net, config): (total params of the whole-image model, top-layer params)
    ("resnet50", "[512-512-1024]x2"): (40_942_466, _resnet_top(2048)),
    ("resnet50", "512x1"): (35_390_338, _vgg_top(2048)),
    ("vgg16", "[512-512-1024]x2"): (29_710_146, _resnet_top(512)),
    ("vgg16", "512x1"): (19_439_426, _vgg_top(512)),
}


@pytest.fixture(scope="module")
def patch_models():
    return {net: dm_patch_nets.get_dl_model(net, nb_class=3, use_pretrained=False)[0]
            for net in ("resnet50", "vgg16")}


@pytest.mark.parametrize("net,channels", [("resnet50", 2048), ("vgg16", 512)])
@pytest.mark.parametrize("cfg_name,cfg", [("[512-512-1024]x2", TOP_RESNET), ("512x1", TOP_VGG)])
def test_whole_image_model_at_1152x896(patch_models, net, channels, cfg_name, cfg):
    patch = patch_models[net]
    model, top_nb = add_top_layers(patch, (1152, 896), nb_class=2, **cfg)
    trunk = model.get_layer("patch_trunk")
    assert isinstance(trunk, keras.Model)
    # the trunk's feature map on a 1152x896 image is 36x28 (stride 32)
    assert tuple(model.layers[top_nb].input.shape) == (None, 36, 28, channels)
    assert tuple(model.output.shape) == (None, 2)
    assert model.layers[-1].get_config()["activation"] == "softmax"
    total, top = PINNED[(net, cfg_name)]
    assert model.count_params() == total
    assert model.count_params() - trunk.count_params() == top


def test_trunk_shares_weights_with_patch_model(patch_models):
    patch = patch_models["vgg16"]
    model, _ = add_top_layers(patch, (256, 192), **TOP_VGG)
    assert model.get_layer("patch_trunk") is patch.get_layer("patch_trunk")


def test_other_image_sizes(patch_models):
    model, top_nb = add_top_layers(patch_models["resnet50"], (512, 384), **TOP_VGG)
    assert tuple(model.layers[top_nb].input.shape) == (None, 16, 12, 2048)
    x = np.random.default_rng(0).normal(size=(1, 512, 384, 3)).astype("float32")
    p = model.predict(x, verbose=0)
    assert p.shape == (1, 2) and np.allclose(p.sum(), 1, atol=1e-5)


def test_heatmap_branch_copies_patch_classifier(patch_models):
    patch = patch_models["vgg16"]
    model, _ = add_top_layers(patch, (512, 384), add_heatmap=True, avg_pool_size=(1, 1),
                              hm_pool_size=(2, 2), **TOP_VGG)
    hm = model.get_layer("hm_dense")
    clf = patch.get_layer("patch_clf")
    for a, b in zip(hm.get_weights(), clf.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert hm.get_config()["activation"] == "relu"
    assert tuple(model.get_layer("hm_max_pool").output.shape) == (None, 8, 6, 3)


def test_return_heatmap_equals_patch_classifier_on_pooled_features():
    """fprop heatmap cell = the patch classifier applied to the average-pooled trunk features."""
    patch = dm_patch_nets.get_dl_model("yaroslav", nb_class=3, use_pretrained=False,
                                      img_size=(64, 64))[0]
    x = np.random.default_rng(1).normal(size=(1, 256, 128, 1)).astype("float32")
    hm_model = add_top_layers(patch, (256, 128), return_heatmap=True, avg_pool_size=(2, 2),
                              hm_strides=(2, 2), patch_net="yaroslav")
    assert isinstance(hm_model, keras.Model)  # the model alone, as the original returned it
    hm = hm_model.predict(x, verbose=0)
    assert hm.shape == (1, 2, 1, 3)          # trunk 4x2 (stride 64), pooled 2x2 / stride 2
    np.testing.assert_allclose(hm.sum(-1), 1.0, atol=1e-5)
    feats = keras.ops.convert_to_numpy(patch.get_layer("patch_trunk")(x))
    for r in range(2):
        pooled = feats[:, 2 * r:2 * r + 2, 0:2].mean(axis=(1, 2))
        p = keras.ops.convert_to_numpy(patch.get_layer("patch_clf")(pooled))
        np.testing.assert_allclose(hm[0, r, 0], p[0], rtol=1e-4, atol=1e-6)


def test_fc_layers_and_shortcut(patch_models):
    model, _ = add_top_layers(patch_models["vgg16"], (64, 64), add_conv=False, fc_init_units=64,
                              fc_layers=2, add_shortcut=True, dropout=0.3)
    dense_units = [l.units for l in model.layers if isinstance(l, keras.layers.Dense)]
    assert dense_units == [64, 32, 2, 2]
    assert any(isinstance(l, keras.layers.Add) for l in model.layers)
    drops = [l.rate for l in model.layers if isinstance(l, keras.layers.Dropout)]
    assert drops == [0.3, 0.3, 0.3]


def test_new_layers_have_l2_and_he_normal(patch_models):
    model, top_nb = add_top_layers(patch_models["vgg16"], (64, 64), weight_decay=0.003, **TOP_RESNET)
    kernels = [l for l in model.layers[top_nb:] if hasattr(l, "kernel_regularizer")]
    assert kernels
    for l in kernels:
        assert l.kernel_regularizer.get_config()["l2"] == pytest.approx(0.003)
        init = l.get_config()["kernel_initializer"]    # Keras 2.0.8's he_normal (dm_layers)
        assert init["class_name"] == "VarianceScaling"
        assert init["config"]["mode"] == "fan_in"
        assert init["config"]["distribution"] == "truncated_normal"
        assert init["config"]["scale"] == pytest.approx(2 * 0.87962566 ** 2)


def test_unknown_block_type(patch_models):
    with pytest.raises(ValueError, match="block type"):
        add_top_layers(patch_models["vgg16"], (64, 64), block_type="dense")


def test_save_and_reload_whole_image_model(tmp_path, patch_models):
    model, _ = add_top_layers(patch_models["vgg16"], (128, 128), **TOP_VGG)
    x = np.random.default_rng(2).normal(size=(2, 128, 128, 3)).astype("float32")
    path = tmp_path / "m.keras"
    model.save(path)
    again = keras.saving.load_model(path)
    np.testing.assert_array_equal(again.predict(x, verbose=0), model.predict(x, verbose=0))


# ---- the cut point, by meaning, on flat models laid out like the original's
def _flat_patch_model(base):
    x = keras.layers.GlobalAveragePooling2D()(base.output)
    x = keras.layers.Dropout(0.5)(x)
    out = keras.layers.Dense(3, activation="softmax")(x)
    return keras.Model(base.input, out)


def test_cut_on_flat_resnet50_is_last_relu():
    base = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(224, 224, 3))
    # Keras 2.0.8 ResNet50 had a 7x7 average pooling inside the base: emulate it.
    x = keras.layers.AveragePooling2D((7, 7), name="avg_pool")(base.output)
    flat = _flat_patch_model(keras.Model(base.input, x))
    assert find_trunk_output(flat).name == "conv5_block3_out"
    model, nb = add_top_layers(flat, (1152, 896), **TOP_VGG)
    assert tuple(model.layers[nb].input.shape) == (None, 36, 28, 2048)


def test_cut_on_flat_vgg16_keeps_block5_pool():
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(224, 224, 3))
    assert find_trunk_output(_flat_patch_model(base)).name == "block5_pool"


def test_explicit_cut_overrides():
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(64, 64, 3))
    flat = _flat_patch_model(base)
    assert find_trunk_output(flat, kept_layer_name="block4_pool").name == "block4_pool"
    assert find_trunk_output(flat, kept_layer_idx=-4).name == "block5_pool"


# ---- ResNetBuilder
@pytest.mark.parametrize("name,units", [("resnet_18", 8), ("dm_resnet_14", 4), ("resnet_38", 12)])
def test_resnet_builder(name, units):
    model = getattr(ResNetBuilder, f"build_{name}")((1, 64, 64), 3, nb_init_filter=8)
    assert tuple(model.output.shape) == (None, 3)
    assert sum(isinstance(l, keras.layers.Add) for l in model.layers) == units


def test_resnet_builder_elastic_net_and_sigmoid():
    model = ResNetBuilder.build_dm_resnet_14((1, 32, 32), 1, nb_init_filter=4, alpha=0.1, l1_ratio=0.5)
    dense = model.layers[-1]
    assert dense.get_config()["activation"] == "sigmoid"
    cfg = dense.kernel_regularizer.get_config()
    assert cfg["l1"] == pytest.approx(0.05) and cfg["l2"] == pytest.approx(0.025)


def test_multi_view_builder_has_two_inputs():
    from dm_resnet import MultiViewResNetBuilder
    model = MultiViewResNetBuilder.build_dm_resnet_14((1, 32, 32), 2, nb_init_filter=4)
    assert len(model.inputs) == 2 and tuple(model.output.shape) == (None, 2)


def test_block_orderings_differ():
    """Pre-activation units start with BN; original units start with a convolution."""
    inp = keras.Input((16, 16, 8))
    pre = keras.Model(inp, dm_resnet.bottleneck(4, identity=False)(inp))
    org = keras.Model(inp, dm_resnet.bottleneck_org(4, identity=False)(inp))
    assert isinstance(pre.layers[1], keras.layers.BatchNormalization)
    assert isinstance(org.layers[1], keras.layers.Conv2D)
    assert tuple(pre.output.shape) == tuple(org.output.shape) == (None, 16, 16, 16)


@pytest.mark.parametrize("net,idx", [("resnet50", -5), ("vgg16", -4), ("yaroslav", -3)])
def test_original_kept_layer_idx_names_the_trunk_end(net, idx):
    size = 64
    patch = dm_patch_nets.get_dl_model(net, nb_class=3, use_pretrained=False,
                                      img_size=(size, size))[0]
    trunk = patch.get_layer("patch_trunk")
    assert dm_resnet.legacy_kept_layer(patch, idx, net) is trunk.layers[-1]
    model, nb = add_top_layers(patch, (256, 256), patch_net=net, kept_layer_idx=idx, **TOP_VGG)
    assert model.get_layer("patch_trunk") is trunk
    # one more layer back cuts earlier: a different trunk ending at the previous layer
    model2, _ = add_top_layers(patch, (256, 256), patch_net=net, kept_layer_idx=idx - 1, **TOP_VGG)
    assert model2.get_layer("patch_trunk").output.name != trunk.output.name
    with pytest.raises(ValueError, match="classifier head"):
        dm_resnet.legacy_kept_layer(patch, -1, net)


def test_image_too_small_for_top_layers_is_a_clear_error():
    patch = dm_patch_nets.get_dl_model("yaroslav", nb_class=3, use_pretrained=False,
                                      img_size=(64, 64))[0]
    with pytest.raises(ValueError, match=r"image size \(128, 96\) is too small.*\(2, 1\)"):
        add_top_layers(patch, (128, 96), block_type="vgg", depths=[16], repetitions=[1])


def test_docs_model_table_carries_the_pinned_counts_and_recipes():
    import pathlib
    import re
    readme = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "training.md").read_text()
    rows = re.findall(r"^\| (ResNet50|VGG16) \| (\[512-512-1024\]x2|512x1)[^|]*\| [^|]+\| "
                      r"([\d,]+) \| ([\d,]+) \|$", readme, flags=re.M)
    assert len(rows) == 4
    for net, cfg, total, top in rows:
        assert (int(total.replace(",", "")), int(top.replace(",", ""))) == \
            PINNED[(net.lower(), cfg)]
    assert "--top-depths 512 512 --top-repetitions 2 2 --bottleneck-enlarge-factor 2" in readme
    assert "--block-type vgg --top-depths 512 512 --top-repetitions 1 1" in readme
    assert "--top-repetitions 1 1 --bottleneck-enlarge-factor 2" not in readme
