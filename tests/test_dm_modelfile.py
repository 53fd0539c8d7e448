"""Model files and precision: a model trained in mixed precision predicts in float32 once
saved and loaded; `--mixed-precision bfloat16` trains and scores with a float32 softmax."""
import keras
import numpy as np
import pytest

import dm_flags
import dm_modelfile
import patch_clf_train
from synth import write_class_folders
from tiny_models import tiny_image_model
import dm_scoring


@pytest.fixture(autouse=True)
def _float32_afterwards():
    yield
    keras.mixed_precision.set_global_policy("float32")


def _compute_dtypes(model):
    return {l.name: l.dtype_policy.compute_dtype
            for l in model._flatten_layers(include_self=False, recursive=True)
            if not isinstance(l, keras.layers.InputLayer)}


def test_set_precision_bfloat16_keeps_the_softmax_float32_and_goes_back():
    model = tiny_image_model()
    x = np.random.default_rng(0).normal(size=(2, *model.input_shape[1:])).astype("float32")
    ref = keras.ops.convert_to_numpy(model(x))

    dm_modelfile.set_precision(model, "bfloat16")
    dtypes = _compute_dtypes(model)
    assert dtypes.pop(model.layers[-1].name) == "float32"
    assert set(dtypes.values()) == {"bfloat16"}
    y = model(x)
    assert y.dtype == "float32"
    low = keras.ops.convert_to_numpy(y)
    assert not np.array_equal(low, ref)                       # really computed in bfloat16
    np.testing.assert_allclose(low, ref, atol=3e-2)
    np.testing.assert_allclose(low.sum(-1), 1.0, atol=1e-5)   # a float32 softmax

    dm_modelfile.set_precision(model, None)
    assert set(_compute_dtypes(model).values()) == {"float32"}
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model(x)), ref)
    with pytest.raises(ValueError, match="unknown precision"):
        dm_modelfile.set_precision(model, "int8")


def test_trained_in_bfloat16_loads_and_predicts_in_float32(tmp_path):
    d = write_class_folders(tmp_path / "data", ["background", "malignant", "benign"], 4,
                            (64, 64), seed=1)
    best = tmp_path / "best.keras"
    rc = patch_clf_train.main([
        str(d["train"]), str(d["val"]), str(d["test"]), "--net", "yaroslav", "--img-size",
        "64", "64", "--rescale-factor", "0.003891", "--featurewise-mean", "50",
        "--batch-size", "4", "--optimizer", "adam", "--nb-epoch", "1", "--top-layer-epochs",
        "1", "--all-layer-epochs", "2", "--mixed-precision", "bfloat16",
        "--best-model", str(best)])
    assert rc == 0
    model = dm_modelfile.load_model(best)
    assert set(_compute_dtypes(model).values()) == {"float32"}
    assert all(w.dtype == "float32" for w in model.weights)
    x = np.random.default_rng(1).normal(size=(3, 64, 64, 1)).astype("float32")
    y = model(x)
    assert y.dtype == "float32"
    # Trained in bfloat16: the file records it, and computing that way answers differently.
    import json
    import zipfile
    with zipfile.ZipFile(best) as z:
        config = json.loads(z.read("config.json"))
    assert '"mixed_bfloat16"' in json.dumps(config)
    f32 = keras.ops.convert_to_numpy(y)
    low = keras.ops.convert_to_numpy(dm_modelfile.set_precision(model, "bfloat16")(x))
    assert not np.array_equal(low, f32)
    np.testing.assert_allclose(low, f32, atol=5e-2)
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"   # the run's
    cfg = dm_flags.parse("patch", ["t", "v", "s"])
    assert cfg.mixed_precision is None
    assert dm_flags.parse("patch", ["t", "v", "s", "--mixed-precision"]).mixed_precision \
        == "float16"


def test_meta_without_kind_reads_as_unknown_and_passes_kind_checks(tmp_path):
    """A model file whose stored metadata predates `kind` loads; its kind is then None
    (unknown), or recognised from the layers of a whole-image model (issue 23)."""
    import json
    import zipfile
    from dm_recipe import Recipe
    meta = dm_modelfile.ModelMeta(("neg", "pos"), Recipe(img_size=(64, 48), channels=1))
    old = json.loads(meta.to_json())
    del old["kind"]
    assert dm_modelfile.ModelMeta.from_json(json.dumps(old)).kind is None
    path = tmp_path / "old.keras"
    tiny_image_model().save(path)
    with zipfile.ZipFile(path, "a") as z:
        z.writestr(dm_modelfile.META_MEMBER, json.dumps(old))
    assert dm_modelfile.read_model_meta(path).kind is None
    dm_modelfile.check_model_kind(path, "patch", "--patch-model", "--image-model")  # passes
    loaded = dm_scoring.load_models([str(path)])[0]
    assert loaded.kind == "image" and loaded.train_size == (64, 48)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_the_trunks_own_trainable_flags_travel_with_the_file(tmp_path, suffix):
    """The record of the trunk's own flags (`record_trunk_frozen`) is written beside the
    model, with or without a meta, read back by `load_model`, and kept when the meta is
    replaced; a model without one saves none."""
    from dm_recipe import Recipe
    model = tiny_image_model()
    plain = tmp_path / f"plain{suffix}"
    dm_modelfile.save_model(model, plain)
    assert dm_modelfile.recorded_trunk_frozen(dm_modelfile.load_model(plain)) is None
    dm_modelfile.record_trunk_frozen(model, ("c2", "c1"))
    path = tmp_path / f"m{suffix}"
    dm_modelfile.save_model(model, path)
    assert dm_modelfile.recorded_trunk_frozen(dm_modelfile.load_model(path)) == ("c1", "c2")
    meta = dm_modelfile.ModelMeta(("neg", "pos"), Recipe(img_size=(64, 48), channels=1))
    dm_modelfile.write_model_meta(path, meta, tmp_path / f"again{suffix}")
    again = dm_modelfile.load_model(tmp_path / f"again{suffix}")
    assert dm_modelfile.recorded_trunk_frozen(again) == ("c1", "c2")
    assert dm_modelfile.read_model_meta(tmp_path / f"again{suffix}") == meta


def test_a_keras_file_cut_short_is_called_truncated(tmp_path):
    """A .keras zip cut short (an interrupted download) reads as truncated or corrupt, and
    another file as not a model file; the kind check leaves both to the loader."""
    from dm_recipe import Recipe
    path = tmp_path / "m.keras"
    meta = dm_modelfile.ModelMeta(("neg", "pos"), Recipe(img_size=(64, 48), channels=1))
    dm_modelfile.save_model(tiny_image_model(), path, meta)
    assert dm_modelfile.read_model_meta(path) == meta
    cut = tmp_path / "cut.keras"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(dm_modelfile.ModelFileError, match="truncated or corrupt") as e:
        dm_modelfile.read_model_meta(cut)
    assert str(e.value).startswith(f"{cut}: ") and "\n" not in str(e.value)
    notes = tmp_path / "notes.keras"
    notes.write_text("PK is not enough")
    with pytest.raises(dm_modelfile.ModelFileError, match="not a model file"):
        dm_modelfile.read_model_meta(notes)
    dm_modelfile.check_model_kind(cut, "patch", "--resume-from", "image_clf_train.py")
