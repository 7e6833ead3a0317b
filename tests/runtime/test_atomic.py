"""runtime.atomic: a write either replaces the target completely or leaves it untouched."""
from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from runtime.atomic import atomic_path, write_bytes_atomic, write_json_atomic, write_text_atomic


def test_write_json_atomic_replaces(tmp_path):
    p = tmp_path / "sub" / "r.json"
    write_json_atomic(p, {"a": 1})
    write_json_atomic(p, [1, 2])
    assert json.loads(p.read_text()) == [1, 2]
    assert [f.name for f in p.parent.iterdir()] == ["r.json"]


def test_json_format_indent_newline_and_nan(tmp_path):
    p = write_json_atomic(tmp_path / "r.json", {"a": [1], "x": float("nan")})
    text = p.read_text()
    assert text.endswith("}\n") and '\n  "a": [\n    1\n  ]' in text and "NaN" in text
    assert write_json_atomic(tmp_path / "c.json", {"a": 1}, indent=None).read_text() == '{"a": 1}\n'


def test_bytes_and_text(tmp_path):
    assert write_bytes_atomic(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    assert write_text_atomic(tmp_path / "t.txt", "é\n").read_bytes() == "é\n".encode()


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    p = write_text_atomic(tmp_path / "keep.txt", "old")
    with pytest.raises(ZeroDivisionError):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            1 / 0
    assert p.read_text() == "old"
    assert [f.name for f in tmp_path.iterdir()] == ["keep.txt"]


def test_temp_is_beside_the_target_and_keeps_its_suffix(tmp_path):
    target = tmp_path / "arr.npy"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".npy" and tmp.name.startswith(".arr.")
        np.save(tmp, np.arange(3))  # np.save appends ".npy" unless the name already ends with it
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    assert [f.name for f in tmp_path.iterdir()] == ["arr.npy"]


def test_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        p = write_text_atomic(tmp_path / "m.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(p.stat().st_mode) == 0o644
