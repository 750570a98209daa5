"""CPU budget per image of every step outside the model forward, on real EyePACS JPEGs at the default settings:
the three separate stages as they run today (preprocess -> PNG -> vessels re-decodes -> pseudo-labels
re-decodes) against the fused ``dr-ray label`` path (decode once, arrays handed on), in one run, one table.

Process CPU time (``time.process_time``: user + system of this process), one thread (OpenCV and torch set to 1
thread, the process pinned to one core), never wall time. Each step is timed over every image and repeat, in
the library's own functions:

  read              dr_ray.io.fs.read_bytes
  decode            dr_ray.imaging.decode.decode (reduced DCT decode at preprocess.size)
  fov/crop/clahe    dr_ray.imaging.preprocess.preprocess_image minus its decode
  encode image PNG  dr_ray.imaging.encode_png (preprocess.png_compression)
  re-decode PNG     dr_ray.imaging.decode_png of image_png (vessels and pseudo-labels stages) and of
                    vessel_prob_png (vessel graph task)
  model inputs      ModelActor.prepare_inputs (vessel: input mode; lesion: resize to input_size)
  model forward     ModelActor.predict of a tiny untrained model (pretrained=False): reported, NOT in the budget
  encode outputs    dr_ray.pipelines.vessels.encode_vessel_prob, PseudoLabeler._summarise (stats + maps PNG)
  graph+biomarkers  dr_ray.pipelines.vessels.analyse_record (skan graph, A/V, disc, FD, CRAE/CRVE, GLCM)
  parquet write     pyarrow.parquet.write_table of the stage's rows (to memory)
  ray overhead      a Ray Data run of the preprocess stage (preprocess_batch -> write_parquet) on one CPU:
                    CPU time of the Ray processes / images minus the sum of the preprocess steps above

The vessel probability map handed to the graph step is the image's vessel top-hat response
(dr_ray.imaging.vessel_tophat), not the untrained model's output: random weights give no vessel tree, and the
graph step's cost depends on the tree. ``dr-ray label``'s column: the same functions minus the PNG round trips
(its pipeline, dr_ray/pipelines/label.py, hands arrays on: preprocess_record_image, prepare_inputs and
analyse_record(image=, prob=)); one Ray pipeline instead of three.

    .venv/bin/python benchmarks/bench_label_cpu.py --repeat 3 --out docs/bench_label_cpu.md
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "EyePACS_kaggle_sample"
TARGET_MS = 60.0
VESSEL_FRACTION = 0.12  # share of FOV pixels the stand-in vessel map marks as vessel


class Timer:
    """Accumulates process CPU seconds per step name."""

    def __init__(self) -> None:
        self.s: dict[str, float] = {}

    def run(self, name: str, fn, *a, **kw):
        t0 = time.process_time()
        out = fn(*a, **kw)
        self.s[name] = self.s.get(name, 0.0) + time.process_time() - t0
        return out


def catalog_rows(files: list[Path]) -> list[dict]:
    from dr_ray.io import columns as C

    rows = []
    for f in files:
        row = {c: None for c in C.CATALOG_COLUMNS}
        row.update({C.IMAGE_ID: f"eyepacs/{f.stem}", C.PATIENT_ID: f"eyepacs/{f.stem.split('_')[0]}",
                    C.DATASET: "eyepacs", C.PATH: str(f), C.GRADE: 0, C.FOLD: 0})
        rows.append(row)
    return rows


def measure_steps(rows: list[dict], cfg, models: tuple[Path, Path], repeat: int, *,
                  trained_vessels: bool = False) -> tuple[dict, dict, int]:
    """Per-step CPU seconds for the separate stages and for the fused path; returns (separate, label, images).
    ``trained_vessels``: the graph step gets the vessel model's own probabilities (models[0] is a trained model)
    instead of the top-hat stand-in."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dr_ray.imaging import circle_mask, decode_png, encode_png, vessel_tophat
    from dr_ray.imaging.decode import decode
    from dr_ray.imaging.preprocess import preprocess_image
    from dr_ray.io import columns as C
    from dr_ray.io import fs
    from dr_ray.pipelines.pseudo_labels import PseudoLabeler
    from dr_ray.pipelines.vessels import VesselSegmenter, analyse_record, encode_vessel_prob

    p, v, pl = cfg.preprocess, cfg.vessels, cfg.pseudo_labels
    seg = VesselSegmenter(str(models[0]), input_size=v.input_size, threads=1)
    lab = PseudoLabeler(str(models[1]), cfg=pl, cfg_hash="bench", fov_margin=p.fov_margin, threads=1)
    sep, fused = Timer(), Timer()
    n = 0
    densities: list[float] = []
    for _ in range(repeat):
        for row in rows:
            n += 1
            for T in (sep, fused):  # both paths read, decode and preprocess once
                data = T.run("read", fs.read_bytes, row[C.PATH])
                T.run("decode", decode, data, target=p.size, reduced=p.reduced_decode, max_pixels=p.max_pixels,
                      min_side=p.min_side)
                res = T.run("fov/crop/clahe (+decode)", preprocess_image, data, p)
                png = T.run("encode image PNG", encode_png, res.image, p.png_compression)
            img = res.image
            size = img.shape[0]
            # the vessel map the graph step gets (see the module docstring)
            if trained_vessels:  # the trained model's own output, as `dr-ray label` hands it on (not timed)
                prob = seg.probabilities(seg.prepare_inputs([img], [size], [row[C.IMAGE_ID]])[0], [size])[0]
            else:
                th = vessel_tophat(img, radius=p.tophat_radius).astype(np.float32)
                inside = th[circle_mask(size, margin=p.fov_margin)]
                # scaled so that the top VESSEL_FRACTION of FOV pixels pass the 0.5 threshold (a vessel density
                # like a real fundus)
                # (127 / v: a pixel at exactly the percentile v stays below the 0.5 threshold, ties do not pass)
                scale = 127.0 / max(1.0, float(np.percentile(inside, 100 * (1 - VESSEL_FRACTION))))
                prob = np.clip(th * scale, 0, 255).astype(np.uint8)
            # --- separate stages: each model stage decodes image_png again
            im_v = sep.run("re-decode image PNG", decode_png, png)
            inp_v, _, _ = sep.run("model inputs (vessel)", seg.prepare_inputs, [im_v], [size], [row[C.IMAGE_ID]])
            sep.run("model forward (vessel)", seg.predict, inp_v)
            prob_png = sep.run("encode vessel prob PNG", encode_vessel_prob, prob)
            rec = {**row, C.STATUS: C.STATUS_OK, C.SIZE: size, C.MODEL_HASH: "m", C.IMAGE_PNG: png,
                   C.VESSEL_PROB_PNG: prob_png}
            # analyse_record decodes image_png and vessel_prob_png with decode_png when given no arrays
            im_g, prob_g = sep.run("re-decode image + prob PNG (graph task)",
                                   lambda: (decode_png(png), decode_png(prob_png)))
            out_v = sep.run("graph + biomarkers", analyse_record, rec, v, cfg_hash="b", fov_margin=p.fov_margin,
                            image=im_g, prob=prob_g)
            im_l = sep.run("re-decode image PNG", decode_png, png)
            inp_l, _, _ = sep.run("model inputs (lesion)", lab.prepare_inputs, [im_l], [size], [row[C.IMAGE_ID]])
            prob_l = sep.run("model forward (lesion, untrained)", lab.predict, inp_l)
            sep.run("encode lesion stats + maps PNG", lab._summarise, prob_l[0])
            # --- fused label path: arrays handed on, no PNG decodes
            inp_v, _, _ = fused.run("model inputs (vessel)", seg.prepare_inputs, [img], [size], [row[C.IMAGE_ID]])
            fused.run("model forward (vessel)", seg.predict, inp_v)
            prob_png = fused.run("encode vessel prob PNG", encode_vessel_prob, prob)
            rec[C.VESSEL_PROB_PNG] = prob_png
            out_f = fused.run("graph + biomarkers", analyse_record, rec, v, cfg_hash="b",
                              fov_margin=p.fov_margin, image=img, prob=prob)
            densities.append(out_f["vessel_density"])
            inp_l, _, _ = fused.run("model inputs (lesion)", lab.prepare_inputs, [img], [size], [row[C.IMAGE_ID]])
            prob_l = fused.run("model forward (lesion, untrained)", lab.predict, inp_l)
            fused.run("encode lesion stats + maps PNG", lab._summarise, prob_l[0])
            if out_v[C.STATUS] != C.STATUS_OK or out_f[C.STATUS] != C.STATUS_OK:
                raise RuntimeError(f"{row[C.IMAGE_ID]}: the vessel analysis quarantined it: {out_v[C.ERROR]}")
            # --- Parquet rows: preprocess + vessels + pseudo labels, for both paths (same rows are written)
            pre_row = {c: None for c in C.PREPROCESS_SCHEMA.names}
            pre_row.update({**row, C.STATUS: C.STATUS_OK, C.IMAGE_PNG: png, C.SIZE: size})
            ves_row = {c: out_v.get(c) for c in C.VESSELS_SCHEMA.names}
            for T in (sep, fused):
                for r, schema in ((pre_row, C.PREPROCESS_SCHEMA), (ves_row, C.VESSELS_SCHEMA)):
                    T.run("parquet write", lambda: pq.write_table(pa.Table.from_pylist([r], schema=schema),
                                                                  io.BytesIO()))
    for T in (sep, fused):  # the decode is inside preprocess_image: report it once, as its own row
        T.s["fov/crop/clahe"] = T.s.pop("fov/crop/clahe (+decode)") - T.s["decode"]
    sep.s["vessel density (mean, not a time)"] = float(np.mean(densities))
    return sep.s, fused.s, n


def _tree_cpu(pids_before: set[int] | None = None) -> float:
    import psutil

    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
            total += t.user + t.system + getattr(t, "children_user", 0.0) + getattr(t, "children_system", 0.0)
        except psutil.Error:
            pass
    return total


def ray_overhead(rows: list[dict], cfg, repeat: int) -> tuple[float, int]:
    """CPU seconds of a Ray Data preprocess run (one CPU, this process and every Ray process it started), and the
    images it processed."""
    import pyarrow as pa
    import ray

    from dr_ray.io import columns as C
    from dr_ray.pipelines.preprocess import preprocess_batch

    table = pa.Table.from_pylist(rows * repeat, schema=C.CATALOG_SCHEMA)
    ray.init(num_cpus=1, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        ray.data.range(2).map(lambda r: r).take_all()  # start the worker once: start-up is not a per-row cost
        out = tempfile.mkdtemp()
        c0 = _tree_cpu()
        ds = ray.data.from_arrow(table).map_batches(preprocess_batch, batch_format="pyarrow",
                                                    batch_size=cfg.ray.batch_size,
                                                    fn_kwargs={"cfg": cfg.preprocess, "cfg_hash": "b"})
        ds.write_parquet(out, partition_cols=[C.STATUS])
        return _tree_cpu() - c0, table.num_rows
    finally:
        ray.shutdown()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--repeat", type=int, default=3, help="passes over the 6 images")
    ap.add_argument("--out", default="", help="write the table as Markdown here")
    ap.add_argument("--no-ray", action="store_true", help="skip the Ray overhead run")
    ap.add_argument("--ray-repeat", type=int, default=50,
                    help="passes over the images in the Ray overhead run (enough rows that start-up is amortised)")
    ap.add_argument("--vessel-model", default="",
                    help="a trained vessel model folder: the graph step gets its probabilities (else the top-hat "
                         "stand-in); e.g. the DRIVE model of bench_eyepacs_cv.py")
    args = ap.parse_args(argv)

    import cv2
    import torch

    from _bench_util import cpu_model, pin_one_core
    from dr_ray.config import load_config

    images = sorted((Path(args.data) / "images").glob("*.jpeg")) or sorted(Path(args.data).rglob("*.jpeg"))
    if not images:
        print(f"no EyePACS JPEGs under {args.data}: nothing to measure", file=sys.stderr)
        return 2
    pinned = pin_one_core()
    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    cfg = load_config(None, [])
    rows = catalog_rows(images)
    t_wall = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        from dr_ray.models.tiny import tiny_label_models

        models = tiny_label_models(Path(tmp))
        trained = bool(args.vessel_model)
        if trained:
            models = (Path(args.vessel_model), models[1])
        # warm-up (lazy imports, A/V classifier load): not counted
        measure_steps(rows[:1], cfg, models, 1, trained_vessels=trained)
        sep, fused, n = measure_steps(rows, cfg, models, args.repeat, trained_vessels=trained)
    density = sep.pop("vessel density (mean, not a time)")
    ray_cpu, ray_n, ray_error = 0.0, 0, "not measured (--no-ray)"
    if not args.no_ray:
        try:
            ray_cpu, ray_n = ray_overhead(rows, cfg, args.ray_repeat)
        except Exception as e:  # noqa: BLE001 - a Ray start-up failure must not lose the step table; it is reported
            ray_error = f"not measured: the Ray run failed ({type(e).__name__}: {str(e)[:200]})"
    pre_steps = ("read", "decode", "fov/crop/clahe", "encode image PNG", "parquet write")
    # the Parquet write timer holds the preprocess and vessel rows; the preprocess share is half (one of two)
    pre_sum = sum(sep[k] for k in pre_steps[:-1]) / n + sep["parquet write"] / n / 2
    overhead = (ray_cpu / ray_n - pre_sum) if ray_n else 0.0
    if ray_n:
        sep["ray overhead (3 pipelines)"] = 3 * overhead * n
        fused["ray overhead (1 pipeline)"] = overhead * n

    ms = lambda d, k: 1000.0 * d.get(k, 0.0) / n  # noqa: E731
    forward = {k for k in set(sep) | set(fused) if k.startswith("model forward")}
    keys = list(dict.fromkeys([*sep, *fused]))
    keys = [k for k in keys if k not in forward] + sorted(forward)
    budget_sep = sum(ms(sep, k) for k in keys if k not in forward and k in sep)
    budget_fused = sum(ms(fused, k) for k in keys if k not in forward and k in fused)
    lines = ["| step | separate stages (CPU ms / image) | `dr-ray label` (CPU ms / image) |", "|---|---:|---:|"]
    for k in keys:
        if k in forward:
            continue
        a = f"{ms(sep, k):.1f}" if k in sep else "-"
        b = f"{ms(fused, k):.1f}" if k in fused else "-"
        lines.append(f"| {k} | {a} | {b} |")
    lines.append(f"| **total outside the model forward** | **{budget_sep:.1f}** | **{budget_fused:.1f}** |")
    for k in sorted(forward):
        lines.append(f"| ({k}: not in the budget) | {ms(sep, k):.1f} | {ms(fused, k):.1f} |")
    verdict = ("meets" if budget_fused <= TARGET_MS else "does NOT meet")
    head = [
        f"command: `.venv/bin/python benchmarks/bench_label_cpu.py {' '.join(sys.argv[1:] if argv is None else argv)}`",
        f"machine: {cpu_model()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}; {pinned}; "
        f"OpenCV and torch 1 thread",
        f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; data: {len(images)} EyePACS "
        f"JPEGs x {args.repeat} = {n} images; settings: configs/defaults.yaml (preprocess.size "
        f"{cfg.preprocess.size}, reduced_decode {cfg.preprocess.reduced_decode}, CLAHE {cfg.preprocess.clahe.channel})",
        f"ray overhead: Ray Data preprocess run on 1 CPU, {ray_n} images, {ray_cpu:.2f} CPU s in all Ray processes "
        f"= {1000 * ray_cpu / max(ray_n, 1):.1f} ms/image, minus the {1000 * pre_sum:.1f} ms/image of its steps"
        if ray_n else f"ray overhead: {ray_error}",
        f"target: `dr-ray label` <= {TARGET_MS:.0f} CPU ms/image outside the model forward: {verdict} it "
        f"({budget_fused:.1f} ms; the separate stages cost {budget_sep:.1f} ms)",
        (f"vessel map: the trained model {args.vessel_model}'s probabilities, mean vessel density {density:.3f} of "
         "the FOV" if args.vessel_model else
         f"stand-in vessel map: top-hat response, mean vessel density {density:.3f} of the FOV"),
        f"wall time of the run: {time.perf_counter() - t_wall:.0f} s",
    ]
    text = "\n".join([*(f"- {h}" for h in head), "", *lines])
    print(text)
    if args.out:
        Path(args.out).write_text("# CPU budget per image: separate stages vs `dr-ray label`\n\n"
                                  + (__doc__.split("\n\n")[1]) + "\n\n" + text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
