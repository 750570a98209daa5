"""Files by local path or URI (``s3://``, ``gs://``, ``file://``) through ``pyarrow.fs``.

Every reader and writer goes through here so that a dataset on object storage works exactly like a
local folder. Paths are plain strings; URIs keep their scheme.
"""

from __future__ import annotations

import posixpath
from functools import lru_cache

import pyarrow.fs as pafs


def is_uri(path: str) -> bool:
    return "://" in path


@lru_cache(maxsize=32)
def _filesystem_for(scheme_and_host: str) -> pafs.FileSystem:
    fs, _ = pafs.FileSystem.from_uri(scheme_and_host)
    return fs


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """``path`` -> (filesystem, path inside it). Local paths are made absolute."""
    if not path:
        raise ValueError("empty path")
    if is_uri(path):
        if path.startswith("file://"):
            return pafs.LocalFileSystem(), path[len("file://"):]
        fs, inner = pafs.FileSystem.from_uri(path)
        return fs, inner
    import os

    return pafs.LocalFileSystem(), os.path.abspath(path)


def join(base: str, *parts: str) -> str:
    """Join path parts; an absolute part (or URI) replaces what came before, as ``os.path.join`` does."""
    out = base
    for p in parts:
        if not p:
            continue
        if is_uri(p) or p.startswith("/"):
            out = p
        elif is_uri(out):
            out = out.rstrip("/") + "/" + p
        else:
            import os

            out = os.path.join(out, p)
    return out


def read_bytes(path: str) -> bytes:
    """Whole file as bytes. Raises FileNotFoundError naming the path when it is missing."""
    fs, inner = resolve(path)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{path}: file not found")
    if info.type != pafs.FileType.File:
        raise IsADirectoryError(f"{path}: not a file")
    with fs.open_input_stream(inner) as f:
        return f.read()


def read_text(path: str, encoding: str = "utf-8-sig") -> str:
    return read_bytes(path).decode(encoding)


def write_bytes(path: str, data: bytes) -> None:
    fs, inner = resolve(path)
    fs.create_dir(posixpath.dirname(inner), recursive=True)
    with fs.open_output_stream(inner) as f:
        f.write(data)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def exists(path: str) -> bool:
    fs, inner = resolve(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def is_dir(path: str) -> bool:
    fs, inner = resolve(path)
    return fs.get_file_info(inner).type == pafs.FileType.Directory


def list_files(path: str, recursive: bool = False) -> list[str]:
    """Files (not folders) under ``path``, as full paths/URIs, sorted. Empty list when ``path`` is missing."""
    fs, inner = resolve(path)
    if fs.get_file_info(inner).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(inner, recursive=recursive))
    files = sorted(i.path for i in infos if i.type == pafs.FileType.File)
    if is_uri(path) and not path.startswith("file://"):
        scheme = path.split("://", 1)[0]
        return [f"{scheme}://{f}" for f in files]
    return files


def makedirs(path: str) -> None:
    fs, inner = resolve(path)
    fs.create_dir(inner, recursive=True)


def delete_file(path: str) -> None:
    fs, inner = resolve(path)
    fs.delete_file(inner)


def write_csv(path: str, table) -> None:
    """Write a pyarrow Table as CSV (header + rows) to a local path or URI."""
    import io

    import pyarrow.csv as pacsv

    buf = io.BytesIO()
    pacsv.write_csv(table, buf)
    write_bytes(path, buf.getvalue())
