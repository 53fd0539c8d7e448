"""dm_metrics and evaluate.py: AUROC, bootstrap intervals, operating points, aggregation."""
import csv
import os
import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import dm_metrics as M
import dm_evaluate


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.4
    s = 1 / (1 + np.exp(-(rng.normal(size=n) + 1.2 * y)))
    return y, s


def test_auroc_matches_sklearn_with_ties():
    y = np.array([0, 0, 1, 1, 0, 1, 0, 1])
    s = np.array([0.1, 0.4, 0.4, 0.8, 0.5, 0.5, 0.2, 0.9])
    assert M.auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    with pytest.raises(M.MetricsError, match="positives and negatives"):
        M.auroc([1, 1], [0.2, 0.3])


def test_bootstrap_contains_point_narrows_and_is_seeded():
    y, s = _data(100)
    small = M.bootstrap_auroc(y, s, n_boot=500, seed=7)
    assert small["ci_low"] <= small["auroc"] <= small["ci_high"]
    assert small == M.bootstrap_auroc(y, s, n_boot=500, seed=7)
    y2, s2 = _data(1600)
    big = M.bootstrap_auroc(y2, s2, n_boot=500, seed=7)
    assert big["ci_low"] <= big["auroc"] <= big["ci_high"]
    assert big["ci_high"] - big["ci_low"] < 0.5 * (small["ci_high"] - small["ci_low"])


def test_grouped_bootstrap_resamples_whole_groups():
    """With one case per group (ids in case order) the draws are the case bootstrap's; with
    groups of identical cases the interval is as wide as with one case per group, while
    the case bootstrap, which treats them as independent, is far too narrow."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60).astype(bool)
    s = y + rng.normal(0, 1.2, 60)
    cases = M.bootstrap_auroc(y, s, n_boot=500, seed=7)
    one = M.bootstrap_auroc(y, s, n_boot=500, seed=7, groups=np.arange(60))
    assert one == dict(cases, n_groups=60)
    groups = np.repeat(np.arange(60), 8)                      # 8 identical patches per image
    grouped = M.bootstrap_auroc(np.repeat(y, 8), np.repeat(s, 8), n_boot=500, seed=7,
                                groups=groups)
    naive = M.bootstrap_auroc(np.repeat(y, 8), np.repeat(s, 8), n_boot=500, seed=7)
    assert grouped["n_groups"] == 60 and grouped["auroc"] == pytest.approx(cases["auroc"])
    width = grouped["ci_high"] - grouped["ci_low"]
    assert width == pytest.approx(cases["ci_high"] - cases["ci_low"], abs=0.03)
    assert naive["ci_high"] - naive["ci_low"] < 0.6 * width
    assert grouped == M.bootstrap_auroc(np.repeat(y, 8), np.repeat(s, 8), n_boot=500, seed=7,
                                        groups=groups)                          # seeded
    with pytest.raises(M.MetricsError, match="480 labels but 60 group ids"):
        M.bootstrap_auroc(np.repeat(y, 8), np.repeat(s, 8), groups=np.arange(60))


def test_grouped_bootstrap_skips_one_class_resamples():
    """12 women, 2 of them with positives: some resamples draw neither and are skipped."""
    y = np.repeat(np.arange(12) < 2, 3)
    s = np.linspace(0, 1, 36)[::-1] + 0.3 * y
    r = M.bootstrap_auroc(y, s, n_boot=400, seed=1, groups=np.repeat(np.arange(12), 3))
    # P(no positive woman in 12 draws) = (10/12)^12 = 0.112: about 45 of 400
    assert 20 < r["n_skipped"] < 80 and r["ci_low"] <= r["auroc"] <= r["ci_high"]


def test_operating_points():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    s = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1])
    r = M.sens_spec(y, s, 0.5)
    assert (r["tp"], r["fn"], r["tn"], r["fp"]) == (3, 1, 3, 1)
    assert r["sensitivity"] == 0.75 and r["specificity"] == 0.75
    t = M.at_sensitivity(y, s, 0.9)            # needs all 4 positives: threshold 0.3
    assert t["threshold"] == 0.3 and t["sensitivity"] == 1.0 and t["specificity"] == 0.5
    t = M.at_sensitivity(y, s, 0.5)            # 2 of 4: threshold 0.8
    assert t["threshold"] == 0.8 and t["specificity"] == 1.0


def test_aggregate_max_and_mean():
    groups = [("p1", "L"), ("p1", "L"), ("p1", "R"), ("p2", "L")]
    y = [0, 1, 0, 0]
    s = [0.2, 0.6, 0.3, 0.9]
    names, yg, sg = M.aggregate(groups, y, s, "max")
    assert names == [("p1", "L"), ("p1", "R"), ("p2", "L")]
    assert yg.tolist() == [True, False, False] and sg.tolist() == [0.6, 0.3, 0.9]
    _, _, sm = M.aggregate(groups, y, s, "mean")
    assert sm.tolist() == pytest.approx([0.4, 0.3, 0.9])


def _write_preds(path, n=60, seed=1, with_label=True):
    y, s = _data(n, seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "neg", "pos"] + (["label"] if with_label else []) +
                   ["patient_id", "side", "view"])
        for i in range(n):
            w.writerow([f"img{i}.png", f"{1 - s[i]:.6f}", f"{s[i]:.6f}"] +
                       ([str(int(y[i]))] if with_label else []) +
                       [f"P{i // 4}", "LR"[(i // 2) % 2], ["CC", "MLO"][i % 2]])
    return y, s


def test_evaluate_cli_levels_json_and_plots(tmp_path, capsys):
    y, s = _write_preds(tmp_path / "preds.csv")
    out = tmp_path / "rep"
    rc = dm_evaluate.main([str(tmp_path / "preds.csv"), "--out-dir", str(out), "--n-boot", "200",
                        "--thresholds", "0.4", "0.6", "--target-sensitivity", "0.9"])
    assert rc == 0
    summ = json.loads((out / "summary.json").read_text())
    levels = {lv["level"]: lv for lv in summ["levels"]}
    assert set(levels) == {"image", "breast", "exam"} and summ["pos_class"] == "pos"
    assert levels["image"]["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-5)
    assert levels["breast"]["n"] == 30 and levels["exam"]["n"] == 15
    assert [t["threshold"] for t in levels["image"]["thresholds"]] == [0.4, 0.6]
    for lv in levels.values():
        if "error" not in lv:
            assert [os.path.basename(p) for p in lv["plots"]] == \
                [f"roc_{lv['level']}.png", f"pr_{lv['level']}.png",
                 f"reliability_{lv['level']}.png"]
            assert all(os.path.getsize(p) > 5000 for p in lv["plots"])
    rel = levels["image"]["calibration"]
    assert rel == M.reliability(y, np.round(s, 6), 10)
    assert sum(b["n"] for b in rel["bins"]) == 60
    console = capsys.readouterr().out
    assert "AUROC" in console and "ECE" in console
    for lv in levels.values():                  # the console names every PNG it wrote
        assert all(p in console for p in lv["plots"])


def test_roc_legend_shows_interval_and_pr_steps_have_no_spikes(tmp_path):
    from sklearn.metrics import average_precision_score
    y, s = _data(80, seed=3)
    ci = M.bootstrap_auroc(y, s, 200, 1)
    labels = M.plot_curves(y, s, str(tmp_path / "r.png"), str(tmp_path / "p.png"),
                           ci=(ci["ci_low"], ci["ci_high"]))
    assert labels["roc"] == (f"AUROC {ci['auroc']:.3f} "
                             f"(95% CI {ci['ci_low']:.3f}-{ci['ci_high']:.3f})")
    r, p = M.pr_points(y, s)
    # one precision per recall (a spike is two), ascending, and the steps' area is the AP
    assert r[0] == 0 and np.all(np.diff(r) > 0) and r[-1] == 1
    assert np.sum(np.diff(r) * p[1:]) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_help_is_complete_shows_defaults_and_needs_no_tensorflow():
    import subprocess
    import sys
    code = ("import sys, dm_evaluate\n"
            "try:\n    dm_evaluate.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('TF' if 'tensorflow' in sys.modules else 'noTF')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=os.path.dirname(os.path.dirname(__file__))).stdout
    assert out.strip().endswith("noTF")
    desc = " ".join(out.split("positional arguments")[0].split("\n", 2)[-1].split())
    assert desc.endswith("breast-/exam-level aggregation."), desc   # a whole sentence
    flat = " ".join(out.split())
    assert "(default: 2000)" in flat and "(default: max)" in flat
    assert all(a.help for a in dm_evaluate.build_parser()._actions), "every flag has a help line"


def test_evaluate_labels_from_separate_csv_and_pos_class(tmp_path):
    y, s = _write_preds(tmp_path / "preds.csv", with_label=False)
    with open(tmp_path / "labels.csv", "w") as f:
        f.write("path,label\n" + "".join(f"img{i},{'pos' if y[i] else 'neg'}\n"
                                         .replace(f"img{i},", f"img{i}.png,") for i in range(len(y))))
    rc = dm_evaluate.main([str(tmp_path / "preds.csv"), "--labels", str(tmp_path / "labels.csv"),
                        "--pos-class", "neg", "--out-dir", str(tmp_path / "r"), "--n-boot", "50",
                        "--no-plots"])
    assert rc == 0
    summ = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summ["levels"][0]["auroc"] == pytest.approx(roc_auc_score(~y, 1 - s), abs=1e-5)


def test_evaluate_bad_input_one_line(tmp_path, capsys):
    (tmp_path / "p.csv").write_text("path,neg,pos\na.png,0.2,0.8\n")
    assert dm_evaluate.main([str(tmp_path / "p.csv"), "--out-dir", str(tmp_path)]) == 2
    assert dm_evaluate.main([str(tmp_path / "nope.csv")]) == 2
    err = [l for l in capsys.readouterr().err.splitlines() if "error: " in l]
    assert len(err) == 2 and "no 'label' column" in err[0] and "not found" in err[1]


def test_one_auroc_matches_scikit_learn_with_ties_and_weights():
    """dm_metrics.auroc is the project's one AUROC (the callbacks and the original's API use
    it); with and without sample weights it equals scikit-learn's."""
    from sklearn.metrics import roc_auc_score

    import dm_callbacks
    import dm_metrics
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(100):
        n = int(rng.integers(4, 40))
        y = rng.integers(0, 2, n)
        if y.min() == y.max():
            continue
        s = rng.integers(0, 5, n) / 4          # many ties
        w = rng.random(n)
        assert dm_metrics.auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert dm_metrics.auroc(y, s, w) == pytest.approx(roc_auc_score(y, s, sample_weight=w),
                                                          abs=1e-12)
        checked += 1
    assert checked > 80
    probs = rng.random((30, 3))
    labels = np.arange(30) % 3
    expected = np.mean([roc_auc_score(labels == k, probs[:, k]) for k in range(3)])
    assert dm_callbacks.mean_auroc(labels, probs) == pytest.approx(expected, abs=1e-12)


# ------------------------------------------------------------------ issue 31: a new user's traps

def _preds(path, rows="a.png,0.2,0.8,1\nb.png,0.7,0.3,0\nc.png,0.6,0.4,1\n"):
    path.write_text("path,neg,pos,label\n" + rows)
    return str(path)


def test_a_nan_score_is_named_not_a_label_out_of_range(tmp_path, capsys):
    """A NaN score made the class columns end early: "label 1 out of range for 1 classes"."""
    preds = _preds(tmp_path / "p.csv", "a.png,0.2,0.8,1\nb.png,nan,nan,0\nc.png,0.6,0.4,1\n")
    assert dm_evaluate.main([preds, "--out-dir", str(tmp_path / "r"), "--no-plots"]) == 2
    err = [l for l in capsys.readouterr().err.splitlines() if "error: " in l]
    assert len(err) == 1 and "p.csv: line 3: pos score 'nan' is not a probability" in err[0]
    assert "out of range" not in err[0]
    # one class column only: the message says which columns it found
    (tmp_path / "one.csv").write_text("path,pos,label\na.png,0.8,1\nb.png,0.3,0\n")
    assert dm_evaluate.main([str(tmp_path / "one.csv"), "--out-dir", str(tmp_path / "r")]) == 2
    assert "label 1 out of range: the class columns are ['pos'] (give --class-cols" in \
        capsys.readouterr().err


def test_out_dir_that_is_a_file_and_outputs_over_the_input(tmp_path, capsys):
    preds = _preds(tmp_path / "p.csv")
    before = (tmp_path / "p.csv").read_text()
    (tmp_path / "afile").write_text("x")
    cases = ((["--out-dir", str(tmp_path / "afile")], "afile: is a file (--out-dir takes a "
                                                      "folder name)"),
             (["--json", preds], "(--json) is the predictions, which this command reads"),
             (["--json", str(tmp_path / "s.json"), "--labels", str(tmp_path / "s.json")],
              "s.json: file not found"))
    for argv, words in cases:
        assert dm_evaluate.main([preds, "--no-plots", *argv]) == 2
        err = [l for l in capsys.readouterr().err.splitlines() if "error: " in l]
        assert len(err) == 1 and words in err[0], err
    assert (tmp_path / "p.csv").read_text() == before


def test_html_report_line_keeps_the_path_as_given(tmp_path, monkeypatch, caplog):
    """Relative --out-dir, relative report path in the log and in summary.json."""
    import logging
    import pathlib
    import cv2
    monkeypatch.chdir(tmp_path)
    for name in ("a.png", "b.png", "c.png"):
        cv2.imwrite(name, np.arange(64 * 48, dtype=np.uint16).reshape(64, 48))
    _preds(pathlib.Path("p.csv"))
    caplog.set_level(logging.INFO)
    assert dm_evaluate.main(["p.csv", "--out-dir", "rep", "--html", "--n-boot", "20"]) == 0
    assert json.loads(pathlib.Path("rep/summary.json").read_text())["html"] == \
        os.path.join("rep", "index.html")
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("HTML")] == \
        [f"HTML report: {os.path.join('rep', 'index.html')}"]
