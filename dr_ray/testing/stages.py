"""Stage folders in tests and benchmarks: reading one back (local paths), and writing preprocess / pseudo-label /
vessel outputs directly (no segmentation model run) in the exact schemas those stages write, as input for the
classifier stages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from dr_ray.io import columns as C


def read_stage(stage_dir: str | Path) -> pa.Table:
    """Every shard of a stage folder (both ``status=`` partitions, ``status`` as a column), sorted by image id."""
    stage_dir = Path(stage_dir)
    files = sorted(str(p) for p in stage_dir.glob(f"{C.STATUS}=*/*.parquet"))
    part = pads.partitioning(pa.schema([(C.STATUS, pa.string())]), flavor="hive")
    t = pads.dataset(files, format="parquet", partitioning=part, partition_base_dir=str(stage_dir)).to_table()
    return t.sort_by(C.IMAGE_ID)


def assert_stage_equal(got: pa.Table, want: pa.Table, what: str = "", *, roots: tuple[str, str] = ("", "")) -> None:
    """Two stage tables (from :func:`read_stage`) hold the same rows: same ids in the same order, the same
    columns, equal values (floats to 1e-6 relative, NaN == NaN, lists element-wise, PNG columns by their
    decoded pixels: the encoder's bytes may differ). ``roots``: output folders taken as equal inside strings
    (a synthetic sample lives under each run's own output.dir). Raises AssertionError naming the column."""
    from dr_ray.imaging import decode_png

    assert got.column(C.IMAGE_ID).to_pylist() == want.column(C.IMAGE_ID).to_pylist(), f"{what}: image ids differ"
    assert set(got.column_names) == set(want.column_names), f"{what}: columns differ"
    for name in want.column_names:
        for x, y in zip(got.column(name).to_pylist(), want.column(name).to_pylist()):
            where = f"{what}.{name}"
            if name.endswith("_png"):
                assert (x is None) == (y is None), where
                if x is not None:
                    np.testing.assert_array_equal(decode_png(x), decode_png(y), err_msg=where)
            elif isinstance(x, str) and isinstance(y, str):
                assert x.replace(roots[0], "<root>") == y.replace(roots[1], "<root>"), (where, x, y)
            elif isinstance(x, list):
                assert np.allclose(np.asarray(x, float), np.asarray(y, float), rtol=1e-6, equal_nan=True), where
            elif isinstance(x, float) and y is not None:
                assert np.isclose(x, y, rtol=1e-6, atol=1e-12, equal_nan=True), (where, x, y)
            else:
                assert x == y, (where, x, y)


def _table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist([{n: r.get(n) for n in schema.names} for r in rows], schema=schema)


def write_stage_outputs(root: str | Path, *, n_patients: int = 8, size: int = 48, map_size: int = 16,
                        nodes: int = 3, folds: int = 2, flaws: bool = True, seed: int = 0,
                        rows_per_file: int = 5, dataset: str = "synthetic") -> list[str]:
    """Write ``preprocess/``, ``pseudo_labels/`` and ``vessels/`` stage folders (``status=*/`` Parquet shards in the
    stages' schemas) for ``2 * n_patients`` images, without running any model; returns the image ids.

    Grades cycle 0, 3, 0, 2, 4, 0, 1, 3 over the patients (both eyes alike), folds are ``patient % folds``.
    Referable images (grade >= 2) are brighter in a square, carry a haemorrhage blob in their lesion maps and
    have twice the vessel-graph nodes (``nodes`` otherwise), so a classifier can learn them. With ``flaws``:
    the first image has no grade, the fourth is quarantined by pseudo_labels ("model exploded") and the sixth was
    never processed by the vessel stage (the joined data must quarantine all three with their reasons).
    Every image also has its one-channel maps, as the stages store them: ``canny_png`` (preprocess,
    ``extra_maps: [canny]``) and ``vessel_prob_png`` (vessels), both showing the bright square of referable images.
    ``dataset`` names the cohort: ids ``<dataset>/<patient>_<eye>`` (another seed and name: a second cohort).
    """
    from dr_ray.imaging import encode_lesion_maps, encode_png

    root = Path(root)
    rng = np.random.default_rng(seed)
    pre, les, ves = [], [], []
    ids = []
    s = size / 48
    for p in range(n_patients):
        for eye in ("left", "right"):
            iid = f"{dataset}/{p}_{eye}"
            ids.append(iid)
            grade = int([0, 3, 0, 2, 4, 0, 1, 3][p % 8])
            ref = grade >= 2
            img = rng.integers(20, 80, (size, size, 3), dtype=np.uint8)
            if ref:
                img[int(10 * s):int(30 * s), int(10 * s):int(30 * s)] = 220
            cat = {C.IMAGE_ID: iid, C.PATIENT_ID: f"{dataset}/{p}", C.EYE: eye, C.DATASET: dataset,
                   C.PATH: f"/nowhere/{p}_{eye}.jpeg", C.GRADE: grade, C.REFERABLE: ref, C.FOLD: p % folds}
            grey = img.mean(axis=2)
            edges = np.zeros((size, size), np.uint8)
            edges[:, 1:][np.abs(np.diff(grey, axis=1)) > 100] = 255
            pre.append({**cat, C.STATUS: C.STATUS_OK, C.CONFIG_HASH: "pre", C.IMAGE_PNG: encode_png(img), C.SIZE: size,
                        C.CANNY_PNG: encode_png(edges)})
            maps = np.zeros((4, map_size, map_size), np.uint8)
            if ref:
                maps[1, map_size // 4:map_size // 2, map_size // 4:map_size // 2] = 250
            les.append({**cat, C.STATUS: C.STATUS_OK, C.CONFIG_HASH: "les", C.MODEL_HASH: "m1", C.SIZE: size,
                        C.LESION_MAPS_PNG: encode_lesion_maps(maps), C.LESION_MAP_KINDS: "ma,he,ex,se",
                        C.LESION_MAP_SIZE: map_size, C.lesion_area_column("he"): float(ref) * 0.06})
            n = 2 * nodes if ref else nodes
            x = np.column_stack([rng.uniform(1, 4, n), rng.uniform(0, 50, n), rng.uniform(0, 5, n),
                                 rng.choice([-1, 1, 2], n), np.ones(n), np.full(n, 2)]).astype(np.float32)
            e = np.array([[i, i + 1] for i in range(n - 1)], np.int64)
            ei = np.concatenate([e.T, e.T[::-1]], axis=1)
            ves.append({**cat, C.STATUS: C.STATUS_OK, C.CONFIG_HASH: "ves", C.MODEL_HASH: "m2", C.SIZE: size,
                        C.VESSEL_PROB_PNG: encode_png((grey > 150).astype(np.uint8) * 250),
                        C.N_NODES: n, C.N_EDGES: n - 1, C.GRAPH_X: x.ravel().tolist(),
                        C.GRAPH_POS: np.zeros(2 * n, np.float32).tolist(), C.GRAPH_EDGE_INDEX: ei.ravel().tolist(),
                        C.GRAPH_EDGE_ATTR: np.zeros(2 * (n - 1) * 10, np.float32).tolist(), C.DISC_FOUND: True,
                        "fractal_dimension": 1.3 + 0.1 * ref + rng.normal(0, 0.01),
                        "avr_knudtson": None if p == 2 else 0.7 - 0.05 * ref,
                        "avr_parr_hubbard": None if p == 2 else 0.75 - 0.05 * ref,
                        "glcm_contrast": 10.0, "glcm_entropy": 5.0, C.BIOMARKER_REASONS: "{}"})
    if flaws:
        pre[0][C.GRADE], pre[0][C.REFERABLE] = None, None  # <dataset>/0_left: no label
        les[3].update({C.STATUS: C.STATUS_QUARANTINED, C.ERROR: f"{ids[3]}: model exploded",
                       C.LESION_MAPS_PNG: None, C.LESION_MAP_KINDS: None})
        del ves[5]  # <dataset>/2_right: never processed by the vessel stage
    for stage, rows, schema in (("preprocess", pre, C.PREPROCESS_SCHEMA), ("pseudo_labels", les,
                                                                        C.PSEUDO_LABELS_SCHEMA),
                                ("vessels", ves, C.VESSELS_SCHEMA)):
        for status in (C.STATUS_OK, C.STATUS_QUARANTINED):
            part = [r for r in rows if r[C.STATUS] == status]
            if part:
                d = root / stage / f"{C.STATUS}={status}"
                d.mkdir(parents=True, exist_ok=True)
                t = _table(part, schema).drop_columns([C.STATUS])
                for i in range(0, t.num_rows, rows_per_file):  # several shards, as a real stage writes
                    pq.write_table(t.slice(i, rows_per_file), d / f"part_{i:06d}.parquet")
    return ids


__all__ = ["assert_stage_equal", "read_stage", "write_stage_outputs"]
