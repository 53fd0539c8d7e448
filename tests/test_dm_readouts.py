"""Multiple-instance readouts of a patch map (dm_readouts)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from dm_errors import InputError
from dm_readouts import READOUTS, bilateral, map_readouts, readout, window_values


def test_readouts_of_a_known_map():
    """100 windows valued 0..99: the top 1% is 99, top 2% the mean of 99 and 98, top 5% of
    95-99, top 10% of 90-99; lse lies between the mean and the maximum."""
    m = np.arange(100, dtype=float).reshape(10, 10) / 100
    r = map_readouts(m)
    assert r["max"] == pytest.approx(0.99)
    assert r["top1"] == pytest.approx(0.99)
    assert r["top2"] == pytest.approx(0.985)
    assert r["top5"] == pytest.approx(0.97)
    assert r["top10"] == pytest.approx(0.945)
    lse = math.log(np.mean(np.exp(10 * m))) / 10
    assert r["lse"] == pytest.approx(lse)
    assert m.mean() < r["lse"] < m.max()
    assert set(r) == set(READOUTS)


def test_inside_mask_and_nan_are_left_out():
    m = np.zeros((4, 4))
    m[0, 0] = 0.9          # outside the breast
    m[1, 1] = np.nan       # no window there
    inside = np.zeros((4, 4), bool)
    inside[1:, 1:] = True
    m[2, 2] = 0.5
    v = window_values(m, inside)
    assert v[0] == 0.5 and len(v) == 8
    # a breast of fewer than 4 windows: the whole map is read
    tiny = np.zeros((4, 4), bool)
    tiny[3, 3] = True
    assert window_values(m, tiny)[0] == 0.9


def test_bad_maps_and_names_are_refused():
    with pytest.raises(InputError, match="no finite score"):
        window_values(np.full((3, 3), np.nan))
    with pytest.raises(InputError, match="unknown readout"):
        readout([1.0], "median")
    with pytest.raises(InputError, match="mask shape"):
        window_values(np.zeros((3, 3)), np.ones((2, 2), bool))


def test_lse_is_stable_for_large_scores():
    v = window_values(np.array([1000.0, 999.0]))
    assert np.isfinite(readout(v, "lse"))


def test_bilateral_subtracts_the_other_breast():
    scores = {"a_L": 0.9, "a_R": 0.4, "b_L": 0.2}
    other = {"a_L": "a_R", "a_R": "a_L", "b_L": "b_R"}
    d = bilateral(scores, other)
    assert d["a_L"] == pytest.approx(0.5) and d["a_R"] == pytest.approx(-0.5)
    assert math.isnan(d["b_L"])
