"""The HTML evaluation report (evaluate.py --html, dm_report.py): gallery choice, files,
and the page itself opened in a real headless Chromium (skipped where it is absent)."""
import json
import os
import pathlib
import re

import numpy as np
import pytest

import dm_report
import dm_evaluate
from tiny_models import save, tiny_image_model, tiny_patch_model, write_images


def test_pick_cases_orders_each_gallery():
    y = np.array([0, 0, 0, 1, 1, 1, 0])
    s = np.array([0.9, 0.1, 0.5, 0.2, 0.95, 0.6, 0.7])
    got = dm_report.pick_cases(y, s, 2)
    assert got == dict(fp=[0, 6], fn=[3, 5], tp=[4, 5])


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """evaluate.py --html with Grad-CAM overlays of a tiny whole-image model, on 16 images
    with patient/side columns (three levels) and one image whose file is missing."""
    d = tmp_path_factory.mktemp("report")
    model = save(tiny_image_model(tiny_patch_model(), seed=5), d / "m.keras", "image")
    paths = write_images(d / "img", 16, seed=20)
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1, 0, 0, 1, 1, 0, 1], 2)        # per breast; exams mixed too
    s = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, 16), 0.001, 0.999)
    os.remove(paths[0])                 # a negative: picked by a gallery, drawn as missing
    s[0] = 0.99
    with open(d / "preds.csv", "w") as f:
        f.write("path,neg,pos,label,patient_id,side\n")
        f.writelines(f"{p},{1 - v:.6f},{v:.6f},{k},P{i // 4},{'LR'[(i // 2) % 2]}\n"
                     for i, (p, v, k) in enumerate(zip(paths, s, y)))
    out = d / "rep"
    (out / "cases").mkdir(parents=True)
    (out / "cases" / "stale.png").write_bytes(b"left by an earlier report")
    rc = dm_evaluate.main([str(d / "preds.csv"), "--out-dir", str(out), "--n-boot", "200",
                        "--thresholds", "0.4", "0.6", "--html", "--model", str(model),
                        "--gallery-size", "3", "--thumb-height", "48"])
    assert rc == 0
    return out, json.loads((out / "summary.json").read_text()), paths


def test_report_folder_is_self_contained(report):
    out, summary, paths = report
    assert summary["html"] == str(out / "index.html")
    page = (out / "index.html").read_text()
    for name in ("report.css", "report.js"):
        assert (out / name).is_file() and f'"{name}"' in page
    assert "http://" not in page and "https://" not in page       # nothing from the internet
    thumbs = sorted(p.name for p in (out / "cases").glob("*.png"))
    # 3 galleries x 3 cases, one negative's file is missing: every drawn case has a thumbnail and a Grad-CAM overlay
    assert len(thumbs) % 2 == 0 and all(f.replace(".png", "_heatmap.png") in thumbs
                                        for f in thumbs if not f.endswith("_heatmap.png"))
    assert "image not readable" in page and os.path.basename(paths[0]) in page
    linked = {p.split("/")[-1] for p in re.findall(r'src="(cases/[^"]+)"', page)}
    assert linked == set(thumbs)                     # no stale pictures from earlier runs


def test_report_names_files_without_the_authors_folders(report):
    """The report is meant to be sent: the predictions file and the model appear by name,
    not by their absolute paths on the author's disk (issue 23)."""
    out, summary, _ = report
    meta = re.search(r'<p class="meta">(.*?)</p>', (out / "index.html").read_text()).group(1)
    assert "predictions: preds.csv<br>" in meta and "heatmaps: m.keras (image model)" in meta
    assert str(out.parent) not in meta
    assert summary["predictions"] == str(out.parent / "preds.csv")   # the JSON keeps it


@pytest.mark.skipif(not os.path.exists("/usr/bin/chromium"),
                    reason="Chromium not installed (apt-get install chromium)")
def test_report_in_headless_chromium(report):
    from headless import Browser
    out, summary, _ = report
    b = Browser()
    try:
        b.open(pathlib.Path(out / "index.html").as_uri())
        page = b.evaluate("""(async () => {
          const imgs = Array.from(document.images);
          await Promise.all(imgs.map(i => i.complete ? null :
                                      new Promise(r => { i.onload = i.onerror = r; })));
          return {
            images: imgs.map(i => ({src: i.getAttribute('src'), ok: i.complete && i.naturalWidth > 0,
                                    gallery: !!i.closest('figure.case')})),
            cells: Array.from(document.querySelectorAll('#summary td[data-key]'))
                        .map(td => [td.dataset.key, td.textContent, td.dataset.value || null]),
            cards: document.querySelectorAll('figure.case').length,
          };
        })()""")
        errors = b.console_errors()
        # the sortable table: a click on "score" sorts ascending (it starts by rank)
        b.evaluate("document.querySelector('#images th:nth-child(4)').click()")
        asc = b.evaluate("Array.from(document.querySelectorAll('#images tbody tr td:nth-child(4)'))"
                         ".map(td => parseFloat(td.dataset.value))")
        errors += b.console_errors()
    finally:
        b.close()
    assert errors == []
    gallery = [i for i in page["images"] if i["gallery"]]
    assert page["cards"] == 9 and len(gallery) == 2 * 8          # one card without pictures
    assert all(i["ok"] for i in page["images"]), [i for i in page["images"] if not i["ok"]]
    assert sum(not i["gallery"] for i in page["images"]) == 9   # 3 plots x 3 levels
    assert asc == sorted(asc) and len(asc) == 16
    # every number of the summary table is summary.json's, rounded for display
    levels = {lv["level"]: lv for lv in summary["levels"]}
    seen = set()
    for key, text, value in page["cells"]:
        level, *field = key.split(".")
        if field == ["level"]:
            continue
        if field == ["ci"]:
            lv = levels[level]
            assert text == f"{lv['ci_low']:.3f}-{lv['ci_high']:.3f}"
            seen.add(key)
            continue
        want = levels[level]
        for f in field:
            want = want[int(f)] if f.isdigit() else want[f]
        fmt = "{:.0f}" if field[0] in ("n", "n_pos") else \
            "{:.4f}" if field[-1] == "threshold" else "{:.3f}"
        if want is None or (isinstance(want, float) and np.isnan(want)):
            assert text == "n/a"
        else:
            assert text == fmt.format(want) and float(value) == want, key
        seen.add(key)
    for lv in levels.values():
        if "error" not in lv:
            for f in ("auroc", "ci", "calibration.ece", "calibration.brier",
                      "thresholds.1.specificity", "at_sensitivity.0.threshold"):
                assert f"{lv['level']}.{f}" in seen
    assert {"image.auroc", "breast.auroc", "exam.n"} <= seen


def test_patch_model_heatmap_overlay(tmp_path):
    """A patch model gives the sliding-window lesion score (1 - p(background)) overlay."""
    model = save(tiny_patch_model(seed=7), tmp_path / "patch.keras", "patch")
    img = write_images(tmp_path / "img", 1, seed=30)[0]
    hm = dm_report.Heatmapper(str(model), "pos")
    assert hm.kind == "patch" and hm.classes[0] == "background"
    over = hm.overlay(img)
    assert over.ndim == 3 and over.shape[2] == 3
    # coloured where the breast is (segmented and scored), not a plain grey copy
    assert np.abs(over[..., 0].astype(int) - over[..., 2].astype(int)).max() > 20


def test_model_without_html_is_refused(tmp_path, capsys):
    (tmp_path / "p.csv").write_text("path,neg,pos,label\na.png,0.2,0.8,1\nb.png,0.7,0.3,0\n")
    (tmp_path / "m.keras").write_text("x")
    assert dm_evaluate.main([str(tmp_path / "p.csv"), "--out-dir", str(tmp_path / "r"),
                          "--model", str(tmp_path / "m.keras")]) == 2
    assert "add --html" in capsys.readouterr().err
