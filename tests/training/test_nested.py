"""Nested validation, proved on the real pipelines (issue 12, "Done when"): relabelling the outer test fold (train)
or every fold a tune campaign does not use (tune) leaves the trained weights bit-identical, while the labels did
reach the data (the outer-fold metrics change). Tiny synthetic stage outputs, a tiny timm model, 2 epochs, the shared
Ray cluster; training is made deterministic (one shard per stage, no augmentation, no local shuffle) so that
"identical" can be checked exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dr_ray.config import load_config
from dr_ray.io import columns as C
from dr_ray.testing.stages import write_stage_outputs

N_PATIENTS, K = 12, 3  # folds are patient % 3; grades cycle 0,3,0,2,4,0,1,3 over the patients

TINY = ("data.folds=3", "train.model=timm_classifier", "train.backbone=resnet18", "train.image_size=32",
        "train.batch_size=4", "train.decode_batch_size=4", "train.shuffle_buffer=0", "train.augment=false",
        "train.epochs=2", "train.early_stop_patience=0", "train.inner_val_fraction=0.25", "ray.rows_per_file=64")


def _write(root: Path, relabel_folds: tuple[int, ...] = ()) -> None:
    """Stage outputs (one Parquet shard per stage: a fixed row order); with ``relabel_folds``, the grades of those
    folds' patients rotated by one patient, so referable labels change but the grade mix of each fold does not."""
    write_stage_outputs(root, n_patients=N_PATIENTS, folds=K, flaws=False, rows_per_file=1000)
    if not relabel_folds:
        return
    for stage in ("preprocess", "pseudo_labels", "vessels"):
        for f in (root / stage).glob("status=*/*.parquet"):
            t = pq.read_table(f)
            rows = t.to_pylist()
            for fold in relabel_folds:
                patients = sorted({r[C.PATIENT_ID] for r in rows if r[C.FOLD] == fold},
                                  key=lambda p: int(p.split("/")[1]))
                grade = {p: next(r[C.GRADE] for r in rows if r[C.PATIENT_ID] == p) for p in patients}
                rotated = dict(zip(patients, [grade[p] for p in patients[-1:] + patients[:-1]]))
                for r in rows:
                    if r[C.PATIENT_ID] in rotated:
                        r[C.GRADE] = rotated[r[C.PATIENT_ID]]
                        r[C.REFERABLE] = r[C.GRADE] >= 2
            pq.write_table(pa.Table.from_pylist(rows, schema=t.schema), f)


@pytest.fixture()
def ordered(ray_cluster):
    """Ray Data keeps block order (two decode tasks on two cores finish in any order otherwise), so that two runs
    feed the same batches; restored afterwards."""
    ctx = ray_cluster.data.DataContext.get_current()
    before = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True
    yield
    ctx.execution_options.preserve_order = before


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.ray
@pytest.mark.slow
def test_train_outer_fold_labels_cannot_reach_its_model(ordered, tmp_path):
    from dr_ray.pipelines.train import run_train

    runs = {}
    for name, relabel in (("original", ()), ("relabelled", (0,))):
        root = tmp_path / name
        _write(root, relabel)
        runs[name] = run_train(load_config(None, [f"output.dir={root}", *TINY, "train.folds=[0]",
                                                  "train.name=nested"]))
    a, b = (tmp_path / n / "nested" / "fold_0" / "model" / "model.pt" for n in ("original", "relabelled"))
    assert _same_weights(_state(a), _state(b))  # the chosen epoch's weights, bit for bit
    fa, fb = runs["original"]["folds"][0], runs["relabelled"]["folds"][0]
    assert fa["best_epoch"] == fb["best_epoch"] and fa["selection"] == fb["selection"]
    # the relabelling reached the data: the outer test fold's own numbers moved
    assert any(fa.get(m) != fb.get(m) for m in ("loss", "accuracy", "auc")), (fa, fb)
    s = json.loads((tmp_path / "original" / "nested" / "cv.json").read_text())
    assert s["patient_level"] is True and s["protocol"]["nested"] is True
    f0 = s["folds"][0]
    assert f0["selection"]["split"].startswith("inner validation") and f0["inner_val_images"] >= 2
    assert f0["train_images"] + f0["inner_val_images"] == 2 * N_PATIENTS * (K - 1) // K  # folds 1 and 2 only


@pytest.mark.ray
@pytest.mark.slow
def test_tune_never_sees_the_folds_it_leaves_untouched(ordered, tmp_path):
    from dr_ray.config import load_config as load
    from dr_ray.pipelines.tune import run_tune

    out = {}
    for name, relabel in (("original", ()), ("relabelled", (1, 2))):
        root = tmp_path / name
        _write(root, relabel)
        out[name] = run_tune(load_config(None, [f"output.dir={root}", *TINY, "tune.name=t", "tune.num_samples=1",
                                                "tune.max_concurrent=1", "tune.folds=[0]", "tune.metric=val_loss",
                                                "tune.mode=min", "tune.grace_period=2"]))
    ckpts = [sorted((tmp_path / n / "t" / "trials").glob("*/epoch_*/best.pt"))[-1] for n in ("original", "relabelled")]
    assert _same_weights(_state(ckpts[0]), _state(ckpts[1]))
    assert out["original"]["best"]["val_loss"] == out["relabelled"]["best"]["val_loss"]
    assert out["original"]["untouched_folds"] == [1, 2] and out["original"]["patient_level"] is True
    best = load(out["original"]["best_config_path"])
    assert best.train.folds == (1, 2)  # best_train.yaml scores only the folds the campaign never loaded
