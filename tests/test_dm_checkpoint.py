"""dm_checkpoint: Keras 1.2/2.x .h5 files (real third-party ones and Keras 2.0.8-layout files
written here) load as plain Keras 3 models with the original predictions."""
import json
import pathlib

import h5py
import keras
import numpy as np
import pytest

import dm_checkpoint as dc
from keras2_fixture import randomise_weights as _randomise
from keras2_fixture import small_whole_image_model as whole_image_model
from keras2_fixture import write_keras2_h5

L = keras.layers
K2 = "keras2"
DL4J = "dl4j_test_resources"
FER = "oarriaga_face_classification/trained_models"
# (path under shared/data/keras2, input shape without batch, output shape without batch)
REAL_MODELS = [
    (f"{DL4J}/examples/functional_lstm/lstm_functional_tf_keras_2.h5", (10, 4), (5,)),
    (f"{DL4J}/examples/gans/wgan_discriminator.h5", (28, 28, 1), (2048,)),
    (f"{DL4J}/examples/simple_lstm/simple_lstm_tf_keras_1_model.h5", (1, 1), (1,)),
    (f"{DL4J}/examples/simple_lstm/simple_lstm_tf_keras_2_model.h5", (1, 1), (1,)),
    (f"{DL4J}/fullconfigs/cnn/cnn_batch_norm.h5", (10, 10, 3), (1,)),
    *[(f"{DL4J}/optimizers/{o}.h5", (100,), (10,))
      for o in ("adadelta", "adagrad", "adam", "adamax", "nadam", "rmsprop", "sgd")],
    (f"{FER}/emotion_models/fer2013_mini_XCEPTION.102-0.66.hdf5", (64, 64, 1), (7,)),
    (f"{FER}/fer2013_big_XCEPTION.54-0.66.hdf5", (64, 64, 1), (7,)),
    (f"{FER}/gender_models/gender_mini_XCEPTION.21-0.95.hdf5", (64, 64, 1), (2,)),
]
LAMBDA_MODELS = [f"{DL4J}/examples/lambda/model_lambda.h5", f"{DL4J}/examples/lambda/sequential_lambda.h5"]
NOT_MODELS = [  # (file, words the one-line error must contain)
    (f"{DL4J}/examples/simple_lstm/simple_lstm_tf_keras_2_weights.h5", "weights-only"),
    (f"{DL4J}/fullconfigs/lstm/lstm_th_keras_2_weights.h5", "weights-only"),
    (f"{DL4J}/examples/simple_lstm/simple_lstm_tf_keras_2_inputs_and_outputs.h5", "no model_config"),
]


def _saved_weights(path: pathlib.Path, layer: str) -> list[np.ndarray]:
    with h5py.File(path, "r") as f:
        g = f["model_weights"][layer]
        return [np.asarray(g[n]) for n in g.attrs["weight_names"]]


# ------------------------------------------------------------------ real third-party files
@pytest.mark.parametrize("rel,in_shape,out_shape", REAL_MODELS, ids=[pathlib.Path(r[0]).stem for r in REAL_MODELS])
def test_real_model_files_load_and_predict(shared_data, rel, in_shape, out_shape):
    path = shared_data / K2 / rel
    model = dc.load_model(path)
    assert isinstance(model, keras.Model)
    assert tuple(model.input_shape[1:]) == in_shape
    x = np.random.default_rng(0).uniform(0, 1, (3, *in_shape)).astype("float32")
    y = np.asarray(model(x, training=False))
    assert y.shape == (3, *out_shape)
    assert np.isfinite(y).all()
    # every saved weight array landed in the model (spot check: the last layer with weights)
    with h5py.File(path, "r") as f:
        names = [n.decode() for n in f["model_weights"].attrs["layer_names"]]
    last = [n for n in names if _saved_weights(path, n)][-1]
    for got, want in zip(model.get_layer(last).get_weights(), _saved_weights(path, last)):
        np.testing.assert_array_equal(got, want)


def _np_lstm_keras2(x, kernel, recurrent, bias):
    """Keras 1/2 LSTM (gates i, f, c, o; hard_sigmoid = clip(0.2 x + 0.5)) in numpy."""
    hs = lambda z: np.clip(0.2 * z + 0.5, 0, 1)  # noqa: E731
    u = recurrent.shape[0]
    h = np.zeros((x.shape[0], u), np.float64)
    c = np.zeros_like(h)
    for t in range(x.shape[1]):
        z = x[:, t] @ kernel + h @ recurrent + bias
        i, f, g, o = hs(z[:, :u]), hs(z[:, u:2 * u]), np.tanh(z[:, 2 * u:3 * u]), hs(z[:, 3 * u:])
        c = f * c + i * g
        h = o * np.tanh(c)
    return h


def test_simple_lstm_keras2_matches_reference_computation(shared_data):
    """The file's 'outputs' are the training targets (DL4J skips prediction checks for it), so
    the reference is the Keras 2 LSTM recomputed in float64 numpy from the saved weights."""
    d = shared_data / K2 / DL4J / "examples/simple_lstm"
    model = dc.load_model(d / "simple_lstm_tf_keras_2_model.h5")
    with h5py.File(d / "simple_lstm_tf_keras_2_inputs_and_outputs.h5", "r") as f:
        x = np.asarray(f["inputs/lstm_1_input"], np.float32)
        targets = np.asarray(f["outputs/dense_1"])
    kernel, recurrent, bias = _saved_weights(d / "simple_lstm_tf_keras_2_model.h5", "lstm_1")
    dk, db = _saved_weights(d / "simple_lstm_tf_keras_2_model.h5", "dense_1")
    want = _np_lstm_keras2(x.astype(np.float64), kernel, recurrent, bias) @ dk + db
    got = model.predict(x, verbose=0)
    assert got.shape == targets.shape == (100, 1)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # and the model does predict the series it was trained on (loosely)
    assert np.corrcoef(got.ravel(), targets.ravel())[0, 1] > 0.5


def test_simple_lstm_keras1_matches_saved_predictions_and_activations(shared_data):
    """Keras 1.2.2 file (12 per-gate LSTM weights, hard_sigmoid) vs Keras' own saved outputs."""
    d = shared_data / K2 / DL4J / "examples/simple_lstm"
    model = dc.load_model(d / "simple_lstm_tf_keras_1_model.h5")
    with h5py.File(d / "simple_lstm_tf_keras_1_inputs_and_outputs.h5", "r") as f:
        x = np.asarray(f["inputs/lstm_input_1"], np.float32)
        pred = np.asarray(f["predictions/dense_1"])
        act = np.asarray(f["activations/lstm_1"])
    np.testing.assert_allclose(model.predict(x, verbose=0), pred, atol=1e-5, rtol=0)
    hidden = keras.Model(model.inputs, model.get_layer("lstm_1").output)
    np.testing.assert_allclose(hidden.predict(x, verbose=0), act, atol=1e-5, rtol=0)


@pytest.mark.parametrize("rel", LAMBDA_MODELS, ids=["model_lambda", "sequential_lambda"])
def test_lambda_files_refused_in_safe_mode(shared_data, rel):
    path = shared_data / K2 / rel
    with pytest.raises(dc.UnsafeCheckpointError) as e:
        dc.load_model(path)
    msg = str(e.value)
    assert str(path) in msg and "'lambda_" in msg and "safe_mode=False" in msg and "\n" not in msg


def _dense(x, w, b):
    return x @ w + b


def test_lambda_files_load_with_opt_in(shared_data):
    """Python 2 bytecode `lambda x: x ** 2` and `lambda x: 3 * x` are rebuilt as Keras 3 Lambdas."""
    d = shared_data / K2 / DL4J / "examples/lambda"
    x = np.random.default_rng(1).uniform(-1, 1, (4, 784)).astype("float32")
    m = dc.load_model(d / "model_lambda.h5", safe_mode=False)
    h = np.maximum(_dense(x, *_saved_weights(d / "model_lambda.h5", "dense_3")), 0)
    z = _dense(3 * h ** 2, *_saved_weights(d / "model_lambda.h5", "dense_4"))
    want = np.exp(z - z.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    np.testing.assert_allclose(m.predict(x, verbose=0), want, atol=1e-5)

    s = dc.load_model(d / "sequential_lambda.h5", safe_mode=False)
    x = x[:, :100]
    h = np.maximum(_dense(x, *_saved_weights(d / "sequential_lambda.h5", "dense_1")), 0)
    want = _dense(3 * h ** 2, *_saved_weights(d / "sequential_lambda.h5", "dense_2"))
    np.testing.assert_allclose(s.predict(x, verbose=0), want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("rel,words", NOT_MODELS, ids=[pathlib.Path(r[0]).stem for r in NOT_MODELS])
def test_non_model_h5_files_give_one_line_error(shared_data, rel, words):
    path = shared_data / K2 / rel
    with pytest.raises(dc.CheckpointError) as e:
        dc.load_model(path)
    assert str(path) in str(e.value) and words in str(e.value) and "\n" not in str(e.value)


def test_missing_and_non_model_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.h5: model file not found"):
        dc.load_model(tmp_path / "nope.h5")
    (tmp_path / "notes.h5").write_text("hello")
    with pytest.raises(dc.CheckpointError, match="notes.h5: not a model file"):
        dc.load_model(tmp_path / "notes.h5")


CONFIGS = ["keras2/keras2_cnn_tf_config.json", "keras2/keras2_conv1d_pooling1d_tf_config.json",
           "keras2/keras2_dga_classifier_tf_config.json", "keras2/keras2_mlp_config.json",
           "keras2/keras2_mlp_fapi_config.json", "keras2/keras2_mnist_cnn_tf_config.json",
           "keras2/l1l2_regularizer_dense_tf_keras_2_config.json", "keras2/mnist_cnn_tf_keras_2_config.json",
           "keras2/mnist_mlp_tf_keras_2_config.json", "keras1/mnist_cnn_tf_keras_1_config.json"]


@pytest.mark.parametrize("rel", CONFIGS, ids=[pathlib.Path(c).stem for c in CONFIGS])
def test_keras1_and_keras2_json_configs_build(shared_data, rel):
    """Retired keys (Merge, input_dtype, init/output_dim, ...) are translated; shapes check out."""
    path = shared_data / K2 / DL4J / "configs" / rel
    cfg = json.loads(path.read_text())
    model = dc.model_from_keras2_config(cfg, source=str(path))
    layers = cfg["config"] if isinstance(cfg["config"], list) else cfg["config"]["layers"]
    last = layers[-1]["config"]
    units = last.get("units", last.get("output_dim"))
    if units is not None:
        assert model.outputs[0].shape[-1] == units
    assert len([lay for lay in model.layers if not isinstance(lay, L.InputLayer)]) == \
        len([lc for lc in layers if lc["class_name"] != "InputLayer"])


def test_keras2_hard_sigmoid_is_the_keras2_formula():
    x = np.array([-3.0, -1.0, 0.0, 1.0, 3.0], np.float32)
    np.testing.assert_allclose(np.asarray(dc.keras2_hard_sigmoid(x)), [0.0, 0.3, 0.5, 0.7, 1.0], atol=1e-7)


# ------------------------------------------------------------------ Keras 2.0.8 layout written here
def test_whole_image_keras208_layout_loads_with_identical_predictions(tmp_path):
    patch_model, model = whole_image_model()
    path = tmp_path / "whole_image_keras208.h5"
    write_keras2_h5(model, path, nested_input_shapes={"patch_trunk": (32, 32, 3)})

    with h5py.File(path, "r") as f:  # the layout of the published checkpoints
        assert f.attrs["keras_version"] == b"2.0.8" and f.attrs["backend"] == b"tensorflow"
        cfg = json.loads(f.attrs["model_config"])
        mw = f["model_weights"]
        assert [n.decode() for n in mw.attrs["layer_names"]][:2] == ["input_2", "patch_trunk"]
        assert "patch_trunk/conv1/kernel:0" in mw and "patch_trunk/bn_conv2/moving_variance:0" in mw
        assert mw["top_bn"].attrs["weight_names"][0] == b"top_bn/gamma:0"
    assert cfg["class_name"] == "Model"
    by_name = {lc["name"]: lc for lc in cfg["config"]["layers"]}
    assert by_name["patch_trunk"]["class_name"] == "Model"
    assert by_name["patch_trunk"]["config"]["layers"][0]["config"]["batch_input_shape"] == [None, 32, 32, 3]
    assert by_name["top_conv"]["inbound_nodes"] == [[["patch_trunk", 1, 0, {}]]]
    assert by_name["top_conv"]["config"]["kernel_initializer"]["config"]["distribution"] == "normal"

    loaded = dc.load_model(path)
    x = np.random.default_rng(2).normal(50, 20, (3, 64, 48, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5, rtol=0)
    sub = loaded.get_layer("patch_trunk")
    assert isinstance(sub, keras.Model) and sub.get_layer("conv1").kernel.shape == (3, 3, 3, 8)
    # the trunk is shared with the patch model: its weights came back too
    np.testing.assert_array_equal(sub.get_layer("bn_conv1").moving_mean.numpy(),
                                  patch_model.get_layer("bn_conv1").moving_mean.numpy())
    # a plain Keras 3 model: saves and reloads without this project's loader
    keras_path = tmp_path / "whole.keras"
    loaded.save(keras_path)
    again = keras.saving.load_model(keras_path)
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5, rtol=0)
    # and the project loader takes .keras and Keras 3 .h5 files too
    np.testing.assert_allclose(dc.load_model(keras_path).predict(x, verbose=0),
                               model.predict(x, verbose=0), atol=1e-5, rtol=0)
    h5_path = tmp_path / "whole_k3.h5"
    loaded.save(h5_path)
    np.testing.assert_allclose(dc.load_model(h5_path).predict(x, verbose=0),
                               model.predict(x, verbose=0), atol=1e-5, rtol=0)


def test_sequential_keras208_layout(tmp_path):
    model = keras.Sequential([keras.Input((12, 10, 1)), L.Conv2D(4, 3, activation="relu", name="c1"),
                              L.AveragePooling2D(2, name="p1"), L.Flatten(name="flat"),
                              L.Dropout(0.3, name="drop"), L.Dense(8, activation="tanh", name="d1"),
                              L.Dense(3, activation="softmax", name="d2")], name="seq")
    _randomise(model, 3)
    path = tmp_path / "seq.h5"
    write_keras2_h5(model, path)
    with h5py.File(path, "r") as f:
        cfg = json.loads(f.attrs["model_config"])
        assert [n.decode() for n in f["model_weights"].attrs["layer_names"]] == \
            ["c1", "p1", "flat", "drop", "d1", "d2"]
    assert cfg["class_name"] == "Sequential" and isinstance(cfg["config"], list)
    assert cfg["config"][0]["config"]["batch_input_shape"] == [None, 12, 10, 1]
    loaded = dc.load_model(path)
    assert isinstance(loaded, keras.Sequential)
    x = np.random.default_rng(4).normal(size=(5, 12, 10, 1)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5, rtol=0)


def test_functional_batchnorm_keras208_layout(tmp_path):
    inp = keras.Input((16, 16, 3), name="img")
    a = L.Conv2D(6, 3, padding="same", use_bias=False, name="ca")(inp)
    a = L.BatchNormalization(name="bna")(a)
    b = L.Conv2D(6, 1, name="cb")(inp)
    b = L.BatchNormalization(name="bnb")(b)
    y = L.Activation("relu", name="relu")(L.Add(name="add")([a, b]))
    y = L.Concatenate(name="cat")([L.MaxPooling2D(2, name="mp")(y), L.AveragePooling2D(2, name="ap")(y)])
    y = L.GlobalMaxPooling2D(name="gmp")(y)
    out = L.Dense(4, activation="softmax", name="out")(y)
    model = keras.Model(inp, out, name="bn_model")
    _randomise(model, 5)
    path = tmp_path / "bn.h5"
    write_keras2_h5(model, path)
    loaded = dc.load_model(path)
    x = np.random.default_rng(6).normal(size=(4, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(loaded.get_layer("bnb").moving_variance.numpy(),
                                  model.get_layer("bnb").moving_variance.numpy())


def test_missing_layer_weights_are_an_error(tmp_path):
    _, model = whole_image_model()
    path = tmp_path / "broken.h5"
    write_keras2_h5(model, path)
    with h5py.File(path, "a") as f:
        del f["model_weights/top_dense"]
    with pytest.raises(dc.CheckpointError, match=r"broken.h5: layer 'top_dense': has weights"):
        dc.load_model(path)


def test_unknown_layer_class_is_named(tmp_path):
    model = keras.Sequential([keras.Input((4,)), L.Dense(2, name="d")])
    path = tmp_path / "custom.h5"
    write_keras2_h5(model, path)
    with h5py.File(path, "a") as f:
        cfg = json.loads(f.attrs["model_config"])
        cfg["config"][0]["class_name"] = "MyFancyDense"
        f.attrs["model_config"] = json.dumps(cfg).encode()
    with pytest.raises(dc.CheckpointError, match=r"custom.h5: layer 'd': layer class 'MyFancyDense'"):
        dc.load_model(path)


def _lambda_config(shared_data) -> tuple[pathlib.Path, dict]:
    path = shared_data / K2 / DL4J / "examples/lambda/model_lambda.h5"
    with h5py.File(path, "r") as f:
        return path, json.loads(f.attrs["model_config"])


def test_lambda_python3_bytecode_is_a_clear_error(shared_data):
    """Keras >= 2.1 on Python 3 stored base64 marshal data that Python 3.11 cannot run."""
    path, cfg = _lambda_config(shared_data)
    cfg["config"]["layers"][3]["config"]["function"][0] = "4wEAAAAAAAAAAAAAAAEAAAACAAAAQwAAAHMIAAAAfABkAQUAUwA="
    with pytest.raises(dc.CheckpointError, match=r"x.h5: layer 'lambda_4': Lambda holds Python 3 bytecode"):
        dc.model_from_keras2_config(cfg, safe_mode=False, source="x.h5")


def test_lambda_python2_call_is_a_clear_error(shared_data):
    """Python 2 bytecode beyond arithmetic (here `K.abs(x)`: LOAD_GLOBAL...) is not translated."""
    path, cfg = _lambda_config(shared_data)
    fn = cfg["config"]["layers"][2]["config"]["function"][0].encode("raw_unicode_escape")
    code_at = fn.index(b"s\x08\x00\x00\x00") + 5
    fn = fn[:code_at] + b"t\x00\x00|\x00\x00\x83" + fn[code_at + 7:]  # LOAD_GLOBAL 0, LOAD_FAST 0, CALL
    cfg["config"]["layers"][2]["config"]["function"][0] = fn.decode("raw_unicode_escape")
    with pytest.raises(dc.CheckpointError, match=r"y.h5: layer 'lambda_3': .*opcode 116.*by hand"):
        dc.model_from_keras2_config(cfg, safe_mode=False, source="y.h5")


def test_merge_layer_becomes_keras3_merge(shared_data):
    path = shared_data / K2 / DL4J / "configs/keras2/keras2_mlp_fapi_config.json"
    cfg = json.loads(path.read_text())
    merge = [lc for lc in cfg["config"]["layers"] if lc["class_name"] == "Merge"][0]
    model = dc.model_from_keras2_config(cfg)
    want = {"sum": L.Add, "concat": L.Concatenate, "mul": L.Multiply}[merge["config"]["mode"]]
    assert isinstance(model.get_layer(merge["name"]), want)
