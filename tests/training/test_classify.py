"""Classifier loops without Ray (early stopping, validation loss = training loss, a tiny model learning from
joined-row batches) and the Ray-free parts of tuning (search space, trial configs checked like config files)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dr_ray.config import ConfigError, SearchDim, TrainConfig, load_config
from dr_ray.imaging import encode_png
from dr_ray.io import columns as C
from dr_ray.training.classify import loss_function, predict, train_classifier_epoch, weighted_nll
from dr_ray.training.fit import EarlyStopping
from dr_ray.training.fusion_data import InputSpec, batches_from_rows


def test_early_stopping_counts_epochs_without_a_new_minimum():
    s = EarlyStopping(patience=2)
    assert [s.step(v, e) for e, v in enumerate([1.0, 0.8, 0.9, 0.85], 1)] == [True, True, False, False]
    assert s.should_stop and s.best == 0.8 and s.best_epoch == 2
    r = EarlyStopping(2)
    r.load_state_dict(s.state_dict())
    assert (r.best, r.best_epoch, r.bad_epochs) == (0.8, 2, 2)
    assert not EarlyStopping(0).should_stop
    with pytest.raises(FloatingPointError):
        EarlyStopping(1).step(math.nan, 3)


def test_weighted_nll_equals_the_training_loss():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(9, 5, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 0, 2, 2])
    w = [0.5, 2.0, 1.0, 3.0, 1.5]
    ref = loss_function(w, "cpu")(logits, labels).item()
    probs = torch.softmax(logits, 1).numpy()
    assert weighted_nll(labels.numpy(), probs, np.asarray(w)) == pytest.approx(ref, rel=1e-5)
    assert weighted_nll(labels.numpy(), probs) == pytest.approx(loss_function(None, "cpu")(logits, labels).item(),
                                                                rel=1e-5)


def _toy_rows(n: int = 12):
    """Referable = a bright disc in the image; label follows the grade (0 or 3)."""
    rng = np.random.default_rng(0)
    pngs, grades = [], []
    for i in range(n):
        img = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
        g = 3 if i % 2 else 0
        if g:
            img[10:20, 10:20] = 230
        pngs.append(encode_png(img))
        grades.append(g)
    return {C.IMAGE_ID: [f"t{i}" for i in range(n)], C.GRADE: grades, C.FOLD: [0] * n, C.IMAGE_PNG: pngs}


@pytest.mark.slow
def test_train_epoch_learns_and_predict_keeps_row_order():
    from dr_ray.models import create_model

    torch.manual_seed(0)
    model = create_model("timm_classifier", backbone="resnet18", input_size=32, num_classes=2, dropout=0.0)
    spec = InputSpec(modalities=("image",), task="referable", image_size=32)
    rows = _toy_rows()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = loss_function(None, "cpu")
    first = train_classifier_epoch(model, batches_from_rows(rows, spec, 4), opt, loss_fn, "cpu", mean=model.spec.mean,
                        std=model.spec.std)
    for _ in range(15):
        last = train_classifier_epoch(model, batches_from_rows(rows, spec, 4, augment=True, rng=np.random.default_rng(1)),
                           opt, loss_fn, "cpu", mean=model.spec.mean, std=model.spec.std)
    assert first["rows"] == 12 and first["steps"] == 3
    assert 0.0 <= last["busy_fraction"] <= 1.0 and last["wait_seconds"] >= 0.0
    assert last["loss"] < 0.5 * first["loss"]
    ids, labels, probs = predict(model, batches_from_rows(rows, spec, 5), "cpu", mean=model.spec.mean,
                                 std=model.spec.std)
    assert ids == rows[C.IMAGE_ID] and labels.tolist() == [0, 1] * 6
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    assert (probs.argmax(1) == labels).mean() >= 0.9


def test_search_space_and_trial_configs():
    pytest.importorskip("ray")
    from ray.tune.search.sample import Categorical, Float, Integer

    from dr_ray.training.tune import check_space, choices, search_space, trial_train_config

    space = (SearchDim(key="lr", kind="loguniform", low=1e-5, high=1e-3),
             SearchDim(key="hidden_dim", kind="choice", values=(64, 128)),
             SearchDim(key="gnn_layers", kind="randint", low=1, high=4),
             SearchDim(key="modalities", kind="choice", values=(("image", "graph"), ("image",))))
    ps = search_space(space)
    assert isinstance(ps["lr"], Float) and isinstance(ps["hidden_dim"], Categorical)
    assert isinstance(ps["gnn_layers"], Integer)
    assert ps["modalities"].categories == [["image", "graph"], ["image"]]
    base = TrainConfig()
    t = trial_train_config(base, {"lr": 3e-4, "modalities": ["image"]}, name="x")
    assert t.lr == 3e-4 and t.modalities == ("image",) and t.name == "x" and t.hidden_dim == base.hidden_dim
    with pytest.raises(ConfigError, match="train.hidden_dim"):
        trial_train_config(base, {"hidden_dim": 30})  # not divisible by 4 heads
    with pytest.raises(ConfigError, match="train.dropout='a lot'"):
        trial_train_config(base, {"dropout": "a lot"})
    check_space(base, space)
    with pytest.raises(ConfigError, match=r"tune.space\[hidden_dim\]: value 30"):
        check_space(base, (SearchDim(key="hidden_dim", kind="choice", values=(64, 30)),))
    assert choices(space, "modalities", []) == [["image", "graph"], ["image"]]
    assert choices(space, "model", "dcat") == ["dcat"]


def test_tune_config_from_yaml(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text("tune:\n  space:\n    - {key: lr, kind: uniform, low: 0.001, high: 0.01}\n")
    cfg = load_config(f)
    assert cfg.tune.space == (SearchDim(key="lr", kind="uniform", low=0.001, high=0.01),)  # replaced, not merged
    with pytest.raises(ConfigError, match="did you mean 'hidden_dim'"):
        load_config(None, ["tune.space=[{key: hiden_dim, kind: choice, values: [1]}]"])
    with pytest.raises(ConfigError, match=r"tune.space\[lr\].high"):
        load_config(None, ["tune.space=[{key: lr, kind: uniform, low: 1, high: 0.5}]"])
    with pytest.raises(ConfigError, match="train.baseline"):
        load_config(None, ["train.baseline=train"])


def test_train_epoch_skips_a_trailing_one_row_batch_under_batchnorm():
    """9 rows in batches of 4: BatchNorm cannot train on the last 1-row batch; it is skipped, not a crash."""
    from dr_ray.models import create_model

    torch.manual_seed(0)
    model = create_model("timm_classifier", backbone="resnet18", input_size=32, num_classes=2, dropout=0.0)
    spec = InputSpec(modalities=("image",), task="referable", image_size=32)
    rows = {k: v[:9] for k, v in _toy_rows().items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    out = train_classifier_epoch(model, batches_from_rows(rows, spec, 4), opt, loss_function(None, "cpu"), "cpu",
                      mean=model.spec.mean, std=model.spec.std)
    assert out["rows"] == 8 and out["steps"] == 2
    one = {k: v[:1] for k, v in rows.items()}
    with pytest.raises(ValueError, match="one-row batch"):
        train_classifier_epoch(model, batches_from_rows(one, spec, 4), opt, loss_function(None, "cpu"), "cpu",
                    mean=model.spec.mean, std=model.spec.std)


def test_asha_lets_a_trial_that_reaches_max_t_end_on_its_own_but_still_cuts_laggards():
    """Stopped by the scheduler at its last report, a trial's actor is killed while its Ray Train controller still
    shuts down, leaking the worker group's CPUs (the next trial then hung on 2 CPUs): at max_t ASHA must say
    CONTINUE and let the trial function return; below a rung's cutoff it still stops."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    from dr_ray.training.tune import asha

    sched = asha(max_t=2, grace_period=1, reduction_factor=2)
    sched.set_search_properties(metric="val_loss", mode="min")
    good, bad = Trial("__fake", trial_id="good", stub=True), Trial("__fake", trial_id="bad", stub=True)
    for t in (good, bad):
        sched.on_trial_add(None, t)
    assert sched.on_trial_result(None, good, {"training_iteration": 1, "val_loss": 0.1}) == TrialScheduler.CONTINUE
    assert sched.on_trial_result(None, bad, {"training_iteration": 1, "val_loss": 9.0}) == TrialScheduler.STOP
    assert sched.on_trial_result(None, good, {"training_iteration": 2, "val_loss": 0.05}) == TrialScheduler.CONTINUE


def test_results_table_skips_undefined_metrics_and_keeps_every_trial():
    """A trial whose tune.metric is NaN in every epoch (AUC of a one-class inner validation split) keeps its row
    without best-epoch columns (pandas' idxmax raised "Encountered all NA values" there); NaN epochs never win."""
    from types import SimpleNamespace

    import pandas as pd

    from dr_ray.pipelines.tune import results_table

    nan = float("nan")
    a = SimpleNamespace(path="/x/trial_a", error=None, config={"lr": 1e-3},
                        metrics_dataframe=pd.DataFrame({"training_iteration": [1, 2], "val_auc": [nan, nan]}))
    b = SimpleNamespace(path="/x/trial_b", error=None, config={"lr": 1e-4},
                        metrics_dataframe=pd.DataFrame({"training_iteration": [1, 2, 3], "val_auc": [0.6, nan, 0.7],
                                                        "val_loss": [0.9, 0.8, 0.7]}))
    df = results_table([a, b], "val_auc", "max")
    assert list(df["trial"]) == ["trial_b", "trial_a"]  # the defined one first
    rb, ra = df.iloc[0], df.iloc[1]
    assert rb["best_epoch"] == 3 and rb["val_auc"] == 0.7 and rb["epochs"] == 3
    assert ra["epochs"] == 2 and pd.isna(ra["best_epoch"]) and pd.isna(ra["val_auc"])
