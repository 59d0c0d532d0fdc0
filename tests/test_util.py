"""`lrlora.util`: an atomic write leaves the old file or the new one; the readers name the
file, the line and what is wrong; check_shape names the first place a document departs."""

from __future__ import annotations

import pytest

from lrlora.util import BadFileError, atomic_file, check_shape, excerpt, read_json, read_text


def test_a_failed_atomic_write_leaves_the_old_file_and_no_debris(tmp_path):
    path = tmp_path / "data.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(path) as f:
        f.write("new, half")
        raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["data.json"]
    with atomic_file(path) as f:
        f.write("new")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["data.json"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (None, "data.json: is missing; rerun it"),
        (b"", "data.json: is empty; rerun it"),
        (b'{\n  "a": 1,\n  "b": \n}', "data.json:4: is not valid JSON (Expecting value); rerun it"),
        (b'{"a": "\xff"}', "data.json:1: is not utf-8 text (byte 0xff at column 8); rerun it"),
        (b"1" * 5000, "data.json: is not valid JSON (Exceeds the limit (4300 digits)"),
    ],
)
def test_read_json_names_the_file_the_line_and_what_to_do(tmp_path, data, message):
    path = tmp_path / "data.json"
    if data is not None:
        path.write_bytes(data)
    with pytest.raises(BadFileError) as caught:
        read_json(path, todo="rerun it")
    assert str(caught.value).startswith(f"{tmp_path}/{message}")


def test_read_text_and_excerpt():
    assert excerpt("x" * 1000) == repr("x" * 1000)[:80] + "..." and excerpt(3) == "3"
    with pytest.raises(BadFileError, match="cannot be read"):
        read_text("/nonexistent/file")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"a": {"b": [1, "2"]}}, "['a']['b'][1] is '2', not an integer"),
        ({"a": {"b": [1]}, "c": float("nan")}, "['c'] is nan, not a finite number or null"),
        ({"a": {}}, "['a'] has no 'b'"),
        ([], "the top level is [], not an object"),
        ({"a": {"b": []}, "d": {"x": True}}, "['d']['x'] is True, not an integer"),
    ],
)
def test_check_shape_names_the_first_place_that_departs(value, message):
    shape = {"a": {"b": [int]}, "c?": (float, None), "d?": {str: int}}
    with pytest.raises(BadFileError, match=r"^f\.json: ") as caught:
        check_shape("f.json", value, shape)
    assert message in str(caught.value)
    check_shape("f.json", {"a": {"b": [1, 2]}, "c": None, "d": {"x": 3}, "other": "ok"}, shape)
