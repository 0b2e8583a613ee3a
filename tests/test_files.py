"""aacn.files (atomic, strict, umask-respecting writes; output paths checked up front) and aacn.provenance."""

from __future__ import annotations

import json
import os

import pytest

from aacn.errors import UserError
from aacn.files import atomic_write, check_output_dir, check_output_file, strict_json, write_json
from aacn.provenance import environment, git_state


def test_atomic_write_gives_the_mode_a_plain_open_would(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "a.txt", lambda fh: fh.write("x"))
        with open(tmp_path / "b.txt", "w") as fh:
            fh.write("x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o644


def test_write_json_stores_non_finite_numbers_as_null(tmp_path):
    write_json(tmp_path / "r.json", {"acc": float("nan"), "rows": [1.5, float("inf")], "n": 3})
    text = (tmp_path / "r.json").read_text()
    assert json.loads(text) == {"acc": None, "rows": [1.5, None], "n": 3}
    assert "NaN" not in text and "Infinity" not in text
    assert strict_json((1.0, float("-inf"))) == [1.0, None]


def test_a_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "keep.json"
    target.write_text("old")

    def boom(fh):
        fh.write("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(UserError, match="previous version is intact"):
        atomic_write(target, boom)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["keep.json"]


def test_output_paths_are_checked_with_one_line(tmp_path):
    file = tmp_path / "file"
    file.write_text("x")
    with pytest.raises(UserError, match="--out .* is an existing file"):
        check_output_dir(file, "--out")
    with pytest.raises(UserError, match="--out .* cannot be written"):
        check_output_dir(file / "below", "--out")
    with pytest.raises(UserError, match="--out .* is a folder"):
        check_output_file(tmp_path, "--out")
    with pytest.raises(UserError, match="--out .* existing file"):
        check_output_file(file / "x.png", "--out")
    assert check_output_dir(tmp_path / "new" / "run", "--out").is_dir()
    assert check_output_file(tmp_path / "sub" / "map.png", "--out").parent.is_dir()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only folders")
def test_a_read_only_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(UserError, match="cannot be written"):
            check_output_dir(ro / "run", "--out")
    finally:
        ro.chmod(0o755)


def test_environment_names_code_stack_and_device():
    env = environment("cpu", precision="fp32", compile=False)
    assert env["torch"] and env["aacn_version"] and env["device_name"] and env["device_count"] == 1
    assert env["precision"] == "fp32" and env["compile"] is False
    commit, dirty = git_state()
    assert (commit is None) == (dirty is None)
    if commit is not None:
        assert len(commit) == 40 and env["git_commit"] == commit
    json.dumps(env)  # JSON-able as a whole
