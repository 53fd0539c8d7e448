"""Every command-line tool (issue 12.11/12.12): --help answers without importing TensorFlow,
shows defaults, every flag has a help line, and the shared flag spellings are accepted.
(heatmap_score.py and evaluate.py are covered by their own tests.)"""
import pathlib
import subprocess
import sys

import pytest

import dm_cli

REPO = pathlib.Path(__file__).resolve().parents[1]
TOOLS = ["predict.py", "convert_checkpoint.py", "patch_clf_train.py", "image_clf_train.py",
         "ddsm_train/patch_clf_train.py", "ddsm_train/image_clf_train.py", "dm_synthetic.py",
         "featurewise_mean.py", "end2end.py", "ddsm_train/sample_patches_combined.py",
         "ddsm_train/prepare_cbis_ddsm.py", "inbreast_train/prepare_inbreast.py",
         "mias_train/prepare_mias.py", "mias_train/cross_validate.py", "calibrate.py"]

PROBE = """
import runpy, sys
sys.argv = [{tool!r}, "--help"]
sys.path.insert(0, {repo!r})
try:
    runpy.run_path({path!r}, run_name="__main__")
except SystemExit as e:
    code = e.code
print("TF-LOADED" if "tensorflow" in sys.modules else "TF-NOT-LOADED", code)
"""


@pytest.mark.parametrize("tool", TOOLS)
def test_help_is_fast_and_shows_defaults(tool):
    r = subprocess.run([sys.executable, "-c", PROBE.format(tool=tool, repo=str(REPO),
                                                           path=str(REPO / tool))],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.stdout.strip().endswith("TF-NOT-LOADED 0"), r.stdout[-500:] + r.stderr[-500:]
    assert "usage:" in r.stdout and "(default: " in r.stdout
    assert r.stderr == ""


def _parsers():
    import dm_convert_checkpoint
    import dm_flags
    import dm_synthetic  # noqa: F401
    import dm_end2end
    import dm_featurewise_mean
    import dm_predict
    sys.path.insert(0, str(REPO))
    from ddsm_train import sample_patches_combined
    from mias_train import cross_validate
    return {"cross_validate": cross_validate.build_parser(), "predict": dm_predict.build_parser(), "convert": dm_convert_checkpoint.build_parser(),
            "patch": dm_flags.build_parser("patch"), "image": dm_flags.build_parser("image"),
            "mean": dm_featurewise_mean.build_parser(), "end2end": dm_end2end.build_parser(),
            "sampler": sample_patches_combined.build_parser()}


def test_every_flag_has_help():
    for name, p in _parsers().items():
        assert dm_cli.actions_without_help(p) == [], name


@pytest.mark.parametrize("tool", ["dm_synthetic.py", "ddsm_train/prepare_cbis_ddsm.py",
                                  "inbreast_train/prepare_inbreast.py", "mias_train/prepare_mias.py"])
def test_recipe_flags_have_help(tool):
    text = subprocess.run([sys.executable, str(REPO / tool), "--help"], capture_output=True,
                          text=True, timeout=60).stdout
    opts = [l.split()[0] for l in text.splitlines() if l.startswith("  -")]
    lines = text.splitlines()
    for i, l in enumerate(lines):
        if l.startswith("  -") and not l.startswith("  -h"):
            # a help text follows on the same line (after two spaces) or on the next line
            rest = l.strip().split("  ", 1)
            assert len(rest) == 2 or (i + 1 < len(lines) and lines[i + 1].startswith("      ")
                                      and not lines[i + 1].strip().startswith("-")), (tool, l)
    assert opts
    assert "--target-size" in text        # the shared image-size spelling


def test_shared_flag_spellings():
    ps = _parsers()
    assert ps["predict"].parse_args(["m", "--target-size", "4", "3"]).img_size == [4, 3]
    import dm_flags
    assert dm_flags.parse("image", ["a", "b", "c", "--resume-from", "m", "--target-size",
                                    "64", "48"]).img_size == [64, 48]
    assert ps["convert"].parse_args(["a", "b", "--target-size", "4", "3"]).img_size == [4, 3]
    assert ps["mean"].parse_args(["d", "--trainer", "patch", "--target-size", "4", "3"]).img_size == [4, 3]


def test_no_tensorflow_banner(tmp_path):
    """A real prediction in a fresh process prints no TensorFlow/CUDA start-up lines."""
    import cv2
    import numpy as np
    from tiny_models import save, tiny_image_model
    m = save(tiny_image_model(), tmp_path / "m.keras", "image")
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), np.random.default_rng(0).integers(0, 65535, (90, 70)).astype(np.uint16))
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "CUDA_VISIBLE_DEVICES")}
    r = subprocess.run([sys.executable, str(REPO / "predict.py"), str(m), "--images", str(img)],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("path,neg,pos")
    for banner in ("oneDNN", "cuda", "cpu_feature_guard", "absl", "TensorFlow binary"):
        assert banner not in r.stderr, r.stderr


SEEDED = ["calibrate", "evaluate", "end2end", "dm_synthetic", "patch_clf_train",
          "image_clf_train", "ddsm_train.sample_patches_combined", "ddsm_train.prepare_cbis_ddsm",
          "inbreast_train.prepare_inbreast", "mias_train.prepare_mias",
          "mias_train.cross_validate"]


@pytest.mark.parametrize("module", SEEDED)
def test_every_seeded_tool_takes_its_seed_from_one_place(module, monkeypatch, capsys):
    """--seed defaults to $RANDOM_SEED, else dm_cli.DEFAULT_SEED, in every tool."""
    import importlib
    mod = importlib.import_module(module)
    for env, shown in (("777", "777"), (None, str(dm_cli.DEFAULT_SEED))):
        if env is None:
            monkeypatch.delenv("RANDOM_SEED", raising=False)
        else:
            monkeypatch.setenv("RANDOM_SEED", env)
        with pytest.raises(SystemExit) as e:
            mod.main(["--help"])
        assert e.value.code == 0
        text = " ".join(capsys.readouterr().out.split())
        assert "$RANDOM_SEED" in text and f"(default: {shown})" in text.split("--seed", 1)[1]


def test_trainer_seed_and_a_bad_random_seed(monkeypatch, tmp_path):
    import dm_flags
    monkeypatch.setenv("RANDOM_SEED", "31")
    assert dm_flags.parse("patch", ["a", "b", "c"]).seed == 31
    assert dm_flags.parse("patch", ["a", "b", "c", "--seed", "5"]).seed == 5
    r = subprocess.run([sys.executable, str(REPO / "evaluate.py"), "p.csv"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120,
                       env=dict(__import__("os").environ, RANDOM_SEED="abc"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == ("evaluate: error: RANDOM_SEED='abc': not a seed (a whole "
                                "number from 0 to 4294967295)")
    r = subprocess.run([sys.executable, str(REPO / "evaluate.py"), "p.csv"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120,
                       env=dict(__import__("os").environ, RANDOM_SEED="-1"))
    assert r.returncode == 2 and "RANDOM_SEED='-1': not a seed" in r.stderr
