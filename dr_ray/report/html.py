"""A self-contained HTML report: one file with inline CSS and base64-embedded PNGs, viewable offline.

The output references nothing outside itself (no scripts, stylesheets, fonts or images by URL, no
JavaScript). Every piece of user text (headings, paragraphs, table cells, captions, keys) goes through
:func:`html.escape`, so a caption ``<script>`` is shown as text, never run; a URL in the text stays plain
text, never becomes a link.
"""

from __future__ import annotations

import base64
import html
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["Report", "format_value"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto; max-width: 72rem;
       padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1 { border-bottom: 2px solid #3a6ea5; padding-bottom: .3rem; }
h2, h3, h4, h5, h6 { color: #23466e; margin-top: 1.8rem; }
.table-wrap { max-width: 100%; overflow-x: auto; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .92rem; }
th, td { border: 1px solid #c9d3de; padding: .25rem .6rem; text-align: right; overflow-wrap: anywhere; }
th { background: #e8eef5; }
td:first-child, th:first-child { text-align: left; }
tbody tr:nth-child(even) { background: #f6f8fb; }
table.kv th { text-align: left; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #dde3ea; }
figcaption { font-size: .9rem; color: #555; margin-top: .3rem; }
p, h1, h2, h3, figcaption { overflow-wrap: anywhere; }
""".strip()


def format_value(value: object, floatfmt: str = ".3f") -> str:
    """Cell text of ``value``, not yet escaped: None -> "", nan -> "n/a", floats with ``floatfmt``, the rest ``str``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        v = float(value)
        return "n/a" if math.isnan(v) else format(v, floatfmt)
    return str(value)


def _check_floatfmt(floatfmt: object) -> str:
    try:
        if not isinstance(floatfmt, str):
            raise TypeError
        format(1.5, floatfmt)
    except (TypeError, ValueError):
        raise ValueError(f"floatfmt must be a float format spec such as '.3f', got {floatfmt!r}") from None
    return floatfmt


class Report:
    """Builder of one HTML5 page: ``Report(title)``, ``add_*`` calls in reading order, then :meth:`to_html` / :meth:`write`.

    The ``add_*`` methods return the report, so calls can be chained.
    """

    def __init__(self, title: str) -> None:
        if not isinstance(title, str) or not title.strip():
            raise ValueError(f"title must be a non-empty string, got {title!r}")
        self.title = title
        self._parts: list[str] = []

    def add_heading(self, text: str, level: int = 2) -> Report:
        """``<h{level}>`` with escaped ``text``; level 1..6 (1 is the page title's level)."""
        if isinstance(level, bool) or not isinstance(level, numbers.Integral) or not 1 <= level <= 6:
            raise ValueError(f"level must be an integer in 1..6, got {level!r}")
        self._parts.append(f"<h{level}>{html.escape(str(text))}</h{level}>")
        return self

    def add_text(self, text: str) -> Report:
        """Escaped paragraph(s): blank lines in ``text`` separate paragraphs."""
        paragraphs = [p.strip() for p in str(text).split("\n\n") if p.strip()]
        self._parts.extend(f"<p>{html.escape(p)}</p>" for p in paragraphs)
        return self

    def add_table(self, rows: Sequence[Mapping[str, object]], columns: Sequence[str] | None = None,
                  floatfmt: str = ".3f") -> Report:
        """A table with one row per mapping; ``columns`` (default: every key, in first-seen order) picks and orders them.

        Cells: floats formatted with ``floatfmt``, nan as "n/a", a missing key or None as empty, all escaped.
        """
        if isinstance(rows, Mapping) or not isinstance(rows, Sequence):
            raise ValueError(f"rows must be a sequence of mappings, got {type(rows).__name__}")
        for i, r in enumerate(rows):
            if not isinstance(r, Mapping):
                raise ValueError(f"rows[{i}] must be a mapping of column -> value, got {type(r).__name__}")
        fmt = _check_floatfmt(floatfmt)
        if columns is None:
            cols = list(dict.fromkeys(k for r in rows for k in r))
        elif isinstance(columns, str) or not isinstance(columns, Sequence):
            raise ValueError(f"columns must be a sequence of column names, got {columns!r}")
        else:
            cols = list(columns)
        if not cols:
            raise ValueError(f"a table needs at least one column: rows {rows!r} with columns {columns!r}")
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
        body = "\n".join(
            "<tr>" + "".join(f"<td>{html.escape(format_value(r.get(c), fmt))}</td>" for c in cols) + "</tr>" for r in rows
        )
        self._parts.append(f'<div class="table-wrap"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n'
                           "</tbody>\n</table></div>")
        return self

    def add_key_values(self, mapping: Mapping[str, object], floatfmt: str = ".3f") -> Report:
        """A two-column table of ``key | value`` (e.g. the resolved config or one fold's metrics), escaped."""
        if not isinstance(mapping, Mapping):
            raise ValueError(f"mapping must be a mapping, got {type(mapping).__name__}")
        fmt = _check_floatfmt(floatfmt)
        body = "\n".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(format_value(v, fmt))}</td></tr>"
            for k, v in mapping.items()
        )
        self._parts.append(f'<div class="table-wrap"><table class="kv">\n<tbody>\n{body}\n</tbody>\n</table></div>')
        return self

    def add_image(self, png_bytes: bytes, caption: str = "", width: int | None = None) -> Report:
        """A PNG embedded as ``data:image/png;base64,...`` with an escaped caption; ``width`` in CSS px (None: natural)."""
        if not isinstance(png_bytes, (bytes, bytearray)):
            raise ValueError(f"png_bytes must be bytes of a PNG file, got {type(png_bytes).__name__}")
        if not bytes(png_bytes).startswith(PNG_SIGNATURE):
            raise ValueError(f"png_bytes must start with the PNG signature {PNG_SIGNATURE!r}, got {bytes(png_bytes[:8])!r}")
        if width is not None and (isinstance(width, bool) or not isinstance(width, numbers.Integral) or width < 1):
            raise ValueError(f"width must be a positive integer (px) or None, got {width!r}")
        data = base64.b64encode(bytes(png_bytes)).decode("ascii")
        cap = html.escape(str(caption))
        size = f' style="width:{int(width)}px"' if width is not None else ""
        figcaption = f"<figcaption>{cap}</figcaption>" if caption else ""
        self._parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{cap}"{size}>{figcaption}</figure>')
        return self

    def to_html(self) -> str:
        """The complete HTML5 document as a string."""
        title = html.escape(self.title)
        body = "\n".join(self._parts)
        return (
            "<!DOCTYPE html>\n"
            '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{title}</title>\n<style>\n{_CSS}\n</style>\n</head>\n"
            f"<body>\n<h1>{title}</h1>\n{body}\n</body>\n</html>\n"
        )

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_html` to ``path`` as UTF-8 (the parent folder must exist) and return it as a Path."""
        out = Path(path)
        out.write_text(self.to_html(), encoding="utf-8")
        return out
