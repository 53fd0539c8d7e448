"""The GPU check (benchmarks/gpu_check.py): its plan, goals, schedule and report, and the
check itself in --tiny mode on the CPU, sections failing on purpose included."""
import argparse
import json
import math
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check  # noqa: E402
import gpu_report  # noqa: E402
from gpu_report import key  # noqa: E402


def _cfg(tiny=False, max_batch=256):
    args = argparse.Namespace(tiny=tiny, budget_s=420.0, sections=list(gpu_report.SECTIONS),
                              fail_section=None, max_batch=max_batch)
    return gpu_check.config(args, 0.0)


def _run(s, batch, status="ok", ips=10.0, wall=1.0):
    return dict(s, batch=batch, status=status, images_per_s=ips, wall_s=wall)


def test_the_plan_puts_the_goals_first_then_doubles_what_fitted():
    cfg, runs = _cfg(max_batch=16), []
    order = []
    while (nxt := gpu_check.next_measurement(runs, cfg, 0.0, 1e9)) is not None:
        s, batch = nxt
        order.append((key(s), batch))
        oom = s["precision"] is None and not s["xla"] and s["net"] == "resnet50-2x" and batch == 8
        runs.append(_run(s, batch, "oom" if oom else "ok"))
    assert order[:4] == [("resnet50-2x float32", 4), ("resnet50-2x float16", 4),
                         ("resnet50-2x bfloat16", 4), ("resnet50-patch float32", 32)]
    first = len(gpu_check.settings(False))
    assert all(b in (4, 32) for _, b in order[:first]) and order[first] == ("resnet50-2x float32", 8)
    assert ("resnet50-2x float32", 16) not in order           # it ran out of memory at 8
    assert ("resnet50-2x float16", 16) in order
    assert not [o for o in order if o[0].startswith("resnet50-patch") and o[1] != 32]
    assert "resnet50-2x float16 +XLA (non-deterministic ops)" in dict(order)
    assert len(order) == len(set(order))


def test_the_plan_skips_what_would_overrun_the_budget():
    cfg = _cfg()
    s0 = gpu_check.settings(False)[0]
    runs = [_run(s0, 4, wall=20.0)]
    # 25 s left: the next non-XLA setting (about 20 s) fits, an XLA one (no estimate yet: 90 s)
    # and the doubled float32 batch (26 s) would not.
    got = gpu_check.next_measurement(runs, cfg, 0.0, 25.0)
    assert got is not None and key(got[0]) == "resnet50-2x float16" and got[1] == 4
    runs = [_run(s, 4 if s["net"] != gpu_report.PATCH_NET else 32, wall=20.0)
            for s in gpu_check.settings(False) if not s["xla"]]
    assert gpu_check.next_measurement(runs, cfg, 0.0, 25.0) is None
    skipped = [r for r in runs if r["status"] == "skipped"]
    assert skipped and all(r["error"] == "time budget" for r in skipped)
    assert {r["xla"] for r in skipped} == {True, False}


def _state(runs, pipeline=None, prediction=None, gpus=(dict(name="H100"),), **sections):
    return dict(config=_cfg(), sections=dict(
        environment=dict(status="ok", gpus=list(gpus)), training=dict(status="ok", runs=runs),
        pipeline=dict(status="ok", **(pipeline or {})),
        prediction=dict(status="ok", **(prediction or {})), **sections))


def _settings():
    return {key(s): s for s in gpu_check.settings(False)}


def test_goals_pass_and_fail_with_their_figures():
    s = _settings()
    runs = [_run(s["resnet50-2x float32"], 4, ips=10.0), _run(s["resnet50-2x float16"], 4, ips=25.0),
            _run(s["resnet50-2x float32"], 8, ips=12.0),
            _run(s["resnet50-2x float32"], 16, status="oom"),
            _run(s["vgg16-1x float32"], 4, ips=20.0),
            _run(s["vgg16-1x bfloat16"], 4, status="crashed")]
    runs[-1]["error"] = "worker killed by signal 6"
    g = gpu_report.goals(_state(runs, dict(disk_img_s=20.0, ram_img_s=40.0, fed_img_s=24.0)))
    assert [x["status"] for x in g] == ["FAIL", "PASS", "PASS", "FAIL"]
    assert "x0.80" in g[0]["detail"] and "PNG decoding" in g[0]["detail"]   # 20 / 25
    assert "fed by the pipeline it trains at 24.0" in g[0]["detail"]
    assert g[1]["detail"].startswith("x2.50: resnet50-2x float16")
    assert "largest batch trained: 8; out of memory at [16]" in g[2]["detail"]
    assert "vgg16-1x bfloat16 batch 4: crashed: worker killed by signal 6" in g[3]["detail"]
    # The RAM cache too slow: the CPU is the bound; no GPU: goal 4 cannot pass.
    g = gpu_report.goals(_state(runs[:5], dict(disk_img_s=20.0, ram_img_s=30.0,
                                               cpu_ms_per_image=50.0, cores=16), gpus=()))
    assert "bounded by the CPU: 50.0 ms of CPU per image on 16 cores" in g[0]["detail"]
    assert g[3]["status"] == "FAIL" and "no GPU visible" in g[3]["detail"]
    known = dict(test="tests.test_trainers::test_two_replicas_under_mirrored_strategy",
                 outcome="failure", message="assert", known="expected with a GPU")
    g = gpu_report.goals(_state(runs[:5], dict(disk_img_s=40.0, ram_img_s=50.0),
                                tests=dict(status="ok", tests=[known])))
    assert [x["status"] for x in g] == ["PASS", "PASS", "PASS", "PASS"]   # known: not counted
    known.pop("known")
    g = gpu_report.goals(_state(runs[:5], dict(disk_img_s=40.0, ram_img_s=50.0),
                                tests=dict(status="ok", tests=[known])))
    assert g[3]["status"] == "FAIL" and "mirrored_strategy: assert" in g[3]["detail"]
    assert gpu_report.goals(_state([]))[1]["detail"] == "not measured"


def test_schedule_in_gpu_hours_from_the_measured_rates():
    s = _settings()
    runs = [_run(s["resnet50-patch float32"], 32, ips=100.0),
            _run(s["resnet50-2x float32"], 8, ips=5.0), _run(s["resnet50-2x float32"], 16, ips=6.0),
            _run(s["resnet50-2x float16"], 16, ips=12.0)]
    state = _state(runs, prediction=dict(bare_img_s=15.0))
    sec = {}
    gpu_report.schedule_section(sec, state)
    rows = {(r["classifier"], r["setting"].split(":")[0]): r for r in sec["rows"]}
    whole = rows[("whole image", "float32")]
    assert whole["setting"].endswith("batch 8")         # the script's batch 10: 8 measured
    assert whole["gpu_hours"] == pytest.approx(2 * (2178 / 5 + 242 / 15) / 3600, abs=1e-4)
    patch = rows[("patch", "float32")]
    assert patch["gpu_hours"] == pytest.approx(15 * (47556 / 100 + 5284 / 300) / 3600, abs=1e-4)
    fast = rows[("whole image", "fastest")]
    assert fast["images_per_s"] == 12.0 and "float16" in fast["setting"]
    assert sec["total_gpu_hours_float32"] == pytest.approx(whole["gpu_hours"] + patch["gpu_hours"])
    assert any("2178 training and 242 validation images" in a for a in sec["assumptions"])


def test_the_report_has_a_table_per_section_and_the_goal_lines():
    s = _settings()
    runs = [_run(s["resnet50-2x float32"], 4), _run(s["resnet50-2x float16"], 4, ips=30.0)]
    state = _state(runs, dict(disk_img_s=50.0, ram_img_s=60.0,
                              rows=[dict(source="from disk", images_per_s=50.0)]),
                   dict(rows=[dict(path="predict.py --batch-size 4", images_per_s=3.0)]))
    state["sections"]["environment"]["versions"] = {"tensorflow": "2.x"}
    gpu_report.schedule_section(state["sections"].setdefault("schedule", {}), state)
    state["goals"] = gpu_report.goals(state)
    text = gpu_report.markdown(state)
    assert text.startswith("## GPU check: H100")
    for line in ("| tensorflow | 2.x |", "| resnet50-2x float16 | 4 | ok | 30 |",
                 "| from disk | 50 |", "| predict.py --batch-size 4 | 3 |", "| DDSM schedule |"):
        assert line in text, line
    assert sum(l.startswith(("PASS ", "FAIL ")) for l in text.splitlines()) == 4


def test_test_outcomes_are_read_from_junit_with_the_known_failure_marked(tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text(
        '<testsuites><testsuite><testcase classname="tests.test_trainers" '
        'name="test_two_replicas_under_mirrored_strategy" time="2.5"><failure message="assert '
        '2 replicas">...</failure></testcase><testcase classname="tests.test_dm_modelfile" '
        'name="test_x" time="0.5"/></testsuite></testsuites>')
    got = gpu_check.junit_results(xml)
    assert [(t["outcome"], t["time_s"]) for t in got] == [("failure", 2.5), ("passed", 0.5)]
    assert got[0]["message"] == "assert 2 replicas" and "one replica" in got[0]["known"]
    assert "known" not in got[1]


def test_sections_left_when_the_time_is_up_are_listed_as_skipped(tmp_path):
    state = dict(config=_cfg(), sections=dict(training=dict(status="pending", runs=[]),
                                              prediction={}))
    gpu_check.run_workers(state, str(tmp_path / "s.json"), ["training", "prediction"], 0.0)
    for name in ("training", "prediction"):
        assert state["sections"][name]["status"] == "skipped"
    assert json.loads((tmp_path / "s.json").read_text())["sections"] == state["sections"]
    assert "| prediction | skipped |" in gpu_report.markdown(state)


def test_the_gpu_tests_it_selects_exist():
    """The node ids the check hands pytest name real tests (a renamed test would be lost)."""
    for node in gpu_check.GPU_TESTS:
        path, name = node.split("::")
        assert f"def {name}(" in (REPO / path).read_text(), node


def _check(tmp_path, *flags, timeout=1200):
    out = tmp_path / "gpu_check.json"
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--tiny",
                          "--out", str(out), *flags], capture_output=True, text=True,
                         timeout=timeout, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(out.read_text()), res.stdout


def test_tiny_check_records_a_failing_section_and_runs_the_others(tmp_path):
    """A section that raises (here the environment, in the TensorFlow worker) is recorded
    with its message; the input pipeline and the schedule still run and the goals print."""
    state, stdout = _check(tmp_path, "--sections", "environment", "pipeline", "schedule",
                           "--fail-section", "environment", timeout=300)
    s = state["sections"]
    assert list(s) == ["environment", "pipeline", "schedule"]
    assert s["environment"]["status"] == "failed"
    assert "planted failure (--fail-section environment)" in s["environment"]["error"]
    assert s["pipeline"]["status"] == "ok" and s["schedule"]["status"] == "ok"
    assert s["pipeline"]["ram_img_s"] > 0 and s["pipeline"]["disk_img_s"] > 0
    assert s["pipeline"]["cpu_ms_per_image"] > 0
    assert [g["status"] for g in state["goals"]] == ["FAIL"] * 4    # nothing trained, no GPU
    assert "environment: RuntimeError: planted failure" in state["goals"][3]["detail"]
    assert "| environment | failed |" in stdout and "| from RAM, batch 2 |" in stdout
    assert sum(l.startswith(("PASS ", "FAIL ")) for l in stdout.splitlines()) == 4


@pytest.mark.slow
def test_tiny_check_runs_every_section_and_survives_a_crashed_worker(tmp_path):
    """The whole check at tiny sizes; the worker is killed (SIGABRT, as a fatal CUDA error
    would) in its first measurement, which is recorded, and a new worker does the rest."""
    state, stdout = _check(tmp_path, "--fail-section", "training:abort")
    s = state["sections"]
    assert list(s) == list(gpu_report.SECTIONS)
    assert {n: x["status"] for n, x in s.items()} == dict.fromkeys(gpu_report.SECTIONS, "ok")
    assert s["environment"]["versions"]["tensorflow"]
    assert s["environment"]["versions"]["xla_under_deterministic_ops"] is False
    assert [t["outcome"] for t in s["tests"]["tests"]] == ["passed"]
    smoke = s["tests"]["smoke"]
    assert smoke["outcome"] == "passed", smoke
    assert smoke["replicas"] == [1] and smoke["losses_finite"] and not smoke["xla_ignored"]
    runs = s["training"]["runs"]
    assert runs[0]["status"] == "crashed" and "signal 6" in runs[0]["error"]
    ok = [r for r in runs if r["status"] == "ok"]
    assert len(ok) >= 3 and all(r["images_per_s"] > 0 and math.isfinite(r["loss"]) for r in ok)
    assert any(r["xla"] and r["xla_effective"] for r in ok)
    assert not any(r["xla_effective"] for r in ok if not r["xla"])
    pipe = s["pipeline"]
    assert pipe["ram_img_s"] > 0 and pipe["disk_img_s"] > 0 and pipe["fed_img_s"] > 0
    assert all(r["images_per_s"] > 0 for r in s["prediction"]["rows"])
    assert s["prediction"]["bare_img_s"] > 0 and s["prediction"]["export_write_s"] > 0
    hours = [r["gpu_hours"] for r in s["schedule"]["rows"] if "gpu_hours" in r]
    assert hours and all(h > 0 for h in hours)
    assert "crashed: worker killed by signal 6" in state["goals"][3]["detail"]
    assert sum(l.startswith(("PASS ", "FAIL ")) for l in stdout.splitlines()) == 4
