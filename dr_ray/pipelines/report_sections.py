"""The report sections ``dr-ray evaluate`` draws for out-of-fold and for external predictions: curves, the most
uncertain cases, Grad-CAM, and reading the few joined rows (thumbnails, Grad-CAM inputs) they need. Each section
saves its PNGs under the run's ``plots/`` folder and adds them to a :class:`dr_ray.report.html.Report`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dr_ray.io import columns as C
from dr_ray.io import fs

GRADE_NAMES = ("0 none", "1 mild", "2 moderate", "3 severe", "4 proliferative")
REFERABLE_NAMES = ("non-referable", "referable")


def metric_keys(n_classes: int) -> list[str]:
    """The metric columns of a report's tables: the shared ones, plus the referable ones of a 5-class model."""
    keys = ["auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "qwk", "ece"]
    return keys + ["referable_auc", "referable_sensitivity", "referable_specificity"] if n_classes == 5 else keys


def thumbnail(png: bytes, size: int = 192) -> np.ndarray:
    import cv2

    from dr_ray.imaging import decode_png

    return cv2.resize(decode_png(png), (size, size), interpolation=cv2.INTER_AREA)


def image_rows(fusion_ok_dir: str, ids: list[str], columns: list[str]) -> dict[str, list]:
    """The joined rows of ``ids`` (a handful, for Grad-CAM and thumbnails), in the order of ``ids``."""
    from dr_ray.pipelines.fusion_read import read_rows

    suffix = f"/{C.STATUS}={C.STATUS_OK}"  # the index folder holds status=ok/; big columns come from the stages
    rows = read_rows(fusion_ok_dir[: -len(suffix)] if fusion_ok_dir.endswith(suffix) else fusion_ok_dir,
                     columns, ids=ids).to_pydict()
    order = {v: i for i, v in enumerate(rows[C.IMAGE_ID])}
    return {k: [v[order[i]] for i in ids if i in order] for k, v in rows.items()}


def gradcam_section(report, model_dirs: dict[str, str], preds, n: int, plots_dir: Path, *,
                     ok_dir: str | None = None, who: str = "by the fold model that never saw the image"
                     ) -> dict[str, str]:
    """Grad-CAM overlays for up to ``n`` images (the most confident referable/positive predictions first, then
    the most confident negatives), each by the model ``model_dirs[preds["fold"][i]]`` (out-of-fold: the fold
    model that did not train on it). ``ok_dir``: the joined index holding the images (default: the model's own
    training index); ``who`` says in the report which model drew the maps. Returns {image_id: short caption} of
    the images shown, most confident first."""
    from dr_ray.models import load_model_dir
    from dr_ray.models.gradcam import grad_cam, overlay
    from dr_ray.report.plots import image_grid_png
    from dr_ray.training.fusion_data import InputSpec, batches_from_rows, to_device

    import torch

    if n <= 0 or not len(preds["image_id"]):
        return {}
    score = preds["score"]
    order = np.argsort(-score)
    pick = list(order[: (n + 1) // 2]) + [i for i in order[::-1][: n // 2] if i not in order[: (n + 1) // 2]]
    images, captions, shown = [], [], {}
    for fold in sorted({int(preds["fold"][i]) for i in pick}):
        idx = [i for i in pick if int(preds["fold"][i]) == fold]
        model, meta = load_model_dir(model_dirs[str(fold)])
        spec = InputSpec.from_dict(meta["extra"]["inputs"])
        names = REFERABLE_NAMES if spec.num_classes == 2 else GRADE_NAMES
        rows_dir = ok_dir or fs.join(meta["extra"]["fusion_data"], f"{C.STATUS}={C.STATUS_OK}")
        ids = [preds["image_id"][i] for i in idx]
        rows = image_rows(rows_dir, ids, spec.columns())
        for batch in batches_from_rows(rows, spec, batch_size=8):
            b = to_device(batch, "cpu", mean=model.spec.mean, std=model.spec.std)
            cams = grad_cam(model, b)  # for the predicted class
            with torch.no_grad():
                predicted = model.eval()(b).argmax(1).tolist()
            raw = batch["image"].permute(0, 2, 3, 1).numpy()
            for j, image_id in enumerate(batch["image_id"]):
                k = ids.index(image_id)
                img = np.ascontiguousarray(raw[j])
                images.append(overlay(img, cams[j]) if cams[j].max() > 0 else img)
                none = "" if cams[j].max() > 0 else ", no positive evidence"
                captions.append(f"{image_id}: grade {preds['grade'][idx[k]]}\np={score[idx[k]]:.2f}, CAM of class "
                                f"{names[predicted[j]]}{none}")
                shown[image_id] = f"{image_id}: grade {preds['grade'][idx[k]]}, p={score[idx[k]]:.2f}"
    png = image_grid_png(images, captions, ncols=4)
    (plots_dir / "gradcam.png").write_bytes(png)
    report.add_heading("Grad-CAM", 2)
    report.add_text(f"Grad-CAM of the image branch's last feature map for the predicted class, {who} (the most "
                    "confident referable predictions, then the most confident non-referable ones). A map with no "
                    "positive evidence is shown blank.")
    report.add_image(png, "Grad-CAM overlays (red = most evidence)")
    order = [preds["image_id"][i] for i in pick]
    return {i: shown[i] for i in order if i in shown}


def plots_section(report, plots_dir: Path, *, labels: np.ndarray, probs: np.ndarray, score: np.ndarray,
                   ref_labels: np.ndarray, entropy: np.ndarray, groups: dict[str, np.ndarray], where: str) -> None:
    """ROC and PR (per group, e.g. fold, and pooled), confusion matrix, calibration and entropy histogram: saved
    under ``plots_dir`` and added to ``report``. ``where`` names the predictions ("out-of-fold", "external")."""
    from dr_ray.report.plots import (calibration_png, confusion_matrix_png, histogram_png, pr_curve_png,
                                     roc_curve_png)

    n_classes = probs.shape[1] if probs.ndim == 2 and probs.shape[0] else 2
    plots: dict[str, bytes] = {}
    if len(labels) and len(set(ref_labels.tolist())) == 2:
        curves = {name: (ref_labels[m], score[m]) for name, m in groups.items()
                  if len(set(ref_labels[m].tolist())) == 2}
        curves["pooled"] = (ref_labels, score)
        plots["roc.png"] = roc_curve_png(curves, title=f"ROC, referable DR ({where})")
        plots["pr.png"] = pr_curve_png(curves, title=f"Precision-recall, referable DR ({where})")
    if len(labels):
        names = REFERABLE_NAMES if n_classes == 2 else GRADE_NAMES
        plots["confusion.png"] = confusion_matrix_png(labels, probs.argmax(1), list(names),
                                                      title="Confusion matrix (pooled)", normalise=True)
        plots["calibration.png"] = calibration_png(labels, probs, title="Calibration (pooled)")
        plots["entropy.png"] = histogram_png(entropy, bins=20, title="Predictive entropy (MC dropout)",
                                             xlabel="entropy (nats)", marks={"max": float(np.log(n_classes))})
    for name, png in plots.items():
        (plots_dir / name).write_bytes(png)
    report.add_heading("Curves", 2)
    for name, caption in (("roc.png", "ROC per fold and pooled" if groups else "ROC"), ("pr.png", "Precision-recall"),
                          ("confusion.png", "Confusion matrix, row-normalised"),
                          ("calibration.png", "Calibration: reliability diagram of the pooled predictions"),
                          ("entropy.png", "Predictive entropy of the MC-dropout mean")):
        if name in plots:
            report.add_image(plots[name], caption)


def uncertain_section(report, plots_dir: Path, *, ids: list[str], entropy: np.ndarray, score: np.ndarray, n: int,
                       row_of, ok_dir_of) -> None:
    """The ``n`` images of highest predictive entropy: a table (``row_of(i)`` -> dict) and thumbnails read from
    the joined index ``ok_dir_of(i)`` holding image ``i``."""
    from dr_ray.report.plots import image_grid_png

    if not n or not len(ids):
        return
    top = np.argsort(-entropy)[:n]
    report.add_text(f"The {len(top)} images with the highest predictive entropy:")
    report.add_table([row_of(i) for i in top])
    thumbs, caps = [], []
    by_dir: dict[str, list[str]] = {}
    for i in top:
        by_dir.setdefault(ok_dir_of(i), []).append(ids[i])
    where = {v: i for i, v in enumerate(ids)}
    for ok_dir, sel in by_dir.items():
        got = image_rows(ok_dir, sel, [C.IMAGE_ID, C.IMAGE_PNG])
        for image_id, png in zip(got[C.IMAGE_ID], got[C.IMAGE_PNG]):
            i = where[image_id]
            thumbs.append(thumbnail(png))
            caps.append(f"{image_id}\nH={entropy[i]:.2f}, p={score[i]:.2f}")
    if thumbs:
        png = image_grid_png(thumbs, caps, ncols=4)
        (plots_dir / "uncertain.png").write_bytes(png)
        report.add_image(png, "Most uncertain cases")


SAMPLE_MAPS = 4  # images with vessel / disc / lesion panels in a report (the first Grad-CAM images)
# biomarkers shown per sample image (the stats token's features and the zone calibers)
SAMPLE_BIOMARKERS = ("vessel_density", "fractal_dimension", "branch_points", "mean_tortuosity", "crae_parr_hubbard_um",
                     "crve_parr_hubbard_um", "avr_parr_hubbard", "crae_n_vessels", "crve_n_vessels", "glcm_contrast",
                     "glcm_entropy")


def _joined_stages(ok_dir: str) -> list[str]:
    """The stages joined into the index whose ``status=ok`` folder is ``ok_dir`` (its ``_SUCCESS.json``)."""
    import json

    from dr_ray.pipelines.fusion_data import SUCCESS_FILE

    root = ok_dir.rsplit(f"/{C.STATUS}=", 1)[0]
    return list(json.loads(fs.read_text(fs.join(root, SUCCESS_FILE))).get("stages", []))


def sample_maps_section(report, plots_dir: Path, ok_dir: str, ids: list[str], captions: dict[str, str]) -> None:
    """For the images ``ids`` of the joined index ``ok_dir``: the vessel probability map, the vessel graph (nodes
    by kind, edges by artery/vein) with the optic disc and the CRAE/CRVE zone, and the lesion maps, each over the
    fundus (:func:`dr_ray.report.plots.fundus_maps_png`), plus a table of their biomarkers. Shows what the index
    joined: without the vessel or lesion stage, those panels say so."""
    from dr_ray.imaging import decode_lesion_maps, decode_png
    from dr_ray.report.plots import fundus_maps_png
    from dr_ray.vessels.graph import EDGE_FEATURES, NODE_FEATURES
    from dr_ray.vessels.zone import ZONE_INNER_DD, ZONE_OUTER_DD

    if not ids:
        return
    stages = _joined_stages(ok_dir)
    cols = [C.IMAGE_ID, C.IMAGE_PNG]
    if "vessels" in stages:
        cols += [C.VESSEL_PROB_PNG, C.N_NODES, C.N_EDGES, C.GRAPH_X, C.GRAPH_POS, C.GRAPH_EDGE_INDEX,
                 C.GRAPH_EDGE_ATTR, C.DISC_CX, C.DISC_CY, C.DISC_DIAMETER,
                 *[b for b in SAMPLE_BIOMARKERS if b in C.VESSELS_SCHEMA.names]]
    if "pseudo_labels" in stages:
        cols += [C.LESION_MAPS_PNG, C.LESION_MAP_KINDS]
    rows = image_rows(ok_dir, ids, cols)
    samples, table = [], []
    nf, ef = len(NODE_FEATURES), len(EDGE_FEATURES)
    for i, image_id in enumerate(rows[C.IMAGE_ID]):
        img = decode_png(rows[C.IMAGE_PNG][i])
        s: dict = {"image": img, "caption": captions.get(image_id, image_id), "zone_dd": (ZONE_INNER_DD, ZONE_OUTER_DD)}
        if "vessels" in stages:
            prob = rows[C.VESSEL_PROB_PNG][i]
            if prob is not None:
                p = decode_png(prob).astype(np.float32) / 255.0
                s["vessel_prob"] = p if p.shape == img.shape[:2] else None
            n, e = int(rows[C.N_NODES][i] or 0), int(rows[C.N_EDGES][i] or 0)
            x = np.asarray(rows[C.GRAPH_X][i] or [], np.float32).reshape(n, nf)
            s["pos"] = np.asarray(rows[C.GRAPH_POS][i] or [], np.float32).reshape(n, 2)
            s["edges"] = np.asarray(rows[C.GRAPH_EDGE_INDEX][i] or [], np.int64).reshape(2, 2 * e)[:, :e].T
            attr = np.asarray(rows[C.GRAPH_EDGE_ATTR][i] or [], np.float32).reshape(2 * e, ef)
            s["edge_av"] = attr[:e, EDGE_FEATURES.index("av_label")]
            s["node_kind"] = x[:, NODE_FEATURES.index("kind")]
            s["disc"] = (rows[C.DISC_CX][i], rows[C.DISC_CY][i], rows[C.DISC_DIAMETER][i])
            table.append({"image_id": image_id, **{b: rows[b][i] for b in SAMPLE_BIOMARKERS if b in rows}})
        if "pseudo_labels" in stages and rows[C.LESION_MAPS_PNG][i] is not None:
            kinds = str(rows[C.LESION_MAP_KINDS][i]).split(",")
            s["lesions"] = decode_lesion_maps(rows[C.LESION_MAPS_PNG][i], len(kinds)).astype(np.float32) / 255.0
            s["lesion_kinds"] = kinds
        samples.append(s)
    png = fundus_maps_png(samples)
    (plots_dir / "vessels_lesions.png").write_bytes(png)
    report.add_heading("Vessels, optic disc and lesions of sample images", 2)
    report.add_text("What the pipeline extracted from the images the Grad-CAM section shows: the vessel probability "
                    "map, the vessel graph (edges red = artery, blue = vein, purple = crossing, grey = unknown; "
                    "dots = junctions, triangles = endpoints), the optic disc (white) and the zone where CRAE/CRVE "
                    f"are measured ({ZONE_INNER_DD:g}-{ZONE_OUTER_DD:g} disc diameters from its centre, dashed), and "
                    "the lesion maps per kind.")
    report.add_image(png, "Vessel probability, vessel graph with disc and zone, lesion maps")
    if table:
        report.add_table(table)


def json_default(v: Any):
    """``json.dumps(default=...)`` for numpy scalars in metrics."""
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    return str(v)


__all__ = ["GRADE_NAMES", "REFERABLE_NAMES", "SAMPLE_BIOMARKERS", "SAMPLE_MAPS", "gradcam_section", "image_rows",
           "json_default", "metric_keys", "plots_section", "sample_maps_section", "thumbnail", "uncertain_section"]
