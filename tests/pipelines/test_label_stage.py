"""``dr-ray label`` (one stream: catalog -> preprocess -> both models -> graphs) writes the three stage folders
exactly as the three stage commands do for the same input: same ids, statuses, values; counts reconcile per
stage; a run over a folder written by a stage command (a partial run) resumes; changed settings are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dr_ray.config import load_config
from dr_ray.io import columns as C
from dr_ray.testing.stages import assert_stage_equal, read_stage

pytestmark = [pytest.mark.ray]
STAGES = ("preprocess", "vessels", "pseudo_labels")
# the settings of the `preprocessed` fixture (tests/pipelines/conftest.py): 6 synthetic images + 3 broken files
PRE_SETTINGS = ("data.synthetic.n_patients=3", "data.synthetic.width=768", "data.synthetic.height=512",
                "preprocess.size=128", "ray.rows_per_file=2", "ray.batch_size=2")


def _cfg(out: Path, models, threshold: float, *extra: str):
    return load_config(None, [f"output.dir={out}", *PRE_SETTINGS, f"vessels.model_dir={models[0]}",
                              f"pseudo_labels.model_dir={models[1]}", f"vessels.threshold={threshold}",
                              "pseudo_labels.map_size=32", "label.batch_size=3", "vessels.graph_batch_size=2",
                              *extra])


@pytest.fixture(scope="module")
def separate(ray_cluster, label_models, label_threshold, tmp_path_factory) -> Path:
    """The three stage commands, one after the other, on the same settings."""
    from dr_ray.pipelines.preprocess import run_preprocess
    from dr_ray.pipelines.pseudo_labels import run_pseudo_labels
    from dr_ray.pipelines.vessels import run_vessels

    out = tmp_path_factory.mktemp("separate")
    cfg = _cfg(out, label_models, label_threshold)
    run_preprocess(cfg)
    run_vessels(cfg)
    run_pseudo_labels(cfg)
    return out


@pytest.fixture(scope="module")
def labelled(ray_cluster, label_models, label_threshold, tmp_path_factory):
    from dr_ray.pipelines.label import run_label

    out = tmp_path_factory.mktemp("label")
    return out, run_label(_cfg(out, label_models, label_threshold))


def test_label_writes_what_the_three_stage_commands_write(labelled, separate):
    out, summaries = labelled
    pre = summaries["preprocess"]
    # 6 synthetic images + 3 broken files: in = written + quarantined, per stage and in total
    assert (pre.catalog_rows, pre.written, pre.quarantined) == (9, 6, 3) and pre.reconciles
    for s in ("vessels", "pseudo_labels"):
        m = summaries[s]
        assert m.catalog_rows == pre.written == m.written + m.quarantined and m.reconciles and m.duplicates == 0
    assert sum(n.processed_now for n in summaries.values()) == pre.catalog_rows + 2 * pre.written

    for stage in STAGES:
        got, want = read_stage(out / stage), read_stage(separate / stage)
        assert_stage_equal(got, want, stage, roots=(str(out), str(separate)))
        # each folder's config_hash is the one its own command writes: `dr-ray vessels` can resume over it
        assert set(got.column(C.CONFIG_HASH).to_pylist()) == set(want.column(C.CONFIG_HASH).to_pylist()), stage
        saved = json.loads((out / stage / "summary.json").read_text())
        assert saved["reconciles"], stage
    ves = read_stage(out / "vessels")
    assert sum(n or 0 for n in ves.column(C.N_EDGES).to_pylist()) > 0  # the graphs compared are not empty


def test_stage_commands_resume_over_label_folders_and_label_resumes_a_partial_run(labelled, separate, label_models,
                                                                                  label_threshold, tmp_path):
    from dr_ray.pipelines.label import run_label
    from dr_ray.pipelines.preprocess import run_preprocess
    from dr_ray.pipelines.pseudo_labels import run_pseudo_labels
    from dr_ray.pipelines.vessels import run_vessels

    out, _ = labelled
    cfg = _cfg(out, label_models, label_threshold)
    assert run_vessels(cfg).processed_now == 0 and run_pseudo_labels(cfg).processed_now == 0
    again = run_label(cfg)
    assert all(s.processed_now == 0 and s.reconciles for s in again.values())

    # A partial run: only `dr-ray preprocess` has run into this folder; label does only the model stages.
    part = tmp_path / "partial"
    run_preprocess(_cfg(part, label_models, label_threshold))
    res = run_label(_cfg(part, label_models, label_threshold))
    assert res["preprocess"].processed_now == 0 and res["preprocess"].already_done == 9
    assert res["vessels"].processed_now == res["pseudo_labels"].processed_now == 6
    for stage in STAGES:
        got, want = read_stage(part / stage), read_stage(separate / stage)
        assert got.column(C.IMAGE_ID).to_pylist() == want.column(C.IMAGE_ID).to_pylist(), stage
        name = "fractal_dimension" if stage == "vessels" else C.STATUS
        assert_stage_equal(got.select([C.IMAGE_ID, name]), want.select([C.IMAGE_ID, name]), stage)


def test_changed_settings_are_refused_before_anything_is_written(labelled, label_models, label_threshold):
    from dr_ray.pipelines.label import run_label

    out, _ = labelled
    files = sorted(str(p) for p in out.rglob("*.parquet"))
    with pytest.raises(ValueError, match="other vessel settings or model"):
        run_label(_cfg(out, label_models, round(label_threshold + 0.01, 4)))
    with pytest.raises(ValueError, match="other pseudo-label settings or model"):
        run_label(_cfg(out, label_models, label_threshold, "pseudo_labels.map_size=16"))
    with pytest.raises(ValueError, match="other preprocess settings"):
        run_label(_cfg(out, label_models, label_threshold, "preprocess.clahe.clip_limit=3.0"))
    with pytest.raises(ValueError, match="makes its own preprocess folder"):
        run_label(_cfg(out, label_models, label_threshold, "vessels.input=/somewhere/else"))
    assert sorted(str(p) for p in out.rglob("*.parquet")) == files


def test_actor_pools_that_leave_no_cpu_for_the_tasks_are_refused():
    """Measured: two 1-CPU pools on 2 CPUs never schedule a decode task (the stream waits forever)."""
    from dr_ray.pipelines.label import check_pool_cpus

    cfg = load_config(None, ["label.model_pools=two"])
    with pytest.raises(ValueError, match="leaves no CPU for the decode and graph tasks"):
        check_pool_cpus(cfg, 2)
    check_pool_cpus(cfg, 3)
    check_pool_cpus(load_config(None, []), 2)  # one pool: 1 actor CPU + 1 task CPU
    with pytest.raises(ValueError, match="label.actors"):
        check_pool_cpus(load_config(None, ["label.actors=2"]), 2)
