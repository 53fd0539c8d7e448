"""CBIS-DDSM recipe: the real CSVs' counts, and a miniature DICOM tree end to end."""
from __future__ import annotations

import pathlib
import sys

import cv2
import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from ddsm_train import prepare_cbis_ddsm as cbis  # noqa: E402
from recipe_helpers import copy_csv_rows, write_dicom  # noqa: E402

CSVS = ["mass_case_description_train_set.csv", "mass_case_description_test_set.csv",
        "calc_case_description_train_set.csv", "calc_case_description_test_set.csv"]


def test_real_csvs_parse_to_official_counts(shared_data):
    d = shared_data / "cbis_ddsm"
    counts = [len(cbis.read_case_csv(d / f)) for f in CSVS]
    assert counts == [1318, 378, 1546, 326]
    abn = cbis.load_case_tables(d)
    assert len(abn) == 3568
    assert abn["pathology"].value_counts().to_dict() == {"MALIGNANT": 1457, "BENIGN": 1429,
                                                         "BENIGN_WITHOUT_CALLBACK": 682}
    # embedded newlines and whitespace are gone; both density spellings found
    assert not abn["roi_path"].str.contains("\n").any()
    assert abn["breast_density"].str.len().min() == 1
    assert set(abn["type"]) == {"mass", "calc"} and set(abn["side"]) == {"LEFT", "RIGHT"}
    assert abn["image_key"].str.match(cbis.KEY_RE).all() and abn["roi_key"].str.match(cbis.KEY_RE).all()


def test_real_csvs_images_patients_and_splits(shared_data):
    abn = cbis.load_case_tables(shared_data / "cbis_ddsm")
    img = cbis.image_table(abn)
    assert len(img) == 3032                       # 2420 train-CSV + 641 test-CSV images, 29 in both
    assert img.groupby("official").size().to_dict() == {"test": 641, "train": 2391}
    assert img["patient_id"].nunique() == 1566
    assert img["label"].value_counts().to_dict() == {"neg": 1685, "pos": 1347}
    split = cbis.assign_splits(img, val_size=0.1, seed=12345)
    img["split"] = img["patient_id"].map(split)
    assert img.groupby("split")["patient_id"].nunique().to_dict() == {"test": 349, "train": 1095, "val": 122}
    assert img.groupby(["split", "label"]).size().to_dict() == {
        ("test", "neg"): 394, ("test", "pos"): 282, ("train", "neg"): 1152, ("train", "pos"): 956,
        ("val", "neg"): 139, ("val", "pos"): 109}
    # official test images all stay in test; no patient in two splits
    assert (img.loc[img["official"] == "test", "split"] == "test").all()
    assert img.groupby("patient_id")["split"].nunique().max() == 1
    assert cbis.assign_splits(img, 0.1, 12345) == split
    assert cbis.assign_splits(img, 0.1, 7) != split


def test_bad_csv_is_one_line_error(tmp_path):
    p = tmp_path / "mass_case_description_train_set.csv"
    p.write_text("patient_id,left or right breast\nP_1,LEFT\n")
    with pytest.raises(cbis.CbisFormatError, match="missing column"):
        cbis.read_case_csv(p)
    with pytest.raises(FileNotFoundError):
        cbis.find_case_csvs(tmp_path / "nope")


def _mini_tree(shared_data, tmp_path, n_rows=3):
    """Real CSV rows, synthetic DICOMs. Half the images use the CSV's exact path, half TCIA-style
    descriptive series folders; mask and crop file names are swapped on odd rows."""
    csv_dir, root = tmp_path / "csv", tmp_path / "dicom" / "CBIS-DDSM"
    rng = np.random.default_rng(0)
    truth = {}
    written_full = {}
    for f in CSVS:
        rows = copy_csv_rows(shared_data / "cbis_ddsm" / f, csv_dir / f, n_rows)
        for i, r in enumerate(rows):
            img_path = r["image file path"].strip()
            key = img_path.split("/")[0]
            h, w = 160 + 8 * (len(written_full) % 3), 96
            if key not in written_full:
                full = (rng.integers(200, 800, (h, w))).astype(np.uint16)
                full[20:140, :70] += 20000
                target = root / img_path if len(written_full) % 2 == 0 else \
                    root / key / "07-20-2016-DDSM" / "1.000000-full mammogram images-1" / "1-1.dcm"
                write_dicom(target, full)
                written_full[key] = full.shape
            h, w = written_full[key]
            mask = np.zeros((h, w), np.uint8)
            y, x = 30 + 10 * i, 20 + 5 * i
            mask[y:y + 25, x:x + 20] = 255
            crop = rng.integers(0, 60000, (25, 20)).astype(np.uint16)
            roi_dir = root / r["ROI mask file path"].strip().rsplit("/", 1)[0]
            names = ("000000.dcm", "000001.dcm") if i % 2 == 0 else ("000001.dcm", "000000.dcm")
            write_dicom(roi_dir / names[0], mask)
            write_dicom(roi_dir / names[1], crop)
            truth[r["ROI mask file path"].strip().split("/")[0] + ".png"] = mask
    return csv_dir, root.parent, truth


def test_mini_dicom_tree_end_to_end(shared_data, tmp_path):
    csv_dir, root, truth = _mini_tree(shared_data, tmp_path)
    out = tmp_path / "out"
    s = cbis.prepare(root, csv_dir, out, img_size=None, target_height=None, val_size=0.34, seed=1, verbose=False)
    assert s["skipped"] == []
    assert s["abnormalities"] == 12
    roi = pd.read_csv(out / "roi_mask_path.csv", dtype=str)
    assert list(roi.columns[:8]) == ["patient_id", "side", "view", "abn_num", "pathology", "type",
                                     "full_img_file", "roi_mask_file"]
    assert len(roi) == 12
    for fname, mask in truth.items():  # the mask, not the crop, was picked by size
        got = cv2.imread(str(out / "roi_masks" / fname), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(got, mask)
    images = pd.read_csv(out / "images.csv", dtype=str)
    for r in images.itertuples():
        png = cv2.imread(str(out / "full_images" / r.full_img_file), cv2.IMREAD_UNCHANGED)
        assert png.dtype == np.uint16 and png.max() > 20000
        assert (out / r.split / r.label / r.full_img_file).is_file()
        is_pos = (roi[(roi.patient_id == r.patient_id) & (roi.side == r.side) & (roi.view == r.view)]
                  .pathology == "MALIGNANT").any()
        assert (r.label == "pos") == is_pos
    assert set(images.loc[images.patient_id.isin(
        set(pd.read_csv(csv_dir / CSVS[1]).patient_id) | set(pd.read_csv(csv_dir / CSVS[3]).patient_id)),
        "split"]) == {"test"}
    assert sum(s[k]["images"] for k in ("train", "val", "test")) == len(images)
    pats = (out / "patients_test.txt").read_text().split()
    assert sorted(pats) == sorted(images.loc[images.split == "test", "patient_id"].unique())


def test_mini_tree_resize_and_broken_case(shared_data, tmp_path):
    csv_dir, root, truth = _mini_tree(shared_data, tmp_path, n_rows=2)
    victim = sorted((root / "CBIS-DDSM").glob("Calc-Test_*"))[0]
    for f in victim.rglob("*.dcm"):
        f.write_bytes(b"not a dicom")
    out = tmp_path / "out"
    s = cbis.prepare(root, csv_dir, out, img_size=(64, 48), val_size=0.0, seed=1, verbose=False)
    assert len(s["skipped"]) >= 1 and any("Calc-Test" in e or "P_" in e for e in s["skipped"])
    for p in (out / "full_images").glob("*.png"):
        assert cv2.imread(str(p), cv2.IMREAD_UNCHANGED).shape == (64, 48)
    for p in (out / "roi_masks").glob("*.png"):
        m = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        assert m.shape == (64, 48) and set(np.unique(m)) <= {0, 255} and m.max() == 255


def test_pick_mask_by_size(tmp_path):
    write_dicom(tmp_path / "a.dcm", np.zeros((100, 80), np.uint8))
    write_dicom(tmp_path / "b.dcm", np.zeros((20, 10), np.uint16))
    write_dicom(tmp_path / "c.dcm", np.zeros((98, 80), np.uint8))
    a, b, c = (str(tmp_path / f"{n}.dcm") for n in "abc")
    assert cbis.pick_mask([b, a], (100, 80)) == a
    assert cbis.pick_mask([b, c], (100, 80)) == c            # slightly off-size mask: resized later
    with pytest.raises(cbis.ImageReadError, match="no ROI mask"):
        cbis.pick_mask([b], (100, 80))                       # only the crop is there
    assert cbis.pick_largest([b, a, c]) == (a, (100, 80))


def test_folder_without_matching_dicoms_fails_with_the_skipped_list(shared_data, tmp_path):
    csv_dir, _, _ = _mini_tree(shared_data, tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="CBIS-DDSM: no image converted"):
        cbis.prepare(empty, csv_dir, tmp_path / "out", img_size=(64, 48), verbose=False)
    listed = (tmp_path / "out" / "skipped.txt").read_text().splitlines()
    assert len(listed) >= 3 and not (tmp_path / "out" / "images.csv").exists()


def test_layout_records_the_size(shared_data, tmp_path):
    import json
    csv_dir, root, _ = _mini_tree(shared_data, tmp_path)
    cbis.prepare(root, csv_dir, tmp_path / "out", img_size=(64, 48), val_size=0.0, seed=1,
                 verbose=False)
    layout = json.loads((tmp_path / "out" / "layout.json").read_text())
    assert layout["img_size"] == [64, 48] and layout["bit_depth"] == 16
    assert layout["rescale_factor"] == pytest.approx(255 / 65535, abs=1e-6)
