"""fae.io's atomic writes: a failed write leaves the old file and no temp file, and a new file gets
the mode a plain ``open()`` would give it (not mkstemp's 0600: results must be readable by others)."""
from __future__ import annotations

import os

import pytest

from fae.io import atomic_save_json, atomic_write


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    path = atomic_save_json({"a": 1}, tmp_path / "results.json")

    def half_then_crash(f):
        f.write("{\"a\": ")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, half_then_crash, mode="w")
    assert path.read_text() == "{\n  \"a\": 1\n}\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_new_files_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        written = atomic_save_json({}, tmp_path / "out.json")
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    assert written.stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777 == 0o666 & ~umask
