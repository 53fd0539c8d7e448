"""dm_recipe_utils: one output folder per configuration (runs never mix)."""
from __future__ import annotations

import json

import pytest

import dm_synthetic
from dm_recipe_utils import RUN_STAMP, FolderInUseError, claim_folder, read_run_stamp


def test_claim_new_same_and_other_configuration(tmp_path):
    out = tmp_path / "runs" / "a"
    assert claim_folder(out, "tool", {"img_size": (288, 224), "data": "synthetic"}) == out
    assert read_run_stamp(out) == {"tool": "tool",
                                   "config": {"img_size": [288, 224], "data": "synthetic"}}
    (out / "result.txt").write_text("kept")
    claim_folder(out, "tool", {"data": "synthetic", "img_size": [288, 224]})   # a rerun
    with pytest.raises(FolderInUseError) as e:
        claim_folder(out, "tool", {"img_size": (320, 320), "data": "mias x"}, what="--out")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{out}: holds a run of another configuration")
    assert "--data synthetic" in msg and "--img-size 288 224" in msg and "--out" in msg
    assert (out / "result.txt").read_text() == "kept"
    assert json.loads((out / RUN_STAMP).read_text())["config"]["data"] == "synthetic"


def test_claim_refuses_a_non_empty_folder_without_a_record(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "x.png").write_bytes(b"")
    with pytest.raises(FolderInUseError, match="not empty and not a tool folder"):
        claim_folder(tmp_path / "old", "tool", {})
    assert not (tmp_path / "old" / RUN_STAMP).exists()
    (tmp_path / "empty").mkdir()
    claim_folder(tmp_path / "empty", "tool", {})            # an empty folder is fine


def test_synthetic_data_of_another_configuration_is_refused(tmp_path):
    """The issue's collision at the tool level: a second dataset never lands on the first."""
    out = tmp_path / "data"
    dm_synthetic.generate_dataset(out, n_patients=2, img_size=(64, 48), seed=1)
    before = sorted(p.name for p in (out / "full_images").iterdir())
    dm_synthetic.generate_dataset(out, n_patients=2, img_size=(64, 48), seed=1)   # same: fine
    with pytest.raises(FolderInUseError, match="--seed 1"):
        dm_synthetic.generate_dataset(out, n_patients=3, img_size=(64, 48), seed=2)
    assert sorted(p.name for p in (out / "full_images").iterdir()) == before


def test_input_paths_are_recorded_absolute(tmp_path, monkeypatch):
    (tmp_path / "x" / "imgs").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "x")
    claim_folder(tmp_path / "out", "tool", {"src": "imgs", "lists": ["imgs/a.txt"], "n": 3},
                 paths=("src", "lists"))
    assert read_run_stamp(tmp_path / "out")["config"] == {
        "src": str(tmp_path / "x" / "imgs"), "lists": [str(tmp_path / "x" / "imgs" / "a.txt")],
        "n": 3}
    monkeypatch.chdir(tmp_path)
    claim_folder(tmp_path / "out", "tool", {"src": "x/imgs", "lists": ["x/imgs/a.txt"], "n": 3},
                 paths=("src", "lists"))                      # the same run, from elsewhere


def test_layout_mean_is_the_image_trainer_s_and_the_log_says_so(tmp_path, caplog, capsys):
    """layout.json's mean is the image trainer's at the recipe size (featurewise_mean.py
    --trainer image agrees); the log points the patch trainer to its own, a different mean."""
    import logging

    import dm_featurewise_mean
    out = tmp_path / "data"
    with caplog.at_level(logging.INFO, logger="dm_recipe_utils"):
        dm_synthetic.generate_dataset(out, n_patients=4, img_size=(64, 48), seed=3)
    layout = json.loads((out / "layout.json").read_text())
    line = [r.getMessage() for r in caplog.records if "featurewise mean" in r.getMessage()][-1]
    assert "image trainer at --img-size 64 48 with --rescale-factor 0.00389105 " \
           f"--featurewise-mean {layout['featurewise_mean']:.2f};" in line   # 16-bit images
    assert f"featurewise_mean.py {out / 'train'} --trainer patch" in line
    capsys.readouterr()
    means = {}
    for kind in ("image", "patch"):
        assert dm_featurewise_mean.main([str(out / "train"), "--trainer", kind, "--img-size",
                                         "64", "48", "--print", "mean"]) == 0
        means[kind] = float(capsys.readouterr().out)
    assert means["image"] == pytest.approx(layout["featurewise_mean"], abs=0.006)
    assert abs(means["patch"] - layout["featurewise_mean"]) > 1   # equalised: another mean
