"""dm_output: temporary file then rename, without losing what was there on a failure."""
import json
import os

import pytest

import dm_output


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
