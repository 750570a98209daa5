"""Artery/vein classification of vessel-graph segments from hand-crafted colour, reflex and width features.

Per segment (graph edge) :func:`segment_features` measures, over the vessel pixels nearest to the
segment's skeleton path (``FEATURE_NAMES``):

* colour relative to the local background (each channel divided by a Gaussian-weighted mean of the nearby
  non-vessel pixels, sigma ~2.5 median vessel widths): veins absorb more and look darker, arteries are
  lighter and redder (Narasimha-Iyer et al. 2007, Niemeijer et al. 2009 use the same cues);
* the same colours standardised over all vessel pixels of the image (z-scores), which removes the
  image's overall colour cast: A/V is a *relative* decision within one image;
* green/red and blue/red ratios inside the vessel;
* central light reflex: mean intensity of the central third of the vessel minus that of its outer
  third, over the background (arteries show a brighter central stripe; 0 for vessels under 3 px wide);
* spread of the green level along the segment;
* width relative to the image's length-weighted median caliber (veins are wider than their arteries);
* the colour and reflex features again as residuals of a per-image fit on log width: a thin vessel looks
  lighter whatever its type, so it is compared with this image's vessels of the same width.

Graph context (:func:`av_links`, :func:`smooth_av_logits`): the branches of a bifurcation share the type,
and at a crossing (a degree-4 node, or two degree-3 nodes joined by a short segment) the most collinear
pairs of segments continue each other. Each segment's log-odds is averaged with its linked neighbours'
(iteratively), which on held-out images adds ~4 points of accuracy (docs/bench_av.md).

A light classifier (:func:`fit_av_classifier`: standard scaling + a small MLP or logistic regression from
scikit-learn) maps them to P(vein). :class:`AVClassifier` keeps only arrays (scaler statistics, layer
weights) and re-evaluates the network in NumPy; it is saved as JSON (no pickle: loading executes no code).
The shipped model ``dr_ray/vessels/data/av_classifier.json`` is written by
``benchmarks/train_av_classifier.py`` (data, split and held-out accuracy in ``docs/bench_av.md``).

Pure functions; the only file access is :meth:`AVClassifier.save` / :meth:`AVClassifier.load` on an
explicit path and :func:`load_default_av_classifier` reading the packaged file.

Layout of this package (``from dr_ray.vessels.av import ...`` serves every public name below):

* ``features.py``: ``FEATURE_NAMES`` and :func:`segment_features` (colour / reflex / width features, width
  residuals);
* ``classifier.py``: :class:`AVClassifier` (JSON model, NumPy forward pass), :func:`fit_av_classifier`,
  :func:`default_av_model_path`, :func:`load_default_av_classifier`;
* ``smoothing.py``: graph context, :func:`av_links` and :func:`smooth_av_logits`;
* ``predict.py``: :func:`predict_av` (features -> classifier -> smoothing) and :func:`apply_av_labels`.

The shipped model stays at ``dr_ray/vessels/data/av_classifier.json`` (located as package data of
``dr_ray.vessels``, not relative to this folder).
"""

from dr_ray.vessels.av.classifier import (
    AVClassifier,
    default_av_model_path,
    fit_av_classifier,
    load_default_av_classifier,
)
from dr_ray.vessels.av.features import FEATURE_NAMES, segment_features
from dr_ray.vessels.av.predict import apply_av_labels, predict_av
from dr_ray.vessels.av.smoothing import av_links, smooth_av_logits

__all__ = ["FEATURE_NAMES", "AVClassifier", "segment_features", "fit_av_classifier", "apply_av_labels",
           "av_links", "smooth_av_logits", "predict_av", "load_default_av_classifier", "default_av_model_path"]
