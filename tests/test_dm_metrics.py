"""The paired AUROC difference and its bootstrap interval (dm_metrics)."""
from __future__ import annotations

import numpy as np
import pytest

from dm_metrics import MetricsError, auroc, bootstrap_auroc, bootstrap_auroc_difference


def _data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.4
    old = y * 0.5 + rng.normal(size=n)
    new = y * 1.5 + rng.normal(size=n)
    groups = np.arange(n) // 2
    return y, new, old, groups


def test_difference_is_the_two_aurocs_apart_and_its_interval_covers_it():
    y, new, old, groups = _data()
    d = bootstrap_auroc_difference(y, new, old, n_boot=300, seed=1, groups=groups)
    assert d["difference"] == pytest.approx(auroc(y, new) - auroc(y, old))
    assert d["ci_low"] < d["difference"] < d["ci_high"]
    assert d["ci_low"] > 0 and d["p_le_0"] < 0.025 and d["n_groups"] == 100
    # the same score twice: exactly zero in every resample
    z = bootstrap_auroc_difference(y, new, new, n_boot=50, seed=1)
    assert z["difference"] == 0 and z["ci_low"] == 0 and z["ci_high"] == 0


def test_paired_interval_is_narrower_than_the_separate_ones():
    """Two scores that share most of their noise: the paired interval of the difference is
    far narrower than the width of either score's own interval."""
    rng = np.random.default_rng(3)
    n = 300
    y = rng.random(n) < 0.5
    shared = rng.normal(size=n)
    a = y * 0.6 + shared
    b = y * 0.6 + shared + rng.normal(scale=0.1, size=n)
    d = bootstrap_auroc_difference(y, a, b, n_boot=300, seed=2)
    one = bootstrap_auroc(y, a, n_boot=300, seed=2)
    assert d["ci_high"] - d["ci_low"] < 0.3 * (one["ci_high"] - one["ci_low"])


def test_draws_are_the_single_bootstraps_draws():
    """The same seed resamples the same cases as bootstrap_auroc: against a constant old
    score (AUROC 0.5 in every resample) the interval is the single one shifted by 0.5."""
    y, new, _, groups = _data(seed=5)
    single = bootstrap_auroc(y, new, n_boot=200, seed=7, groups=groups)
    d = bootstrap_auroc_difference(y, new, np.zeros(len(y)), n_boot=200, seed=7, groups=groups)
    assert d["ci_low"] == pytest.approx(single["ci_low"] - 0.5)
    assert d["ci_high"] == pytest.approx(single["ci_high"] - 0.5)


def test_bad_input_is_refused():
    y, new, old, _ = _data()
    with pytest.raises(MetricsError):
        bootstrap_auroc_difference(y, new, old[:-1])
    with pytest.raises(MetricsError, match="group ids"):
        bootstrap_auroc_difference(y, new, old, groups=[1, 2])
