"""Evaluation reports: PNG figures (:mod:`dr_ray.report.plots`) and a self-contained HTML page (:mod:`dr_ray.report.html`)."""

from dr_ray.report.html import Report, format_value
from dr_ray.report.plots import (
    calibration_png,
    confusion_matrix_png,
    histogram_png,
    image_grid_png,
    pr_curve_png,
    roc_curve_png,
)

__all__ = [
    "Report", "calibration_png", "confusion_matrix_png", "format_value", "histogram_png", "image_grid_png",
    "pr_curve_png", "roc_curve_png",
]
