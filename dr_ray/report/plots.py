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

from dr_ray.training.classification_metrics import _check_labels, _check_probs, expected_calibration_error, reliability_bins

__all__ = ["calibration_png", "confusion_matrix_png", "histogram_png", "image_grid_png", "pr_curve_png", "roc_curve_png"]


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
                         normalize: bool = True, *, dpi: int = 100) -> bytes:
    """Confusion matrix (rows: true class, columns: predicted), each cell with its count and, with ``normalize``, row %.

    labels, preds: (N,) int in 0..C-1 with C = len(class_names). With ``normalize`` the colours are the row
    fractions (recall per true class) and an empty row shows counts only; without, the colours are counts.
    """
    if isinstance(class_names, str) or not isinstance(class_names, Sequence) or len(class_names) < 2:
        raise ValueError(f"class_names must be a sequence of at least 2 names, got {class_names!r}")
    c = len(class_names)
    y_arr = np.asarray(labels)
    if y_arr.ndim != 1 or y_arr.size == 0:
        raise ValueError(f"labels must be non-empty 1-D, got shape {y_arr.shape}")
    y = _check_labels(y_arr, y_arr.shape[0], c, "labels")
    p = _check_labels(preds, y.shape[0], c, "preds")
    cm = confusion_matrix(y, p, labels=np.arange(c))
    rows = cm.sum(axis=1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    shown = frac if normalize else cm
    side = 1.2 + 0.75 * c
    fig = _new_figure(side + 1.0, side)
    ax = fig.add_subplot()
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else max(int(cm.max()), 1))
    fig.colorbar(im, ax=ax, shrink=0.8, label="row fraction" if normalize else "count")
    for i in range(c):
        for j in range(c):
            text = f"{cm[i, j]}"
            if normalize and rows[i, 0] > 0:
                text += f"\n{100 * frac[i, j]:.1f}%"
            dark = shown[i, j] > 0.5 * (1 if normalize else max(int(cm.max()), 1))
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
    p = _check_probs(probs)
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
    """Images (each (H, W, 3) uint8 RGB, sizes may differ) in a grid of ``ncols`` columns, a caption above each.

    Used for Grad-CAM overlays and the most uncertain cases; ``tile_in`` is the tile side in inches.
    """
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
    fig = _new_figure(cols * tile_in, rows * (tile_in + 0.3))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax in axes:
        ax.set_axis_off()
    for ax, im, cap in zip(axes, images, captions):
        ax.imshow(np.asarray(im), interpolation="nearest")
        ax.set_title(str(cap), fontsize="small")
    return _to_png(fig, dpi)
