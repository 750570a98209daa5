"""``dr-ray demo``: the whole chain on one local Ray, each stage as its own command would run it.

train-vessels -> train-lesions -> label (preprocess + vessels + pseudo labels in one stream) -> train (K-fold CV)
-> tune -> evaluate.

``label`` needs both segmentation models: the demo trains them first (``train_vessels`` and ``train_lesions``
sections of the config) and points ``vessels.model_dir`` / ``pseudo_labels.model_dir`` at them unless the config
names other model directories. ``configs/demo.yaml`` keeps every stage small enough for a laptop CPU.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time

from dr_ray.config import Config
from dr_ray.io import fs
from dr_ray.pipelines.runtime import set_quiet_console, stage_dir, use_local_ray_train_settings

log = logging.getLogger(__name__)


class _ConsoleFilter(logging.Filter):
    """On a quiet console: warnings and errors from anyone, and the demo's own stage lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name == __name__


def quiet_demo_console(output_dir: str) -> str | None:
    """When stderr is not a terminal (CI, ``make demo > log``, ``ray job submit``'s log): no Ray Data progress
    bars, no worker output on the console, only the demo's stage lines and warnings there; every INFO record
    goes to ``<output.dir>/demo.log`` instead. Returns that log's path, or None on a terminal (output as usual,
    with progress bars) or when the output folder is not local."""
    if sys.stderr.isatty():
        return None
    set_quiet_console(True)
    root = logging.getLogger()
    for h in root.handlers:
        if not any(isinstance(f, _ConsoleFilter) for f in h.filters):
            h.addFilter(_ConsoleFilter())
    out = stage_dir(output_dir, "")
    if fs.is_uri(out):
        return None
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "demo.log")
    fh = logging.FileHandler(path)
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(fh)
    return path


def _fmt(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and v != v) else f"{v:.3f}"


def run_demo(cfg: Config) -> dict:
    """Run every stage in order; returns {"lines": one summary line per stage, "report": HTML path, "seconds"}."""
    from dr_ray.pipelines.evaluate import run_evaluate
    from dr_ray.pipelines.label import run_label
    from dr_ray.pipelines.train import run_train
    from dr_ray.pipelines.train_lesions import run_train_lesions
    from dr_ray.pipelines.train_vessels import run_train_vessels
    from dr_ray.pipelines.tune import run_tune

    if not cfg.ray.address and "RAY_ADDRESS" not in os.environ:  # a laptop run: it starts its own local Ray
        use_local_ray_train_settings()
    log_file = quiet_demo_console(cfg.output.dir)
    if log_file:
        log.info("demo: quiet console (not a terminal); the full log is in %s", log_file)
    lines: list[str] = []
    times: dict[str, float] = {}

    def timed(name, fn, *a):
        log.info("demo: %s ...", name)
        t0 = time.perf_counter()
        out = fn(*a)
        times[name] = time.perf_counter() - t0
        log.info("demo: %s done in %.0f s", name, times[name])
        return out

    if not cfg.vessels.model_dir:
        tv = timed("train-vessels", run_train_vessels, cfg)
        cfg = dataclasses.replace(cfg, vessels=dataclasses.replace(cfg.vessels, model_dir=tv["model_dir"]))
        lines.append(f"train-vessels: val Dice {_fmt(tv['final'].get('val_dice'))} -> {tv['model_dir']}")
    if not cfg.pseudo_labels.model_dir:
        tl = timed("train-lesions", run_train_lesions, cfg)
        cfg = dataclasses.replace(cfg, pseudo_labels=dataclasses.replace(cfg.pseudo_labels,
                                                                         model_dir=tl["model_dir"]))
        lines.append(f"train-lesions: val AUPR mean {_fmt(tl['final'].get('val_aupr_mean'))} -> {tl['model_dir']}")
    # one stream writes the three stage folders; one summary line per folder, as the three commands print
    sums = timed("label", run_label, cfg)
    for name, s in (("preprocess", sums["preprocess"]), ("vessels", sums["vessels"]),
                    ("pseudo-labels", sums["pseudo_labels"])):
        lines.append(f"{name + ':':<15}{s.catalog_rows} images = written {s.written} + quarantined {s.quarantined}"
                     f" [{'reconciles' if s.reconciles else 'DOES NOT RECONCILE'}]")
    tr = timed("train", run_train, cfg)
    auc = tr["cv"].get("auc", {})
    lines.append(f"train:         {tr['model']} ({', '.join(tr['modalities'])}), {len(tr['folds'])} folds, CV AUC "
                 f"{_fmt(auc.get('mean'))} (95% CI {_fmt(auc.get('ci_low'))}..{_fmt(auc.get('ci_high'))})")
    tu = timed("tune", run_tune, cfg)
    lines.append(f"tune:          {tu['completed']}/{tu['trials']} trials, best {cfg.tune.metric} "
                 f"{_fmt(tu['best'][cfg.tune.metric])} -> {tu['best_config_path']}")
    ev = timed("evaluate", run_evaluate, cfg)
    lines.append(f"evaluate:      pooled out-of-fold AUC {_fmt(ev['pooled'].get('auc'))}, accuracy "
                 f"{_fmt(ev['pooled'].get('accuracy'))}")
    lines.append("stage times: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))
    return {"lines": lines, "report": ev["report"], "seconds": sum(times.values()), "times": times,
            "output": stage_dir(cfg.output.dir, "")}


__all__ = ["quiet_demo_console", "run_demo"]
