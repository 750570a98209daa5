"""Vessel graph + global biomarkers on real manual masks: cost per 1024-px image on one core, against the
previous implementation and against PVBM, and fractal-dimension agreement with PVBM.

    python benchmarks/bench_vessel_graph.py [--data DIR] [--repeats 3] [--baseline-rev REV]
                                            [--pvbm-rotations 25] [--no-pvbm] [--json OUT]

Masks: the manual vessel masks of ../shared/data: DRIVE training (20, 565x584; also upscaled), LES-AV (15)
and HRF-AV (2, A/V maps, vessels = label > 0), each resized so that its longer side is 1024 px (float
mask resized with INTER_AREA when shrinking, INTER_LINEAR when enlarging, then >= 0.5; the RGB image and
FOV mask the same way). FD is also compared on the 20 DRIVE masks at their native size.

Ours (one image): ``vessel_graph(mask, image=image)`` + ``global_biomarkers(mask, graph, fov, image=image)``
(skeleton, skan path graph, pruning, calibers, tortuosity, curvature, node GLCM, density, FD, branch points,
tortuosity, GLCM over the vasculature).
Baseline (``--baseline-rev``): the same two calls from ``dr_ray/vessels`` at that git revision (loaded from
``git show`` into a private package; without image GLCM in global_biomarkers, which it did not have).
PVBM (PyPI ``pvbm``, optional, benchmark-only): its equivalent calls on the same mask, as its README runs
them: ``skeletonize(segmentation) * 1``; ``GeometricalVBMs`` (``PVBM.GeometricalAnalysis``, the optic-disc-free
API): ``area``, ``compute_particular_points`` (end/intersection points), ``compute_tortuosity_length``
(median tortuosity, length); ``MultifractalVBMs(n_rotations=25, optimize=True, min_proba=1e-4,
maxproba=0.9999).compute_multifractals`` (D0 = box-counting FD, D1, D2, singularity length).

All timed calls run in this one process, pinned to one CPU, with OpenCV/BLAS/OpenMP at one thread;
per image the implementations alternate which goes first. Prints markdown tables; ``--json`` writes all
numbers (per image too).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"  # before NumPy/OpenCV load their thread pools: a per-core figure

import argparse
import datetime as dt
import importlib
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._bench_util import cpu_model, pin_one_core  # noqa: E402

from dr_ray.vessels.biomarkers import global_biomarkers
from dr_ray.vessels.fractal import box_counting_fd
from dr_ray.vessels.graph_build import vessel_graph

DEFAULT_DATA = Path(os.environ.get("DR_RAY_SHARED_DATA", REPO.parent / "shared" / "data"))


# ---------------------------------------------------------------- data

def _read(path: Path, mode: str | None = None) -> np.ndarray:
    with Image.open(path) as im:
        return np.array(im.convert(mode) if mode else im)


def load_cases(root: Path) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(name, mask (H, W) bool, image (H, W, 3) uint8, fov (H, W) bool) at native resolution."""
    out = []
    for p in sorted((root / "DRIVE/training/1st_manual").glob("*_manual1.gif")):
        n = p.name.split("_")[0]
        out.append((f"DRIVE/{n}", _read(p) > 0, _read(root / f"DRIVE/training/images/{n}_training.png", "RGB"),
                    _read(root / f"DRIVE/training/mask/{n}_training_mask.gif") > 0))
    for p in sorted((root / "LES-AV/1st_manual").glob("*.png")):
        out.append((f"LES-AV/{p.stem}", _read(p) > 0, _read(root / f"LES-AV/images/{p.stem}.jpg", "RGB"),
                    _read(root / f"LES-AV/mask/{p.stem}_mask.gif") > 0))
    for p in sorted((root / "HRF-AV/1st_manual").glob("*_AVmanual.png")):
        n = p.name.replace("_AVmanual.png", "")
        img = next(q for q in (root / "HRF-AV/images").iterdir() if q.stem == n)
        fov = _read(root / f"HRF-AV/mask/{n}_mask.tif")
        out.append((f"HRF-AV/{n}", _read(p) > 0, _read(img, "RGB"), (fov[..., 0] if fov.ndim == 3 else fov) > 0))
    return out


def resize_long_side(mask: np.ndarray, image: np.ndarray, fov: np.ndarray, long_side: int = 1024):
    """Resize so the longer side is ``long_side``: area averaging to shrink, bilinear to enlarge; masks >= 0.5."""
    h, w = mask.shape
    s = long_side / max(h, w)
    size = (round(w * s), round(h * s))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    m = cv2.resize(mask.astype(np.float32), size, interpolation=interp) >= 0.5
    f = cv2.resize(fov.astype(np.float32), size, interpolation=interp) >= 0.5
    return m, cv2.resize(image, size, interpolation=interp), f


# ---------------------------------------------------------------- implementations

def ours(mask, image, fov):
    g = vessel_graph(mask, image=image)
    return g, global_biomarkers(mask, g, fov, image=image)


def load_baseline(rev: str):
    """vessel_graph + global_biomarkers as they were at git revision ``rev`` (a private package in a temp dir)."""
    tmp = Path(tempfile.mkdtemp(prefix="bench_vessel_baseline_"))
    pkg = tmp / "_baseline_vessels"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for mod in ("graph", "texture", "fractal", "biomarkers"):
        src = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:dr_ray/vessels/{mod}.py"], check=True,
                             capture_output=True, text=True).stdout
        (pkg / f"{mod}.py").write_text(src.replace("dr_ray.vessels.", "_baseline_vessels."))
    sys.path.insert(0, str(tmp))
    g_mod = importlib.import_module("_baseline_vessels.graph")
    b_mod = importlib.import_module("_baseline_vessels.biomarkers")

    def baseline(mask, image, fov):
        g = g_mod.vessel_graph(mask, image=image)
        return g, b_mod.global_biomarkers(mask, g, fov)
    return baseline


def pvbm_box_sizes(shape: tuple[int, int]) -> np.ndarray:
    """PVBM's box sides (``MultifractalVBMs.get_multi_fractal_dimension``): 20 linearly spaced, 5 px to 0.6 x
    the shorter image side."""
    return np.linspace(5, int(0.6 * min(shape)), 20).astype(np.int64)


def make_pvbm(rotations: int):
    from PVBM.FractalAnalysis import MultifractalVBMs
    from PVBM.GeometricalAnalysis import GeometricalVBMs
    from skimage.morphology import skeletonize
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # GeometricalAnalysis is PVBM's disc-free API
        geo = GeometricalVBMs()
    frac = MultifractalVBMs(n_rotations=rotations, optimize=True, min_proba=0.0001, maxproba=0.9999)

    def pvbm(mask, image, fov):
        seg = mask.astype(np.float64)
        skel = skeletonize(seg) * 1
        area = geo.area(seg)
        n_end, n_inter, _, _ = geo.compute_particular_points(skel)
        med_tor, length, _, _, _ = geo.compute_tortuosity_length(skel.copy())
        d0, d1, d2, sl = frac.compute_multifractals(seg.copy())
        return {"area": area, "endpoints": n_end, "intersections": n_inter, "median_tortuosity": med_tor,
                "length": length, "D0": d0, "D1": d1, "D2": d2, "singularity_length": sl}

    def pvbm_d0(mask, min_proba, max_proba):
        """D0 at 0 degrees (one rotation) with the given box-occupancy limits."""
        f = MultifractalVBMs(n_rotations=1, optimize=False, min_proba=min_proba, maxproba=max_proba)
        return float(f.get_multi_fractal_dimension(mask.astype(np.float64), 0)[0])
    return pvbm, pvbm_d0


def _time(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t0, out


# ---------------------------------------------------------------- report

def _agree(a, b) -> dict:
    d = np.asarray(a) - np.asarray(b)
    return {"n": len(d), "mean_abs": float(np.abs(d).mean()), "max_abs": float(np.abs(d).max()),
            "mean_signed": float(d.mean())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="../shared/data (MANIFEST.md layout)")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls of ours/baseline per image (median)")
    ap.add_argument("--baseline-rev", default=None, help="git revision of the previous implementation to time")
    ap.add_argument("--pvbm-rotations", type=int, default=25, help="MultifractalVBMs n_rotations (README: 25)")
    ap.add_argument("--no-pvbm", action="store_true", help="skip PVBM (not installed)")
    ap.add_argument("--limit", type=int, default=None, help="first N images only (smoke test)")
    ap.add_argument("--json", type=Path, default=None, help="also write all numbers here")
    args = ap.parse_args(argv)

    cv2.setNumThreads(1)
    pinned = pin_one_core()
    native = load_cases(args.data)
    if not native:
        print(f"no masks under {args.data}", file=sys.stderr)
        return 2
    if args.limit:
        native = native[:args.limit]
    at1024 = [(n, *resize_long_side(m, im, f)) for n, m, im, f in native]
    drive_native = [c for c in native if c[0].startswith("DRIVE/")]

    impls = {"ours": ours}
    if args.baseline_rev:
        impls["baseline"] = load_baseline(args.baseline_rev)
    pvbm = pvbm_d0 = None
    pvbm_version = None
    if not args.no_pvbm:
        try:
            from importlib.metadata import version
            pvbm, pvbm_d0 = make_pvbm(args.pvbm_rotations)
            pvbm_version = version("pvbm")
        except ImportError as e:
            print(f"PVBM not importable ({e}); rerun with --no-pvbm or `pip install --no-deps pvbm`",
                  file=sys.stderr)
            return 2

    # warm-up: imports, numba JIT in skan, page-in
    for _, m, im, f in at1024[:2]:
        for fn in impls.values():
            fn(m, im, f)

    per_image = []
    for i, (name, m, im, f) in enumerate(at1024):
        row = {"name": name, "shape": list(m.shape)}
        order = list(impls) if i % 2 == 0 else list(impls)[::-1]
        times = {k: [] for k in impls}
        for _ in range(args.repeats):
            for k in order:
                t, _ = _time(impls[k], m, im, f)
                times[k].append(t)
            order = order[::-1]
        for k, ts in times.items():
            row[f"{k}_ms"] = 1e3 * statistics.median(ts)
        _, bm = ours(m, im, f)
        row["ours_fd"] = bm["fractal_dimension"].value
        row["ours_fd_pvbm_sizes"] = box_counting_fd(m, sizes=pvbm_box_sizes(m.shape), crop=False)
        row["ours_branch_points"] = bm["branch_points"].value
        row["ours_tortuosity"] = bm["mean_tortuosity"].value
        if pvbm:
            t, pv = _time(pvbm, m, im, f)
            row["pvbm_ms"] = 1e3 * t
            row["pvbm"] = {k: float(v) for k, v in pv.items()}
            t, _ = _time(ours, m, im, f)  # ours once more right after PVBM: same machine state
            row["ours_after_pvbm_ms"] = 1e3 * t
            row["pvbm_d0_0deg"] = pvbm_d0(m, 0.0001, 0.9999)
            row["pvbm_d0_0deg_all_boxes"] = pvbm_d0(m, 0.0, 1.0)
        per_image.append(row)
        print(f"{name:14s} {m.shape} " + " ".join(f"{k} {row[k]:.1f} ms" for k in row if k.endswith("_ms")),
              file=sys.stderr, flush=True)

    fd_native = []
    if pvbm:
        for name, m, im, f in drive_native:
            t, pv = _time(pvbm, m, im, f)
            t_ours = statistics.median(_time(ours, m, im, f)[0] for _ in range(args.repeats))
            fd_native.append({"name": name, "ours_fd": box_counting_fd(m),
                              "ours_fd_pvbm_sizes": box_counting_fd(m, sizes=pvbm_box_sizes(m.shape), crop=False),
                              "pvbm_D0": float(pv["D0"]), "pvbm_d0_0deg": pvbm_d0(m, 0.0001, 0.9999),
                              "pvbm_d0_0deg_all_boxes": pvbm_d0(m, 0.0, 1.0), "pvbm_ms": 1e3 * t,
                              "ours_ms": 1e3 * t_ours})

    ours_ms = np.array([r["ours_ms"] for r in per_image])
    res = {
        "images_1024": len(per_image),
        "repeats": args.repeats,
        "pinning": pinned,
        "ours_ms_per_1024px_image_mean": float(ours_ms.mean()),
        "ours_ms_per_1024px_image_median": float(np.median(ours_ms)),
        "ours_ms_per_1024px_image_max": float(ours_ms.max()),
    }
    if "baseline" in impls:
        base_ms = np.array([r["baseline_ms"] for r in per_image])
        res.update(baseline_rev=args.baseline_rev, baseline_ms_mean=float(base_ms.mean()),
                   baseline_ms_median=float(np.median(base_ms)), speedup_vs_baseline=float(base_ms.sum() / ours_ms.sum()))
    if pvbm:
        pv_ms = np.array([r["pvbm_ms"] for r in per_image])
        oa_ms = np.array([r["ours_after_pvbm_ms"] for r in per_image])
        res.update(pvbm_version=pvbm_version, pvbm_rotations=args.pvbm_rotations,
                   pvbm_ms_mean=float(pv_ms.mean()), pvbm_ms_median=float(np.median(pv_ms)),
                   ours_next_to_pvbm_ms_mean=float(oa_ms.mean()),
                   speedup_vs_pvbm=float(pv_ms.sum() / ours_ms.sum()),
                   speedup_vs_pvbm_next_to_it=float(pv_ms.sum() / oa_ms.sum()),
                   speedup_vs_pvbm_min_per_image=float((pv_ms / np.maximum(ours_ms, oa_ms)).min()))
        sets = {"1024 px (DRIVE up, LES-AV, HRF-AV)": per_image, "DRIVE native 565x584": fd_native}
        res["fd"] = {}
        for label, rows in sets.items():
            if not rows:
                continue
            pv_d0 = [r["pvbm"]["D0"] if "pvbm" in r else r["pvbm_D0"] for r in rows]
            res["fd"][label] = {
                "ours_default_vs_pvbm_readme": _agree([r["ours_fd"] for r in rows], pv_d0),
                "ours_pvbm_sizes_vs_pvbm_readme": _agree([r["ours_fd_pvbm_sizes"] for r in rows], pv_d0),
                "ours_pvbm_sizes_vs_pvbm_0deg": _agree([r["ours_fd_pvbm_sizes"] for r in rows],
                                                       [r["pvbm_d0_0deg"] for r in rows]),
                "ours_pvbm_sizes_vs_pvbm_0deg_all_boxes": _agree([r["ours_fd_pvbm_sizes"] for r in rows],
                                                                 [r["pvbm_d0_0deg_all_boxes"] for r in rows]),
            }
        if fd_native:
            res["drive_native_ours_ms_mean"] = float(np.mean([r["ours_ms"] for r in fd_native]))
            res["drive_native_pvbm_ms_mean"] = float(np.mean([r["pvbm_ms"] for r in fd_native]))
    res.update(
        command=" ".join(["python", *[str(a) for a in ([Path(sys.argv[0]).as_posix()] + sys.argv[1:])]]),
        machine=f"{cpu_model()}; {os.cpu_count()} logical CPUs; {platform.system()} {platform.release()}",
        versions=(f"Python {platform.python_version()}, NumPy {np.__version__}, OpenCV {cv2.__version__}, "
                  f"scikit-image {importlib.import_module('skimage').__version__}, "
                  f"skan {importlib.import_module('skan').__version__}"),
        date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        per_image=per_image, drive_native=fd_native,
    )

    print(f"# bench_vessel_graph: {len(per_image)} manual masks at 1024 px, {args.repeats} repeats, {pinned}")
    print()
    print("| implementation | ms / 1024-px image (mean) | median | ratio |")
    print("|---|---:|---:|---:|")
    print(f"| ours: vessel_graph + global_biomarkers | {res['ours_ms_per_1024px_image_mean']:.1f} | "
          f"{res['ours_ms_per_1024px_image_median']:.1f} | 1 |")
    if "baseline" in impls:
        print(f"| baseline ({args.baseline_rev}) | {res['baseline_ms_mean']:.1f} | {res['baseline_ms_median']:.1f} | "
              f"{res['speedup_vs_baseline']:.2f}x slower |")
    if pvbm:
        print(f"| PVBM {pvbm_version} (skeletonize + GeometricalVBMs + MultifractalVBMs, "
              f"{args.pvbm_rotations} rotations) | {res['pvbm_ms_mean']:.1f} | {res['pvbm_ms_median']:.1f} | "
              f"{res['speedup_vs_pvbm']:.1f}x slower (vs ours timed right after it: "
              f"{res['speedup_vs_pvbm_next_to_it']:.1f}x; lowest per image {res['speedup_vs_pvbm_min_per_image']:.1f}x) |")
        print()
        print("| FD set | comparison | n | mean abs diff | max abs diff | mean signed (ours - PVBM) |")
        print("|---|---|---:|---:|---:|---:|")
        for label, comps in res["fd"].items():
            for cname, a in comps.items():
                print(f"| {label} | {cname} | {a['n']} | {a['mean_abs']:.4f} | {a['max_abs']:.4f} | "
                      f"{a['mean_signed']:+.4f} |")
        if fd_native:
            print()
            print(f"DRIVE native: ours {res['drive_native_ours_ms_mean']:.1f} ms/image, PVBM "
                  f"{res['drive_native_pvbm_ms_mean']:.1f} ms/image")
    print()
    for k in ("command", "machine", "versions", "date"):
        print(f"{k}: {res[k]}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
