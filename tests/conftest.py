"""Shared test fixtures: quiet, CPU-only, seeded TensorFlow and the shared real data."""
import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(os.environ.get("DM_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> pathlib.Path:
    """The real third-party data folder (../shared/data or $DM_SHARED_DATA); skip if absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found: {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same seed so numbers are reproducible."""
    import keras
    keras.utils.set_random_seed(12345)
    yield
