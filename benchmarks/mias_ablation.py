"""The mini-MIAS ablation table (docs/mias.md) from finished cross-validation runs.

    python benchmarks/mias_ablation.py "today's chain=runs/cv_base" \
        "+ learned pooling head=runs/cv_pool" ... [--readouts "+ MIL readouts=runs/cv_base"]

Each row is one run's pooled out-of-fold whole-image AUROC (95% interval, women resampled)
for abnormal vs normal and malignant vs rest, at image level and at woman level (her
highest image score), and its paired difference to the run it was compared with
(`cross_validate.py --compare-with`). A `--readouts` row reads the run's multiple-instance
readouts chosen on inner validation instead of its trained whole-image model. The
baselines (breast grey level, the maximum of the patch map) come from the first run. Reads
summary.json files only; prints Markdown.
"""
from __future__ import annotations

import argparse
import json
import pathlib

TASKS = ("abnormal_vs_normal", "malignant_vs_rest")


def _ci(r: dict) -> str:
    return f"{r['auroc']:.3f} ({r['ci_low']:.3f}-{r['ci_high']:.3f})"


def _diff(r: dict | None) -> str:
    if not r:
        return "-"
    return f"{r['difference']:+.3f} ({r['ci_low']:+.3f} to {r['ci_high']:+.3f})"


def network_row(s: dict) -> dict:
    """A run's trained whole-image figures."""
    pooled = s["pooled"]
    comp = s.get("compared_with") or {}
    return {t: dict(image=pooled[f"image_{t}"]["network"],
                    woman=(s.get("network_by_woman") or {}).get(t),
                    diff=comp.get(t)) for t in TASKS}


def readout_row(s: dict) -> dict:
    """A run's readouts chosen on inner validation; the difference is to the same run's
    trained whole-image model."""
    m = s["mil_readouts"]
    return {t: dict(image=m[t]["image_level"], woman=m[t]["woman_level"],
                    diff=m[t]["minus_network"]) for t in TASKS}


def table(rows: list[tuple[str, dict]]) -> str:
    head = ("| row | abnormal vs normal, image | malignant vs rest, image | abnormal, woman | "
            "malignant, woman | paired difference, abnormal | paired difference, malignant |")
    out = [head, "|" + "---|" * 7]
    for name, r in rows:
        out.append(f"| {name} | " + " | ".join(
            [_ci(r[t]["image"]) for t in TASKS]
            + [_ci(r[t]["woman"]) if r[t]["woman"] else "-" for t in TASKS]
            + [_diff(r[t]["diff"]) for t in TASKS]) + " |")
    return "\n".join(out)


def baselines(s: dict) -> str:
    p, hm = s["pooled"], s["image_score_from_patch_heatmap_max"]
    return ("Baselines (same folds): breast grey level, abnormal "
            f"{_ci(p['image_abnormal_vs_normal']['baseline_breast_grey'])}, malignant "
            f"{_ci(p['image_malignant_vs_rest']['baseline_breast_grey'])}; patch-map maximum, "
            f"abnormal {_ci(hm['abnormal_vs_normal'])}, malignant {_ci(hm['malignant_vs_rest'])}.")


def readout_checks(name: str, s: dict) -> str:
    """A readout row's paired checks: its best bilateral readout minus its best one-view
    readout, and its chosen readout minus the lesion map's maximum."""
    m = s["mil_readouts"]
    if not all("bilateral_minus_one_view" in m[t] for t in TASKS):
        return ""
    g = [_diff(m[t]["bilateral_minus_one_view"]) for t in TASKS]
    text = (f"{name}: bilateral minus one-view readout (each chosen per fold on inner "
            f"validation among its kind), paired: abnormal {g[0]}, malignant {g[1]}.")
    if all("minus_map_max" in m[t] for t in TASKS):
        b = [_diff(m[t]["minus_map_max"]) for t in TASKS]
        text += (f" Chosen readout minus the lesion map's maximum, paired: abnormal {b[0]}, "
                 f"malignant {b[1]}.")
    return text


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", metavar="NAME=RUN", help="trained whole-image rows")
    ap.add_argument("--readouts", nargs="*", default=[], metavar="NAME=RUN",
                    help="rows of readouts chosen on inner validation")
    ap.add_argument("--after", nargs="*", default=[], metavar="NAME=RUN",
                    help="trained rows printed after the readout rows")
    a = ap.parse_args(argv)

    def load(spec: str) -> tuple[str, dict]:
        name, _, path = spec.partition("=")
        return name, json.loads((pathlib.Path(path) / "summary.json").read_text())
    first = load(a.runs[0])[1]
    rows = [(n, network_row(s)) for n, s in map(load, a.runs)]
    rows += [(n, readout_row(s)) for n, s in map(load, a.readouts)]
    rows += [(n, network_row(s)) for n, s in map(load, a.after)]
    checks = [c for c in (readout_checks(n, s) for n, s in map(load, a.readouts)) if c]
    text = "\n\n".join([table(rows), baselines(first), *checks])
    print(text)
    return text


if __name__ == "__main__":
    main()
