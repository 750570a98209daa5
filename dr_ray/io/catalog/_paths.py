"""Path helpers and folder indexes of the catalog readers: file names, stems and extensions of local
paths or URIs, the dataset root and label file locations, and :class:`FolderIndex`, one listing of an
image or mask folder with name / stem lookups.

Every file access goes through :mod:`dr_ray.io.fs` so a dataset on object storage reads exactly like a
local folder. Each image folder is listed once (one ``list_files`` call), never probed per row.
"""

from __future__ import annotations

import posixpath
from typing import Iterable, Sequence

from dr_ray.io import fs
from dr_ray.io.catalog._result import LabelProblem

IMAGE_EXTENSIONS = (".png", ".tif", ".tiff", ".jpeg", ".jpg", ".bmp", ".ppm")  # preference order: lossless first
MASK_EXTENSIONS = (".png", ".gif", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg", ".ppm")  # .ppm: STARE


# --- paths ---------------------------------------------------------------------------------------


def basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/"))


def dirname(path: str) -> str:
    """Parent of a local path or URI (``s3://b/x/y`` -> ``s3://b/x``)."""
    stripped = path.rstrip("/")
    if fs.is_uri(stripped):
        scheme, rest = stripped.split("://", 1)
        parent = posixpath.dirname(rest)
        return f"{scheme}://{parent}" if parent else stripped
    import os

    return os.path.dirname(os.path.abspath(stripped))


def stem(name: str) -> str:
    """File name without folder and without its last extension."""
    base = basename(name)
    dot = base.rfind(".")
    return base[:dot] if dot > 0 else base


def has_ext(name: str, exts: Sequence[str]) -> bool:
    return basename(name).lower().endswith(tuple(exts))


def strip_image_ext(value: str) -> str:
    """A label cell naming an image, with or without its extension -> the native id (stem)."""
    return stem(value) if has_ext(value, IMAGE_EXTENSIONS) else value


def require_root(dataset: str, root: str) -> str:
    """``root`` as a local absolute path or URI; FileNotFoundError naming it when it is not a folder."""
    if not root:
        raise ValueError(f"{dataset}: root is empty; pass the dataset folder (local path or s3:// URI)")
    full = root if fs.is_uri(root) else fs.resolve(root)[1]
    if not fs.is_dir(full):
        raise FileNotFoundError(f"{dataset}: root {root!r} is not a readable folder")
    return full


def resolve_labels(root: str, labels: str) -> str:
    """``labels`` relative to ``root`` (or absolute / URI) -> full path."""
    return fs.join(root, labels)


def first_dir(root: str, candidates: Iterable[str]) -> str | None:
    """First candidate sub-folder of ``root`` that exists ("" = root itself)."""
    for c in candidates:
        p = fs.join(root, c) if c else root
        if fs.is_dir(p):
            return p
    return None


# --- folder index --------------------------------------------------------------------------------


class FolderIndex:
    """One listing of a folder: file name / stem lookups without further storage calls.

    Lookups are exact first, then case-insensitive (``IM000123.JPG`` vs ``im000123.jpg``). When two
    files share a stem, the one whose extension comes first in ``exts`` wins.
    """

    def __init__(self, folder: str | None, exts: Sequence[str] = IMAGE_EXTENSIONS, recursive: bool = False):
        self.folder = folder
        self.files: list[str] = []
        if folder is not None:
            self.files = [f for f in fs.list_files(folder, recursive=recursive) if has_ext(f, exts)]
        rank = {e: i for i, e in enumerate(exts)}

        def order(path: str) -> int:
            low = path.lower()
            return min((rank[e] for e in exts if low.endswith(e)), default=len(exts))

        self.by_name: dict[str, str] = {}
        self.by_name_ci: dict[str, str] = {}
        self.by_stem: dict[str, str] = {}
        self.by_stem_ci: dict[str, str] = {}
        for f in sorted(self.files, key=lambda p: (order(p), p)):
            b = basename(f)
            self.by_name.setdefault(b, f)
            self.by_name_ci.setdefault(b.lower(), f)
            self.by_stem.setdefault(stem(b), f)
            self.by_stem_ci.setdefault(stem(b).lower(), f)

    @property
    def exists(self) -> bool:
        return self.folder is not None

    def images(self, problems: list[LabelProblem] | None = None) -> list[str]:
        """One file per stem (the preferred extension), sorted; other files sharing a stem
        (``01.tif`` next to ``01.png``) are reported to ``problems`` and skipped."""
        kept = sorted(set(self.by_stem.values()))
        if problems is not None and len(kept) < len(self.files):
            chosen = set(kept)
            for f in self.files:
                if f not in chosen:
                    problems.append(LabelProblem(
                        self.folder or "", 0,
                        f"duplicate image id {stem(f)}: {basename(f)} skipped, {basename(self.by_stem[stem(f)])} kept"))
        return kept

    def find(self, name_or_stem: str) -> str | None:
        """File named ``name_or_stem`` (a full name with extension, or a stem)."""
        for table, key in (
            (self.by_name, name_or_stem),
            (self.by_name_ci, name_or_stem.lower()),
            (self.by_stem, name_or_stem),
            (self.by_stem_ci, name_or_stem.lower()),
        ):
            hit = table.get(key)
            if hit is not None:
                return hit
        if has_ext(name_or_stem, IMAGE_EXTENSIONS + MASK_EXTENSIONS):
            return self.find_stem(stem(name_or_stem))
        return None

    def find_stem(self, s: str) -> str | None:
        return self.by_stem.get(s) or self.by_stem_ci.get(s.lower())
