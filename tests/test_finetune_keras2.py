"""Issue: the published Keras 2.0.8 whole-image checkpoints load, convert and finetune.

A whole-image model built here (patch trunk nested and called on a new input, top layers)
is written with h5py in the exact Keras 2.0.8 layout, loaded back, converted, and
finetuned for one epoch by `image_clf_train.py --resume-from`.
"""
import h5py
import keras
import numpy as np
import pytest

import dm_convert_checkpoint
import dm_resnet
import image_clf_train
from keras2_fixture import write_keras2_h5
from synth import write_class_folders
import dm_modelfile
import dm_patch_nets


@pytest.fixture(scope="module")
def keras2_checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("k2")
    patch = dm_patch_nets.get_dl_model("yaroslav", nb_class=3, use_pretrained=False,
                                      img_size=(64, 64))[0]
    model, _ = dm_resnet.add_top_layers(patch, (128, 128), patch_net="yaroslav",
                                        block_type="vgg", depths=[8], repetitions=[1])
    rng = np.random.default_rng(3)
    for w in model.weights:  # non-trivial BN statistics and weights
        w.assign(rng.normal(0, 0.05, w.shape).astype("float32") + (1.0 if "variance" in w.path else 0.0))
    path = d / "ddsm_yaroslav_8x1.h5"
    write_keras2_h5(model, path, nested_input_shapes={"patch_trunk": (64, 64, 1)})
    return d, model, path


def test_written_file_has_the_keras_208_layout(keras2_checkpoint):
    _, _, path = keras2_checkpoint
    with h5py.File(path, "r") as f:
        assert f.attrs["keras_version"] in (b"2.0.8", "2.0.8")
        assert "patch_trunk" in f["model_weights"]
        assert any("block1_conv1" in k for k in f["model_weights/patch_trunk"].keys())


def test_loads_with_identical_predictions(keras2_checkpoint):
    _, model, path = keras2_checkpoint
    loaded = dm_modelfile.load_model(path)
    x = np.random.default_rng(0).normal(size=(2, 128, 128, 1)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-5)
    assert dm_patch_nets.find_trunk_layer(loaded).name == "patch_trunk"


def test_convert_then_finetune_one_epoch(keras2_checkpoint, tmp_path):
    d, model, path = keras2_checkpoint
    converted = tmp_path / "converted.keras"
    assert dm_convert_checkpoint.main([str(path), str(converted), "--img-size", "128", "128",
                                    "--channels", "1", "--featurewise-mean", "40"]) == 0
    plain = keras.saving.load_model(converted)   # no project loader needed
    x = np.random.default_rng(1).normal(size=(1, 128, 128, 1)).astype("float32")
    np.testing.assert_allclose(plain.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    data = write_class_folders(tmp_path / "data", ["neg", "pos"], 4, (128, 128), seed=5)
    for source in (path, converted):
        best = tmp_path / f"finetuned_{source.suffix[1:]}.keras"
        rc = image_clf_train.main([
            str(data["train"]), str(data["val"]), str(data["test"]),
            "--no-patch-model-state", "--resume-from", str(source), "--img-size", "128", "128",
            "--rescale-factor", "0.003891", "--featurewise-mean", "40", "--batch-size", "4",
            "--train-bs-multiplier", "1", "--nb-epoch", "0", "--all-layer-epochs", "1",
            "--optimizer", "adam", "--init-learningrate", "0.0001", "--best-model", str(best)])
        assert rc == 0
        assert best.is_file()
        assert dm_modelfile.read_model_meta(best).class_list == ("neg", "pos")
