"""The pseudo-labels stage on Ray: rows equal the model + pure functions run directly, every row names its model
and settings, bad rows are quarantined, counts reconcile, reruns resume, and an inference actor killed mid-run
leaves a complete output."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from dr_ray.config import load_config
from dr_ray.imaging import circle_mask, decode_lesion_maps, decode_png, lesion_statistics, reduce_maps
from dr_ray.io import columns as C
from dr_ray.faults import FAULT_ENV, FAULT_ONCE_ENV
from dr_ray.testing.stages import read_stage

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.ray]
KINDS = ("ma", "he", "ex", "se")


@pytest.fixture(scope="module")
def lesion_model(tmp_path_factory) -> Path:
    """A small 4-class sigmoid U-Net with fixed random weights (the stage's mechanics do not need a good model)."""
    import torch

    from dr_ray.models import create_model, save_model_dir

    torch.manual_seed(0)
    m = create_model("unet", encoder="mobilenetv3_small_100", classes=4, decoder_channels=(16, 16, 16, 16, 16))
    m.spec = dataclasses.replace(m.spec, output="sigmoid")  # multi-label: independent per-lesion probabilities
    return save_model_dir(m.eval(), tmp_path_factory.mktemp("lesion") / "model", config={}, train_data_hash=None)


@pytest.fixture(scope="module")
def threshold(preprocessed, lesion_model) -> float:
    """Random weights give probabilities in a narrow band: threshold at the 90th percentile of one image's."""
    import torch

    from dr_ray.models import load_model_dir

    model, _ = load_model_dir(lesion_model)
    row = pq.read_table(sorted((preprocessed / "status=ok").glob("*.parquet"))[0]).slice(0, 1).to_pylist()[0]

    x = torch.from_numpy(decode_png(row[C.IMAGE_PNG])).permute(2, 0, 1)[None].float() / 255
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (model.spec.mean, model.spec.std))
    with torch.inference_mode():
        prob = torch.sigmoid(model((x - mean) / std)).numpy()
    return round(float(np.percentile(prob, 90)), 4)


def _cfg(pre: Path, model: Path, out: Path, *extra: str):
    return load_config(None, [f"output.dir={out}", f"pseudo_labels.input={pre}", f"pseudo_labels.model_dir={model}",
                              "pseudo_labels.batch_size=3", "pseudo_labels.map_size=32", "ray.rows_per_file=2",
                              *extra])


def test_rows_equal_direct_computation_and_name_their_model(preprocessed, lesion_model, threshold, tmp_path):
    import torch

    from dr_ray.models import artifact_hash, load_model_dir
    from dr_ray.pipelines.pseudo_labels import run_pseudo_labels

    summary = run_pseudo_labels(_cfg(preprocessed, lesion_model, tmp_path, f"pseudo_labels.threshold={threshold}"))
    assert (summary.catalog_rows, summary.written, summary.quarantined, summary.duplicates) == (7, 6, 1, 0)
    assert summary.reconciles
    rows = {r[C.IMAGE_ID]: r for r in read_stage(tmp_path / "pseudo_labels").to_pylist()}
    bad = rows.pop("synthetic/damaged_png")
    assert bad[C.STATUS] == C.STATUS_QUARANTINED and "not a decodable PNG" in bad[C.ERROR]
    assert bad[C.LESION_MAPS_PNG] is None and bad[C.lesion_area_column("he")] is None

    model, _ = load_model_dir(lesion_model)
    pre = {r[C.IMAGE_ID]: r for r in read_stage(preprocessed).to_pylist()}
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (model.spec.mean, model.spec.std))
    hashes = {r[C.CONFIG_HASH] for r in rows.values()}
    assert len(hashes) == 1 and None not in hashes
    total_count = 0
    for image_id, r in rows.items():
        assert r[C.MODEL_HASH] == artifact_hash(lesion_model)
        assert r[C.LESION_MAP_KINDS] == "ma,he,ex,se" and r[C.LESION_MAP_SIZE] == 32
        x = torch.from_numpy(decode_png(pre[image_id][C.IMAGE_PNG])).permute(2, 0, 1)[None].float() / 255
        with torch.inference_mode():
            prob = torch.sigmoid(model((x - mean) / std))[0].numpy()
        q = np.round(prob * 255).astype(np.uint8)
        maps = decode_lesion_maps(r[C.LESION_MAPS_PNG], 4)
        # stored maps = the max-reduced quantised probabilities (to one level: batched vs single forward)
        assert np.abs(maps.astype(int) - reduce_maps(q, 32).astype(int)).max() <= 1
        area, count = lesion_statistics(q, threshold=threshold, fov=circle_mask(128))
        for j, kind in enumerate(KINDS):
            assert r[C.lesion_area_column(kind)] == pytest.approx(area[j], abs=2 / (128 * 128))
            assert abs(r[C.lesion_count_column(kind)] - count[j]) <= 1
            total_count += r[C.lesion_count_column(kind)]
        assert r[C.lesion_area_column("irma")] is None and r[C.lesion_count_column("nv")] is None
    assert total_count > 0  # the threshold makes the statistics non-trivial

    again = run_pseudo_labels(_cfg(preprocessed, lesion_model, tmp_path, f"pseudo_labels.threshold={threshold}",
                                   "pseudo_labels.batch_size=5"))
    assert again.processed_now == 0 and again.already_done == 7
    with pytest.raises(ValueError, match="other pseudo-label settings or model"):
        run_pseudo_labels(_cfg(preprocessed, lesion_model, tmp_path, "pseudo_labels.map_size=64"))


def test_channel_count_must_match_the_lesion_kinds(preprocessed, lesion_model, tmp_path):
    from dr_ray.pipelines.pseudo_labels import model_lesion_kinds

    meta = {"spec": {"out_channels": 4, "kwargs": {}}}
    assert model_lesion_kinds(meta, KINDS) == KINDS
    assert model_lesion_kinds({"spec": {"out_channels": 2, "kwargs": {"lesion_kinds": ["he", "ex"]}}}, KINDS) == (
        "he", "ex")
    with pytest.raises(ValueError, match="4 output channels but the lesion kinds are"):
        model_lesion_kinds(meta, ("he", "ex"))


@pytest.mark.slow
def test_an_actor_killed_mid_run_leaves_a_complete_output(preprocessed, lesion_model, tmp_path):
    """The actor process handling one image dies once (os._exit); Ray restarts the actor and retries its task:
    the job still succeeds and every input row is in the output exactly once."""
    ids = sorted(pq.read_table(preprocessed / "status=ok", columns=[C.IMAGE_ID]).column(0).to_pylist())
    once = tmp_path / "fault_fired"
    env = {**os.environ, FAULT_ENV: f"pseudo_labels:{ids[len(ids) // 2]}:exit", FAULT_ONCE_ENV: str(once),
           "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    cmd = [sys.executable, str(REPO / "jobs" / "pseudo_labels.py"), "--set", f"output.dir={tmp_path}",
           "--set", f"pseudo_labels.input={preprocessed}", "--set", f"pseudo_labels.model_dir={lesion_model}",
           "--set", "pseudo_labels.batch_size=2", "--set", "pseudo_labels.map_size=32",
           "--set", "ray.rows_per_file=2", "--set", "ray.num_cpus=2"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert once.exists(), "the fault never fired"
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = read_stage(tmp_path / "pseudo_labels")
    got = out.column(C.IMAGE_ID).to_pylist()
    assert sorted(got) == sorted(set(got)) == ids  # every input row exactly once (the damaged one quarantined)
    assert "[reconciles]" in res.stdout
