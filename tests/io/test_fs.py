from __future__ import annotations

import pyarrow as pa
import pytest

from dr_ray.io import fs


def test_roundtrip_and_listing(tmp_path):
    fs.write_bytes(str(tmp_path / "a" / "x.bin"), b"\x00\x01")
    fs.write_text(str(tmp_path / "a" / "b" / "y.txt"), "hello")
    assert fs.read_bytes(str(tmp_path / "a" / "x.bin")) == b"\x00\x01"
    assert fs.read_text(f"file://{tmp_path}/a/b/y.txt") == "hello"
    assert fs.list_files(str(tmp_path / "a")) == [str(tmp_path / "a" / "x.bin")]
    assert fs.list_files(str(tmp_path / "a"), recursive=True) == [
        str(tmp_path / "a" / "b" / "y.txt"), str(tmp_path / "a" / "x.bin")]
    assert fs.list_files(str(tmp_path / "missing")) == []
    assert fs.exists(str(tmp_path / "a")) and fs.is_dir(str(tmp_path / "a"))
    assert not fs.exists(str(tmp_path / "nope"))


def test_missing_file_error_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpeg: file not found"):
        fs.read_bytes(str(tmp_path / "nope.jpeg"))
    with pytest.raises(IsADirectoryError, match="not a file"):
        fs.read_bytes(str(tmp_path))


def test_join_keeps_uris_and_absolute_parts():
    assert fs.join("s3://bucket/root", "train", "a.jpeg") == "s3://bucket/root/train/a.jpeg"
    assert fs.join("s3://bucket/root/", "x") == "s3://bucket/root/x"
    assert fs.join("/data/root", "train") == "/data/root/train"
    assert fs.join("/data/root", "/abs/labels.csv") == "/abs/labels.csv"
    assert fs.join("/data/root", "s3://other/labels.csv") == "s3://other/labels.csv"
    assert fs.join("/data", "") == "/data"


def test_write_csv(tmp_path):
    fs.write_csv(str(tmp_path / "t.csv"), pa.table({"a": [1, 2], "b": ["x", None]}))
    assert (tmp_path / "t.csv").read_text().splitlines() == ['"a","b"', '1,"x"', "2,"]
