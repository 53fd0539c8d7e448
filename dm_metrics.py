"""Evaluation metrics: AUROC with bootstrap intervals, operating points, curves.

AUROC with a seeded bootstrap interval, operating points, curves,
and breast-/exam-level aggregation of image scores.
"""
from __future__ import annotations

import logging
from typing import Sequence

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_curve

import dm_output
from dm_errors import InputError

log = logging.getLogger(__name__)


class MetricsError(InputError):
    """Labels or scores that a metric cannot use (one class only, lengths differ, ...)."""


def _check(y, s) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(bool).ravel()
    s = np.asarray(s, np.float64).ravel()
    if len(y) != len(s):
        raise MetricsError(f"{len(y)} labels but {len(s)} scores")
    if not np.all(np.isfinite(s)):
        raise MetricsError("scores contain NaN or infinite values")
    return y, s


def auroc(y, s, sample_weight=None) -> float:
    """Area under the ROC curve (ties count half); needs both classes. The project's one
    AUROC: evaluation, the trainers' validation callback and the original's API use it.

    With `sample_weight`, each (positive, negative) pair counts with the product of their
    weights (the weighted trapezoidal area, as scikit-learn computes it).
    """
    y, s = _check(y, s)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise MetricsError(f"AUROC needs positives and negatives (got {n_pos} and {n_neg})")
    if sample_weight is not None:
        w = np.asarray(sample_weight, np.float64).ravel()
        if len(w) != len(y):
            raise MetricsError(f"{len(y)} labels but {len(w)} weights")
        levels, idx = np.unique(s, return_inverse=True)
        neg_w = np.bincount(idx, weights=w * ~y, minlength=len(levels))
        below = np.concatenate([[0.0], np.cumsum(neg_w)[:-1]])     # negatives scored lower
        pos_w = w * y
        num = float(np.sum(pos_w * (below[idx] + 0.5 * neg_w[idx])))
        return num / float(pos_w.sum() * neg_w.sum())
    r = rankdata(s)
    return float((r[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _resamples(n: int, groups, n_boot: int, seed: int):
    """The seeded bootstrap draws shared by every interval here: `n_boot` index arrays over
    n cases, or over whole groups (each group's cases together) when `groups` is given.
    Returns (draws, number of resampled units)."""
    rng = np.random.default_rng(seed)
    if groups is None:
        return (rng.integers(0, n, n) for _ in range(int(n_boot))), n
    groups = np.asarray(groups).ravel()
    if len(groups) != n:
        raise MetricsError(f"{n} labels but {len(groups)} group ids")
    uniq, inv = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inv == g) for g in range(len(uniq))]
    k = len(uniq)
    return (np.concatenate([members[g] for g in rng.integers(0, k, k)])
            for _ in range(int(n_boot))), k


def _rank_auroc(yb: np.ndarray, sb: np.ndarray) -> float:
    n, n_pos = len(yb), int(yb.sum())
    r = rankdata(sb)
    return (r[yb].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (n - n_pos))


def bootstrap_auroc(y, s, n_boot: int = 2000, seed: int = 12345, level: float = 0.95,
                    groups=None) -> dict:
    """AUROC and its percentile bootstrap interval (resampling cases with replacement).

    With `groups` (one id per case), whole groups are resampled instead (all patches of an
    image, both images of a woman): items of one group are correlated, and resampling them
    one by one gives too narrow an interval. The result then also has `n_groups`; with one
    case per group, the ids sorting in case order, the draws are the case bootstrap's.

    Resamples with a single class are skipped and counted (`n_skipped`). Seeded:
    the same inputs and seed give the same interval.
    """
    y, s = _check(y, s)
    point = auroc(y, s)
    draws, n_units = _resamples(len(y), groups, n_boot, seed)
    vals = []
    skipped = 0
    for idx in draws:
        yb = y[idx]
        n, n_pos = len(idx), int(yb.sum())
        if n_pos == 0 or n_pos == n:
            skipped += 1
            continue
        vals.append(_rank_auroc(yb, s[idx]))
    if not vals:
        raise MetricsError("no bootstrap resample had both classes")
    a = (1 - level) / 2
    lo, hi = np.quantile(vals, [a, 1 - a])
    out = dict(auroc=point, ci_low=float(lo), ci_high=float(hi), ci_level=level,
               n_boot=int(n_boot), n_skipped=skipped, seed=int(seed))
    if groups is not None:
        out["n_groups"] = n_units
    return out


def bootstrap_auroc_difference(y, s_new, s_old, n_boot: int = 2000, seed: int = 12345,
                               level: float = 0.95, groups=None) -> dict:
    """AUROC(s_new) - AUROC(s_old) on the same cases, with a paired percentile interval:
    each resample scores both on the same cases (or groups), so what the two share cancels
    and the interval is the difference's own, narrower than two separate intervals."""
    y, a_new = _check(y, s_new)
    _, a_old = _check(y, s_old)
    point = auroc(y, a_new) - auroc(y, a_old)
    draws, n_units = _resamples(len(y), groups, n_boot, seed)
    vals = []
    for idx in draws:
        yb = y[idx]
        if 0 < int(yb.sum()) < len(idx):
            vals.append(_rank_auroc(yb, a_new[idx]) - _rank_auroc(yb, a_old[idx]))
    if not vals:
        raise MetricsError("no bootstrap resample had both classes")
    a = (1 - level) / 2
    lo, hi = np.quantile(vals, [a, 1 - a])
    out = dict(difference=float(point), ci_low=float(lo), ci_high=float(hi), ci_level=level,
               n_boot=int(n_boot), n_skipped=int(n_boot) - len(vals), seed=int(seed),
               p_le_0=float(np.mean(np.asarray(vals) <= 0)))
    if groups is not None:
        out["n_groups"] = n_units
    return out


def sens_spec(y, s, threshold: float) -> dict:
    """Sensitivity and specificity when `score >= threshold` calls positive."""
    y, s = _check(y, s)
    pred = s >= threshold
    tp, fn = int(np.sum(pred & y)), int(np.sum(~pred & y))
    tn, fp = int(np.sum(~pred & ~y)), int(np.sum(pred & ~y))
    return dict(threshold=float(threshold),
                sensitivity=tp / (tp + fn) if tp + fn else float("nan"),
                specificity=tn / (tn + fp) if tn + fp else float("nan"),
                tp=tp, fn=fn, tn=tn, fp=fp)


def at_sensitivity(y, s, target: float) -> dict:
    """The operating point with the highest threshold whose sensitivity reaches `target`."""
    y, s = _check(y, s)
    if not 0 < target <= 1:
        raise MetricsError(f"target sensitivity must be in (0, 1], got {target}")
    pos = np.sort(s[y])[::-1]
    if len(pos) == 0:
        raise MetricsError("no positives: sensitivity is undefined")
    k = int(np.ceil(target * len(pos))) - 1          # need at least k+1 positives called
    out = sens_spec(y, s, float(pos[k]))
    out["target_sensitivity"] = float(target)
    return out


def aggregate(groups: Sequence[tuple], y, s, how: str = "max") -> tuple[list[tuple], np.ndarray, np.ndarray]:
    """One score per group (max or mean of its images) and label (positive if any image is)."""
    if how not in ("max", "mean"):
        raise MetricsError(f"aggregate must be 'max' or 'mean', got {how!r}")
    y, s = _check(y, s)
    keys: dict[tuple, list[int]] = {}
    for i, g in enumerate(groups):
        keys.setdefault(tuple(g), []).append(i)
    names = sorted(keys)
    fn = np.max if how == "max" else np.mean
    ys = np.array([y[keys[k]].any() for k in names])
    ss = np.array([fn(s[keys[k]]) for k in names])
    return names, ys, ss


def _save_fig(fig, path: str) -> None:
    dm_output.write_named(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"), ".png")


def pr_points(y, s) -> tuple[np.ndarray, np.ndarray]:
    """Precision-recall as the average precision counts it: one point per recall value
    (its highest precision), recall ascending, starting at recall 0."""
    y, s = _check(y, s)
    prec, rec, _ = precision_recall_curve(y, s)
    best: dict[float, float] = {}
    for r, p in zip(rec, prec):
        best[float(r)] = max(p, best.get(float(r), 0.0))
    r = np.array(sorted(best))
    p = np.array([best[v] for v in r])
    if r[0] > 0:
        r, p = np.concatenate([[0.0], r]), np.concatenate([[p[0]], p])
    return r, p


def _plt():
    matplotlib.use("Agg")
    return plt


def plot_curves(y, s, roc_path: str, pr_path: str, title: str = "",
                ci: tuple[float, float] | None = None) -> dict[str, str]:
    """ROC (with the AUROC's interval `ci` in its legend when given) and precision-recall
    curves as two PNGs (written atomically); returns the two legend labels."""
    plt = _plt()
    y, s = _check(y, s)
    fpr, tpr, _ = roc_curve(y, s)
    fig, ax = plt.subplots(figsize=(5, 5))
    label = f"AUROC {auroc(y, s):.3f}"
    if ci is not None:
        label += f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})"
    ax.plot(fpr, tpr, lw=2, label=label)
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01),
           title=f"ROC {title}".strip())
    ax.legend(loc="lower right")
    _save_fig(fig, roc_path)
    plt.close(fig)
    # Steps drawn from the de-duplicated points: the raw curve, drawn as steps in its
    # decreasing-recall order, left a spike at every negative (issue 12, item 14).
    rec, prec = pr_points(y, s)
    fig, ax = plt.subplots(figsize=(5, 5))
    pr_label = f"AP {average_precision_score(y, s):.3f}"
    ax.step(rec, prec, where="pre", lw=2, label=pr_label)
    ax.axhline(y.mean(), ls="--", color="grey", lw=1, label=f"prevalence {y.mean():.3f}")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01),
           title=f"Precision-recall {title}".strip())
    ax.legend(loc="lower left")
    _save_fig(fig, pr_path)
    plt.close(fig)
    return dict(roc=label, pr=pr_label)


# ------------------------------------------------------------------ calibration metrics


def reliability(y, s, n_bins: int = 10) -> dict:
    """Reliability curve on equal-width score bins, with the expected calibration error
    (count-weighted mean |observed rate - mean score| over non-empty bins) and the Brier
    score (mean squared error of the score as a probability of the positive class)."""
    y, s = _check(y, s)
    if n_bins < 1:
        raise MetricsError(f"n_bins must be >= 1, got {n_bins}")
    if np.any((s < 0) | (s > 1)):
        raise MetricsError("calibration needs probabilities in [0, 1]")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, n_bins - 1)
    bins = []
    ece = 0.0
    for b in range(n_bins):
        m = idx == b
        n = int(m.sum())
        mean_s = float(s[m].mean()) if n else None
        rate = float(y[m].mean()) if n else None
        if n:
            ece += n / len(s) * abs(rate - mean_s)
        bins.append(dict(low=float(edges[b]), high=float(edges[b + 1]), n=n,
                         n_pos=int(y[m].sum()), mean_score=mean_s, observed_rate=rate))
    return dict(ece=float(ece), brier=float(np.mean((s - y) ** 2)), n_bins=int(n_bins),
                bins=bins)


def plot_reliability(rel: dict, path: str, title: str = "") -> None:
    """Reliability diagram: observed rate against mean score per bin, counts underneath."""
    plt = _plt()
    full = [b for b in rel["bins"] if b["n"]]
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(5, 6), sharex=True,
                                  gridspec_kw=dict(height_ratios=[3, 1]))
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfectly calibrated")
    ax.plot([b["mean_score"] for b in full], [b["observed_rate"] for b in full], "o-", lw=2,
            label=f"ECE {rel['ece']:.3f}, Brier {rel['brier']:.3f}")
    ax.set(ylabel="observed fraction positive", xlim=(0, 1), ylim=(0, 1.01),
           title=f"Reliability {title}".strip())
    ax.legend(loc="upper left")
    width = 1.0 / rel["n_bins"]
    axc.bar([b["low"] for b in rel["bins"]], [b["n"] for b in rel["bins"]], width=width,
            align="edge", color="#8aa", edgecolor="white")
    for b in rel["bins"]:
        if b["n"]:
            axc.text(b["low"] + width / 2, b["n"], str(b["n"]), ha="center", va="bottom",
                     fontsize=7)
    axc.set(xlabel="predicted probability (bin)", ylabel="images", xlim=(0, 1))
    axc.set_ylim(0, max(b["n"] for b in rel["bins"]) * 1.25 + 1)
    fig.tight_layout()
    _save_fig(fig, path)
    plt.close(fig)
