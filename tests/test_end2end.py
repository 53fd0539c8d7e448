"""The main job's pipeline function, end to end at tiny sizes (the README's first command
runs the same function at its default sizes)."""
import json
import pathlib

import end2end


def test_pipeline_end_to_end_tiny(tmp_path):
    args = end2end.build_parser().parse_args([
        "--out", str(tmp_path / "run"), "--n-patients", "24", "--img-size", "128", "96",
        "--patch-size", "32", "--nb-abn", "3", "--nb-bkg", "3", "--nb-init-filter", "4",
        "--patch-epochs", "1", "1", "1", "--image-epochs", "1", "1", "--top-depths", "8", "8",
        "--batch-size", "8"])
    summary = end2end.run(args)
    run = tmp_path / "run"
    for f in ("patch_model.keras", "image_model.keras", "summary.json",
              "data/roi_mask_path.csv", "patches/train/background"):
        assert (run / f).exists(), f
    assert json.loads((run / "summary.json").read_text()) == summary
    assert 0.0 <= summary["image_test_auroc"] <= 1.0
    assert 0.0 <= summary["patch_test_accuracy"] <= 1.0
    assert summary["n_test_images"] > 0
    # predict.py + evaluate.py on the saved model agree with the trainer's own TTA AUROC
    assert abs(summary["evaluate_auroc"] - summary["image_test_auroc_tta"]) < 1e-6
    lo, hi = summary["image_test_auroc_tta_ci95"]
    assert lo <= summary["evaluate_auroc"] <= hi
    assert summary["html_report"] == str(run / "report" / "index.html")
    for k in ("roc_curve", "heatmap_overlay", "gradcam_overlay", "predictions", "html_report"):
        assert pathlib.Path(summary[k]).stat().st_size > 0, k
