"""The main job's pipeline function, end to end at tiny sizes (the README's first command
runs the same function at its default sizes)."""
import json
import pathlib

import pytest

import dm_end2end
from dm_errors import InputError


def test_pipeline_end_to_end_tiny(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)           # --out relative: the paths it reports stay so
    caplog.set_level("INFO")
    args = dm_end2end.build_parser().parse_args([
        "--out", "run", "--n-patients", "24", "--img-size", "128", "96",
        "--patch-size", "32", "--nb-abn", "3", "--nb-bkg", "3", "--nb-init-filter", "4",
        "--patch-epochs", "1", "1", "1", "--image-epochs", "1", "1", "--top-depths", "8", "8",
        "--batch-size", "8"])
    summary = dm_end2end.run(args)
    run = pathlib.Path("run")
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
    assert summary["html_report"] == "run/report/index.html"       # as given, not absolute
    for k in ("roc_curve", "heatmap_overlay", "gradcam_overlay", "predictions", "html_report",
              "patch_model", "image_model"):
        assert pathlib.Path(summary[k]).stat().st_size > 0, k
        assert not pathlib.Path(summary[k]).is_absolute(), k
    lines = [r.getMessage() for r in caplog.records]
    assert any(l.startswith("html_report") and l.endswith(" run/report/index.html")
               for l in lines)
    assert max(map(len, lines)) < 400            # no 7,600-character JSON summary line


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
    (tmp_path / "a" / "mias" / "Info.txt").write_text("")
    (tmp_path / "b" / "mias").mkdir(parents=True)       # another mini-MIAS folder
    (tmp_path / "b" / "mias" / "Info.txt").write_text("")
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


def test_a_finished_run_is_reported_not_redone(tmp_path, monkeypatch, caplog):
    """Issue 31: `end2end.py` again on a finished --out retrained everything and replaced
    the models (and a calibration stored in them). Now it says the run is complete and
    where its results are; `--redo` runs it again."""
    ran = []

    def fake_run_one(args, out):
        ran.append(out)
        summary = dict(image_test_auroc_tta=0.75)
        (out / "summary.json").write_text(json.dumps(summary))
        return summary
    monkeypatch.setattr(dm_end2end, "run_one", fake_run_one)
    caplog.set_level("INFO")
    argv = ["--out", str(tmp_path / "run")]
    assert dm_end2end.main(argv) == 0 and len(ran) == 1
    caplog.clear()
    assert dm_end2end.main(argv) == 0 and len(ran) == 1            # not run again
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "this run is complete (whole-image test AUROC with TTA 0.750)" in said
    assert "add --redo to run it again" in said and str(tmp_path / "run" / "summary.json") in said
    assert dm_end2end.run(dm_end2end.build_parser().parse_args(argv)) == dict(
        image_test_auroc_tta=0.75)                      # the function returns the summary
    assert dm_end2end.main(argv + ["--redo"]) == 0 and len(ran) == 2   # the same folder
    with pytest.raises(KeyboardInterrupt):       # an interrupted redo is not "complete"
        monkeypatch.setattr(dm_end2end, "run_one", lambda a, o: (_ for _ in ()).throw(
            KeyboardInterrupt()))
        dm_end2end.run(dm_end2end.build_parser().parse_args(argv + ["--redo"]))
    assert not (tmp_path / "run" / "summary.json").exists()


def test_refusals_come_before_tensorflow(tmp_path):
    """`--seeds 0`, a used folder, a missing mini-MIAS folder and an --out holding the
    data: one line each, exit 2, TensorFlow never loaded (it took 14-38 s to say so)."""
    import subprocess
    import sys
    repo = pathlib.Path(__file__).resolve().parents[1]
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x.txt").write_text("mine")
    (tmp_path / "mias").mkdir()
    (tmp_path / "mias" / "Info.txt").write_text("")
    cases = {("--seeds", "0"): "--seeds 0: give a number of seeds >= 1",
             ("--out", "used"): "used: not empty and not a end2end folder",
             ("--data", "mias", "nowhere"): "nowhere: mini-MIAS folder not found",
             ("--data", "mias", "mias", "--out", "."): ". (--out) holds the --data folder mias"}
    code = ("import sys; sys.path.insert(0, {repo!r}); import dm_end2end\n"
            "rc = dm_end2end.main({argv!r})\n"
            "print('TF-LOADED' if 'tensorflow' in sys.modules else 'TF-NOT-LOADED', rc)\n")
    for argv, msg in cases.items():
        r = subprocess.run([sys.executable, "-c", code.format(repo=str(repo), argv=list(argv))],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert r.stdout.strip().endswith("TF-NOT-LOADED 2"), (argv, r.stdout, r.stderr)
        assert f"end2end: error: {msg}" in r.stderr, (argv, r.stderr)
    assert (tmp_path / "used" / "x.txt").read_text() == "mine"


@pytest.mark.parametrize("argv", [["--image-epochs", "-1", "2"], ["--patch-epochs", "1", "1", "-2"],
                                  ["--batch-size", "0"], ["--n-patients", "0"],
                                  ["--seed", "-5"], ["--top-depths", "0"]])
def test_impossible_numbers_stop_at_flag_parsing(argv, capsys):
    with pytest.raises(SystemExit) as e:
        dm_end2end.build_parser().parse_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "must be a whole number >=" in err[1], err


def test_bilateral_main_job_tiny(tmp_path, monkeypatch):
    """end2end --bilateral: synthetic women with both breasts, the bilateral model trained
    on pairs, scored by predict.py with the recipe's pairs, its heatmaps and localisation."""
    monkeypatch.chdir(tmp_path)
    args = dm_end2end.build_parser().parse_args([
        "--out", "run", "--n-patients", "24", "--img-size", "128", "96",
        "--patch-size", "32", "--nb-abn", "3", "--nb-bkg", "3", "--nb-init-filter", "4",
        "--patch-epochs", "1", "1", "1", "--image-epochs", "1", "1", "--batch-size", "8",
        "--bilateral"])
    summary = dm_end2end.run(args)
    import dm_modelfile
    import pandas as pd
    meta = dm_modelfile.read_model_meta("run/image_model.keras")
    assert meta.extra["bilateral"] is True
    images = pd.read_csv("run/data/images.csv")
    assert images.groupby(["patient_id", "view"])["side"].apply(set).eq({"LEFT", "RIGHT"}).all()
    assert abs(summary["evaluate_auroc"] - summary["image_test_auroc_tta"]) < 1e-6
    assert pathlib.Path(summary["gradcam_overlay"]).stat().st_size > 0
    assert "gradcam" in summary["localisation"]
