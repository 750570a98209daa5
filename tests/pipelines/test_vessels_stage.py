"""The vessels stage on Ray: model actor pool -> graph/biomarker tasks -> Parquet; its rows equal the pure
functions run directly, bad rows are quarantined with reasons, counts reconcile, reruns resume, changed
settings or model are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from dr_ray.config import load_config
from dr_ray.imaging import decode_png
from dr_ray.imaging.fov import circle_mask
from dr_ray.io import columns as C
from dr_ray.faults import FAULT_ENV
from dr_ray.testing.stages import read_stage as _read

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.ray]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A small vessel U-Net with fixed random weights (the stage's mechanics do not need a good model)."""
    import torch

    from dr_ray.models import create_model, save_model_dir

    torch.manual_seed(0)
    m = create_model("vessel_unet", encoder="mobilenetv3_small_100", decoder_channels=(16, 16, 16, 16, 16))
    return save_model_dir(m.eval(), tmp_path_factory.mktemp("model") / "vessel_model", config={"test": True},
                          train_data_hash=None)


@pytest.fixture(scope="module")
def threshold(preprocessed, model_dir) -> float:
    """A random-weight model's probabilities sit in a narrow band: threshold at their 85th percentile inside the
    FOV of one input image, so the masks (and graphs) are not empty."""
    from dr_ray.models import load_model_dir
    from dr_ray.training import predict_image

    model, _ = load_model_dir(model_dir)
    row = pq.read_table(sorted((preprocessed / "status=ok").glob("*.parquet"))[0]).slice(0, 1).to_pylist()[0]
    prob = predict_image(model, decode_png(row[C.IMAGE_PNG]), mean=model.spec.mean, std=model.spec.std)
    return round(float(np.percentile(prob[circle_mask(128)], 85)), 4)


def _cfg(pre: Path, model: Path, out: Path, *extra: str, threshold: float = 0.5):
    return load_config(None, [f"output.dir={out}", f"vessels.input={pre}", f"vessels.model_dir={model}",
                              f"vessels.threshold={threshold}", "vessels.batch_size=3",
                              "vessels.graph_batch_size=2", "ray.rows_per_file=2", *extra])


def _n_inputs(pre: Path) -> int:
    return sum(pq.read_metadata(p).num_rows for p in (pre / "status=ok").glob("*.parquet"))


def test_rows_equal_direct_computation_bad_rows_quarantined_counts_reconcile(preprocessed, model_dir, threshold,
                                                                             tmp_path):
    from dr_ray.models import artifact_hash, load_model_dir
    from dr_ray.pipelines.vessels import run_vessels
    from dr_ray.training import predict_image
    from dr_ray.vessels import NODE_FEATURES
    from dr_ray.vessels.analysis import analyse_vessels
    from dr_ray.vessels.av import load_default_av_classifier

    summary = run_vessels(_cfg(preprocessed, model_dir, tmp_path, threshold=threshold))
    n_in = _n_inputs(preprocessed)
    assert summary.catalog_rows == n_in == 7
    assert (summary.written, summary.quarantined, summary.duplicates) == (6, 1, 0) and summary.reconciles

    rows = {r[C.IMAGE_ID]: r for r in _read(tmp_path / "vessels").to_pylist()}
    assert len(rows) == n_in
    bad = rows.pop("synthetic/damaged_png")
    assert bad[C.STATUS] == C.STATUS_QUARANTINED and "synthetic/damaged_png: not a decodable PNG" in bad[C.ERROR]
    assert bad[C.GRAPH_X] is None and bad[C.VESSEL_PROB_PNG] is None

    model, meta = load_model_dir(model_dir)
    pre = {r[C.IMAGE_ID]: r for r in _read(preprocessed).to_pylist()}
    for image_id, r in rows.items():
        assert r[C.STATUS] == C.STATUS_OK and r[C.ERROR] is None
        assert r[C.MODEL_HASH] == artifact_hash(model_dir) and r[C.SIZE] == 128
        image = decode_png(pre[image_id][C.IMAGE_PNG])
        prob = decode_png(r[C.VESSEL_PROB_PNG])
        # the actor's batched forward equals the single-image reference inference (to uint8 rounding)
        ref = predict_image(model, image, mean=model.spec.mean, std=model.spec.std)
        assert prob.shape == (128, 128) and prob.dtype == np.uint8
        assert np.abs(prob.astype(int) - np.round(ref * 255).astype(int)).max() <= 1
        # the stored graph and biomarkers are what the pure function gives on the stored probabilities
        res = analyse_vessels(prob, image, circle_mask(128), threshold=threshold,
                              av_classifier=load_default_av_classifier())
        g = res.graph
        assert (r[C.N_NODES], r[C.N_EDGES]) == (g.n_nodes, g.n_edges)
        x = np.asarray(r[C.GRAPH_X], np.float32).reshape(r[C.N_NODES], len(NODE_FEATURES))
        np.testing.assert_array_equal(x, g.x)
        ei = np.asarray(r[C.GRAPH_EDGE_INDEX], np.int64).reshape(2, 2 * r[C.N_EDGES])
        np.testing.assert_array_equal(ei, g.edge_index)
        for name in C.BIOMARKERS:
            m = res.biomarkers[name]
            assert (r[name] is None) == (m.value is None), name
            if m.value is not None:
                assert r[name] == pytest.approx(m.value, rel=1e-9), name
        assert json.loads(r[C.BIOMARKER_REASONS]) == res.reasons()
        assert {k: r[k] for k in C.ZONE_VESSEL_COUNTS} == res.zone_counts  # vessels in CRAE / CRVE
        assert r[C.DISC_FOUND] == res.disc.found

    out = tmp_path / "vessels"
    assert len((out / "quarantine.csv").read_text().strip().splitlines()) == 2
    saved = json.loads((out / "summary.json").read_text())
    assert saved["reconciles"] and saved["written"] == 6 and saved["quarantined"] == 1
    assert load_config(out / "config.yaml").vessels.model_dir == str(model_dir)
    assert sum(r[C.N_EDGES] for r in rows.values()) > 0


@pytest.mark.parametrize("scale_from", ["config", "model"])
def test_model_input_mode_and_input_size_are_applied_as_in_training(preprocessed, tmp_path, scale_from):
    """A model trained on green-channel CLAHE input at another scale: the actor resizes to vessels.input_size (set,
    or derived from the training FOV diameter in the model's metadata), applies the input mode named there, and
    stores probabilities at the stored size."""
    import cv2
    import torch

    from dr_ray.models import create_model, save_model_dir
    from dr_ray.pipelines.inference import preprocess_fov_margin
    from dr_ray.pipelines.vessels import run_vessels
    from dr_ray.training import predict_image
    from dr_ray.imaging.enhance import vessel_input

    torch.manual_seed(2)
    m = create_model("vessel_unet", encoder="mobilenetv3_small_100", decoder_channels=(16, 16, 16, 16, 16)).eval()
    margin = preprocess_fov_margin(str(preprocessed), "vessels.input")
    # a 45-degree FOV 92 px wide at training; the stored FOV is 128 / (1 + margin) px: resized to 92 (1 + margin)
    train_cfg = {"input_mode": "green_clahe", **({"fov_diameter": 92} if scale_from == "model" else {})}
    assert round(92 * (1 + margin) / 32) * 32 == 96
    mdir = save_model_dir(m, tmp_path / "green_model", config={"train_vessels": train_cfg}, train_data_hash=None)
    extra = ["vessels.input_size=96"] if scale_from == "config" else []
    summary = run_vessels(_cfg(preprocessed, mdir, tmp_path, *extra))
    assert summary.written == 6 and summary.reconciles
    pre = {r[C.IMAGE_ID]: r for r in _read(preprocessed).to_pylist()}
    for r in _read(tmp_path / "vessels").filter(pc.equal(pc.field(C.STATUS), "ok")).to_pylist():
        image = decode_png(pre[r[C.IMAGE_ID]][C.IMAGE_PNG])
        small = vessel_input(cv2.resize(image, (96, 96), interpolation=cv2.INTER_AREA), "green_clahe")
        ref = predict_image(m, small, mean=m.spec.mean, std=m.spec.std)
        ref = cv2.resize(np.round(ref * 255).astype(np.uint8), (128, 128), interpolation=cv2.INTER_LINEAR)
        got = decode_png(r[C.VESSEL_PROB_PNG])
        assert got.shape == (128, 128)
        assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1


def test_rerun_is_a_no_op_and_changed_settings_or_model_are_refused(preprocessed, model_dir, tmp_path):
    # (the default threshold: a random model's probabilities stay under 0.5, so the graphs are empty here)
    import torch

    from dr_ray.models import create_model, save_model_dir
    from dr_ray.pipelines.vessels import run_vessels

    first = run_vessels(_cfg(preprocessed, model_dir, tmp_path))
    files = sorted(p.name for p in (tmp_path / "vessels").rglob("*.parquet"))
    again = run_vessels(_cfg(preprocessed, model_dir, tmp_path, "vessels.batch_size=5", "vessels.actors=2"))
    assert again.processed_now == 0 and again.already_done == first.catalog_rows  # batch/pool sizes may change
    assert sorted(p.name for p in (tmp_path / "vessels").rglob("*.parquet")) == files

    with pytest.raises(ValueError, match="other vessel settings or model"):
        run_vessels(_cfg(preprocessed, model_dir, tmp_path, "vessels.threshold=0.6"))
    torch.manual_seed(1)
    other = save_model_dir(create_model("vessel_unet", encoder="mobilenetv3_small_100",
                                        decoder_channels=(16, 16, 16, 16, 16)).eval(),
                           tmp_path / "other_model", config={}, train_data_hash=None)
    with pytest.raises(ValueError, match="other vessel settings or model"):
        run_vessels(_cfg(preprocessed, other, tmp_path))
    with pytest.raises(FileExistsError, match="output.resume=false"):
        run_vessels(_cfg(preprocessed, model_dir, tmp_path, "output.resume=false"))


def test_missing_model_or_input_are_clear_errors(preprocessed, model_dir, tmp_path):
    from dr_ray.pipelines.vessels import run_vessels

    from dr_ray.pipelines import vessels as vs

    with pytest.MonkeyPatch.context() as mp:  # an install without the shipped model: say so, name the fix
        mp.setattr(vs, "shipped_model_dir", lambda: tmp_path / "no_shipped_model")
        with pytest.raises(FileNotFoundError, match="shipped vessel model is missing.*train-vessels"):
            run_vessels(_cfg(preprocessed, model_dir, tmp_path, "vessels.model_dir="))
    with pytest.raises(FileNotFoundError, match="model.pt not found"):
        run_vessels(_cfg(preprocessed, tmp_path / "nope", tmp_path))
    with pytest.raises(FileNotFoundError, match="run `dr-ray preprocess` first"):
        run_vessels(_cfg(tmp_path / "no_preprocess", model_dir, tmp_path))
    assert not (tmp_path / "vessels").exists()  # nothing written by refused runs


@pytest.mark.slow
def test_partial_and_crashed_runs_resumed_equal_a_clean_run(preprocessed, model_dir, threshold, tmp_path):
    import shutil

    from dr_ray.pipelines.stage_layout import COMMITS_DIR, parse_part_name
    from dr_ray.pipelines.vessels import run_vessels

    clean_dir, resumed_dir = tmp_path / "clean", tmp_path / "resumed"
    run_vessels(_cfg(preprocessed, model_dir, clean_dir, threshold=threshold))
    files = sorted((preprocessed / "status=ok").glob("*.parquet"))
    ids = [i for f in files for i in pq.read_table(f, columns=[C.IMAGE_ID]).column(0).to_pylist()]

    # 1. A run that stopped early: it saw only the first shard of the input (as if killed after it).
    subset = tmp_path / "subset" / "preprocess"
    (subset / "status=ok").mkdir(parents=True)
    shutil.copy(files[0], subset / "status=ok" / files[0].name)
    # a committed shard is its file plus the commit marker naming it (dr_ray.pipelines.commit)
    key = parse_part_name(files[0].name)[0]
    (subset / COMMITS_DIR).mkdir()
    shutil.copy(preprocessed / COMMITS_DIR / f"{key}.json", subset / COMMITS_DIR / f"{key}.json")
    shutil.copy(preprocessed / "config.yaml", subset / "config.yaml")
    first = run_vessels(_cfg(subset, model_dir, resumed_dir, threshold=threshold))
    partial = first.written + first.quarantined
    assert 0 < partial < len(ids)

    # 2. A job that crashes (the graph stage of one image raises a BaseException, as a lost process would),
    #    in its own process and Ray instance, as `ray job submit` runs it.
    victim = ids[-2]
    env = {**os.environ, FAULT_ENV: f"vessels:{victim}:raise", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    cmd = [sys.executable, str(REPO / "jobs" / "vessels.py"), "--set", f"output.dir={resumed_dir}",
           "--set", f"vessels.input={preprocessed}", "--set", f"vessels.model_dir={model_dir}",
           "--set", f"vessels.threshold={threshold}", "--set", "vessels.batch_size=3",
           "--set", "vessels.graph_batch_size=1", "--set", "ray.num_cpus=2", "--set", "ray.rows_per_file=2"]
    crashed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert crashed.returncode != 0, crashed.stdout[-2000:]
    assert "injected fault" in crashed.stdout + crashed.stderr
    stage = resumed_dir / "vessels"
    after_crash = _read(stage).num_rows
    assert partial <= after_crash < len(ids)

    # 3. A write killed mid-file leaves a shard without its Parquet footer: plant one.
    ok_dir = stage / "status=ok"
    victim_file = sorted(ok_dir.glob("*.parquet"))[0]
    (ok_dir / "zz_killed_write.parquet").write_bytes(victim_file.read_bytes()[: victim_file.stat().st_size // 2])

    # 4. Rerun: only the missing images are processed, the broken shard is removed, nothing duplicates.
    summary = run_vessels(_cfg(preprocessed, model_dir, resumed_dir, threshold=threshold))
    assert summary.removed_incomplete == 1
    assert summary.already_done == after_crash and summary.processed_now == len(ids) - after_crash
    assert summary.reconciles and summary.duplicates == 0
    clean, resumed = _read(clean_dir / "vessels"), _read(stage)
    assert resumed.num_rows == clean.num_rows == len(ids)
    assert resumed.column_names == clean.column_names
    for name in clean.column_names:  # graph_edge_attr holds NaNs (loops have no tortuosity): NaN == NaN here
        for x, y in zip(clean.column(name).to_pylist(), resumed.column(name).to_pylist()):
            if isinstance(x, list):
                assert np.array_equal(np.asarray(x, float), np.asarray(y, float), equal_nan=True), name
            else:
                assert x == y or (x != x and y != y), (name, x, y)


def test_empty_model_dir_runs_the_shipped_model_at_its_vessel_scale(preprocessed, tmp_path):
    """No training step: vessels.model_dir empty = the model in dr_ray/vessels/data/vessel_model, a few MB with its
    card, run at the input size its training FOV asks for; every row carries its hash."""
    from dr_ray.models import artifact_hash, read_metadata
    from dr_ray.pipelines.inference import preprocess_fov_margin
    from dr_ray.pipelines.vessels import model_input_size, run_vessels, shipped_model_dir

    shipped = shipped_model_dir()
    assert (shipped / "model.pt").stat().st_size < 5 * 2**20
    card = (shipped.parent / "MODEL_CARD.md").read_text()  # one card: vessel model, A/V classifier, disc detector
    for must in ("DRIVE", "LES-AV", "HRF", "licen", "train-vessels", "Dice"):
        assert must in card, must
    meta = read_metadata(shipped)
    assert meta["spec"]["name"] == "compact_vessel_unet" and meta["train_data_hash"]
    margin = preprocess_fov_margin(str(preprocessed), "vessels.input")
    assert model_input_size(meta, margin) == round(meta["config"]["train_vessels"]["fov_diameter"] * (1 + margin)
                                                   / 32) * 32
    summary = run_vessels(_cfg(preprocessed, shipped, tmp_path, "vessels.model_dir="))
    assert summary.written == 6 and summary.reconciles
    rows = _read(tmp_path / "vessels").filter(pc.equal(pc.field(C.STATUS), "ok")).to_pylist()
    assert rows and {r[C.MODEL_HASH] for r in rows} == {artifact_hash(shipped)}
    saved = load_config(str(tmp_path / "vessels" / "config.yaml"), [])
    assert saved.vessels.model_dir == str(shipped) and saved.vessels.input_size == model_input_size(meta, margin)
