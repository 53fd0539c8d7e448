"""mias_train/cv_readouts.py: readouts chosen per fold on inner validation, and the paired
gain of the best bilateral readout over the best one-view one, on a synthetic table."""
import numpy as np
import pandas as pd
import pytest

from mias_train import cv_readouts as ro


def _table(seed=0, n_women=40):
    """Two folds, test and val women with two breasts each; one breast of every second woman
    is abnormal (every second of them malignant). `les_max` carries the lesion plus a strong
    woman-level trait that the bilateral difference cancels; every other readout is noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in (0, 1):
        for part in ("test", "val"):
            for w in range(n_women):
                trait = rng.normal(0, 1.5)
                sick = w % 2 == 0
                for side in (0, 1):
                    label = (2 if w % 4 == 0 else 1) if (sick and side == 0) else 0
                    row = dict(fold=k, part=part, image_id=f"{k}{part}{w}_{side}",
                               woman=f"W{k}{part}{w}", label=label)
                    for c in ro.one_view():
                        row[c] = rng.normal()
                    row["les_max"] = trait + 1.5 * (label > 0) + rng.normal(0, 0.2)
                    rows.append(row)
    T = pd.DataFrame(rows)
    for c in ro.one_view():
        other = T.groupby(["fold", "part", "woman"])[c].transform(lambda s: s.iloc[::-1].to_numpy())
        T[f"bi_{c}"] = T[c] - other
    return T


def test_choose_picks_the_inner_validation_best_among_its_kind():
    T = _table()
    assert ro.choose(T, "abnormal_vs_normal") == {0: "bi_les_max", 1: "bi_les_max"}
    assert ro.choose(T, "abnormal_vs_normal", ro.one_view()) == {0: "les_max", 1: "les_max"}


def test_bilateral_gain_is_paired_and_positive_when_the_other_breast_cancels_the_woman():
    T = _table()
    I = T[T["part"] == "test"][["image_id", "woman", "label"]].assign(
        p_normal=0.5, p_malignant=0.5)
    r = ro.mil_readouts(T, I, n_boot=200, seed=1)["abnormal_vs_normal"]
    g = r["bilateral_minus_one_view"]
    assert set(g["chosen_bilateral"].values()) == {"bi_les_max"}
    assert set(g["chosen_one_view"].values()) == {"les_max"}
    test = T[T["part"] == "test"]
    y = test["label"].to_numpy() > 0
    expect = ro._auc(y, test["bi_les_max"].to_numpy()) - ro._auc(y, test["les_max"].to_numpy())
    assert g["difference"] == pytest.approx(expect, abs=1e-4)
    assert g["ci_low"] > 0 and g["n_groups"] == 80
    assert r["image_level"]["auroc"] > 0.95
    m = r["minus_map_max"]              # the chosen bilateral readout against les_max
    assert m["difference"] == pytest.approx(g["difference"], abs=1e-4) and m["ci_low"] > 0
