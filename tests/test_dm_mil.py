"""Multiple-instance heads and the bilateral model (dm_mil), on a tiny patch model."""
from __future__ import annotations

import numpy as np
import pytest

import dm_dataset
import dm_layers
import dm_mil
import dm_modelfile
from dm_errors import InputError
from tiny_models import IMAGE_RECIPE, IMG, PATCH, tiny_patch_model


def _images(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, *IMG)) * 60000).astype(np.uint16)


def test_top_fraction_pooling_is_the_mean_of_the_top_windows():
    x = np.arange(2 * 10 * 10 * 2, dtype="float32").reshape(2, 10, 10, 2)
    got = np.asarray(dm_layers.TopFractionPooling(0.05)(x))
    flat = x.reshape(2, 100, 2)
    want = np.sort(flat, axis=1)[:, ::-1][:, :5].mean(axis=1)
    np.testing.assert_allclose(got, want)
    assert np.allclose(np.asarray(dm_layers.TopFractionPooling(1.0)(x)), flat.mean(axis=1))
    with pytest.raises(InputError):
        dm_layers.TopFractionPooling(0.0)


def test_gated_attention_weights_sum_to_one_and_pool_the_values():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(2, 5, 4, 6)).astype("float32")
    v = rng.random((2, 5, 4, 3)).astype("float32")
    layer = dm_layers.GatedAttentionPooling(8)
    out = np.asarray(layer([f, v]))
    a = np.asarray(layer.attention_map(f))
    np.testing.assert_allclose(a.reshape(2, -1).sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out, (v * a[..., None]).sum(axis=(1, 2)), rtol=1e-5)


@pytest.mark.parametrize("pooling", dm_mil.POOLINGS)
@pytest.mark.parametrize("bilateral", [False, True])
def test_model_shapes_layers_and_reload(tmp_path, pooling, bilateral):
    patch = tiny_patch_model()
    model, top = dm_mil.build_mil_model(patch, IMG, nb_class=2, pooling=pooling,
                                        bilateral=bilateral)
    names = [l.name for l in model.layers]
    assert names[top - 1] == "hm_dense" and "clf_dense" not in names[:top]
    assert dm_mil.is_bilateral(model) == bilateral
    # the window map starts as the patch classifier: same Dense weights
    for a, b in zip(model.get_layer("hm_dense").get_weights(),
                    patch.get_layer("patch_clf").get_weights()):
        np.testing.assert_array_equal(a, b)
    # the head has few parameters: top pooling adds only the final Dense
    head = model.get_layer("clf_dense").count_params()
    assert head == (6 if bilateral else 3) * 2 + 2
    x = np.random.default_rng(2).random((3, *IMG, 1)).astype("float32")
    inputs = [x, x[::-1]] if bilateral else x
    out = model.predict(inputs, verbose=0)
    assert out.shape == (3, 2) and np.allclose(out.sum(1), 1, atol=1e-5)
    dm_modelfile.save_model(model, tmp_path / "m.keras")
    again = dm_modelfile.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(again.predict(inputs, verbose=0), out, rtol=1e-5, atol=1e-6)


def test_window_map_equals_the_patch_classifier_on_a_window():
    """With a window of exactly one patch, the map's value is the patch model's own output
    on that patch (the fprop equivalence the heads rest on)."""
    patch = tiny_patch_model()
    model, _ = dm_mil.build_mil_model(patch, (PATCH, PATCH), nb_class=2, pooling="top",
                                      top_fraction=1.0)
    import keras
    probe = keras.Model(model.inputs, model.get_layer("hm_dense").output)
    x = np.random.default_rng(3).random((2, PATCH, PATCH, 1)).astype("float32")
    got = probe.predict(x, verbose=0)
    assert got.shape[1:3] == (1, 1)
    np.testing.assert_allclose(got[:, 0, 0], patch.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_bilateral_score_is_the_head_on_own_and_own_minus_mirrored_other():
    patch = tiny_patch_model()
    model, _ = dm_mil.build_mil_model(patch, IMG, nb_class=2, pooling="top", bilateral=True)
    rng = np.random.default_rng(4)
    own = rng.random((1, *IMG, 1)).astype("float32")
    other = rng.random((1, *IMG, 1)).astype("float32")
    got = model.predict([own, other], verbose=0)
    assert not np.allclose(got, model.predict([own, own], verbose=0))

    def view(x):
        for name in ("patch_trunk", "hm_avg_pool", "hm_dense", "lesion_map", "mil_pool"):
            x = model.get_layer(name)(x)
        return np.asarray(x)
    v, w = view(own), view(other[:, :, ::-1].copy())      # the other breast mirrored
    dense = model.get_layer("clf_dense")
    k, b = dense.get_weights()
    feats = np.asarray(model.get_layer("mil_norm")(np.concatenate([v, v - w], axis=1),
                                                   training=False))
    logits = feats @ k + b
    want = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # not mirrored, the score is another one (the trunk is not mirror-symmetric)
    w_raw = view(other)
    assert not np.allclose(w, w_raw)


def test_image_smaller_than_a_window_is_refused():
    with pytest.raises(InputError, match="smaller than one patch window"):
        dm_mil.build_mil_model(tiny_patch_model(), (PATCH // 2, PATCH // 2), nb_class=2)


def test_pairs_dataset_gives_each_image_its_other_breast():
    imgs = _images()
    labels, pairs = [0, 1, 0, 0, 1, 0], [1, 0, 3, 2, 5, 4]
    ds = dm_dataset.make_dataset(imgs, labels, IMAGE_RECIPE, 2, 4, training=False, pairs=pairs)
    own, other = [], []
    for (x, xo), y in ds:
        own.append(x.numpy())
        other.append(xo.numpy())
    own, other = np.concatenate(own), np.concatenate(other)
    np.testing.assert_array_equal(other, own[pairs])
    with pytest.raises(Exception, match="pairs must give"):
        dm_dataset.make_dataset(imgs, labels, IMAGE_RECIPE, 2, 4, training=False, pairs=[1, 0])


def test_bilateral_model_trains_on_pairs():
    imgs = _images()
    labels, pairs = [0, 1, 0, 0, 1, 0], [1, 0, 3, 2, 5, 4]
    model, _ = dm_mil.build_mil_model(tiny_patch_model(), IMG, nb_class=2, bilateral=True)
    model.compile("adam", "categorical_crossentropy")
    ds = dm_dataset.make_dataset(imgs, labels, IMAGE_RECIPE, 2, 4, training=True, pairs=pairs)
    before = [w.copy() for w in model.get_layer("clf_dense").get_weights()]
    hist = model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0])
    assert not np.allclose(before[0], model.get_layer("clf_dense").get_weights()[0])
