"""The original's Python API (docs/original.md, "Code written for the original"): the notebook
`ddsm_train/Example_model_test.ipynb` replayed on Keras 2.0.8-layout checkpoints, and
each adapter checked against today's code it wraps."""
import csv
import os
import pathlib

import cv2
import keras
import numpy as np
import pytest

import dm_image
import dm_heatmaps
import dm_keras_ext
from dm_errors import OriginalAPIError
import dm_predict
from keras2_fixture import randomise_weights, write_keras2_h5
from synth import write_class_folders
from tiny_models import mammogram, save, tiny_image_model, tiny_patch_model
import dm_pixels
import dm_recipe

L = keras.layers

# The notebook's code cells, Python 3 syntax (print calls). One line differs: Keras 3's
# `keras.models.load_model` cannot read Keras 2.0.8 files (neither can any current Keras),
# so its import is replaced by the original's own `robust_load_model` (README). The IPython
# magic `%pylab inline` is its Python equivalent (`from pylab import *`).
NOTEBOOK_CELLS = [
    """
from pylab import *
import pandas as pd
import numpy as np
import keras
""",
    """
from dm_keras_ext import robust_load_model as load_model
res_mod = load_model('1152x896_s10_prt_addtopf2_1.h5', compile=False)
vgg_mod = load_model('1152x896_s10_prt_addvgg20.h5', compile=False)
hybrid_mod = load_model('1152x896_s10_prt_addvgg53.h5', compile=False)
""",
    """
from dm_image import DMImageDataGenerator
test_imgen = DMImageDataGenerator(featurewise_center=True)
test_imgen.mean = 52.18
test_generator = test_imgen.flow_from_directory(
    './full_test_1152x896', target_size=(1152, 896), target_scale=None,
    rescale_factor=0.003891,
    equalize_hist=False, dup_3_channels=True, 
    classes=['neg', 'pos'], class_mode='categorical', batch_size=4, 
    shuffle=False)
""",
    """
from dm_keras_ext import DMAucModelCheckpoint
res_auc, res_y_true, res_y_pred = DMAucModelCheckpoint.calc_test_auc(
    test_generator, res_mod, test_samples=test_generator.nb_sample, return_y_res=True)
print(res_auc)
""",
    """
from dm_keras_ext import DMAucModelCheckpoint
vgg_auc, vgg_y_true, vgg_y_pred = DMAucModelCheckpoint.calc_test_auc(
    test_generator, vgg_mod, test_samples=test_generator.nb_sample, return_y_res=True)
print(vgg_auc)
""",
    """
from dm_keras_ext import DMAucModelCheckpoint
hybrid_auc, hybrid_y_true, hybrid_y_pred = DMAucModelCheckpoint.calc_test_auc(
    test_generator, hybrid_mod, test_samples=test_generator.nb_sample, return_y_res=True)
print(hybrid_auc)
""",
    """
print(np.array_equal(res_y_true, vgg_y_true))
print(np.array_equal(res_y_true, hybrid_y_true))
""",
    """
from sklearn.metrics import roc_auc_score
all_mod_y_pred_avg = (res_y_pred[:,1] + vgg_y_pred[:,1] + hybrid_y_pred[:,1])/3
print(roc_auc_score(res_y_true[:,1], all_mod_y_pred_avg))
""",
    """
from dm_keras_ext import DMAucModelCheckpoint
res_auc_aug, res_y_true_aug, res_y_pred_aug = DMAucModelCheckpoint.calc_test_auc(
    test_generator, res_mod, test_samples=test_generator.nb_sample, return_y_res=True, test_augment=True)
print(res_auc_aug)
""",
    """
from dm_keras_ext import DMAucModelCheckpoint
vgg_auc_aug, vgg_y_true_aug, vgg_y_pred_aug = DMAucModelCheckpoint.calc_test_auc(
    test_generator, vgg_mod, test_samples=test_generator.nb_sample, return_y_res=True, test_augment=True)
print(vgg_auc_aug)
""",
    """
from dm_keras_ext import DMAucModelCheckpoint
hybrid_auc_aug, hybrid_y_true_aug, hybrid_y_pred_aug = DMAucModelCheckpoint.calc_test_auc(
    test_generator, hybrid_mod, test_samples=test_generator.nb_sample, return_y_res=True, test_augment=True)
print(hybrid_auc_aug)
""",
    """
from sklearn.metrics import roc_auc_score
all_mod_y_pred_avg_aug = (res_y_pred_aug[:,1] + vgg_y_pred_aug[:,1] + hybrid_y_pred_aug[:,1])/3
print(roc_auc_score(res_y_true_aug[:,1], all_mod_y_pred_avg_aug))
""",
]

MODEL_FILES = ["1152x896_s10_prt_addtopf2_1.h5", "1152x896_s10_prt_addvgg20.h5",
               "1152x896_s10_prt_addvgg53.h5"]


def _whole_image_model(seed: int) -> keras.Model:
    """A small 1152x896 whole-image model nested as the original's (trunk sub-model called
    on a new input, top layers), cheap enough for a CPU test (stride-4 first conv)."""
    trunk_layers = [L.Conv2D(4, 5, strides=4, padding="same", name="conv1"),
                    L.BatchNormalization(name="bn_conv1"), L.Activation("relu", name="act1"),
                    L.MaxPooling2D(4, name="pool1"),
                    L.Conv2D(8, 3, padding="same", name="conv2"),
                    L.BatchNormalization(name="bn_conv2"), L.Activation("relu", name="act2")]
    trunk_in = keras.Input((None, None, 3), name="trunk_input")
    x = trunk_in
    for layer in trunk_layers:
        x = layer(x)
    trunk = keras.Model(trunk_in, x, name="patch_trunk")
    img = keras.Input((1152, 896, 3), name="input_2")
    fmap = trunk(img)
    y = L.Conv2D(8, 3, padding="same", name="top_conv")(fmap)
    y = L.BatchNormalization(name="top_bn")(y)
    y = L.Activation("relu", name="top_relu")(y)
    y = L.Add(name="top_add")([fmap, y])
    y = L.GlobalAveragePooling2D(name="top_gap")(y)
    out = L.Dense(2, activation="softmax", name="top_dense")(L.Dropout(0.5, name="drop")(y))
    model = keras.Model(img, out, name="whole_image")
    randomise_weights(model, seed)
    return model


@pytest.fixture(scope="module")
def notebook_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("nb")
    for k, name in enumerate(MODEL_FILES):
        write_keras2_h5(_whole_image_model(10 + k), d / name,
                        nested_input_shapes={"patch_trunk": (224, 224, 3)})
    for cls, n in (("neg", 6), ("pos", 4)):
        (d / "full_test_1152x896" / cls).mkdir(parents=True)
        for i in range(n):
            img = mammogram((96, 72), seed=100 * (cls == "pos") + i)
            if cls == "pos":  # a brighter blob: something for the models to differ on
                cv2.circle(img, (20 + 3 * i, 40), 10, 60000, -1)
            cv2.imwrite(str(d / "full_test_1152x896" / cls / f"{cls}_{i}.png"), img)
    return d


def _predict_py(d, tmp, tta: bool) -> dict:
    out = tmp / ("tta.csv" if tta else "plain.csv")
    argv = [str(d / m) for m in MODEL_FILES] + [
        "--image-dir", str(d / "full_test_1152x896"), "--out", str(out), "--batch-size", "4",
        "--img-size", "1152", "896", "--rescale-factor", "0.003891",
        "--featurewise-mean", "52.18", "--no-equalize-hist", "--class-list", "neg", "pos",
        "--allow-small-images"]   # 96x72 test images for 1152x896 models
    assert dm_predict.main(argv + (["--test-augment"] if tta else [])) == 0
    with open(out) as f:
        return {os.path.relpath(r["path"], d / "full_test_1152x896"): float(r["pos"])
                for r in csv.DictReader(f)}


def test_notebook_replays_and_equals_predict_py(notebook_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(notebook_dir)
    ns: dict = {}
    for cell in NOTEBOOK_CELLS:
        exec(compile(cell, "<Example_model_test.ipynb>", "exec"), ns)
    printed = capsys.readouterr().out.split("\n")
    gen = ns["test_generator"]
    assert gen.nb_sample == 10 and gen.classes == ["neg", "pos"]
    assert gen.filenames[:2] == [os.path.join("neg", "neg_0.png"), os.path.join("neg", "neg_1.png")]
    # three models loaded from Keras 2.0.8 files
    assert all(isinstance(ns[m], keras.Model) for m in ("res_mod", "vgg_mod", "hybrid_mod"))
    y = ns["res_y_true"]
    assert y.shape == (10, 2) and y[:, 1].tolist() == [0] * 6 + [1] * 4   # one-hot, in order
    for name in ("res", "vgg", "hybrid", "res_aug", "vgg_aug", "hybrid_aug"):
        base, aug = name.split("_")[0], "_aug" if name.endswith("aug") else ""
        auc = ns[f"{base}_auc{aug}"]
        assert auc.shape == (2,) and auc[0] == pytest.approx(auc[1])   # per class, as printed
        assert ns[f"{base}_y_pred{aug}"].shape == (10, 2)
    assert "True" in printed
    # the averaged AUROCs the notebook printed
    from sklearn.metrics import roc_auc_score
    avg, avg_aug = ns["all_mod_y_pred_avg"], ns["all_mod_y_pred_avg_aug"]
    assert float(printed[-2]) == pytest.approx(roc_auc_score(y[:, 1], avg_aug))
    assert not np.allclose(avg, avg_aug, atol=1e-4)   # TTA changed something
    # ... and the predictions are predict.py's on the same images (averaged models)
    want = _predict_py(notebook_dir, tmp_path, tta=False)
    np.testing.assert_allclose(avg, [want[f] for f in gen.filenames], atol=1e-5)
    want_aug = _predict_py(notebook_dir, tmp_path, tta=True)
    np.testing.assert_allclose(avg_aug, [want_aug[f] for f in gen.filenames], atol=1e-5)


# ----------------------------------------------------------------------------- dm_image


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return write_class_folders(tmp_path_factory.mktemp("cls"), ["neg", "pos"], 5, size=(40, 30))


def test_flow_from_directory_yields_the_recipe_in_order(folders):
    gen = dm_image.DMImageDataGenerator(featurewise_center=True)
    gen.mean = 20.0
    it = gen.flow_from_directory(str(folders["test"]), target_size=(32, 24), rescale_factor=0.01,
                                 dup_3_channels=False, classes=["neg", "pos"], batch_size=4,
                                 shuffle=False)
    assert it.nb_sample == 10 and it.filenames[0] == os.path.join("neg", "img_000.png")
    assert it.labels.tolist() == [0] * 5 + [1] * 5 and it.class_indices == {"neg": 0, "pos": 1}
    recipe = dm_recipe.Recipe(img_size=(32, 24), rescale_factor=0.01, channels=1,
                             featurewise_center=True, featurewise_mean=20.0)
    want = np.stack([dm_recipe.preprocess(dm_pixels.read_image(str(folders["test"] / f)), recipe)
                     for f in it.filenames])
    got, ys = [], []
    for _ in range(3):
        x, yb = it.next()
        got.append(x)
        ys.append(yb)
    assert [len(g) for g in got] == [4, 4, 2]
    np.testing.assert_allclose(np.concatenate(got), want, atol=1e-5)
    np.testing.assert_array_equal(np.concatenate(ys).argmax(1), it.labels)
    x, _ = it.next()                                  # starts over, as Keras iterators did
    np.testing.assert_allclose(x, want[:4], atol=1e-5)
    sparse = gen.flow_from_directory(str(folders["test"]), target_size=(32, 24),
                                     classes=["neg", "pos"], class_mode="sparse", batch_size=10,
                                     shuffle=False)
    assert sparse.next()[1].tolist() == [0] * 5 + [1] * 5


def test_read_functions_equal_the_recipe(folders):
    path = str(folders["val"] / "pos" / "img_001.png")
    img = dm_pixels.read_image(path)
    r = dm_recipe.Recipe(img_size=(20, 16), img_scale=255.0, equalize_hist=True)
    np.testing.assert_allclose(
        dm_image.read_img_for_pred(path, equalize_hist=True, target_size=(20, 16),
                                   target_scale=255.0), dm_recipe.preprocess(img, r))
    x = dm_image.read_resize_img(path, target_height=20, rescale_factor=0.5)
    assert x.shape == (20, 15) and x.dtype == np.float32
    with pytest.raises(ValueError, match="target_size, target_height"):
        dm_image.read_resize_img(path)


def test_sweep_and_prob_heatmap_equal_sliding_window(tmp_path):
    p = tmp_path / "m.png"
    cv2.imwrite(str(p), mammogram((50, 40), seed=3))
    model = tiny_patch_model()
    img = dm_pixels.read_image(str(p))
    hm = dm_image.get_prob_heatmap(str(p), 60, None, 16, 8, model, 32,
                                   featurewise_center=True, featurewise_mean=40.0)
    recipe = dm_recipe.Recipe(img_size=None, channels=1, featurewise_center=True,
                             featurewise_mean=40.0)
    want = dm_heatmaps.sliding_window_heatmap(model, dm_recipe.resize(img, dm_recipe.Recipe(
        img_size=None, target_height=60)), recipe, 16, 8, 32)
    np.testing.assert_allclose(hm, want.probs, atol=1e-6)
    patches, rows, cols = dm_image.sweep_img_patches(img.astype(np.float32), 16, 8)
    assert patches.shape == (rows * cols, 16, 16) and (rows, cols) == (5, 4)


def test_small_helpers():
    y = np.eye(3)[[2, 0, 1]]
    assert dm_image.to_sparse(y).tolist() == [2, 0, 1]
    with pytest.raises(ValueError):
        dm_image.to_sparse(np.array([[1, 1, 0]]))
    img = np.arange(12, dtype=np.uint16).reshape(3, 4)
    assert dm_image.crop_img(img, (1, 1, 2, 2)).tolist() == [[5, 6], [9, 10]]
    big = dm_image.add_img_margins(img, 2)
    assert big.shape == (7, 8) and big[2:5, 2:6].tolist() == img.tolist() and big[0].sum() == 0
    rng = np.random.RandomState(0)
    idx = dm_image.index_balancer(np.arange(100), np.array([1] * 5 + [0] * 95), 1.0, rng)
    assert (np.diff(idx) >= 0).all() and 25 < (idx < 5).sum() < 75  # positives ~ half


def test_unsupported_keywords_name_the_replacement():
    with pytest.raises(OriginalAPIError, match="instead: featurewise_center"):
        dm_image.DMImageDataGenerator(zca_whitening=True)
    with pytest.raises(OriginalAPIError, match="instead: set .mean"):
        dm_image.DMImageDataGenerator().fit(np.zeros((1, 2, 2, 1)))


# ----------------------------------------------------------------------------- dm_keras_ext


def test_flips_load_dat_ram_metrics_and_ram_auc(folders):
    x = np.arange(2 * 3 * 4 * 1, dtype=np.float32).reshape(2, 3, 4, 1)
    f = dm_keras_ext.flip_all_img(x)
    np.testing.assert_array_equal(f[1], x[:, :, ::-1])
    np.testing.assert_array_equal(f[2], x[:, ::-1])
    np.testing.assert_array_equal(f[3], x[:, ::-1, ::-1])
    gen = dm_image.DMImageDataGenerator()
    it = gen.flow_from_directory(str(folders["val"]), target_size=(64, 48), classes=["neg", "pos"],
                                 batch_size=5, shuffle=False)
    X, yy = dm_keras_ext.load_dat_ram(it, 10)
    assert X.shape == (10, 64, 48, 1) and yy.shape == (10, 2)
    model = tiny_image_model()
    auc, y_true, y_pred = dm_keras_ext.DMAucModelCheckpoint.calc_test_auc(
        (X, yy), model, batch_size=4, return_y_res=True)
    from sklearn.metrics import roc_auc_score
    np.testing.assert_allclose(auc, roc_auc_score(yy, model.predict(X, verbose=0), average=None))
    yt, yp = np.array([[1.0], [1.0], [0.0], [0.0]]), np.array([[0.9], [0.2], [0.1], [0.8]])
    assert float(dm_keras_ext.DMMetrics.sensitivity(yt, yp)) == pytest.approx(0.5, abs=1e-6)
    assert float(dm_keras_ext.DMMetrics.specificity(yt, yp)) == pytest.approx(0.5, abs=1e-6)
    yar = dm_keras_ext.Yaroslav(classes=2)
    assert tuple(yar.output.shape) == (None, 2) and yar.input.shape[-1] == 1


def test_do_2stage_and_3stage_training_run_the_stage_loop(folders, tmp_path):
    gen = dm_image.DMImageDataGenerator(horizontal_flip=True)
    train = gen.flow_from_directory(str(folders["train"]), target_size=(64, 48),
                                    classes=["neg", "pos"], batch_size=5, shuffle=True, seed=1)
    val = dm_image.DMImageDataGenerator().flow_from_directory(
        str(folders["val"]), target_size=(64, 48), classes=["neg", "pos"], batch_size=5,
        shuffle=False)
    model = tiny_image_model()
    trunk_before = [w.copy() for w in model.get_layer("patch_trunk").get_weights()]
    best = tmp_path / "best.keras"
    auc_cb = dm_keras_ext.DMAucModelCheckpoint(str(best), val, test_samples=val.nb_sample)
    model, hist = dm_keras_ext.do_2stage_training(
        model, None, train, val, 2, str(best), 2, nb_epoch=1, all_layer_epochs=2,
        optim="adam", init_lr=1e-3, auc_checkpointer=auc_cb)
    # today's stage loop ran both stages (epoch counts mean what they mean to the trainers)
    assert hist["stage"][0] == 1 and hist["stage"][-1] == 2
    assert hist["epoch"] == list(range(1, len(hist["epoch"]) + 1))
    assert best.exists() and 1 <= auc_cb.best_epoch <= len(hist["epoch"])
    assert 0 <= auc_cb.best_auc <= 1
    assert not all(np.array_equal(a, b) for a, b in
                   zip(trunk_before, model.get_layer("patch_trunk").get_weights()))
    ptrain = dm_image.DMImageDataGenerator().flow_from_directory(
        str(folders["train"]), target_size=(16, 16), classes=["neg", "pos", "x"][:2],
        batch_size=5, shuffle=True)
    patch = tiny_patch_model()
    head = keras.layers.Dense(2, activation="softmax", name="clf2")(patch.layers[-2].output)
    patch2 = keras.Model(patch.inputs, head)
    pval = dm_image.DMImageDataGenerator().flow_from_directory(
        str(folders["val"]), target_size=(16, 16), classes=["neg", "pos"], batch_size=5,
        shuffle=False)
    _, h3 = dm_keras_ext.do_3stage_training(
        patch2, None, ptrain, pval, 2, "NOSAVE", 2, top_layer_nb=3, nb_epoch=1,
        top_layer_epochs=2, all_layer_epochs=3, optim="adam", init_lr=1e-3, nb_class=2)
    assert sorted(set(h3["stage"])) == [1, 2, 3]
    assert h3["epoch"] == list(range(1, len(h3["epoch"]) + 1))


def test_robust_load_model_reads_keras2_files(notebook_dir):
    m = dm_keras_ext.robust_load_model(str(notebook_dir / MODEL_FILES[0]))
    assert isinstance(m, keras.Model) and tuple(m.input.shape) == (None, 1152, 896, 3)


# ----------------------------------------------------------------------------- entry points


def test_trainer_run_takes_the_original_keywords(folders, tmp_path):
    import dm_flags
    import image_clf_train
    import patch_clf_train
    cfg = dm_flags.original_run_config("patch", "a", "b", "c", net="yaroslav", nb_epoch=3,
                                       img_size=[64, 64])
    want = dm_flags.parse("patch", ["a", "b", "c", "--net", "yaroslav", "--nb-epoch", "3",
                                    "--img-size", "64", "64"])
    import dataclasses
    assert dataclasses.asdict(cfg) == dataclasses.asdict(want)
    with pytest.raises(TypeError, match="no_such_keyword"):
        patch_clf_train.run("a", "b", "c", no_such_keyword=1)
    with pytest.raises(OriginalAPIError, match="exactly one of"):
        image_clf_train.run("a", "b", "c")
    # the call reaches today's trainer (its own up-front folder check)
    with pytest.raises(ValueError, match="not found"):
        image_clf_train.run(str(tmp_path / "none"), str(folders["val"]), str(folders["test"]),
                            patch_model_state=str(tmp_path / "p.keras"), best_model="NOSAVE")


def test_heatmap_score_run_with_the_original_keywords(tmp_path):
    import importlib.util
    import sys
    spec = importlib.util.spec_from_file_location(
        "heatmap_score", pathlib.Path(__file__).resolve().parents[1] / "ddsm_train" / "heatmap_score.py")
    hs = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("heatmap_score", hs)
    spec.loader.exec_module(hs)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for k, name in enumerate(["P1_LEFT_CC", "P1_LEFT_MLO"]):
        cv2.imwrite(str(imgs / f"{name}.png"), mammogram((50, 40), seed=k))
    (tmp_path / "pat.csv").write_text("patient_id,side,cancer\nP1,LEFT,1\n")
    model = save(tiny_patch_model(), tmp_path / "patch.keras", "patch")
    hs.run(str(imgs), str(model), fprop_mode=True, img_size=(64, 48), rescale_factor=0.003891,
           featurewise_center=True, featurewise_mean=52.18, net="resnet50",
           avg_pool_size=(2, 2), pat_csv=str(tmp_path / "pat.csv"), out=str(tmp_path / "a.npz"))
    assert hs.main([str(imgs), str(model), "--fprop-mode", "--img-size", "64", "48",
                    "--no-img-scale", "--rescale-factor", "0.003891", "--no-equalize-hist",
                    "--featurewise-mean", "52.18", "--avg-pool-size", "2", "2", "--pat-csv",
                    str(tmp_path / "pat.csv"), "--out", str(tmp_path / "b.npz")]) == 0
    a, b = hs.load_heatmaps(str(tmp_path / "a.npz")), hs.load_heatmaps(str(tmp_path / "b.npz"))
    np.testing.assert_allclose(a[0]["cc"], b[0]["cc"], atol=1e-6)
    assert a[0]["cc"].shape == (15, 11, 3)


def test_flow_from_img_list_and_flow(folders):
    gen = dm_image.DMImageDataGenerator()
    paths = [str(folders["test"] / "pos" / "img_000.png"), str(folders["test"] / "neg" / "img_001.png")]
    it = gen.flow_from_img_list(paths, [1, 0], target_size=(32, 24), classes=["neg", "pos"],
                                batch_size=2, shuffle=False)
    x, y = it.next()
    assert it.filenames == paths and y.tolist() == [[0, 1], [1, 0]]
    np.testing.assert_allclose(x[0], dm_recipe.preprocess(dm_pixels.read_image(paths[0]),
                                                         dm_recipe.Recipe(img_size=(32, 24),
                                                                         channels=1)))
    raw = np.random.default_rng(0).integers(0, 255, (3, 8, 6)).astype(np.uint8)
    xb, yb, wb = gen.flow(raw, np.eye(2)[[0, 1, 1]], batch_size=3, shuffle=False).next()
    np.testing.assert_allclose(xb[..., 0], raw.astype(np.float32))
    assert yb.tolist() == [[1, 0], [0, 1], [0, 1]]
    np.testing.assert_allclose(wb, [3, 1.5, 1.5])       # auto_batch_balance, on as the original


def test_retired_names_raise_one_line_naming_the_replacement():
    with pytest.raises(OriginalAPIError, match="instead: predict.py --csv"):
        dm_image.DMExamListIterator([], None)
    with pytest.raises(OriginalAPIError, match="instead: --distribute"):
        dm_keras_ext.make_parallel(None, 2)
    with pytest.raises(OriginalAPIError, match="heatmap_score"):
        dm_image.DMImageDataGenerator().flow_from_candid_roi([])
    with pytest.raises(AttributeError):
        dm_image.no_such_name  # noqa: B018


IMAGE_NAMES = ("DMImageDataGenerator", "DMDirectoryIterator", "read_resize_img",
               "read_img_for_pred", "sweep_img_patches", "get_prob_heatmap", "crop_img",
               "add_img_margins", "index_balancer", "to_sparse")
KERAS_EXT_NAMES = ("flip_all_img", "robust_load_model", "load_dat_ram", "DMAucModelCheckpoint",
                   "DMMetrics", "Yaroslav", "do_2stage_training", "do_3stage_training",
                   "DMFlush")


def test_every_name_the_readme_lists_is_importable_from_the_original_module():
    import dm_resnet
    for name in IMAGE_NAMES:
        assert callable(getattr(dm_image, name)), name
    for name in KERAS_EXT_NAMES + ("get_dl_model", "create_optimizer"):
        assert callable(getattr(dm_keras_ext, name)), name
    assert callable(dm_resnet.add_top_layers) and callable(dm_resnet.ResNetBuilder.build)
    page = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "original.md").read_text()
    section = page.split("## Code written for the original")[1].split("\n## ")[0]
    for name in [n for n in IMAGE_NAMES + KERAS_EXT_NAMES
                 if n != "DMDirectoryIterator"]:
        assert f"`{name}`" in section, name


def test_dm_inference_two_view_scoring_as_the_original():
    """pred_2view_img_list: every CC x MLO pair scored in one batch; max (or mean) of them."""
    import dm_inference
    cc_in, mlo_in = keras.Input((4, 4, 1)), keras.Input((4, 4, 1))
    score = keras.layers.Lambda(lambda t: keras.ops.mean(t[0], axis=(1, 2, 3)) * 0.1
                                + keras.ops.mean(t[1], axis=(1, 2, 3)))([cc_in, mlo_in])
    model = keras.Model([cc_in, mlo_in], score)
    ccs = [np.full((4, 4, 1), v, np.float32) for v in (1.0, 2.0)]
    mlos = [np.full((4, 4, 1), v, np.float32) for v in (0.0, 3.0, 5.0)]
    pairs = [0.1 * c + m for c in (1.0, 2.0) for m in (0.0, 3.0, 5.0)]
    assert dm_inference.pred_2view_img_list(ccs, mlos, model) == pytest.approx(max(pairs))
    assert dm_inference.pred_2view_img_list(ccs, mlos, model, use_mean=True) == pytest.approx(
        np.mean(pairs))
    assert dm_inference.INFER_HEADER == "subjectId\tlaterality\tconfidence\n"
    with pytest.raises(OriginalAPIError, match="heatmap_score"):
        dm_inference.make_pred_case([], [], None, [], [])


def test_suppress_artifacts_honours_smooth_boundary_and_takes_16_bit():
    """The original always opened the mask (it ignored `smooth_boundary`) and failed on
    16-bit images (OpenCV's connected components take 8-bit only); here both work, and
    8-bit images with the default opening give the original's mask."""
    from dm_preprocess import DMImagePreprocessor
    prep = DMImagePreprocessor()
    img = np.zeros((80, 60), np.uint16)
    img[10:70, 0:40] = 30000                  # the breast against the left edge
    img[38:41, 40:55] = 30000                 # a 3-px spur, thinner than the 15-px kernel
    img[2:6, 50:58] = 60000                   # a bright label
    rough = prep.suppress_artifacts(img, smooth_boundary=False)[1]
    smooth = prep.suppress_artifacts(img)[1]
    assert rough.dtype == np.uint16 and rough[39, 50] == 65535 and smooth[39, 50] == 0
    assert rough[30, 20] == smooth[30, 20] == 65535 and rough[3, 52] == smooth[3, 52] == 0
    img8 = (img // 257).astype(np.uint8)
    out8, mask8 = prep.suppress_artifacts(img8)
    assert mask8.dtype == np.uint8 and mask8.max() == 255
    np.testing.assert_array_equal(mask8 > 0, smooth > 0)


def test_dm_preprocess_segments_and_suppresses_artefacts_as_the_original():
    from dm_preprocess import DMImagePreprocessor as prep
    img = np.zeros((60, 40), np.uint16)
    img[10:50, 0:25] = 30000                  # the breast, against the left edge
    img[20:25, 5:10] = 0                      # a dark hole inside it
    img[2:5, 33:37] = 60000                   # a bright label
    seg, (x, y, w, h) = prep.segment_breast(img)
    assert (x, y, w, h) == (0, 10, 25, 40) and seg.shape == (40, 25)
    out, mask = prep().suppress_artifacts(img, smooth_boundary=False)
    assert mask.dtype == np.uint16 and mask.max() == 65535
    assert out[2:5, 33:37].max() == 0 and out[30, 10] == 30000       # label gone, breast kept
    assert mask[22, 7] == 65535                                     # the hole is filled
    assert prep.max_pix_val(np.uint8) == 255 and prep.max_pix_val(np.uint16) == 65535
    with pytest.raises(OriginalAPIError, match="segment_breast"):
        prep().remove_pectoral(img, mask)
