"""convert_checkpoint.py: Keras 2.0.8 checkpoint -> self-describing .keras file."""
import dataclasses
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras2_fixture import small_whole_image_model as whole_image_model
from keras2_fixture import write_keras2_h5
from tiny_models import tiny_image_model

import dm_convert_checkpoint
import dm_modelfile
from dm_errors import InputError
from dm_recipe import Recipe

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def keras208_whole_image(tmp_path):
    _, model = whole_image_model()
    path = tmp_path / "ddsm_whole.h5"
    write_keras2_h5(model, path, nested_input_shapes={"patch_trunk": (32, 32, 3)})
    return model, path


def test_convert_defaults_and_plain_keras_reload(tmp_path, keras208_whole_image):
    model, src = keras208_whole_image
    out = tmp_path / "out" / "ddsm_whole.keras"
    assert dm_convert_checkpoint.main([str(src), str(out)]) == 0
    reloaded = keras.saving.load_model(out)  # plain Keras, no project loader
    x = np.random.default_rng(0).normal(50, 20, (2, 64, 48, 3)).astype("float32")
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5, rtol=0)
    meta = dm_modelfile.read_model_meta(out)
    assert meta.class_list == ("neg", "pos") and meta.kind == "image"
    # The model's input is fixed at 64x48: the recipe takes that size (issue 12.10), and
    # records the published models' 16-bit input.
    assert meta.recipe == Recipe(img_size=(64, 48), rescale_factor=0.003891, channels=3,
                                 featurewise_center=True, featurewise_mean=52.18, input_bits=16)
    assert [p.name for p in out.parent.iterdir()] == ["ddsm_whole.keras"]  # no temp files left


def test_a_file_written_here_keeps_its_trunk_s_trainable_record(tmp_path):
    """A whole-image .keras saved in image stage 1 records its trunk's own flags
    (dm_modelfile); converting it keeps that record, which --saved-trainable reads."""
    import dm_stages
    model = tiny_image_model()
    dm_modelfile.record_trunk_frozen(model, ("c2", "c1"))
    src = tmp_path / "stage1.keras"
    dm_modelfile.save_model(model, src)
    out = tmp_path / "converted.keras"
    assert dm_convert_checkpoint.main([str(src), str(out)]) == 0
    assert dm_modelfile.recorded_trunk_frozen(dm_modelfile.load_model(out)) == ("c1", "c2")
    assert dm_stages.saved_frozen_layers(str(out)) == ("c1", "c2")
    assert dm_modelfile.read_model_meta(out).extra["converted_from"] == str(src)


def test_convert_inbreast_and_overrides(tmp_path, keras208_whole_image):
    _, src = keras208_whole_image
    out = tmp_path / "inb.keras"
    assert dm_convert_checkpoint.main([str(src), str(out), "--dataset", "inbreast", "--img-size", "64", "48",
                                    "--class-list", "benign", "malignant", "--kind", "image"]) == 0
    meta = dm_modelfile.read_model_meta(out)
    assert meta.class_list == ("benign", "malignant")
    assert meta.recipe.featurewise_mean == 44.33 and meta.recipe.img_size == (64, 48)
    out2 = tmp_path / "mean.keras"
    assert dm_convert_checkpoint.main([str(src), str(out2), "--featurewise-mean", "60.5",
                                    "--rescale-factor", "0"]) == 0
    r = dm_modelfile.read_model_meta(out2).recipe
    assert r.featurewise_mean == 60.5 and r.rescale_factor is None


PUBLISHED = Recipe(img_size=(64, 48), rescale_factor=0.003891, input_bits=16, channels=3,
                  featurewise_center=True, featurewise_mean=52.18)


@pytest.mark.parametrize("flags,shape,changes", [
    ([], (None, 64, 48, 3), {}),
    (["--img-size", "64", "48"], (None, 64, 48, 3), {}),
    ([], (None, None, None, 3), dict(img_size=(1152, 896))),
    (["--target-size", "32", "24"], (None, None, None, 3), dict(img_size=(32, 24))),
    ([], (None, 64, 48, 1), dict(channels=1)),
    (["--channels", "1"], (None, 64, 48, 7), dict(channels=1)),
    ([], (None, 64, 48, 7), {}),                                  # odd channels: 3
    (["--dataset", "inbreast"], (None, 64, 48, 3), dict(featurewise_mean=44.33)),
    (["--featurewise-mean", "60.5"], (None, 64, 48, 3), dict(featurewise_mean=60.5)),
    (["--featurewise-center"], (None, 64, 48, 3), {}),
    (["--no-featurewise-center"], (None, 64, 48, 3),
     dict(featurewise_center=False, featurewise_mean=0.0)),
    (["--no-featurewise-center", "--featurewise-mean", "60"], (None, 64, 48, 3),
     dict(featurewise_center=False, featurewise_mean=0.0)),
    (["--rescale-factor", "1"], (None, 64, 48, 3), dict(rescale_factor=1.0)),
    (["--rescale-factor", "0"], (None, 64, 48, 3), dict(rescale_factor=None)),
    (["--no-rescale-factor"], (None, 64, 48, 3), dict(rescale_factor=None)),
    (["--input-bits", "8"], (None, 64, 48, 3), dict(input_bits=8)),
    (["--img-scale", "255"], (None, 64, 48, 3), dict(img_scale=255.0)),
    (["-ic", "255", "-nic"], (None, 64, 48, 3), {}),
    (["--equalize-hist"], (None, 64, 48, 3), dict(equalize_hist=True)),
    (["--no-equalize-hist"], (None, 64, 48, 3), {}),
])
def test_recipe_is_the_published_one_with_the_flags_given(flags, shape, changes):
    """The recipe stored is the published models' (the model's fixed size or 1152x896,
    rescale 0.003891, 16 bits, centring on the --dataset mean, the model's channels), each
    recipe flag given (dm_cli.add_recipe_flags, override mode) replacing its item."""
    args = dm_convert_checkpoint.build_parser().parse_args(["in.h5", "out.keras", *flags])
    got = dm_convert_checkpoint.recipe_for(args, shape)
    assert got == dataclasses.replace(PUBLISHED, **changes)
    assert dm_convert_checkpoint.published_recipe((64, 48), 3, "ddsm") == PUBLISHED


def test_a_size_a_fixed_input_cannot_take_is_refused():
    args = dm_convert_checkpoint.build_parser().parse_args(["in.h5", "o", "--img-size", "32", "24"])
    with pytest.raises(InputError, match="in.h5: the model's input is fixed at 64x48 but "
                                         "--img-size says 32x24"):
        dm_convert_checkpoint.recipe_for(args, (None, 64, 48, 3))


def test_help_says_the_defaults_are_the_published_recipe():
    text = " ".join(dm_convert_checkpoint.build_parser().format_help().split())
    assert "the published models' recipe" in text and "0.003891" in text and "16-bit" in text
    for flag in ("--no-rescale-factor", "--no-img-scale", "--input-bits", "--dataset"):
        assert flag in text


def test_convert_bad_inputs_exit_2_without_output(tmp_path, keras208_whole_image, capsys):
    _, src = keras208_whole_image
    out = tmp_path / "x.keras"
    assert dm_convert_checkpoint.main([str(tmp_path / "missing.h5"), str(out)]) == 2
    err = [l for l in capsys.readouterr().err.splitlines() if "convert_checkpoint: error: " in l]
    assert len(err) == 1 and "missing.h5" in err[0] and "not found" in err[0]
    notes = tmp_path / "notes.h5"
    notes.write_text("not a model")
    assert dm_convert_checkpoint.main([str(notes), str(out)]) == 2
    assert "notes.h5: not a model file" in capsys.readouterr().err
    assert dm_convert_checkpoint.main([str(src), str(out), "--class-list", "a", "b", "c"]) == 2
    assert "2 outputs" in capsys.readouterr().err
    assert dm_convert_checkpoint.main([str(src), str(out), "--img-size", "1152", "896"]) == 2
    err = capsys.readouterr().err
    assert "fixed at 64x48" in err and "--img-size says 1152x896" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddsm_whole.h5", "notes.h5"]


def test_convert_cli_process_refuses_lambda(tmp_path, shared_data):
    """Real subprocess: exit code 2 and one line naming the file and the Lambda layer."""
    src = shared_data / "keras2/dl4j_test_resources/examples/lambda/model_lambda.h5"
    out = tmp_path / "lam.keras"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    r = subprocess.run([sys.executable, "convert_checkpoint.py", str(src), str(out), "--class-list",
                        *[str(i) for i in range(10)]], cwd=REPO, env=env, capture_output=True, text=True)
    assert r.returncode == 2
    line = [ln for ln in r.stderr.splitlines() if "convert_checkpoint: error: " in ln]
    assert len(line) == 1 and str(src) in line[0] and "'lambda_3'" in line[0]
    assert not out.exists()


def test_converted_fixed_size_model_predicts(tmp_path, keras208_whole_image):
    """Before: a 1152x896 recipe for a 64x48 model, and prediction failed with a Keras error."""
    import cv2

    import dm_predict
    _, src = keras208_whole_image
    out = tmp_path / "m.keras"
    assert dm_convert_checkpoint.main([str(src), str(out)]) == 0
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), np.random.default_rng(0).integers(0, 65535, (90, 70)).astype(np.uint16))
    assert dm_predict.main([str(out), "--images", str(img), "--out", str(tmp_path / "p.csv")]) == 0
