"""Registry: did-you-mean for unknown names, duplicate names refused, spec carries the preprocessing."""

from __future__ import annotations

import dataclasses
import socket
import time

import pytest
import torch
from torch import nn

from dr_ray.models import ModelSpec, create_model, list_models, register_model
from dr_ray.models import registry


def test_known_models_listed():
    assert {"unet", "vessel_unet"} <= set(list_models())
    assert list_models() == sorted(list_models())


def test_unknown_name_suggests_and_lists_known():
    with pytest.raises(ValueError) as e:
        create_model("vesel_unet")
    msg = str(e.value)
    assert "'vesel_unet'" in msg
    assert "Did you mean 'vessel_unet'" in msg
    for name in list_models():
        assert name in msg
    with pytest.raises(ValueError, match="Known models: .*unet"):
        create_model("zzzzzz")


def test_duplicate_registration_refused(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    with pytest.raises(ValueError, match="'unet' is already registered"):
        @register_model("unet")
        def other(**kw):  # pragma: no cover - never called
            return nn.Identity()

    @register_model("tmp_test_model")
    def tmp(**kw):
        m = nn.Identity()
        m.spec = ModelSpec("tmp_test_model", 1, 1, 32, (0.5,), (0.5,), "sigmoid", {})
        return m

    assert "tmp_test_model" in list_models()
    with pytest.raises(ValueError, match="already registered"):
        register_model("tmp_test_model")(tmp)


def test_builder_without_spec_refused(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_model("no_spec")(lambda **kw: nn.Identity())
    with pytest.raises(TypeError, match="ModelSpec"):
        create_model("no_spec")


def test_spec_carries_preprocessing():
    m = create_model("unet", encoder="resnet18", classes=1, decoder_channels=(16, 8, 8, 8, 8), input_size=384)
    s = m.spec
    assert s.name == "unet" and s.in_channels == 3 and s.out_channels == 1
    assert s.input_size == 384
    # resnet18's ImageNet statistics, from timm's pretrained_cfg
    assert s.mean == pytest.approx((0.485, 0.456, 0.406)) and s.std == pytest.approx((0.229, 0.224, 0.225))
    assert s.output == "sigmoid"
    assert dict(s.kwargs) == {"encoder": "resnet18", "in_chans": 3, "classes": 1,
                              "decoder_channels": [16, 8, 8, 8, 8], "input_size": 384}
    assert ModelSpec.from_dict(s.to_dict()) == s
    # the kwargs rebuild the same architecture
    m2 = create_model(s.name, **s.kwargs)
    assert [(k, v.shape) for k, v in m.state_dict().items()] == [(k, v.shape) for k, v in m2.state_dict().items()]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.input_size = 1


def test_spec_single_channel_and_defaults():
    m = create_model("vessel_unet", in_chans=1, decoder_channels=(16, 8, 8, 8, 8))
    assert m.spec.name == "vessel_unet" and m.spec.input_size == 512 and m.spec.kwargs["encoder"] == "resnet18"
    assert len(m.spec.mean) == 1 and m.spec.mean[0] == pytest.approx((0.485 + 0.456 + 0.406) / 3)
    assert m(torch.randn(1, 1, 64, 64)).shape == (1, 1, 64, 64)
    with pytest.raises(ValueError, match="mean/std"):
        ModelSpec("x", 3, 1, 32, (0.5,), (0.5,), "sigmoid", {})
    with pytest.raises(ValueError, match="output"):
        ModelSpec("x", 1, 1, 32, (0.5,), (0.5,), "relu", {})


def _network_available(host: str = "huggingface.co", timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def test_pretrained_offline_fails_fast_and_clearly():
    if _network_available():
        pytest.skip("network available: pretrained download would really run")
    t0 = time.monotonic()
    with pytest.raises(RuntimeError) as e:
        create_model("unet", encoder="resnet18", pretrained=True)
    elapsed = time.monotonic() - t0
    msg = str(e.value)
    assert elapsed < 10, f"took {elapsed:.1f} s"
    assert "could not download pretrained weights for resnet18" in msg
    assert "pretrained=False" in msg and "HF_HUB_OFFLINE=1" in msg
