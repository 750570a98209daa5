"""Evaluation figures rendered to PNG bytes: ROC, precision-recall, confusion matrix, calibration, histogram, image grid.

Each function builds its own :class:`matplotlib.figure.Figure` on an Agg canvas (no pyplot, so no global
figure registry, no GUI backend, safe in Ray workers and threads), saves it as PNG and drops it; the
result is the file's bytes, ready for :meth:`dr_ray.report.html.Report.add_image` or ``Path.write_bytes``.
Inputs are checked first and a bad one raises ``ValueError`` naming it.
"""

from __future__ import annotations

import io
import math
import numbers
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score, confusion_matrix, precision_recall_curve, roc_auc_score, roc_curve

from dr_ray.training.classification_metrics import check_labels, check_probs, expected_calibration_error, reliability_bins

__all__ = ["AV_COLOURS", "LESION_COLOURS", "calibration_png", "confusion_matrix_png", "fundus_maps_png",
           "histogram_png", "image_grid_figure", "image_grid_png", "pr_curve_png", "roc_curve_png", "wrap_caption"]


def _new_figure(width_in: float, height_in: float) -> Figure:
    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _to_png(fig: Figure, dpi: int) -> bytes:
    if isinstance(dpi, bool) or not isinstance(dpi, numbers.Integral) or not 10 <= dpi <= 1000:
        raise ValueError(f"dpi must be an integer in 10..1000, got {dpi!r}")
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=int(dpi))
    finally:
        fig.clear()  # no pyplot registry to close from; clearing frees the artists now
    return buf.getvalue()


def _check_binary_curves(curves: object) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``curves``: name -> (labels (n,) in {0, 1}, scores (n,) finite), each with both classes present."""
    if not isinstance(curves, Mapping) or len(curves) == 0:
        raise ValueError(f"curves must be a non-empty mapping of name -> (labels, scores), got {curves!r}")
    out = []
    for name, pair in curves.items():
        where = f"curves[{name!r}]"
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"{where} must be a (labels, scores) pair, got {type(pair).__name__}")
        y = np.asarray(pair[0])
        s = np.asarray(pair[1], dtype=np.float64)
        if y.ndim != 1 or s.shape != y.shape or y.size == 0:
            raise ValueError(f"{where} labels and scores must be non-empty 1-D of one length, got {y.shape} and {s.shape}")
        if not np.isin(y, (0, 1)).all():
            raise ValueError(f"{where} labels must be 0/1, got values {np.unique(y)[:10].tolist()}")
        if not np.isfinite(s).all():
            raise ValueError(f"{where} scores must be finite")
        y = y.astype(np.int64)
        if y.min() == y.max():
            raise ValueError(f"{where} needs both classes in labels for a curve, got only {int(y[0])}")
        out.append((str(name), y, s))
    return out


def roc_curve_png(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str = "ROC", *, dpi: int = 100) -> bytes:
    """One ROC line per named curve (e.g. per fold or per model) with its AUC in the legend, plus the chance diagonal.

    curves: name -> (labels (n,) 0/1, scores (n,) float, higher = more positive). Returns PNG bytes.
    """
    checked = _check_binary_curves(curves)
    fig = _new_figure(5.0, 4.6)
    ax = fig.add_subplot()
    for name, y, s in checked:
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, lw=1.5, label=f"{name} (AUC = {roc_auc_score(y, s):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity (FPR)", ylabel="sensitivity (TPR)", title=str(title))
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return _to_png(fig, dpi)


def pr_curve_png(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str = "Precision-recall", *,
                 dpi: int = 100) -> bytes:
    """One precision-recall line per named curve with its average precision in the legend, plus the prevalence line.

    curves: name -> (labels (n,) 0/1, scores (n,) float). The prevalence (fraction of positives, the precision
    of a random ranking) is one grey line when all curves share it, else a dashed line per curve in its colour.
    """
    checked = _check_binary_curves(curves)
    prevalences = [float(y.mean()) for _, y, _ in checked]
    shared = max(prevalences) - min(prevalences) < 1e-12
    fig = _new_figure(5.0, 4.6)
    ax = fig.add_subplot()
    for (name, y, s), prev in zip(checked, prevalences):
        precision, recall, _ = precision_recall_curve(y, s)
        label = f"{name} (AP = {average_precision_score(y, s):.3f})"
        if not shared:
            label += f", prevalence {prev:.3f}"
        (line,) = ax.step(recall, precision, where="post", lw=1.5, label=label)
        if not shared:
            ax.axhline(prev, ls="--", lw=1, color=line.get_color())
    if shared:
        ax.axhline(prevalences[0], ls="--", lw=1, color="grey", label=f"prevalence = {prevalences[0]:.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall (sensitivity)", ylabel="precision (PPV)", title=str(title))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize="small")
    return _to_png(fig, dpi)


def confusion_matrix_png(labels: np.ndarray, preds: np.ndarray, class_names: Sequence[str], title: str = "Confusion matrix",
                         normalise: bool = True, *, dpi: int = 100) -> bytes:
    """Confusion matrix (rows: true class, columns: predicted), each cell with its count and, with ``normalise``, row %.

    labels, preds: (N,) int in 0..C-1 with C = len(class_names). With ``normalise`` the colours are the row
    fractions (recall per true class) and an empty row shows counts only; without, the colours are counts.
    """
    if isinstance(class_names, str) or not isinstance(class_names, Sequence) or len(class_names) < 2:
        raise ValueError(f"class_names must be a sequence of at least 2 names, got {class_names!r}")
    c = len(class_names)
    y_arr = np.asarray(labels)
    if y_arr.ndim != 1 or y_arr.size == 0:
        raise ValueError(f"labels must be non-empty 1-D, got shape {y_arr.shape}")
    y = check_labels(y_arr, y_arr.shape[0], c, "labels")
    p = check_labels(preds, y.shape[0], c, "preds")
    cm = confusion_matrix(y, p, labels=np.arange(c))
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    shown = frac if normalise else cm
    side = 1.2 + 0.75 * c
    fig = _new_figure(side + 1.0, side)
    ax = fig.add_subplot()
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalise else max(int(cm.max()), 1))
    fig.colorbar(im, ax=ax, shrink=0.8, label="row fraction" if normalise else "count")
    for i in range(c):
        for j in range(c):
            text = f"{cm[i, j]}"
            if normalise and rows[i, 0] > 0:
                text += f"\n{100 * frac[i, j]:.1f}%"
            dark = shown[i, j] > 0.5 * (1 if normalise else max(int(cm.max()), 1))
            ax.text(j, i, text, ha="center", va="center", fontsize="small", color="white" if dark else "black")
    names = [str(n) for n in class_names]
    long_names = max(map(len, names)) > 4
    ax.set_xticks(range(c), names, rotation=45 if long_names else 0, ha="right" if long_names else "center")
    ax.set_yticks(range(c), names)
    ax.set(xlabel="predicted", ylabel="true", title=str(title))
    return _to_png(fig, dpi)


def calibration_png(labels: np.ndarray, probs: np.ndarray, bins: int = 15, title: str = "Calibration", *,
                    dpi: int = 100) -> bytes:
    """Reliability diagram of the top-class confidence: accuracy bars per bin, the diagonal, counts below, ECE in the title.

    labels: (N,) int; probs: (N, C) rows summing to 1; bins: equal-width confidence bins on [0, 1]
    (see :func:`dr_ray.training.classification_metrics.reliability_bins`).
    """
    p = check_probs(probs)
    conf, acc, count = reliability_bins(labels, p, bins)
    full = count > 0
    ece = expected_calibration_error(labels, p, bins)
    m = len(count)
    edges = np.linspace(0.0, 1.0, m + 1)
    fig = _new_figure(5.0, 5.6)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.bar(edges[:-1], np.nan_to_num(acc), width=1.0 / m, align="edge", edgecolor="black", lw=0.5,
            color="tab:blue", label="accuracy")
    # the gap between each bar and its mean confidence is the bin's share of the ECE
    top.bar(edges[:-1][full], (conf - acc)[full], bottom=acc[full], width=1.0 / m, align="edge",
            color="tab:red", alpha=0.3, edgecolor="tab:red", lw=0.5, label="gap to confidence")
    top.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy", title=f"{title} (ECE = {ece:.3f})")
    top.grid(alpha=0.3)
    top.legend(loc="upper left", fontsize="small")
    bottom.bar(edges[:-1], count, width=1.0 / m, align="edge", color="tab:grey", edgecolor="black", lw=0.5)
    bottom.set(xlabel="confidence (max probability)", ylabel="count")
    return _to_png(fig, dpi)


def histogram_png(values: np.ndarray, bins: int = 30, title: str = "", xlabel: str = "",
                  marks: Mapping[str, float] | None = None, *, dpi: int = 100) -> bytes:
    """Histogram of ``values`` (K,) finite floats (e.g. predictive entropy in nats) with optional named vertical lines.

    marks: label -> x position (e.g. {"ln 5 (uniform)": 1.609, "review threshold": 1.0}), drawn dashed and in the legend.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"values must be non-empty 1-D, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError(f"values must be finite, got {int(np.count_nonzero(~np.isfinite(v)))} non-finite")
    if isinstance(bins, bool) or not isinstance(bins, numbers.Integral) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    if marks is not None:
        if not isinstance(marks, Mapping):
            raise ValueError(f"marks must be a mapping of label -> x, got {type(marks).__name__}")
        for k, x in marks.items():
            if isinstance(x, bool) or not isinstance(x, numbers.Real) or not math.isfinite(x):
                raise ValueError(f"marks[{k!r}] must be a finite number, got {x!r}")
    fig = _new_figure(5.5, 3.8)
    ax = fig.add_subplot()
    ax.hist(v, bins=int(bins), color="tab:blue", edgecolor="black", lw=0.5)
    for (label, x), color in zip((marks or {}).items(), ["tab:red", "tab:orange", "tab:green", "tab:purple", "black"] * 10):
        ax.axvline(float(x), ls="--", lw=1.5, color=color, label=f"{label} = {float(x):.3g}")
    if marks:
        ax.legend(fontsize="small")
    ax.set(title=str(title), xlabel=str(xlabel), ylabel="count")
    ax.grid(alpha=0.3)
    return _to_png(fig, dpi)


def image_grid_png(images: Sequence[np.ndarray], captions: Sequence[str], ncols: int = 4, *, tile_in: float = 2.5,
                   dpi: int = 100) -> bytes:
    """Images (each (H, W, 3) uint8 RGB, sizes may differ) in a grid of ``ncols`` columns, a caption above each
    (wrapped to its tile: :func:`wrap_caption`). Used for Grad-CAM overlays and the most uncertain cases;
    ``tile_in`` is the tile side in inches."""
    return _to_png(image_grid_figure(images, captions, ncols, tile_in=tile_in), dpi)


def image_grid_figure(images: Sequence[np.ndarray], captions: Sequence[str], ncols: int = 4, *,
                      tile_in: float = 2.5) -> Figure:
    """The figure of :func:`image_grid_png` (tests measure where its captions land)."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    if not isinstance(images, Sequence) or len(images) == 0:
        raise ValueError(f"images must be a non-empty sequence of (H, W, 3) uint8 arrays, got {type(images).__name__}")
    for i, im in enumerate(images):
        a = np.asarray(im)
        if a.ndim != 3 or a.shape[2] != 3 or a.shape[0] == 0 or a.shape[1] == 0 or a.dtype != np.uint8:
            raise ValueError(f"images[{i}] must be (H, W, 3) uint8, got shape {a.shape} dtype {a.dtype}")
    if isinstance(captions, str) or not isinstance(captions, Sequence) or len(captions) != len(images):
        raise ValueError(f"captions must be a sequence of {len(images)} strings (one per image), got {captions!r}")
    if isinstance(ncols, bool) or not isinstance(ncols, numbers.Integral) or ncols < 1:
        raise ValueError(f"ncols must be a positive integer, got {ncols!r}")
    if not isinstance(tile_in, numbers.Real) or not 0.5 <= tile_in <= 10:
        raise ValueError(f"tile_in must be in [0.5, 10] inches, got {tile_in!r}")
    cols = min(int(ncols), len(images))
    rows = math.ceil(len(images) / cols)
    wrapped = [wrap_caption(str(c), tile_in) for c in captions]
    lines = max(c.count("\n") + 1 for c in wrapped)
    fig = _new_figure(cols * tile_in, rows * (tile_in + CAPTION_LINE_IN * lines + 0.1))
    fig.get_layout_engine().set(h_pad=0.1)  # room above each caption (the first line touched the edge)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, im, cap in zip(axes, images, wrapped):
        ax.imshow(np.asarray(im), interpolation="nearest")
        ax.set_title(cap, fontsize=CAPTION_PT)
    return fig


CAPTION_PT = 8  # caption font size, points
CAPTION_LINE_IN = CAPTION_PT * 1.25 / 72  # height of one caption line, inches


def wrap_caption(caption: str, tile_in: float) -> str:
    """``caption`` with each line wrapped to the width of a ``tile_in``-inch tile (a character of the caption font
    is ~0.55 em wide), so the captions of neighbouring tiles never run into each other."""
    import textwrap

    width = max(8, int(tile_in * 72 / (CAPTION_PT * 0.6)))
    return "\n".join(textwrap.fill(line, width, break_long_words=True) or "" for line in caption.split("\n"))


# A/V codes of the vessel graph (dr_ray.vessels.graph: -1 unknown, 1 artery, 2 vein, 3 crossing) -> edge colours
AV_COLOURS = {1: ("#e8291c", "artery"), 2: ("#1f5fe0", "vein"), 3: ("#b030c8", "crossing"), -1: ("#d0d0d0", "unknown")}
LESION_COLOURS = {"ma": "#ffe600", "he": "#ff2d2d", "ex": "#2dff6e", "se": "#38d8ff"}  # per lesion kind


def fundus_maps_png(samples: Sequence[Mapping], *, tile_in: float = 2.6, dpi: int = 100) -> bytes:
    """One row per sample image, three panels: the fundus with the vessel probability map over it; the vessel
    graph drawn over the fundus (edges coloured artery / vein / crossing / unknown, junctions as dots and
    endpoints as triangles), the optic disc and the CRAE/CRVE measurement zone (``zone_dd`` = (inner, outer)
    radii in disc diameters); the lesion maps overlaid, one colour per kind.

    Each sample: ``image`` (S, S, 3) uint8, ``caption`` str, and optional ``vessel_prob`` (S, S) in [0, 1],
    ``pos`` (N, 2) node (x, y) px, ``edges`` (E, 2) node pairs, ``edge_av`` (E,), ``node_kind`` (N,)
    (1 junction, 2 endpoint), ``disc`` (cx, cy, diameter) px or None, ``zone_dd`` (inner, outer),
    ``lesions`` (K, L, L) in [0, 1] with ``lesion_kinds`` (K names). A missing part is drawn as "not available".
    """
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D
    from matplotlib.patches import Circle, Patch

    if not samples:
        raise ValueError("fundus_maps_png needs at least one sample")
    fig = _new_figure(3 * tile_in, len(samples) * (tile_in + 0.45))
    axes = fig.subplots(len(samples), 3, squeeze=False)
    for row, s in zip(axes, samples):
        img = np.asarray(s["image"])
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"sample image must be (S, S, 3) uint8, got {img.shape} {img.dtype}")
        h, w = img.shape[:2]
        for ax, title in zip(row, ("vessel probability", "vessel graph, disc, zone", "lesion maps")):
            ax.imshow(img, interpolation="bilinear")
            ax.set_axis_off()
            ax.set_xlim(0, w)
            ax.set_ylim(h, 0)
            ax.set_title(wrap_caption(f"{s['caption']}\n{title}", tile_in), fontsize=CAPTION_PT)
        prob = s.get("vessel_prob")
        if prob is not None:
            row[0].imshow(np.asarray(prob, np.float32), cmap="magma", alpha=0.6, vmin=0, vmax=1,
                          extent=(0, w, h, 0))
        else:
            row[0].text(w / 2, h / 2, "no probability map stored", **_NOTE)
        pos = s.get("pos")
        if pos is not None and len(pos):
            pos = np.asarray(pos, np.float32).reshape(-1, 2)
            edges = np.asarray(s.get("edges", np.zeros((0, 2))), np.int64).reshape(-1, 2)
            av = np.asarray(s.get("edge_av", np.full(len(edges), -1)), np.float64).ravel()
            segs = pos[edges] if len(edges) else np.zeros((0, 2, 2), np.float32)
            colours = [AV_COLOURS.get(int(a) if np.isfinite(a) else -1, AV_COLOURS[-1])[0] for a in av]
            row[1].add_collection(LineCollection(segs, colors=colours, linewidths=1.2))
            kind = np.asarray(s.get("node_kind", np.zeros(len(pos))), np.int64).ravel()
            for k, marker, colour in ((1, "o", "#ffffff"), (2, "^", "#ffd400")):
                m = kind == k
                row[1].scatter(pos[m, 0], pos[m, 1], s=4, marker=marker, c=colour, linewidths=0)
        disc = s.get("disc")
        if disc is not None and all(v is not None and np.isfinite(v) for v in disc):
            cx, cy, d = map(float, disc)
            row[1].add_patch(Circle((cx, cy), d / 2, fill=False, ec="white", lw=1.2))
            for r in s.get("zone_dd", (1.0, 1.5)):
                row[1].add_patch(Circle((cx, cy), r * d, fill=False, ec="#7cff7c", lw=0.9, ls="--"))
        else:
            row[1].text(w / 2, 0.95 * h, "optic disc not found", **_NOTE)
        maps = s.get("lesions")
        if maps is not None and len(maps):
            maps = np.asarray(maps, np.float32)
            for kind_name, m in zip(s.get("lesion_kinds", ()), maps):
                rgba = np.zeros((*m.shape, 4), np.float32)
                rgba[..., :3] = _hex_rgb(LESION_COLOURS.get(kind_name, "#ffffff"))
                rgba[..., 3] = np.clip(m, 0, 1) * 0.8
                row[2].imshow(rgba, extent=(0, w, h, 0), interpolation="nearest")
        else:
            row[2].text(w / 2, h / 2, "no lesion maps joined", **_NOTE)
    handles = [Line2D([0], [0], color=c, lw=2, label=n) for c, n in AV_COLOURS.values()]
    handles += [Line2D([0], [0], marker="o", ls="", color="#ffffff", mec="k", label="junction"),
                Line2D([0], [0], marker="^", ls="", color="#ffd400", mec="k", label="endpoint"),
                Line2D([0], [0], color="#7cff7c", ls="--", label="CRAE/CRVE zone")]
    handles += [Patch(color=c, label=k) for k, c in LESION_COLOURS.items()]
    fig.legend(handles=handles, loc="outside lower center", ncols=6, fontsize=CAPTION_PT, frameon=False)
    return _to_png(fig, dpi)


_NOTE = {"ha": "center", "va": "center", "color": "white", "fontsize": CAPTION_PT,
         "bbox": {"facecolor": "black", "alpha": 0.6, "edgecolor": "none"}}  # "not available" notes on a panel


def _hex_rgb(colour: str) -> tuple[float, float, float]:
    c = colour.lstrip("#")
    return tuple(int(c[i:i + 2], 16) / 255 for i in (0, 2, 4))
