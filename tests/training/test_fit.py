"""The one training loop (:func:`dr_ray.training.fit.fit`) without Ray: it learns, a killed run resumes to the same
weights as an uninterrupted one, early stopping keeps the best epoch's weights, and misuse fails clearly."""

from __future__ import annotations

import json

import pytest
import torch

from dr_ray.training.fit import (BEST_FILE, DirectoryReporter, Optimization, cpu_state, fit, load_best,
                                 load_training_state)


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 3, generator=g)
    y = x @ torch.tensor([[1.5], [-2.0], [0.5]]) + 0.3
    return x, y


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(3, 1)


def _epoch_fns(x, y):
    def train_epoch(model, optimizer, epoch):
        g = torch.Generator().manual_seed(epoch)  # the batches depend on the epoch only: resumable
        order = torch.randperm(len(x), generator=g)
        total = 0.0
        for i in range(0, len(x), 16):
            idx = order[i:i + 16]
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
        return {"train_loss": total / 4}

    def validate(model, epoch):
        with torch.no_grad():
            return {"val_loss": float(torch.nn.functional.mse_loss(model(x), y))}

    return train_epoch, validate


def test_fit_learns_reports_every_epoch_and_keeps_the_newest_checkpoints(tmp_path):
    x, y = _problem()
    train_epoch, validate = _epoch_fns(x, y)
    rep = DirectoryReporter(tmp_path / "ck", keep=2)
    model = _model()
    out = fit(model, epochs=6, optim=Optimization(lr=0.1, optimizer="adam"), train_epoch=train_epoch,
              validate=validate, reporter=rep, static={"fold": 3})
    assert [h["epoch"] for h in out.history] == [1, 2, 3, 4, 5, 6] and out.start_epoch == 0
    assert out.history[-1]["val_loss"] < 0.2 * out.history[0]["val_loss"]
    assert all(h["fold"] == 3 and h["start_epoch"] == 0 and h["seconds"] >= 0 for h in out.history)
    lrs = [h["lr"] for h in out.history]  # cosine over 6 epochs, the rate each epoch trained with
    assert lrs[0] == pytest.approx(0.1) and all(a > b for a, b in zip(lrs, lrs[1:]))
    assert [p.name for p in rep.checkpoints()] == ["epoch_0005", "epoch_0006"]
    state, history = load_training_state(rep.checkpoints()[-1])
    assert state["epoch"] == 6 and history == json.loads(json.dumps(out.history))
    assert torch.equal(state["model"]["weight"], model.weight.detach())
    assert not (rep.checkpoints()[-1] / BEST_FILE).exists()  # nothing monitored: no best weights
    with pytest.raises(FileNotFoundError, match="without a monitored metric"):
        load_best(rep.checkpoints()[-1])


def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path):
    x, y = _problem()
    train_epoch, validate = _epoch_fns(x, y)
    optim = Optimization(lr=0.05, weight_decay=0.01)
    clean = _model()
    ref = fit(clean, epochs=5, optim=optim, train_epoch=train_epoch, validate=validate,
              reporter=DirectoryReporter(tmp_path / "clean"))

    def die_at_epoch_4(epoch):
        if epoch == 3:
            raise RuntimeError("worker died")

    rep = DirectoryReporter(tmp_path / "killed")
    with pytest.raises(RuntimeError, match="worker died"):
        fit(_model(), epochs=5, optim=optim, train_epoch=train_epoch, validate=validate, reporter=rep,
            before_epoch=die_at_epoch_4)
    assert [p.name for p in rep.checkpoints()] == ["epoch_0002", "epoch_0003"]
    resumed = _model()  # a fresh process: initial weights again, the checkpoint must bring the state back
    out = fit(resumed, epochs=5, optim=optim, train_epoch=train_epoch, validate=validate, reporter=rep)
    assert out.start_epoch == 3 and [h["start_epoch"] for h in out.history] == [0, 0, 0, 3, 3]
    assert torch.equal(resumed.weight, clean.weight) and torch.equal(resumed.bias, clean.bias)
    assert [h["val_loss"] for h in out.history] == [h["val_loss"] for h in ref.history]
    assert [h["lr"] for h in out.history] == [h["lr"] for h in ref.history]  # the schedule resumed too


def test_early_stopping_keeps_the_best_epoch_and_a_rerun_does_not_train_on(tmp_path):
    x, y = _problem()
    train_epoch, _ = _epoch_fns(x, y)
    scripted = [1.0, 0.7, 0.8, 0.9, 0.5]  # best at epoch 2, then 2 epochs without a new minimum
    weights_after: dict[int, torch.Tensor] = {}

    def validate(model, epoch):
        weights_after[epoch + 1] = model.weight.detach().clone()
        return {"val_loss": scripted[epoch]}

    rep = DirectoryReporter(tmp_path / "ck")
    optim = Optimization(lr=0.05, optimizer="adam", schedule="plateau", plateau_patience=0, plateau_factor=0.5)
    out = fit(_model(), epochs=5, optim=optim, train_epoch=train_epoch, validate=validate, reporter=rep,
              monitor="val_loss", patience=2)
    assert [h["epoch"] for h in out.history] == [1, 2, 3, 4]  # stopped: epoch 5's 0.5 is never seen
    assert out.history[-1]["best_epoch"] == 2 and out.history[-1]["best_val_loss"] == 0.7
    assert torch.equal(out.best["weight"], weights_after[2])
    assert [h["lr"] for h in out.history] == pytest.approx([0.05, 0.05, 0.05, 0.025])  # plateau halved it
    best, history = load_best(rep.checkpoints()[-1])
    assert torch.equal(best["weight"], weights_after[2]) and len(history) == 4

    def must_not_train(*_):
        raise AssertionError("a finished run trained again")

    again = fit(_model(), epochs=5, optim=optim, train_epoch=must_not_train, validate=validate, reporter=rep,
                monitor="val_loss", patience=2)
    assert again.start_epoch == 4 and torch.equal(again.best["weight"], weights_after[2])


def test_fit_refuses_what_it_cannot_do(tmp_path):
    x, y = _problem()
    train_epoch, validate = _epoch_fns(x, y)
    rep = DirectoryReporter(tmp_path)
    with pytest.raises(ValueError, match="plateau schedule needs a monitored metric"):
        fit(_model(), epochs=2, optim=Optimization(lr=0.1, schedule="plateau"), train_epoch=train_epoch,
            validate=validate, reporter=rep)
    with pytest.raises(KeyError, match="no 'val_auc'"):
        fit(_model(), epochs=2, optim=Optimization(lr=0.1), train_epoch=train_epoch, validate=validate,
            reporter=rep, monitor="val_auc")
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        fit(_model(), epochs=0, optim=Optimization(lr=0.1), train_epoch=train_epoch, validate=validate,
            reporter=rep)
    with pytest.raises(ValueError, match="schedule must be one of"):
        Optimization(lr=0.1, schedule="step")
    with pytest.raises(ValueError, match="lr must be a positive number"):
        Optimization(lr=0.0)


def test_cpu_state_is_a_detached_copy():
    m = _model()
    s = cpu_state(m)
    with torch.no_grad():
        m.weight.add_(1.0)
    assert not torch.equal(s["weight"], m.weight) and not s["weight"].requires_grad
