"""Coverage of the 95% bootstrap interval of the pooled AUC when both eyes of a patient are correlated:
resampling patients (dr-ray's default) against resampling images as if independent.

    python benchmarks/bench_bootstrap_coverage.py [--reps 200] [--patients 75] [--n-boot 1000]

Simulation: each patient has a label and a shared random effect u ~ N(0, 1) added to the score of both eyes
(score = label + u + N(0, 0.5)), the size of the 150-image EyePACS set (75 patients x 2 eyes). The true AUC comes
from 400,000 simulated images. A correct 95% interval covers it in ~95% of the datasets.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._bench_util import cpu_model  # noqa: E402
from dr_ray.training.stats_bootstrap import bootstrap_metrics  # noqa: E402


def sample(rng: np.random.Generator, n_patients: int):
    y_pat = rng.integers(0, 2, n_patients)
    u = rng.normal(0, 1, n_patients)  # shared by both eyes
    y = np.repeat(y_pat, 2)
    s = 1.0 * y + np.repeat(u, 2) + rng.normal(0, 0.5, 2 * n_patients)
    p = 1 / (1 + np.exp(-s))
    return y, np.stack([1 - p, p], 1), np.repeat(np.arange(n_patients), 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--patients", type=int, default=75)
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args()
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    yb, pb, _ = sample(rng, 200_000)
    true = roc_auc_score(yb, pb[:, 1])
    hits = {"patient": 0, "image": 0}
    width = {"patient": [], "image": []}
    t0 = time.perf_counter()
    for r in range(args.reps):
        y, p, g = sample(rng, args.patients)
        for unit, groups in (("patient", g), ("image", np.arange(len(y)))):
            a = bootstrap_metrics(y, p, groups, n_boot=args.n_boot, seed=r)["auc"]
            hits[unit] += a["ci_low"] <= true <= a["ci_high"]
            width[unit].append(a["ci_high"] - a["ci_low"])
    print(f"# {dt.date.today().isoformat()}, {cpu_model()}, {os.cpu_count()} CPUs, {time.perf_counter() - t0:.0f} s")
    print(f"true AUC {true:.4f}; {args.reps} datasets of {args.patients} patients x 2 eyes, {args.n_boot} resamples")
    for unit in hits:
        print(f"resampling {unit}s: coverage {hits[unit] / args.reps:.3f}, mean width {np.mean(width[unit]):.3f}")


if __name__ == "__main__":
    main()
