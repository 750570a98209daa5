"""PNG figures decode to real pictures; the HTML report is complete, escaped and self-contained."""

from __future__ import annotations

import base64
import math
import re

import cv2
import numpy as np
import pytest

from dr_ray.report import (
    Report,
    calibration_png,
    confusion_matrix_png,
    histogram_png,
    image_grid_png,
    pr_curve_png,
    roc_curve_png,
)

PNG = b"\x89PNG\r\n\x1a\n"
RNG = np.random.default_rng(0)
Y = np.array([0] * 20 + [1] * 20)
S1 = np.clip(Y * 0.3 + RNG.uniform(0, 0.7, 40), 0, 1)
S2 = RNG.uniform(0, 1, 40)


def _decode(png: bytes) -> np.ndarray:
    assert isinstance(png, bytes) and png.startswith(PNG)
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    # non-trivial content: many colours, not a blank canvas
    assert img.std() > 5
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 20
    return img


def test_roc_and_pr_curves():
    _decode(roc_curve_png({"fold 0": (Y, S1), "fold 1": (Y, S2)}, "ROC <referable>"))
    _decode(pr_curve_png({"model": (Y, S1), "baseline": (Y[:30], S2[:30])}, "PR"))
    with pytest.raises(ValueError, match=r"curves\['one'\]"):
        roc_curve_png({"one": (np.zeros(5, int), np.linspace(0, 1, 5))})
    with pytest.raises(ValueError, match="curves"):
        pr_curve_png({})


def test_confusion_matrix_normalised_and_counts_differ():
    y = RNG.integers(0, 5, 100)
    p = np.where(RNG.uniform(size=100) < 0.6, y, RNG.integers(0, 5, 100))
    names = ["none", "mild", "moderate", "severe", "PDR"]
    a = _decode(confusion_matrix_png(y, p, names, "ICDR", normalise=True))
    b = _decode(confusion_matrix_png(y, p, names, "ICDR", normalise=False))
    assert a.shape != b.shape or not np.array_equal(a, b)
    with pytest.raises(ValueError, match="preds"):
        confusion_matrix_png(y, np.full(100, 5), names)
    with pytest.raises(ValueError, match="class_names"):
        confusion_matrix_png(y, p, "abc")


def test_fundus_maps_draw_every_part_and_say_what_is_missing():
    from dr_ray.report.plots import fundus_maps_png

    img = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    full = {"image": img, "caption": "a: grade 3, p=0.80", "vessel_prob": RNG.random((64, 64)),
            "pos": np.array([[10, 10], [30, 40], [50, 20]], np.float32), "edges": np.array([[0, 1], [1, 2]]),
            "edge_av": np.array([1, 2]), "node_kind": np.array([2, 1, 2]), "disc": (32.0, 32.0, 10.0),
            "zone_dd": (1.0, 1.5), "lesions": RNG.random((4, 16, 16)), "lesion_kinds": ["ma", "he", "ex", "se"]}
    bare = {"image": img, "caption": "b: grade 0, p=0.10", "disc": (None, None, None)}
    a = _decode(fundus_maps_png([full, bare]))
    b = _decode(fundus_maps_png([{**full, "edges": np.zeros((0, 2))}, bare]))
    assert a.shape == b.shape and not np.array_equal(a, b)  # the graph's edges are drawn
    with pytest.raises(ValueError, match="at least one"):
        fundus_maps_png([])
    with pytest.raises(ValueError, match="uint8"):
        fundus_maps_png([{**bare, "image": img.astype(np.float32)}])


def test_grid_captions_stay_inside_their_tiles_and_never_overlap():
    """The Grad-CAM captions as the report writes them (long ids, three facts) for 4 tiles in a row: measured on
    the drawn figure, every caption line lies within its own tile's width and no two captions' boxes intersect."""
    from dr_ray.report.plots import image_grid_figure

    caps = [f"eyepacs/{1000 + i}_right: grade {i}\np=0.5{i}, CAM of class non-referable, no positive evidence"
            for i in range(8)]
    tiles = [RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(8)]
    fig = image_grid_figure(tiles, caps, ncols=4)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [ax.title.get_window_extent(renderer) for ax in fig.axes if ax.get_title()]
    assert len(boxes) == 8
    width = fig.bbox.width / 4
    for i, b in enumerate(boxes):
        col = i % 4
        assert col * width - 1 <= b.x0 and b.x1 <= (col + 1) * width + 1, (i, b)
        assert b.y1 <= fig.bbox.height - 1, (i, b)  # inside the picture, not cut at its top edge
    images = [ax.get_window_extent(renderer) for ax in fig.axes]
    for i in range(8):
        assert not any(boxes[i].overlaps(im) for im in images), i  # above the pictures, not over them
        for j in range(i + 1, 8):
            assert not boxes[i].overlaps(boxes[j]), (i, j)
    for ax, cap in zip(fig.axes, caps):  # wrapped, not cut: every word is still there
        assert ax.get_title().split() == cap.split()


def test_calibration_histogram_and_grid():
    probs = RNG.dirichlet(np.ones(5), 200)
    _decode(calibration_png(RNG.integers(0, 5, 200), probs, 10, "Calibration"))
    _decode(histogram_png(RNG.gamma(2, 0.3, 300), 25, "Predictive entropy", "nats", {"ln 5": math.log(5)}))
    tiles = [RNG.integers(0, 256, (32, 48, 3), dtype=np.uint8) for _ in range(5)]
    _decode(image_grid_png(tiles, [f"case {i}" for i in range(5)], ncols=3))
    with pytest.raises(ValueError, match=r"images\[1\]"):
        image_grid_png([tiles[0], tiles[1].astype(np.float32)], ["a", "b"])
    with pytest.raises(ValueError, match="captions"):
        image_grid_png(tiles, ["only one"])
    with pytest.raises(ValueError, match="values"):
        histogram_png(np.array([1.0, np.inf]))
    with pytest.raises(ValueError, match="probs"):
        calibration_png(np.array([0, 1]), np.array([[0.5, 0.6], [0.2, 0.8]]))


def test_report_is_complete_escaped_and_self_contained(tmp_path):
    png_a = histogram_png(RNG.normal(size=50), 10, "a")
    png_b = roc_curve_png({"m": (Y, S1)})
    rep = Report("DR grading <fold 0>")
    rep.add_heading("Metrics & calibration", level=2)
    rep.add_text("Referable DR = grade >= 2.\n\nSecond paragraph, see https://example.org")
    rep.add_table([{"fold": 0, "auc": 0.91234, "qwk": math.nan}, {"fold": 1, "auc": 0.875, "note": "<b>x</b>"}])
    rep.add_key_values({"threshold": 0.5, "model": "resnet50 'tf'"})
    rep.add_image(png_a, caption="<script>alert(1)</script>", width=400)
    rep.add_image(png_b, caption="ROC")
    html_text = rep.to_html()

    assert html_text.startswith("<!DOCTYPE html>") and html_text.rstrip().endswith("</html>")
    assert "<title>DR grading &lt;fold 0&gt;</title>" in html_text
    assert "<h2>Metrics &amp; calibration</h2>" in html_text
    assert "<p>Referable DR = grade &gt;= 2.</p>" in html_text
    for cell in ("<td>0</td>", "<td>0.912</td>", "<td>n/a</td>", "<td>0.875</td>", "<td>&lt;b&gt;x&lt;/b&gt;</td>",
                 "<th>note</th>", "<th>threshold</th>", "<td>0.500</td>", "<td>resnet50 &#x27;tf&#x27;</td>"):
        assert cell in html_text, cell
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html_text
    assert "<figcaption>ROC</figcaption>" in html_text and 'style="width:400px"' in html_text
    assert "<script" not in html_text.lower()
    assert "https://" not in html_text.replace("see https://example.org", "")  # only the escaped user text
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html_text)
    assert [base64.b64decode(s) for s in images] == [png_a, png_b]

    out = rep.write(tmp_path / "report.html")
    assert out == tmp_path / "report.html"
    assert out.read_text(encoding="utf-8") == html_text


def test_report_without_user_urls_has_no_links():
    rep = Report("r").add_heading("h", 3).add_table([{"a": 1.0}], floatfmt=".1f")
    rep.add_image(histogram_png(np.arange(10.0)), "hist")
    text = rep.to_html()
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert "<td>1.0</td>" in text and "<h3>h</h3>" in text


def test_report_validates_inputs():
    rep = Report("r")
    with pytest.raises(ValueError, match="png_bytes"):
        rep.add_image(b"GIF89a....", "x")
    with pytest.raises(ValueError, match="level"):
        rep.add_heading("x", level=7)
    with pytest.raises(ValueError, match="floatfmt"):
        rep.add_table([{"a": 1.0}], floatfmt="%d")
    with pytest.raises(ValueError, match="rows"):
        rep.add_table([1, 2])
    with pytest.raises(ValueError, match="title"):
        Report("")


# ---- statistics tables -------------------------------------------------------------------------------------

def _parse_cis(rows, column):
    out = []
    for r in rows:
        text = r[column]
        if text != "n/a":
            lo, hi = (float(x) for x in text.split(".."))
            out.append((r["metric"], lo, hi))
    return out


def test_every_interval_the_report_prints_lies_in_the_metric_range():
    from dr_ray.report.stats_tables import fold_mean_rows, pooled_rows
    from dr_ray.training.classification_metrics import cv_summary
    from dr_ray.training.stats import metric_range
    from dr_ray.training.stats_bootstrap import bootstrap_metrics

    rng = np.random.default_rng(7)
    keys = ["auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "qwk"]
    printed = 0
    for trial in range(25):
        n = int(rng.integers(2, 40))
        y = rng.integers(0, 2, n)
        s = np.clip(y * rng.uniform(0, 0.6) + rng.uniform(0, 0.6, n), 0, 1)
        p = np.stack([1 - s, s], axis=1)
        pooled = bootstrap_metrics(y, p, rng.integers(0, max(1, n // 2), n), n_boot=60, seed=trial,
                                   max_undefined=0.5)
        folds = [{k: float(v) for k, v in zip(keys, rng.uniform(0, 1, len(keys)) ** 0.2)} for _ in range(5)]
        for rows, col in ((pooled_rows(pooled, keys), "95% CI"), (fold_mean_rows(cv_summary(folds), keys), "95% CI")):
            for metric, lo, hi in _parse_cis(rows, col):
                a, b = metric_range(metric)
                assert a <= lo <= hi <= b, (trial, metric, lo, hi)
                printed += 1
    assert printed > 100


def test_stats_tables_label_splits_clipping_reasons_and_uninformative_wilcoxon():
    from dr_ray.report.stats_tables import (comparison_rows, delong_rows, fold_mean_rows, patient_level_line,
                                            pooled_rows, selection_rows)
    from dr_ray.training.classification_metrics import cv_summary
    from dr_ray.training.stats_bootstrap import bootstrap_metrics
    from dr_ray.training.stats_paired import compare_folds, delong_test

    assert patient_level_line({"patient_level": True}) == "patient-level folds: yes"
    assert patient_level_line({"patient_level": False}).startswith("patient-level folds: no")
    assert "not recorded" in patient_level_line({})
    summary = cv_summary([{"sensitivity": v, "auc": a} for v, a in zip([1.0, 1.0, 0.5, 1.0, 0.39],
                                                                       [0.8, None, 0.7, 0.9, 0.6])])
    rows = {r["metric"]: r for r in fold_mean_rows(summary, ["sensitivity", "auc"])}
    assert rows["sensitivity"]["95% CI"].endswith("..1.000") and "clipped" in rows["sensitivity"]["interval"]
    assert rows["sensitivity"]["split"] == "mean over outer test folds" and "[1]" in rows["auc"]["note"]
    y = np.array([0] * 6)
    pooled = pooled_rows(bootstrap_metrics(y, np.tile([0.7, 0.3], (6, 1)), np.arange(6), n_boot=20), ["auc"])
    assert pooled[0]["95% CI"] == "n/a" and "one class" in pooled[0]["note"] and pooled[0]["estimate"] is None
    ours = [{"fold": k, "auc": 0.8 + 0.02 * k, "train_images": 80, "test_images": 20} for k in range(5)]
    theirs = [{"fold": k, "auc": 0.75 + 0.01 * k * k} for k in range(5)]
    (row,) = comparison_rows(compare_folds(ours, theirs, ["auc"]))
    assert row["Wilcoxon p"] == "not informative" and "0.0625" in row["note"] and row["n_test/n_train"] == 0.25
    lab = np.array([0, 1] * 10)
    d = delong_rows(delong_test(lab, lab * 0.5 + np.linspace(0, 0.4, 20), np.linspace(0, 1, 20)))
    assert d[0]["p"] is not None and "independent" in d[0]["note"] and len(d) == 1
    from dr_ray.training.stats_bootstrap import bootstrap_auc_difference

    both = delong_test(lab, lab * 0.5 + np.linspace(0, 0.4, 20), np.linspace(0, 1, 20))
    both["patient_bootstrap"] = bootstrap_auc_difference(lab, lab * 0.5 + np.linspace(0, 0.4, 20),
                                                         np.linspace(0, 1, 20), np.arange(20) // 2, n_boot=100)
    rows2 = delong_rows(both)
    assert len(rows2) == 2 and "10 patients" in rows2[1]["note"] and rows2[1]["difference"] == pytest.approx(both["diff"])
    assert delong_rows({"reason": "no oof_predictions.parquet"})[0]["note"] == "no oof_predictions.parquet"
    sel = selection_rows([{"fold": 0, "auc": 0.7, "selection": {"split": "inner validation", "auc": 0.9}}], ["auc"])
    assert sel == [{"fold": 0, "numbers": "selection", "split": "inner validation", "auc": 0.9}]
    html_text = Report("r").add_table(list(rows.values())).to_html()
    assert "clipped to [0, 1]" in html_text and "mean over outer test folds" in html_text


def test_report_in_a_real_browser_loads_every_image_and_nothing_overflows(tmp_path, browser_check):
    """A report with what real ones hold (a wide metric table, long unbreakable paths and hashes, key-values, the
    Grad-CAM grid, the vessel/lesion panels) opened in headless Chromium: every image decodes and is shown, no
    element sticks out of the page, no cell's text runs out of its box. Checked on the planted flaws first."""
    from dr_ray.report.html import Report
    from dr_ray.report.plots import fundus_maps_png, image_grid_png

    img = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    r = Report("dr-ray evaluation: a run with a long name " + "x" * 80)
    r.add_key_values({"train run": "/data/dr-ray/" + "very_long_folder_name_" * 8 + "/graph_fusion",
                      "model hashes": ",".join(["0123456789abcdef"] * 6)})
    keys = ["auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "qwk", "ece", "referable_auc",
            "referable_sensitivity", "referable_specificity"]
    r.add_table([{"split": f"outer test fold {k}", **{m: 0.5 + k / 100 for m in keys}} for k in range(5)])
    r.add_table([{"image_id": "eyepacs/1_left", "error": "/data/eyepacs/train/" + "a" * 150 + ".jpeg: truncated"}])
    caps = [f"eyepacs/{1000 + i}_right: grade {i % 5}\np=0.5{i}, CAM of class non-referable, no positive evidence"
            for i in range(8)]
    r.add_image(image_grid_png([img] * 8, caps, ncols=4), "Grad-CAM overlays")
    r.add_image(fundus_maps_png([{"image": img, "caption": "eyepacs/1000_right: grade 3, p=0.71"}]), "panels")
    if browser_check is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium): the report is not checked in a browser")
    check = browser_check
    good = check(r.write(tmp_path / "report.html"))
    assert len(good["images"]) == 2 and all(i["ok"] and i["shown"] > 100 for i in good["images"]), good["images"]
    assert good["problems"] == [] and good["page"] <= good["viewport"], good["problems"]
    # the check sees a broken image and text that runs out of a fixed-width box
    bad = (tmp_path / "report.html").read_text().replace(
        "</body>", '<img src="data:image/png;base64,AAAA" alt="broken">'
                   '<div style="width:50px;white-space:nowrap">' + "y" * 200 + "</div></body>")
    (tmp_path / "bad.html").write_text(bad)
    flawed = check(tmp_path / "bad.html")
    assert [i["ok"] for i in flawed["images"]] == [True, True, False]
    assert any(p[0] == "text overflows" and p[1] == "DIV" for p in flawed["problems"]), flawed["problems"]
