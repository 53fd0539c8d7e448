"""dm_listing.read_image_csv: the one reader of an image CSV (prediction's --csv)."""
from __future__ import annotations

import numpy as np
import pytest

import dm_errors
from dm_listing import DatasetError, ImageList, csv_image_paths, read_image_csv


@pytest.fixture
def imgs(tmp_path):
    """Three existing image files (the reader checks existence only) under tmp_path/imgs."""
    (tmp_path / "imgs").mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / "imgs" / name).write_bytes(b"")
    return tmp_path


def _csv(folder, text, name="list.csv"):
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_indices_and_class_names(imgs):
    absolute = imgs / "imgs" / "c.png"
    lst = _csv(imgs, f"path,label\nimgs/a.png,1\nimgs/b.png,neg\n{absolute},0\n")
    got = read_image_csv(lst, ["neg", "pos"])
    assert isinstance(got, ImageList)
    assert got.paths == [str(imgs / "imgs" / "a.png"), str(imgs / "imgs" / "b.png"), str(absolute)]
    assert got.labels.dtype == np.int64 and got.labels.tolist() == [1, 0, 0]
    assert got.extra == {}


def test_a_missing_label_column_gives_no_labels(imgs):
    lst = _csv(imgs, "path,patient_id\nimgs/a.png,P1\nimgs/b.png,P2\n")
    got = read_image_csv(lst, ["neg", "pos"])
    assert got.labels is None and got.extra == {"patient_id": ["P1", "P2"]}
    assert got.paths == [str(imgs / "imgs" / "a.png"), str(imgs / "imgs" / "b.png")]


def test_no_image_column_names_the_expected_columns(imgs):
    lst = _csv(imgs, "file,y\nimgs/a.png,1\n")
    with pytest.raises(DatasetError, match=r"list\.csv: expected columns 'path' \(or a recipe's "
                                           r"'full_img_file'\), got \['file', 'y'\]"):
        read_image_csv(lst)


@pytest.mark.parametrize("label,classes,msg", [
    ("neg", None, r"line 2: unknown label 'neg' \(class names need the class list"),
    ("maybe", ["neg", "pos"], r"line 2: unknown label 'maybe' \(classes \['neg', 'pos'\]\)"),
    ("2", ["neg", "pos"], r"line 2: label 2 out of range \(classes \['neg', 'pos'\]\)"),
    ("-1", None, r"line 2: label -1 out of range"),
    ("", ["neg", "pos"], r"line 2: empty label"),
])
def test_bad_labels_name_the_file_and_line(imgs, label, classes, msg):
    lst = _csv(imgs, f"path,label\nimgs/a.png,{label}\n")
    with pytest.raises(DatasetError, match=r"list\.csv: " + msg):
        read_image_csv(lst, classes)


def test_an_index_beyond_the_classes_is_kept_without_a_class_list(imgs):
    lst = _csv(imgs, "path,label\nimgs/a.png,5\n")
    assert read_image_csv(lst).labels.tolist() == [5]


def test_recipe_images_csv_with_full_img_file_and_split(tmp_path):
    (tmp_path / "full_images").mkdir()
    for name in ("x.png", "y.png", "z.png"):
        (tmp_path / "full_images" / name).write_bytes(b"")
    lst = _csv(tmp_path, "patient_id,label,split,full_img_file\n"
                         "P1,pos,test,x.png\nP2,neg,train,gone.png\nP3,0,test,z.png\n",
               name="images.csv")
    got = read_image_csv(lst, ["neg", "pos"], split="test")
    assert got.paths == [str(tmp_path / "full_images" / "x.png"), str(tmp_path / "full_images" / "z.png")]
    assert got.labels.tolist() == [1, 0]
    assert got.extra == {"patient_id": ["P1", "P3"], "split": ["test", "test"]}
    # the row left out by the split is never checked; without the split it is, by its line
    with pytest.raises(DatasetError, match=r"images\.csv: line 3: image not found: .*gone\.png"):
        read_image_csv(lst, ["neg", "pos"])
    with pytest.raises(DatasetError, match=r"images\.csv: no rows with split 'val'"):
        read_image_csv(lst, ["neg", "pos"], split="val")


def test_split_needs_a_split_column(imgs):
    lst = _csv(imgs, "path\nimgs/a.png\n")
    with pytest.raises(DatasetError, match=r"list\.csv: --split given but the CSV has no 'split'"):
        read_image_csv(lst, split="test")


def test_missing_image_and_empty_path_name_their_line(imgs):
    lst = _csv(imgs, "path,label\nimgs/a.png,0\nimgs/nope.png,1\n")
    with pytest.raises(DatasetError, match=r"list\.csv: line 3: image not found: "
                                           r".*imgs/nope\.png$"):
        read_image_csv(lst)
    lst = _csv(imgs, "path,label\nimgs/a.png,0\n  ,1\n")
    with pytest.raises(DatasetError, match=r"list\.csv: line 3: empty path$"):
        read_image_csv(lst)


def test_line_numbers_count_file_lines_past_blank_lines_and_quoted_newlines(imgs):
    lst = _csv(imgs, 'path,note\nimgs/a.png,"two\nlines"\n\nimgs/nope.png,x\n')
    with pytest.raises(DatasetError, match=r"list\.csv: line 5: image not found"):
        read_image_csv(lst)


def test_no_rows_and_no_file(imgs):
    with pytest.raises(DatasetError, match=r"list\.csv: no rows$"):
        read_image_csv(_csv(imgs, "path,label\n"))
    with pytest.raises(DatasetError, match=r"none\.csv: CSV file not found"):
        read_image_csv(imgs / "none.csv")


def test_headers_ignore_bom_case_and_blanks(imgs):
    path = imgs / "list.csv"
    path.write_bytes("\ufeff Path , LABEL ,Patient_ID \nimgs/a.png , pos ,P1 \n".encode("utf-8"))
    got = read_image_csv(path, ["neg", "pos"])
    assert got.paths == [str(imgs / "imgs" / "a.png")] and got.labels.tolist() == [1]
    assert got.extra == {"Patient_ID": ["P1"]}


def test_reader_errors_are_input_errors(imgs):
    """So every command prints them as `TOOL: error: FILE: problem` and exits 2."""
    assert issubclass(DatasetError, dm_errors.InputError)
    with pytest.raises(dm_errors.InputError):
        read_image_csv(_csv(imgs, "path\n"))


def test_paths_stay_as_the_user_gave_them(imgs, monkeypatch):
    """A relative CSV path gives relative image paths (the predictions' `path` column shows
    what the user wrote, not this machine's absolute folders); absolute stays absolute."""
    _csv(imgs, f"path,label\nimgs/a.png,0\n{imgs / 'imgs' / 'c.png'},1\n")
    monkeypatch.chdir(imgs)
    got = read_image_csv("list.csv")
    assert got.paths == ["imgs/a.png", str(imgs / "imgs" / "c.png")]
    monkeypatch.chdir(imgs / "imgs")
    assert read_image_csv("../list.csv").paths[0] == "../imgs/a.png"


def test_csv_image_paths_needs_no_class_names(imgs):
    """What a tool checks before it knows the model's classes: the images, not the labels
    (a class name as label is no error here)."""
    lst = _csv(imgs, "path,label,split\nimgs/a.png,pos,test\nimgs/b.png,neg,val\n")
    assert csv_image_paths(lst) == [str(imgs / "imgs" / "a.png"), str(imgs / "imgs" / "b.png")]
    assert csv_image_paths(lst, "val") == [str(imgs / "imgs" / "b.png")]
    with pytest.raises(DatasetError, match="unknown label 'pos'"):
        read_image_csv(lst)
    with pytest.raises(DatasetError, match=r"line 2: image not found"):
        csv_image_paths(_csv(imgs, "path\nimgs/zz.png\n", name="bad.csv"))
