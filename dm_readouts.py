"""Image scores read out of a patch map without training: multiple-instance readouts.

A patch classifier's sliding-window map holds one lesion score per window. Its maximum is
the obvious image score, but over hundreds of windows of a normal breast the maximum is
often as high as over a lesion; the mean of the top few percent, or a log-sum-exp, is
steadier. The bilateral readout subtracts the same readout of the woman's other breast,
which cancels what the two breasts share (density, exposure, the woman's tissue) and keeps
what one breast has and the other has not (docs/mias.md).
"""
from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

from dm_errors import InputError

# name -> (kind, parameter): "top" takes a fraction of the windows, "lse" a sharpness r
READOUTS: dict[str, tuple[str, float]] = {
    "max": ("top", 0.0), "top1": ("top", 0.01), "top2": ("top", 0.02),
    "top5": ("top", 0.05), "top10": ("top", 0.10), "lse": ("lse", 10.0),
}


def window_values(score_map: ArrayLike, inside: ArrayLike | None = None) -> np.ndarray:
    """The finite scores of a map, inside the breast when a mask is given (a map whose
    breast holds fewer than 4 windows is read whole), sorted high to low."""
    v = np.asarray(score_map, np.float64)
    if inside is not None:
        m = np.asarray(inside, bool)
        if m.shape != v.shape:
            raise InputError(f"mask shape {m.shape} differs from the map's {v.shape}")
        if m.sum() >= 4:
            v = v[m]
    v = v[np.isfinite(v)].ravel()
    if v.size == 0:
        raise InputError("the map has no finite score")
    return np.sort(v)[::-1]


def readout(values: ArrayLike, name: str) -> float:
    """One readout of scores sorted high to low (`window_values`): `max`, `topT` (mean of
    the highest T percent, at least one window) or `lse` (log of the mean of exp(r s), / r:
    between the mean (r -> 0) and the maximum (r -> inf))."""
    if name not in READOUTS:
        raise InputError(f"unknown readout {name!r} (use one of {', '.join(READOUTS)})")
    v = np.asarray(values, np.float64)
    kind, p = READOUTS[name]
    if kind == "top":
        return float(v[:max(1, int(round(p * v.size)))].mean())
    m = v.max()
    return float(m + np.log(np.mean(np.exp(p * (v - m)))) / p)


def map_readouts(score_map: ArrayLike, inside: ArrayLike | None = None,
                 names: Sequence[str] = tuple(READOUTS)) -> dict[str, float]:
    """Every named readout of one map."""
    v = window_values(score_map, inside)
    return {n: readout(v, n) for n in names}


def bilateral(scores: Mapping[Hashable, float], other: Mapping[Hashable, Hashable]
              ) -> dict[Hashable, float]:
    """Each image's score minus its other breast's (`other`: image -> the other breast's
    image); images whose other breast has no score get NaN."""
    return {k: (s - scores[other[k]]) if other.get(k) in scores else float("nan")
            for k, s in scores.items()}
