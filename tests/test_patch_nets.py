"""Patch nets: heads, cut points, top-layer starts, local ImageNet weights."""
import numpy as np
import keras
import pytest

from dm_patch_nets import get_dl_model, PretrainedWeightsError
from dm_resnet import find_trunk_output

NETS = [  # net, patch size, trunk channels, first layer of stage 2
    ("resnet50", 64, 2048, "conv5_block2_out"),
    ("vgg16", 64, 512, "block5_conv1"),
    ("vgg19", 64, 512, "block5_conv1"),
    ("xception", 71, 2048, "block14_sepconv1"),
    ("inception", 75, 2048, None),
    ("yaroslav", 64, 512, None),
]


@pytest.mark.parametrize("net,size,channels,top_name", NETS)
def test_patch_net_builds_with_random_weights(net, size, channels, top_name):
    model, pre, top_nb = get_dl_model(net, nb_class=3, use_pretrained=False, img_size=(size, size),
                                      hidden_dropout=0.2, weight_decay=0.01)
    assert pre is None
    in_ch = 1 if net == "yaroslav" else 3
    assert tuple(model.input.shape) == (None, size, size, in_ch)
    assert tuple(model.output.shape) == (None, 3)
    assert [l.name for l in model.layers[-3:]] == ["patch_pool", "patch_dropout", "patch_clf"]
    if net == "yaroslav":   # the original's head: no dropout, no weight decay
        assert model.get_layer("patch_dropout").rate == 0.0
        assert model.get_layer("patch_clf").kernel_regularizer is None
    else:
        assert model.get_layer("patch_dropout").rate == 0.2
        assert model.get_layer("patch_clf").kernel_regularizer.get_config()["l2"] == \
            pytest.approx(0.01)
    trunk = model.get_layer("patch_trunk")
    assert find_trunk_output(model) is trunk
    assert trunk.output.shape[-1] == channels
    if top_name is not None:
        assert trunk.layers[top_nb].name == top_name
    elif net == "yaroslav":  # stage 2 trains all layers, as the original
        assert top_nb == 0
    else:  # InceptionV3: the mixed7 block onwards, after mixed6
        assert trunk.layers[top_nb - 1].name == "mixed6"
    x = np.random.default_rng(0).normal(size=(2, size, size, in_ch)).astype("float32")
    p = model.predict(x, verbose=0)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-5)


def test_custom_resnet_patch_net_top_layers_are_its_last_stage():
    model, _, top_nb = get_dl_model("dm_resnet_14", nb_class=2, use_pretrained=False,
                                    img_size=(64, 64), nb_init_filter=8)
    trunk = model.get_layer("patch_trunk")
    assert trunk.output.shape[-1] == 8 * 8 * 4
    top = trunk.layers[top_nb:]
    adds = [l for l in top if isinstance(l, keras.layers.Add)]
    assert len(adds) == 1 and adds[0].output.shape[-1] == 256   # one unit in the last stage
    assert isinstance(trunk.layers[top_nb - 1], keras.layers.Add)
    assert trunk.layers[top_nb - 1].output.shape[-1] == 128


def test_unknown_net():
    with pytest.raises(ValueError, match="unknown patch net"):
        get_dl_model("alexnet", use_pretrained=False)


def test_missing_imagenet_weights_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(PretrainedWeightsError,
                       match="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"):
        get_dl_model("vgg16", use_pretrained=True)


def test_pretrained_weights_from_local_file(tmp_path):
    donor = keras.applications.VGG16(include_top=False, weights=None, input_shape=(None, None, 3))
    path = tmp_path / "vgg16_notop.weights.h5"
    donor.save_weights(path)
    model, _, _ = get_dl_model("vgg16", use_pretrained=True, weights_file=str(path))
    got = model.get_layer("patch_trunk").get_layer("block3_conv2").get_weights()[0]
    np.testing.assert_array_equal(got, donor.get_layer("block3_conv2").get_weights()[0])
