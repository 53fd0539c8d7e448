"""The main job's pipeline function, end to end at tiny sizes (the README's first command
runs the same function at its default sizes)."""
import json
import pathlib

import pytest

import dm_end2end
from dm_errors import InputError


def test_pipeline_end_to_end_tiny(tmp_path):
    args = dm_end2end.build_parser().parse_args([
        "--out", str(tmp_path / "run"), "--n-patients", "24", "--img-size", "128", "96",
        "--patch-size", "32", "--nb-abn", "3", "--nb-bkg", "3", "--nb-init-filter", "4",
        "--patch-epochs", "1", "1", "1", "--image-epochs", "1", "1", "--top-depths", "8", "8",
        "--batch-size", "8"])
    summary = dm_end2end.run(args)
    run = tmp_path / "run"
    for f in ("patch_model.keras", "image_model.keras", "summary.json",
              "data/roi_mask_path.csv", "patches/train/background"):
        assert (run / f).exists(), f
    assert json.loads((run / "summary.json").read_text()) == summary
    assert 0.0 <= summary["image_test_auroc"] <= 1.0
    assert 0.0 <= summary["patch_test_accuracy"] <= 1.0
    assert summary["n_test_images"] > 0
    # predict.py + evaluate.py on the saved model agree with the trainer's own TTA AUROC
    assert abs(summary["evaluate_auroc"] - summary["image_test_auroc_tta"]) < 1e-6
    lo, hi = summary["image_test_auroc_tta_ci95"]
    assert lo <= summary["evaluate_auroc"] <= hi
    assert summary["html_report"] == str(run / "report" / "index.html")
    for k in ("roc_curve", "heatmap_overlay", "gradcam_overlay", "predictions", "html_report"):
        assert pathlib.Path(summary[k]).stat().st_size > 0, k


README_ROWS = ([], ["--mixed-precision", "bfloat16"],
               ["--data", "mias", "../shared/data/mias", "--img-size", "320", "320"])


def test_readme_rows_get_their_own_folders():
    p = dm_end2end.build_parser()
    outs = [dm_end2end.default_out(p.parse_args(a)) for a in README_ROWS]
    assert outs == ["runs/end2end", "runs/end2end-bfloat16", "runs/end2end-mias-320x320"]
    assert dm_end2end.default_out(p.parse_args(["--seeds", "5"])) == "runs/end2end-seeds5"


def test_another_configuration_in_the_same_folder_is_refused_before_any_work(tmp_path,
                                                                              monkeypatch):
    """The issue's collision: `end2end.py` then the mini-MIAS row into the same folder."""
    p = dm_end2end.build_parser()
    ran = []
    monkeypatch.setattr(dm_end2end, "run_one", lambda args, out: ran.append(out) or {})
    out = tmp_path / "run"
    dm_end2end.run(p.parse_args(["--out", str(out)]))
    (out / "data").mkdir()
    dm_end2end.run(p.parse_args(["--out", str(out)]))           # the same command again: fine
    assert len(ran) == 2
    with pytest.raises(InputError) as e:
        dm_end2end.run(p.parse_args(["--out", str(out), *README_ROWS[2][:3], "--img-size", "320",
                                  "320"]))
    assert len(ran) == 2 and sorted(x.name for x in out.iterdir()) == [".dm_run.json", "data"]
    msg = str(e.value)
    assert "\n" not in msg and str(out) in msg and "--data synthetic" in msg
    assert "--img-size 288 224" in msg


def test_spread_aggregates_every_numeric_leaf():
    per_seed = [dict(acc=0.5, n=60, name="x", flag=True, ci=[0.1, 0.9], none=None,
                     localisation={"patch": {"pointing_game": 0.25, "pointing_game_ci": [0, 1]}}),
                dict(acc=0.7, n=60, name="y", flag=False, ci=[0.2, 0.8], none=None,
                     localisation={"patch": {"pointing_game": 0.75, "pointing_game_ci": [0, 1]}}),
                dict(acc=float("nan"), n=64)]
    s = dm_end2end.spread(per_seed)
    assert set(s) == {"acc", "n", "localisation"}
    assert s["acc"] == dict(mean=0.6, sd=pytest.approx(0.1414213562), min=0.5, max=0.7, n=2)
    assert s["n"]["mean"] == pytest.approx(61.333333) and s["n"]["n"] == 3
    assert s["localisation"] == {"patch": {"pointing_game": dict(
        mean=0.5, sd=pytest.approx(0.3535533906), min=0.25, max=0.75, n=2)}}


def test_seeds_write_one_summary_with_the_spread(tmp_path, monkeypatch):
    def fake_run_one(args, out):
        assert (out / ".dm_run.json").is_file() and out.name == f"seed-{args.seed}"
        return dict(patch_test_accuracy=args.seed / 100, image_test_auroc=0.5, total_s=1.0,
                    timings={"data_s": float(args.seed)})
    monkeypatch.setattr(dm_end2end, "run_one", fake_run_one)
    p = dm_end2end.build_parser()
    out = tmp_path / "runs"
    summary = dm_end2end.run(p.parse_args(["--out", str(out), "--seed", "10", "--seeds", "3"]))
    assert summary["seeds"] == [10, 11, 12] and list(summary["per_seed"]) == ["10", "11", "12"]
    acc = summary["spread"]["patch_test_accuracy"]
    assert (acc["mean"], acc["min"], acc["max"], acc["n"]) == (pytest.approx(0.11), 0.1, 0.12, 3)
    assert summary["spread"]["timings"]["data_s"]["max"] == 12.0
    assert summary["wall_time_s"] >= 0
    assert json.loads((out / "summary.json").read_text()) == summary
    with pytest.raises(InputError, match="another configuration"):
        dm_end2end.run(p.parse_args(["--out", str(out), "--seeds", "7", "9"]))
    with pytest.raises(InputError, match="a seed is repeated"):
        dm_end2end.run(p.parse_args(["--out", str(tmp_path / "b"), "--seeds", "7", "7"]))


def test_a_rerun_of_seeds_keeps_the_seeds_that_finished(tmp_path, monkeypatch):
    """Interrupted at the third seed: the same command again runs only the seeds left."""
    ran = []

    def fake_run_one(args, out):
        if args.seed == 12 and not ran.count(12):
            ran.append(12)
            raise KeyboardInterrupt
        ran.append(args.seed)
        summary = dict(image_test_auroc=args.seed / 100)
        (out / "summary.json").write_text(json.dumps(summary))
        return summary
    monkeypatch.setattr(dm_end2end, "run_one", fake_run_one)
    argv = ["--out", str(tmp_path / "runs"), "--seed", "10", "--seeds", "3"]
    with pytest.raises(KeyboardInterrupt):
        dm_end2end.run(dm_end2end.build_parser().parse_args(argv))
    summary = dm_end2end.run(dm_end2end.build_parser().parse_args(argv))
    assert ran == [10, 11, 12, 12]
    assert summary["spread"]["image_test_auroc"]["max"] == 0.12
    assert summary["spread"]["image_test_auroc"]["n"] == 3


def test_a_rerun_from_another_working_directory_is_the_same_run(tmp_path, monkeypatch):
    """--data's path is recorded absolute: `cd` elsewhere, same folder, same run."""
    p = dm_end2end.build_parser()
    ran = []
    monkeypatch.setattr(dm_end2end, "run_one", lambda args, out: ran.append(out) or {})
    (tmp_path / "a" / "mias").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path / "a")
    dm_end2end.run(p.parse_args(["--out", str(out), "--data", "mias", "mias"]))
    monkeypatch.chdir(tmp_path / "b")
    dm_end2end.run(p.parse_args(["--out", str(out), "--data", "mias", "../a/mias"]))
    assert len(ran) == 2
    stamp = json.loads((out / ".dm_run.json").read_text())
    assert stamp["config"]["data"] == ["mias", str(tmp_path / "a" / "mias")]
    with pytest.raises(InputError, match="another configuration"):     # another folder is not
        dm_end2end.run(p.parse_args(["--out", str(out), "--data", "mias", "mias"]))
