"""Files by local path or URI (``s3://``, ``gs://``, ``file://``) through ``pyarrow.fs``.

Every reader and writer goes through here so that a dataset on object storage works exactly like a
local folder. Paths are plain strings; URIs keep their scheme.
"""

from __future__ import annotations

import logging
import posixpath
import random
import time
from functools import lru_cache
from typing import Callable, TypeVar

import pyarrow.fs as pafs

log = logging.getLogger(__name__)
T = TypeVar("T")

# OSErrors that are answers, not hiccups: retrying them cannot help.
_PERMANENT_OSERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError)


def is_transient(err: BaseException) -> bool:
    """True for an I/O error that may succeed when retried (an S3 503/throttle, a dropped connection, a
    flaky NFS read): any ``OSError`` except the permanent answers (not found, not a file, permission)."""
    return isinstance(err, OSError) and not isinstance(err, _PERMANENT_OSERRORS)


def retry(fn: Callable[[], T], *, what: str, attempts: int = 5, base_delay_s: float = 0.2) -> T:
    """``fn()``, retried with exponential backoff and jitter (``base_delay_s`` * 2^k) on transient
    ``OSError`` (see :func:`is_transient`); the last error is re-raised naming ``what``."""
    for k in range(attempts):
        try:
            return fn()
        except OSError as e:
            if not is_transient(e) or k == attempts - 1:
                raise
            delay = base_delay_s * (2 ** k) * (0.5 + random.random())
            log.warning("%s: transient I/O error (%s: %s), retry %d/%d in %.2f s", what, type(e).__name__, e,
                        k + 1, attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


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

    def go() -> bytes:
        info = fs.get_file_info(inner)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"{path}: file not found")
        if info.type != pafs.FileType.File:
            raise IsADirectoryError(f"{path}: not a file")
        with fs.open_input_stream(inner) as f:
            return f.read()

    return retry(go, what=f"read {path}")


def read_text(path: str, encoding: str = "utf-8-sig") -> str:
    return read_bytes(path).decode(encoding)


def write_bytes(path: str, data: bytes) -> None:
    fs, inner = resolve(path)

    def go() -> None:
        fs.create_dir(posixpath.dirname(inner), recursive=True)
        with fs.open_output_stream(inner) as f:
            f.write(data)

    retry(go, what=f"write {path}")


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

    def go():
        if fs.get_file_info(inner).type != pafs.FileType.Directory:
            return []
        return fs.get_file_info(pafs.FileSelector(inner, recursive=recursive))

    infos = retry(go, what=f"list {path}")
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


def delete_if_exists(path: str) -> bool:
    """Delete a file (transient errors retried); False when it was not there."""
    fs, inner = resolve(path)

    def go() -> bool:
        try:
            fs.delete_file(inner)
        except FileNotFoundError:
            return False
        return True

    return retry(go, what=f"delete {path}")


def move(src: str, dst: str) -> None:
    """Rename ``src`` to ``dst`` (replacing it), creating ``dst``'s folder. Atomic on a local/POSIX file system
    (``rename(2)``); on object storage a copy then delete (the object appears whole, never half-written)."""
    fs, s = resolve(src)
    _, d = resolve(dst)
    retry(lambda: fs.create_dir(posixpath.dirname(d), recursive=True), what=f"mkdir for {dst}")
    retry(lambda: fs.move(s, d), what=f"move {src} -> {dst}")


def write_parquet(path: str, table, **kwargs) -> None:
    """Write a pyarrow Table as one Parquet file (transient errors retried from the start)."""
    import pyarrow.parquet as pq

    fs, inner = resolve(path)

    def go() -> None:
        fs.create_dir(posixpath.dirname(inner), recursive=True)
        pq.write_table(table, inner, filesystem=fs, **kwargs)

    retry(go, what=f"write {path}")


def read_parquet(path: str, columns=None):
    """One Parquet file as a pyarrow Table; ``columns`` missing from the file are left out (transient
    errors retried; a file that is not Parquet raises ``pyarrow.ArrowInvalid``)."""
    import pyarrow.parquet as pq

    fs, inner = resolve(path)

    def go():
        f = pq.ParquetFile(fs.open_input_file(inner))
        names = f.schema_arrow.names
        return f.read(columns=None if columns is None else [c for c in columns if c in names])

    return retry(go, what=f"read {path}")


def write_csv(path: str, table) -> None:
    """Write a pyarrow Table as CSV (header + rows) to a local path or URI."""
    import io

    import pyarrow.csv as pacsv

    buf = io.BytesIO()
    pacsv.write_csv(table, buf)
    write_bytes(path, buf.getvalue())
