"""Every command: bad input is one line naming the tool (exit 2); a bug keeps its traceback.

The bug is simulated by a ValueError raised from a function deep inside the tool: before the
one CLI base (dm_cli.guarded) every ValueError/OSError was shown as if it were bad input.
"""
from __future__ import annotations

import importlib
import logging
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import dm_errors

REPO = pathlib.Path(__file__).resolve().parents[1]


class SimulatedBug(ValueError):
    """Not an InputError: must never be reported as bad input."""


def _boom(*a, **k):
    raise SimulatedBug("simulated internal bug")


def _png(path: pathlib.Path) -> str:
    import cv2
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((8, 8), 100, np.uint8))
    return str(path)


def _file(path: pathlib.Path) -> str:
    """A file that exists (its content never read: the planted bug fires first)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"placeholder")
    return str(path)


def _dirs(t: pathlib.Path) -> list[str]:
    out = []
    for s in ("train", "val", "test"):
        for c in ("neg", "pos"):
            _png(t / s / c / "a.png")
        out.append(str(t / s))
    return out


def _preds(t: pathlib.Path) -> str:
    p = t / "p.csv"
    p.write_text("path,neg,pos,label\na.png,0.2,0.8,1\nb.png,0.7,0.3,0\nc.png,0.6,0.4,1\n")
    return str(p)


# tool -> (module, bad argv (missing things), where the bug is planted, argv reaching it)
CASES = {
    "patch_clf_train": ("patch_clf_train", lambda t: [str(t / "no_train"), str(t / "v"), str(t / "t")],
                        ("dm_listing", "list_class_folders"),
                        lambda t: _dirs(t) + ["--net", "dm_resnet_14", "--nb-init-filter", "4"]),
    "image_clf_train": ("image_clf_train",
                        lambda t: [str(t / "no_train"), str(t / "v"), str(t / "t"),
                                   "--patch-model-state", str(t / "no.keras")],
                        ("dm_listing", "list_class_folders"),
                        lambda t: _dirs(t) + ["--patch-model-state", _file(t / "m.keras")]),
    "predict": ("predict", lambda t: [str(t / "no.keras"), "--images", str(t / "x.png")],
                ("dm_modelfile", "read_model_meta"),
                lambda t: [_file(t / "m.keras"), "--images", _png(t / "x.png"), "--out", str(t / "o.csv")]),
    "evaluate": ("evaluate", lambda t: [str(t / "nope.csv"), "--out-dir", str(t / "r")],
                 ("dm_metrics", "bootstrap_auroc"),
                 lambda t: [_preds(t), "--out-dir", str(t / "r"), "--pos-class", "pos"]),
    "calibrate": ("calibrate", lambda t: [str(t / "no.keras"), str(t / "nope.csv")],
                  ("dm_modelfile", "read_model_meta"),
                  lambda t: [_file(t / "m.keras"), _preds(t)]),
    "convert_checkpoint": ("convert_checkpoint", lambda t: [str(t / "no.h5"), str(t / "o.keras")],
                           ("dm_checkpoint", "load_model"),
                           lambda t: [_file(t / "m.h5"), str(t / "o.keras")]),
    "featurewise_mean": ("featurewise_mean", lambda t: [str(t / "nodir"), "--trainer", "image"],
                         ("dm_dataset", "check_bit_depths"),
                         lambda t: [str(pathlib.Path(_png(t / "imgs" / "a.png")).parent),
                                    "--trainer", "image"]),
    "heatmap_score": ("ddsm_train.heatmap_score", lambda t: [str(t / "nodir"), str(t / "no.keras")],
                      ("dm_scoring", "load_models"),
                      lambda t: [str(pathlib.Path(_png(t / "imgs" / "a.png")).parent),
                                 _file(t / "m.keras"), "--out", str(t / "h.npz")]),
    "sample_patches_combined": ("ddsm_train.sample_patches_combined",
                                lambda t: [str(t / "no.csv"), str(t / "m"), str(t / "p.txt"),
                                           str(t / "f"), str(t / "tr"), str(t / "va")],
                                ("ddsm_train.sample_patches_combined", "read_roi_table"),
                                lambda t: [str(t / "no.csv"), str(t / "m"), str(t / "p.txt"),
                                           str(t / "f"), str(t / "tr"), str(t / "va")]),
    "prepare_mias": ("mias_train.prepare_mias", lambda t: [str(t / "nodir"), str(t / "out")],
                     ("mias_train.prepare_mias", "parse_info"),
                     lambda t: [str(pathlib.Path(_file(t / "Info.txt")).parent), str(t / "out")]),
    "prepare_inbreast": ("inbreast_train.prepare_inbreast",
                         lambda t: [str(t / "nodir"), str(t / "no.csv"), str(t / "out")],
                         ("inbreast_train.prepare_inbreast", "read_inbreast_csv"),
                         lambda t: [str(t), str(t / "no.csv"), str(t / "out")]),
    "prepare_cbis_ddsm": ("ddsm_train.prepare_cbis_ddsm",
                          lambda t: [str(t / "nodir"), str(t / "nocsv"), str(t / "out")],
                          ("ddsm_train.prepare_cbis_ddsm", "load_case_tables"),
                          lambda t: [str(t), str(t), str(t / "out")]),
    # (impossible numbers stop at flag parsing: the input error here is a used folder)
    "dm_synthetic": ("dm_synthetic",
                     lambda t: [str(pathlib.Path(_file(t / "out" / "notes.txt")).parent)],
                     ("dm_synthetic", "render_image"),
                     lambda t: [str(t / "out"), "--n-patients", "2", "--img-size", "64", "48"]),
    "cross_validate": ("mias_train.cross_validate",
                       lambda t: [str(t / "nodir"), "--out", str(t / "cv")],
                       ("mias_train.prepare_mias", "parse_info"),
                       lambda t: [str(t), "--out", str(t / "cv")]),
    "end2end": ("end2end", lambda t: ["--data", "nothing", "--out", str(t / "o")],
                ("dm_synthetic", "generate_dataset"),
                lambda t: ["--out", str(t / "o")]),
}
RECIPES = {"sample_patches_combined", "prepare_mias", "prepare_inbreast", "prepare_cbis_ddsm",
           "dm_synthetic"}


def _run(tool: str, argv: list[str], monkeypatch) -> int:
    """The tool as its command runs it: `main` (trainers, tools) or `run_cli(main)` (recipes)."""
    mod = importlib.import_module(CASES[tool][0])
    if tool not in RECIPES:
        return mod.main(argv)
    import dm_recipe_utils
    monkeypatch.setattr(sys, "argv", [tool, *argv])
    with pytest.raises(SystemExit) as e:
        dm_recipe_utils.run_cli(mod.main, tool)
    return e.value.code


@pytest.mark.parametrize("tool", sorted(CASES))
def test_bad_input_is_one_line_naming_the_tool_exit_2(tool, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    rc = _run(tool, CASES[tool][1](tmp_path), monkeypatch)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert rc == 2
    assert len(errors) == 1 and errors[0].name == tool, [(r.name, r.getMessage()) for r in errors]
    msg = errors[0].getMessage()
    assert msg.startswith("error: ") and "\n" not in msg and "Traceback" not in msg
    assert str(tmp_path) in msg or "--data" in msg or "n_patients" in msg, msg


@pytest.mark.parametrize("tool", sorted(CASES))
def test_internal_value_error_is_a_bug_with_traceback(tool, tmp_path, monkeypatch, caplog):
    mod_name, _, (where, name), argv = CASES[tool]
    importlib.import_module(mod_name)
    monkeypatch.setattr(importlib.import_module(where), name, _boom)
    with pytest.raises(SimulatedBug, match="simulated internal bug"):
        _run(tool, argv(tmp_path), monkeypatch)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def _subprocess(code: str, tmp_path) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_as_a_process_bug_exits_1_with_traceback_input_error_exits_2(tmp_path):
    model = _file(tmp_path / "m.keras")
    img = _png(tmp_path / "x.png")
    bug = _subprocess(
        "import sys, dm_modelfile, predict\n"
        "def boom(*a, **k): raise ValueError('simulated internal bug')\n"
        "dm_modelfile.read_model_meta = boom\n"
        f"sys.exit(predict.main([{model!r}, '--images', {img!r}, '--out', 'o.csv']))\n", tmp_path)
    assert bug.returncode == 1
    assert "Traceback" in bug.stderr and "ValueError: simulated internal bug" in bug.stderr
    assert "error: simulated" not in bug.stdout
    bad = subprocess.run([sys.executable, str(REPO / "predict.py"), "no.keras", "--images", img],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr + bad.stdout
    # No --out: the CSV would go to stdout, so the log (and the error line) is on stderr.
    lines = [l for l in (bad.stdout + bad.stderr).splitlines() if "error:" in l]
    assert len(lines) == 1 and "predict: error: no.keras" in lines[0], bad.stderr


def test_recipe_as_a_process_exits_1_on_a_bug(tmp_path):
    _file(tmp_path / "Info.txt")
    r = _subprocess(
        "import sys\n"
        "from mias_train import prepare_mias as m\n"
        "def boom(*a, **k): raise ValueError('simulated internal bug')\n"
        "m.parse_info = boom\n"
        "import dm_recipe_utils\n"
        f"sys.argv = ['prepare_mias', {str(tmp_path)!r}, 'out']\n"
        "dm_recipe_utils.run_cli(m.main)\n", tmp_path)
    assert r.returncode == 1 and "Traceback" in r.stderr and "simulated internal bug" in r.stderr


def test_input_error_wrapped_by_tensorflow_is_still_one_line():
    import tensorflow as tf

    import dm_cli
    wrapped = tf.errors.InvalidArgumentError(
        None, None, "{{function_node __wrapped__}} ImageReadError: a.png: not an image\n"
                    "Traceback (most recent call last):\n  ...")
    assert dm_cli.is_input_error(wrapped)
    assert dm_errors.one_line(wrapped) == "a.png: not an image"
    shape_bug = tf.errors.InvalidArgumentError(None, None, "Incompatible shapes: [2,3] vs. [2,4]")
    assert not dm_cli.is_input_error(shape_bug)

    def raise_(e):
        raise e
    with pytest.raises(tf.errors.InvalidArgumentError):
        dm_cli.guarded("predict", raise_, shape_bug)
    assert dm_cli.guarded("predict", raise_, wrapped) == 2


def test_every_project_error_class_is_an_input_error():
    """All `*Error` classes the project defines derive from the one base."""
    import ast

    import dm_errors
    names = []
    for path in list(REPO.glob("*.py")) + list(REPO.glob("*_train/*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                names.append((path, node.name))
    assert len(names) >= 20
    for path, name in names:
        rel = path.relative_to(REPO).with_suffix("")
        mod = importlib.import_module(".".join(rel.parts))
        cls = getattr(mod, name)
        assert issubclass(cls, dm_errors.InputError), (rel, name)


# ------------------------------------------------------------------ issue 23: noise

_BANNER_WORDS = ("cuInit", "cuda", "oneDNN", "cpu_feature_guard", "absl::InitializeLog",
                 "TF-TRT")


def _run_script(argv, cwd, **env):
    return subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=str(REPO),
                                                **{k: v for k, v in env.items()}))


@pytest.fixture(scope="module")
def tiny_model_and_preds(tmp_path_factory):
    sys.path.insert(0, str(REPO / "tests"))
    from tiny_models import save, tiny_image_model, write_images
    d = tmp_path_factory.mktemp("noise")
    model = save(tiny_image_model(), d / "m.keras", "image")
    paths = write_images(d / "img", 4)
    (d / "preds.csv").write_text("path,neg,pos,label\n" + "".join(
        f"{p},{1 - v},{v},{k}\n" for p, v, k in zip(paths, (.2, .7, .4, .9), (0, 1, 0, 1))))
    return d, str(model)


@pytest.mark.parametrize("tool", ["heatmap", "evaluate", "calibrate"])
def test_no_tensorflow_start_up_lines(tool, tiny_model_and_preds, tmp_path):
    """heatmap_score.py, evaluate.py --model and calibrate.py import TensorFlow: none of its
    start-up lines (`failed call to cuInit`, oneDNN...) reaches the user (issue 23)."""
    d, model = tiny_model_and_preds
    argv = {"heatmap": [str(REPO / "ddsm_train" / "heatmap_score.py"), str(d / "img"), model,
                        "--grad-cam", "--out", str(tmp_path / "h.npz")],
            "evaluate": [str(REPO / "evaluate.py"), str(d / "preds.csv"), "--html", "--model",
                         model, "--n-boot", "50", "--out-dir", str(tmp_path / "rep")],
            "calibrate": [str(REPO / "calibrate.py"), model, str(d / "preds.csv"),
                          "--out", str(tmp_path / "c.keras")]}[tool]
    r = _run_script(argv, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    noise = [l for l in (r.stdout + r.stderr).splitlines()
             if any(w in l for w in _BANNER_WORDS)]
    assert noise == []


def test_every_tensorflow_message_once(tmp_path):
    """TensorFlow gives its logger a handler of its own when it first logs before ours is
    installed; with ours too, each message (`Assets written`, retracing) came out twice."""
    code = ("import dm_cli, logging\n"
            "dm_cli.quiet_tensorflow()\n"             # TensorFlow first, as convert_checkpoint
            "import tensorflow as tf\n"
            "tf.get_logger().warning('first message')\n"
            "dm_cli.setup_logging()\n"
            "tf.get_logger().warning('second message')\n")
    r = _run_script(["-c", code], tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and out.count("second message") == 1, out


def test_corrupt_jpeg2000_dicom_is_one_line_with_its_reason(tmp_path):
    """pydicom logs its decoder's traceback before raising: not shown; the error line keeps
    the reason at its end (it was cut at the first line of pydicom's message)."""
    import io
    pytest.importorskip("PIL")
    from PIL import features
    if not features.check("jpg_2000"):
        pytest.skip("Pillow without JPEG 2000")
    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless, SecondaryCaptureImageStorage, generate_uid
    sys.path.insert(0, str(REPO / "tests"))
    from tiny_models import save, tiny_image_model
    arr = np.random.default_rng(0).integers(0, 4095, (64, 48)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG2000", irreversible=False)
    j2k = buf.getvalue()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEG2000Lossless
    ds = Dataset()
    ds.file_meta, ds.SOPClassUID = meta, SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 64, 48, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = encapsulate([j2k[:len(j2k) // 3] + b"\0" * 50])     # cut short
    ds["PixelData"].VR = "OB"
    ds.save_as(str(tmp_path / "bad.dcm"), enforce_file_format=True)
    model = save(tiny_image_model(), tmp_path / "m.keras", "image")
    r = _run_script([str(REPO / "predict.py"), str(model), "--images", "bad.dcm", "--out", "p.csv"],
             tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 2 and "Traceback" not in out, out
    err = [l for l in out.splitlines() if "error:" in l]
    assert len(err) == 1 and "bad.dcm: cannot decode DICOM pixel data" in err[0]
    assert err[0].rstrip().endswith("broken data stream when reading image file)"), err[0]


def test_one_line_joins_lines_and_shortens_the_middle():
    import dm_errors
    e = dm_errors.InputError("scan.dcm: cannot decode (all plugins failed:\n"
                             "  pillow: broken data stream)")
    assert dm_errors.one_line(e) == ("scan.dcm: cannot decode (all plugins failed: pillow: "
                                     "broken data stream)")
    long = dm_errors.InputError("scan.dcm: " + "detail " * 200 + "THE REASON")
    line = dm_errors.one_line(long)
    assert len(line) <= dm_errors.MAX_LINE and line.startswith("scan.dcm: detail")
    assert line.endswith("THE REASON") and " ... " in line
    tf_text = ("{{function_node x}} ImageReadError: a.dcm: cannot decode (failed:\n"
               "  pillow: broken)\nTraceback (most recent call last):\n  File ...")
    assert dm_errors.wrapped_input_error(tf_text) == "a.dcm: cannot decode (failed: pillow: broken)"


# ------------------------------------------------------------------ issue 31: no tool writes over its input

# tool -> argv writing over one of its own inputs, and what the one line says
OVER_INPUT = {
    "convert_checkpoint": (lambda t: [_file(t / "m.h5"), str(t / "." / "m.h5")],
                           "(OUTPUT) is the INPUT model"),
    "prepare_mias": (lambda t: [str(pathlib.Path(_file(t / "mias" / "Info.txt")).parent),
                                str(t)], "(OUT_DIR) holds the MIAS_DIR"),
    "prepare_inbreast": (lambda t: [str(t / "dicoms"), _file(t / "INbreast.csv"), str(t)],
                         "(OUT_DIR) holds the DICOM_DIR"),
    "prepare_cbis_ddsm": (lambda t: [str(t / "dicoms"), str(t / "csv"), str(t / "csv")],
                          "(OUT_DIR) is the CSV_DIR"),
}


@pytest.mark.parametrize("tool", sorted(OVER_INPUT))
def test_output_over_an_input_is_one_line_before_any_work(tool, tmp_path, monkeypatch, caplog):
    argv, words = OVER_INPUT[tool]
    argv = argv(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert _run(tool, argv, monkeypatch) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and words in errors[0] and "which this command reads" in errors[0], \
        errors
    assert sorted(p.name for p in tmp_path.rglob("*")) == before     # nothing written


def test_types_refuse_impossible_numbers_in_one_line():
    import argparse

    import dm_cli
    count, rate = dm_cli.int_at_least(0), dm_cli.float_in(0, 1, high_open=True)
    assert count("0") == 0 and count("12") == 12 and rate("0") == 0.0 and rate("0.5") == 0.5
    for parse, text, msg in ((count, "-3", "-3: must be a whole number >= 0"),
                             (count, "2.5", "invalid int value: '2.5'"),
                             (rate, "1", "1: must be a finite number >= 0 and < 1"),
                             (rate, "nan", "nan: must be a finite number >= 0 and < 1"),
                             (dm_cli.float_in(), "inf", "inf: must be a finite number"),
                             (dm_cli.seed_value, str(2 ** 32), "must be a whole number >= 0 "
                                                               "and <= 4294967295")):
        with pytest.raises(argparse.ArgumentTypeError, match=msg.replace("(", r"\(")):
            parse(text)


def test_warnings_and_errors_go_to_stderr_progress_to_stdout(capsys):
    import dm_cli
    dm_cli.setup_logging()
    dm_cli.setup_logging()                       # once per process: no second handler
    log = logging.getLogger("some_tool")
    log.info("progress line")
    log.warning("a warning")
    log.error("error: bad input")
    cap = capsys.readouterr()
    assert "progress line" in cap.out and "warning" not in cap.out and "error" not in cap.out
    assert cap.err.count("a warning") == 1 and cap.err.count("error: bad input") == 1
    with dm_cli.log_to_stderr():                 # the result goes to stdout: all on stderr
        log.info("progress line")
        log.warning("a warning")
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err.count("progress line") == 1 and cap.err.count("a warning") == 1


def test_run_tool_runs_the_precheck_before_tensorflow_and_can_end_there(monkeypatch):
    import dm_cli
    calls = []
    monkeypatch.setattr(dm_cli, "quiet_tensorflow", lambda: calls.append("tensorflow"))

    def run(args):
        calls.append("run")

    def refuse(args):
        calls.append("precheck")
        raise dm_errors.InputError("x.csv: refused")
    assert dm_cli.run_tool("t", lambda a: a, run, [], tensorflow=True, precheck=refuse) == 2
    assert calls == ["precheck"]
    calls.clear()
    assert dm_cli.run_tool("t", lambda a: a, run, [], tensorflow=True,
                           precheck=lambda a: calls.append("precheck") or 0) == 0
    assert calls == ["precheck"]                 # nothing to do: neither TensorFlow nor run
    calls.clear()
    assert dm_cli.run_tool("t", lambda a: a, run, [], tensorflow=True,
                           precheck=lambda a: calls.append("precheck")) == 0
    assert calls == ["precheck", "tensorflow", "run"]
