"""dm_output: temporary file then rename, without losing what was there on a failure."""
import errno
import json
import os
import pathlib

import pytest

import dm_output
from dm_errors import OutputRefusedError


def test_write_json_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "summary.json"
    dm_output.write_json(path, {"auroc": 0.9, "n": [1, 2]})
    dm_output.write_json(path, {"auroc": 0.8}, indent=2)
    assert json.loads(path.read_text()) == {"auroc": 0.8}
    assert path.read_text().endswith("\n") and '\n  "auroc"' in path.read_text()
    assert sorted(p.name for p in path.parent.iterdir()) == ["summary.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text('{"old": 1}\n')

    def half_then_fail(f):
        f.write('{"new": ')
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError, match="disk full"):
        dm_output.atomic_write(str(path), half_then_fail, text=True)
    assert path.read_text() == '{"old": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    with pytest.raises(TypeError):     # not serialisable: nothing written at all
        dm_output.write_json(path, {"x": object()})
    assert path.read_text() == '{"old": 1}\n'


def test_write_json_honours_the_umask_and_writes_through_a_symlink(tmp_path):
    old = os.umask(0o027)
    try:
        dm_output.write_json(tmp_path / "a.json", [1])
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "a.json").st_mode & 0o777 == 0o640     # not mkstemp's 0600
    target = tmp_path / "target.json"
    target.write_text("[]")
    (tmp_path / "link.json").symlink_to(target)
    dm_output.write_json(tmp_path / "link.json", {"through": True})
    assert (tmp_path / "link.json").is_symlink()
    assert json.loads(target.read_text()) == {"through": True}


def test_dash_is_standard_output(capsys):
    dm_output.write_json("-", {"a": 1}, indent=None)
    assert capsys.readouterr().out == '{"a": 1}\n'


# ------------------------------------------------------------------ issue 23

def test_staging_renames_all_or_nothing(tmp_path):
    """Two outputs of one command: when the second fails, the first keeps its old content
    and no temporary file or folder is left."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "old.txt").write_text("old")
    (tmp_path / "file.bin").write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with dm_output.Staging() as stage:
            tmp = stage.folder(str(tmp_path / "folder"))
            (pathlib.Path(tmp) / "new.txt").write_text("new")
            stage.file(str(tmp_path / "file.bin"))
            raise RuntimeError("second export failed")
    assert os.listdir(tmp_path / "folder") == ["old.txt"]
    assert (tmp_path / "file.bin").read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["file.bin", "folder"]
    with dm_output.Staging() as stage:
        (pathlib.Path(stage.folder(str(tmp_path / "folder"))) / "new.txt").write_text("new")
        with open(stage.file(str(tmp_path / "file.bin")), "wb") as f:
            f.write(b"new")
    assert os.listdir(tmp_path / "folder") == ["new.txt"]
    assert (tmp_path / "file.bin").read_bytes() == b"new"
    assert sorted(os.listdir(tmp_path)) == ["file.bin", "folder"]


def test_os_errors_name_the_users_file_not_the_temporary_one(tmp_path):
    def full_disk(tmp):
        raise OSError(errno.ENOSPC, "No space left on device", tmp)
    with pytest.raises(OSError) as e:
        dm_output.write_named(str(tmp_path / "preds.csv"), full_disk)
    assert e.value.filename == str(tmp_path / "preds.csv") and e.value.errno == errno.ENOSPC
    assert os.listdir(tmp_path) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError) as e:                 # the folder cannot even be made
        dm_output.write_named(str(tmp_path / "file" / "preds.csv"), lambda tmp: None)
    assert e.value.filename == str(tmp_path / "file" / "preds.csv")


def test_check_writable_before_the_work(tmp_path):
    (tmp_path / "file").write_text("x")
    dm_output.check_writable(str(tmp_path / "new" / "deeper" / "p.csv"))   # made on writing
    dm_output.check_writable("-")
    dm_output.check_writable(None)
    with pytest.raises(OutputRefusedError, match=r"file/p\.csv: cannot be written .*--out"):
        dm_output.check_writable(str(tmp_path / "file" / "p.csv"))
    with pytest.raises(OutputRefusedError, match="is a folder"):
        dm_output.check_writable(str(tmp_path))
    with pytest.raises(OutputRefusedError, match=r"is a file \(--export takes a folder"):
        dm_output.check_writable(str(tmp_path / "file"), "--export", folder=True)
    assert sorted(os.listdir(tmp_path)) == ["file"]          # the probe file is gone


# ------------------------------------------------------------------ issue 31: no tool writes over its input

def test_check_not_input_same_path_any_spelling(tmp_path, monkeypatch):
    src = tmp_path / "list.csv"
    src.write_text("path\n")
    monkeypatch.chdir(tmp_path)
    for out in ("list.csv", str(src), "./list.csv", f"../{tmp_path.name}/list.csv"):
        with pytest.raises(OutputRefusedError, match=r"\(--out\) is the --csv.*which this "
                                                     r"command reads.*choose another --out"):
            dm_output.check_not_input(out, [("--csv", "list.csv")])
    with pytest.raises(OutputRefusedError, match=r"^list\.csv \(--out\) is the --csv, which"):
        dm_output.check_not_input("list.csv", [("--csv", "list.csv")])   # named once
    dm_output.check_not_input("preds.csv", [("--csv", "list.csv"), None, ("x", None)])
    dm_output.check_not_input(None, [("--csv", "list.csv")])
    dm_output.check_not_input("-", [("--csv", "-")])       # standard output is never an input


def test_check_not_input_through_symlinks_and_hard_links(tmp_path):
    src = tmp_path / "m.keras"
    src.write_bytes(b"model")
    (tmp_path / "link.keras").symlink_to(src)                    # written through: the model
    os.link(src, tmp_path / "hard.keras")                        # the same bytes on disk
    (tmp_path / "dirlink").symlink_to(tmp_path, target_is_directory=True)
    for out in ("link.keras", "hard.keras", "dirlink/m.keras"):
        with pytest.raises(OutputRefusedError, match="is the MODEL"):
            dm_output.check_not_input(tmp_path / out, [("MODEL", str(src))], "OUTPUT")
    with pytest.raises(OutputRefusedError, match="is the MODEL"):  # an input named by a link
        dm_output.check_not_input(src, [("MODEL", tmp_path / "link.keras")])
    (tmp_path / "other.keras").write_bytes(b"model")             # equal bytes, another file
    dm_output.check_not_input(tmp_path / "other.keras", [("MODEL", str(src))])


def test_check_not_input_folders(tmp_path):
    """An output folder equal to an input folder is refused; one that holds an input only
    where the tool replaces or fills the folder as its own (`holds`)."""
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    img = data / "images" / "a.png"
    img.write_bytes(b"x")
    with pytest.raises(OutputRefusedError, match=r"is the IMG_FOLDER"):
        dm_output.check_not_input(data / "images", [("IMG_FOLDER", data / "images")],
                                  "--overlay-dir")
    with pytest.raises(OutputRefusedError, match=r"is the IMG_FOLDER"):   # a trailing slash
        dm_output.check_not_input(f"{data}/images/", [("IMG_FOLDER", data / "images")])
    dm_output.check_not_input(data, [("image", img)], "--out-dir")   # files written into it
    for inputs in ([("image", img)], [("MIAS_DIR", data / "images")]):
        with pytest.raises(OutputRefusedError, match=r"\(--export\) holds the"):
            dm_output.check_not_input(data, inputs, "--export", holds=True)
    # a sibling whose name starts like the folder is not inside it
    (tmp_path / "data2").mkdir()
    dm_output.check_not_input(data, [("x", tmp_path / "data2")], holds=True)
    # an output inside an input folder writes nothing over it
    dm_output.check_not_input(data / "images" / "out", [("IMG_FOLDER", data / "images")],
                              holds=True)
