"""The HTML evaluation report: one self-contained folder.

One self-contained folder (index.html, report.css,
report.js, the curve PNGs and a cases/ folder of thumbnails and heatmap overlays) that
opens from the file system, without a server or the internet.

It shows the summary table of evaluate.py (every number is the one in summary.json),
the ROC, precision-recall and reliability plots, and the cases behind the numbers: the
highest-scored negatives, the lowest-scored positives and the most confident true
positives, each with its thumbnail, score, label and, when a model is given, its
heatmap (Grad-CAM of a whole-image model, sliding-window scores of a patch model).
"""
from __future__ import annotations

import html
import logging
import os
import pathlib
import shutil
from dataclasses import dataclass

import cv2
import numpy as np

import dm_heatmaps
import dm_output
import dm_overlay
import dm_pixels
import dm_recipe
import dm_scoring

log = logging.getLogger(__name__)

ASSETS = pathlib.Path(__file__).resolve().parent / "dm_report_assets"
CASES_DIR = "cases"
GALLERIES = (
    ("fp", "Highest-scored negatives", "negatives the model scores highest (false-positive candidates)"),
    ("fn", "Lowest-scored positives", "positives the model scores lowest (missed cancers)"),
    ("tp", "Most confident true positives", "positives the model scores highest"),
)


@dataclass
class Case:
    """One image of a gallery: where it is, its label and score, and its pictures."""

    gallery: str
    rank: int
    path: str
    positive: bool
    score: float
    thumb: str | None = None       # relative to the report folder
    overlay: str | None = None


def pick_cases(y: np.ndarray, s: np.ndarray, k: int) -> dict[str, list[int]]:
    """Row indices of each gallery, `k` at most, in display order (stable on ties)."""
    y = np.asarray(y, bool)
    s = np.asarray(s, float)
    neg, pos = np.flatnonzero(~y), np.flatnonzero(y)
    by_score_desc = lambda idx: idx[np.argsort(-s[idx], kind="stable")]  # noqa: E731
    return dict(fp=by_score_desc(neg)[:k].tolist(),
                fn=pos[np.argsort(s[pos], kind="stable")][:k].tolist(),
                tp=by_score_desc(pos)[:k].tolist())


def _thumb(img: np.ndarray, height: int) -> np.ndarray:
    h, w = img.shape[:2]
    if h <= height:
        return img
    return cv2.resize(img, (max(1, round(w * height / h)), height), interpolation=cv2.INTER_AREA)


class Heatmapper:
    """Heatmap overlays from a model: Grad-CAM for a whole-image model, sliding-window
    scores (1 - p(background), or the last class) for a patch model, and a
    multiple-instance model's own window map (`dm_mil`; a bilateral model's too, which
    needs no pair for it)."""

    def __init__(self, model_path: str, pos_class: str, unsafe_load: bool = False):
        self.loaded = dm_scoring.load_models([model_path], safe_mode=not unsafe_load)[0]
        self.kind = self.loaded.kind or "image"
        self.classes = list(self.loaded.class_list or [])
        self.recipe = self.loaded.recipe()
        self.cls = (self.classes.index(pos_class) if pos_class in self.classes
                    else int(self.loaded.model.outputs[0].shape[-1]) - 1)

    def overlay(self, path: str) -> np.ndarray:
        img = dm_pixels.read_image(path)
        if self.kind == "patch":
            # the image at its own size (as heatmap_score.py without --img-size)
            ps = int(self.loaded.input_hw[0] or self.recipe.img_size[0])
            hm = dm_heatmaps.sliding_window_heatmap(self.loaded.model, img, self.recipe, ps,
                                            max(1, ps // 2))
            ch = (1 - hm.probs[..., 0]) if self.classes[:1] == ["background"] else hm.probs[..., -1]
            return dm_overlay.overlay_heatmap(hm.image, dm_overlay.place_heatmap(ch, hm.image.shape,
                                                                   hm.centre0, hm.stride))
        x = dm_recipe.preprocess(img, self.recipe)[None]
        if any(l.name == "mil_pool" for l in self.loaded.model.layers):
            net = dm_heatmaps.fprop_model(self.loaded.model, self.recipe.img_size)
            probs = net.predict(x, verbose=0)[0]
            cam = 1 - probs[..., 0]          # the window map's lesion score
        else:
            cam = dm_heatmaps.grad_cam(self.loaded.model, x, self.cls)[0]
        grey = dm_recipe.resize(img, self.recipe)
        return dm_overlay.overlay_heatmap(grey, dm_overlay.place_heatmap(cam, grey.shape))


def draw_cases(out_dir: str, paths: list[str], y, s, k: int, thumb_height: int = 256,
               heatmapper: Heatmapper | None = None) -> list[Case]:
    """Write the thumbnails (and overlays) of the gallery cases; unreadable images are
    listed without a picture and logged."""
    cases, done = [], {}
    os.makedirs(os.path.join(out_dir, CASES_DIR), exist_ok=True)
    for gallery, rows in pick_cases(y, s, k).items():
        for rank, i in enumerate(rows, 1):
            c = Case(gallery, rank, paths[i], bool(y[i]), float(s[i]))
            if i not in done:
                stem = f"{i:05d}_{pathlib.Path(paths[i]).stem}"
                thumb = overlay = None
                try:
                    grey = dm_overlay.to_display(dm_pixels.read_image(paths[i]))
                except (OSError, ValueError) as e:
                    log.warning("report: no thumbnail for %s (%s)", paths[i], e)
                    grey = None
                if grey is not None:
                    thumb = f"{CASES_DIR}/{stem}.png"
                    dm_pixels.write_png(os.path.join(out_dir, thumb), _thumb(grey, thumb_height))
                    if heatmapper is not None:
                        overlay = f"{CASES_DIR}/{stem}_heatmap.png"
                        dm_pixels.write_png(os.path.join(out_dir, overlay),
                                      _thumb(heatmapper.overlay(paths[i]), thumb_height))
                done[i] = (thumb, overlay)
            c.thumb, c.overlay = done[i]
            cases.append(c)
    keep = {os.path.basename(p) for pair in done.values() for p in pair if p}
    for old in pathlib.Path(out_dir, CASES_DIR).glob("*.png"):   # from an earlier report
        if old.name not in keep:
            old.unlink()
    return cases


# ------------------------------------------------------------------------------ HTML


def _num(v, fmt: str = "{:.3f}") -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    return fmt.format(v)


def _td(key: str, v, fmt: str = "{:.3f}") -> str:
    val = "" if v is None else f' data-value="{float(v)!r}"'
    return f'<td data-key="{html.escape(key)}"{val}>{_num(v, fmt)}</td>'


def summary_table(summary: dict) -> str:
    """The summary table: one row per level; cells carry `data-key` (level.field) and the
    exact value in `data-value`, the text is rounded to 3 decimals."""
    levels = summary["levels"]
    first = next((lv for lv in levels if "error" not in lv), {})
    heads = ["level", "images", "positives", "AUROC", "95% CI"]
    for t in first.get("thresholds", []):
        heads += [f"sensitivity @ {t['threshold']:g}", f"specificity @ {t['threshold']:g}"]
    for t in first.get("at_sensitivity", []):
        heads += [f"threshold for sensitivity {t['target_sensitivity']:g}",
                  f"specificity @ sensitivity {t['target_sensitivity']:g}"]
    heads += ["ECE", "Brier"]
    rows = []
    for lv in levels:
        n = lv["level"]
        cells = [f'<td data-key="{n}.level">{html.escape(n)}</td>',
                 _td(f"{n}.n", lv["n"], "{:.0f}"), _td(f"{n}.n_pos", lv["n_pos"], "{:.0f}")]
        if "error" in lv:
            cells.append(f'<td class="error" colspan="{len(heads) - 3}">'
                         f'{html.escape(lv["error"])}</td>')
        else:
            cells += [_td(f"{n}.auroc", lv["auroc"]),
                      f'<td data-key="{n}.ci" data-value="{lv["ci_low"]!r}">'
                      f'{lv["ci_low"]:.3f}-{lv["ci_high"]:.3f}</td>']
            for j, t in enumerate(lv["thresholds"]):
                cells += [_td(f"{n}.thresholds.{j}.sensitivity", t["sensitivity"]),
                          _td(f"{n}.thresholds.{j}.specificity", t["specificity"])]
            for j, t in enumerate(lv["at_sensitivity"]):
                cells += [_td(f"{n}.at_sensitivity.{j}.threshold", t["threshold"], "{:.4f}"),
                          _td(f"{n}.at_sensitivity.{j}.specificity", t["specificity"])]
            cal = lv.get("calibration", {})
            cells += [_td(f"{n}.calibration.ece", cal.get("ece")),
                      _td(f"{n}.calibration.brier", cal.get("brier"))]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    head = "".join(f"<th>{html.escape(h)}</th>" for h in heads)
    return (f'<table id="summary" class="sortable"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _rel(path: str, out_dir: str) -> str:
    return pathlib.Path(os.path.relpath(path, out_dir)).as_posix()


def _plots(summary: dict, out_dir: str) -> str:
    parts = []
    for lv in summary["levels"]:
        if not lv.get("plots"):
            continue
        imgs = "".join(f'<img class="plot" src="{html.escape(_rel(p, out_dir))}" '
                       f'alt="{html.escape(os.path.basename(p))}">' for p in lv["plots"])
        parts.append(f'<h3>{html.escape(lv["level"])} level (n={lv["n"]})</h3>'
                     f'<div class="plots">{imgs}</div>')
    return "".join(parts) or "<p>No plots (--no-plots).</p>"


def _gallery(cases: list[Case], label_names: tuple[str, str]) -> str:
    parts = []
    for key, title, what in GALLERIES:
        cards = []
        for c in (c for c in cases if c.gallery == key):
            pics = "".join(f'<img src="{html.escape(p)}" alt="{html.escape(alt)}">'
                           for p, alt in ((c.thumb, "image"), (c.overlay, "heatmap")) if p)
            if not c.thumb:
                pics = '<div class="missing">image not readable</div>'
            cards.append(
                f'<figure class="case" data-gallery="{key}" data-score="{c.score!r}">{pics}'
                f'<figcaption><b>#{c.rank}</b> score <span class="score">{c.score:.3f}</span>'
                f' &middot; label <span class="label">{html.escape(label_names[c.positive])}</span>'
                f'<br><span class="path" title="{html.escape(c.path)}">'
                f'{html.escape(os.path.basename(c.path))}</span></figcaption></figure>')
        body = "".join(cards) or "<p>none</p>"
        parts.append(f'<section class="gallery" id="gallery-{key}"><h3>{title}</h3>'
                     f'<p class="what">{what}</p><div class="cards">{body}</div></section>')
    return "".join(parts)


def _all_images(paths: list[str], y, s, label_names: tuple[str, str]) -> str:
    order = np.argsort(-np.asarray(s), kind="stable")
    rows = "".join(
        f'<tr><td data-value="{r}">{r}</td><td>{html.escape(paths[i])}</td>'
        f'<td>{html.escape(label_names[bool(y[i])])}</td>'
        f'<td data-value="{float(s[i])!r}">{float(s[i]):.4f}</td></tr>'
        for r, i in enumerate(order, 1))
    return ('<table id="images" class="sortable"><thead><tr><th>rank</th><th>path</th>'
            f'<th>label</th><th>score</th></tr></thead><tbody>{rows}</tbody></table>')


def write_report(out_dir: str, summary: dict, paths: list[str], y, s, cases: list[Case],
                 label_names: tuple[str, str] = ("negative", "positive"),
                 notes: list[str] | None = None) -> str:
    """Write index.html and its assets into `out_dir`; returns the index.html path."""
    os.makedirs(out_dir, exist_ok=True)
    for name in ("report.css", "report.js"):
        shutil.copyfile(ASSETS / name, os.path.join(out_dir, name))
    # File names only: the report is meant to be sent, and a full path says nothing to its
    # reader but where things were on the author's disk.
    meta = [f"predictions: {html.escape(os.path.basename(summary['predictions']))}",
            f"positive class: <b>{html.escape(summary['pos_class'])}</b>",
            f"breast/exam score: {html.escape(summary['aggregate'])} of the images"]
    meta += [html.escape(n) for n in (notes or [])]
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Evaluation report</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="report.css">
</head><body>
<h1>Evaluation report</h1>
<p class="meta">{'<br>'.join(meta)}</p>
<h2>Summary</h2>
<p class="what">AUROC with its {next((lv['ci_level'] for lv in summary['levels'] if 'ci_level' in lv), 0.95):.0%} bootstrap interval; sensitivity and
specificity at the chosen thresholds (score &ge; threshold calls positive); calibration:
expected calibration error (ECE) and Brier score. Click a column to sort.</p>
{summary_table(summary)}
<h2>Curves</h2>
{_plots(summary, out_dir)}
<h2>Cases behind the numbers</h2>
{_gallery(cases, label_names)}
<h2>All images</h2>
{_all_images(paths, y, s, label_names)}
<script src="report.js"></script>
</body></html>
"""
    index = os.path.join(out_dir, "index.html")
    dm_output.atomic_write(index, lambda f: f.write(page), text=True)
    return index


# ------------------------------------------------------------------------------ localisation

_LOC_START, _LOC_END = "<!-- localisation -->", "<!-- /localisation -->"


def localisation_section(loc: dict, out_dir: str) -> str:
    """The localisation figures of `dm_localisation` (its summary) as a table per map kind,
    beside the chance and brightest-pixel baselines, and its per-image figure."""
    st = loc["settings"]
    ci = lambda v: f"{v[0]:.3f}-{v[1]:.3f}" if v else "n/a"  # noqa: E731
    heads = ["map", "images", "pointing game", "95% CI", "chance", "brightest pixel",
             "mass in lesions", "Dice (threshold)", "top-k found (images)"]
    rows = []
    for kind in ("sliding", "fprop", "gradcam"):
        k = loc.get(kind)
        if not k:
            continue
        dice = (f"{k['dice']:.3f} ({k['dice_threshold']:g})" if k.get("dice") is not None
                else "n/a")
        topk = (f"{k['topk_found']:.3f} ({k['n_multi_lesion_images']})"
                if k.get("topk_found") is not None else "n/a")
        cells = [html.escape(kind), str(k["n_images"]), _num(k["pointing_game"]),
                 ci(k.get("pointing_game_ci")), _num(k["pointing_game_chance"]),
                 _num(k["pointing_game_brightest"]), _num(k["mass_fraction"]), dice, topk]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    head = "".join(f"<th>{html.escape(h)}</th>" for h in heads)
    fig = loc.get("files", {}).get("figure")
    img = (f'<div class="plots"><img class="plot" src="{html.escape(_rel(fig, out_dir))}" '
           f'alt="localisation"></div>' if fig else "")
    return (f'{_LOC_START}<h2>Localisation</h2><p class="what">Does the map point at the '
            f'lesion? Pointing game: the map\'s maximum in the breast lies within '
            f'{st["tolerance_mm"]:g} mm of a lesion mask (pixel {st["pixel_size_mm"][0]:.3g} mm, '
            f'{html.escape(st["pixel_size_from"])}); chance: a random breast point; '
            f'{st["ci_level"]:.0%} intervals resample images (docs/localisation.md).</p>'
            f'<table id="localisation"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>{img}{_LOC_END}')


def add_localisation(index: str, loc: dict) -> None:
    """Put (or replace) the localisation section in a written report, before its cases."""
    page = pathlib.Path(index).read_text()
    if _LOC_START in page:
        page = page[:page.index(_LOC_START)] + page[page.index(_LOC_END) + len(_LOC_END):]
    marker = "<h2>Cases behind the numbers</h2>"
    section = localisation_section(loc, os.path.dirname(index)) + "\n"
    page = page.replace(marker, section + marker) if marker in page else \
        page.replace("</body>", section + "</body>")
    dm_output.atomic_write(index, lambda f: f.write(page), text=True)
