"""pyproject.toml installs every flat module and every command (docs/modules.md, "Install")."""
from __future__ import annotations

import importlib
import os
import pathlib
import site
import subprocess
import sys
import tomllib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
CONF = tomllib.loads((REPO / "pyproject.toml").read_text())


# Scripts that keep `python predict.py ...` working in a checkout; the wheel leaves them out
# (their names are other PyPI packages) and installs the dm_* modules they call.
CHECKOUT_ONLY = {"predict", "evaluate", "calibrate", "end2end", "featurewise_mean",
                 "convert_checkpoint"}
ORIGINAL_NAMES = {"patch_clf_train", "image_clf_train", "ddsm_train", "inbreast_train"}


def test_every_flat_module_and_package_is_installed_under_a_project_name():
    listed = set(CONF["tool"]["setuptools"]["py-modules"])
    assert listed == {p.stem for p in REPO.glob("*.py")} - CHECKOUT_ONLY
    packages = set(CONF["tool"]["setuptools"]["packages"])
    assert packages == {p.parent.name for p in REPO.glob("*/__init__.py")}
    for name in listed | packages:
        assert name.startswith("dm_") or name in ORIGINAL_NAMES | {"mias_train"}, name
    for name in CHECKOUT_ONLY:    # each is a two-line door to its dm_ module
        text = (REPO / f"{name}.py").read_text()
        assert f"from dm_{name} import" in text and len(text.splitlines()) <= 8, name


def test_every_command_is_prefixed_and_resolves_to_a_callable():
    scripts = CONF["project"]["scripts"]
    assert len(scripts) == 16 and all(name.startswith("dm-") for name in scripts)
    for name, target in scripts.items():
        mod, func = target.split(":")
        assert mod.split(".")[0] not in CHECKOUT_ONLY, name
        assert callable(getattr(importlib.import_module(mod), func)), name


def test_requirements_and_dependencies_agree():
    req = [l.strip() for l in (REPO / "requirements.txt").read_text().splitlines()
           if l.strip() and not l.startswith("#") and not l.startswith("pytest")]
    assert sorted(req) == sorted(CONF["project"]["dependencies"])


def _fresh_venv(tmp_path):
    """A new venv that sees this interpreter's packages (a .pth file) and has `wheel`, for
    installs without build isolation: (venv, its site-packages, its pip install command)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site_dir = next((venv / "lib").glob("python3*/site-packages"))
    (site_dir / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    if subprocess.run([*pip, "wheel"], cwd=tmp_path, timeout=600).returncode != 0:
        pytest.skip("the 'wheel' package (needed without build isolation) is not installable here")
    return venv, site_dir, pip


@pytest.mark.slow
def test_editable_install_puts_the_commands_on_path(tmp_path):
    """pip install -e . into a fresh venv (dependencies from this interpreter), then run two
    commands from outside the checkout."""
    venv, site_dir, pip = _fresh_venv(tmp_path)
    subprocess.run([*pip, "--no-deps", "--no-build-isolation", "-e", str(REPO)], check=True,
                   cwd=tmp_path, timeout=600)
    env = dict(os.environ, PYTHONPATH="", TF_CPP_MIN_LOG_LEVEL="3")
    for cmd in ("dm-image-clf-train", "dm-predict", "dm-prepare-mias"):
        r = subprocess.run([str(venv / "bin" / cmd), "--help"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and "usage:" in r.stdout, (cmd, r.stderr[-1000:])
    r = subprocess.run([str(venv / "bin" / "dm-prepare-mias"), str(tmp_path / "none"), "out"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "prepare_mias: error:" in r.stderr


@pytest.mark.slow
def test_plain_install_carries_the_report_assets(tmp_path):
    """pip install . (not editable): the modules, the shell scripts and the report's CSS/JS
    land in site-packages, where dm_report looks for them."""
    venv, site_dir, pip = _fresh_venv(tmp_path)
    import shutil
    src = tmp_path / "src"        # a copy, so the build leaves nothing in the checkout
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "runs", "build", "*.egg-info", "__pycache__"))
    subprocess.run([*pip, "--no-deps", "--no-build-isolation", str(src)], check=True,
                   cwd=tmp_path, timeout=600)
    for rel in ("dm_report.py", "dm_report_assets/report.css", "dm_report_assets/report.js",
                "ddsm_train/train_image_clf_im1152.sh", "dm_predict.py"):
        assert (site_dir / rel).is_file(), rel
    for name in CHECKOUT_ONLY:    # no generic top-level name in site-packages
        assert not (site_dir / f"{name}.py").exists(), name
    assert not (site_dir / "report_assets").exists()
    r = subprocess.run([str(venv / "bin" / "python"), "-c",
                        "import dm_report; print(dm_report.ASSETS)"], cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=""), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == str(site_dir / "dm_report_assets"), r.stderr
