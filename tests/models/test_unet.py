"""TimmUNet: shapes for two encoder layouts, size check, gradients reach every parameter, overfitting, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dr_ray.models import TimmUNet, create_model
from dr_ray.testing import make_fundus

# resnet18: 5 levels at reductions 2..32; convnext_atto: 4 levels at 4..32 (no stride-2 skip).
ENCODERS = ["resnet18", "convnext_atto"]
TINY_DECODER = (32, 16, 16, 8, 8)


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_output_shape_and_skip_layout(encoder):
    torch.manual_seed(0)
    m = create_model("unet", encoder=encoder, classes=3, decoder_channels=TINY_DECODER).eval()
    reds = m.encoder.feature_info.reduction()
    assert reds[-1] == 32
    # a skip is concatenated exactly where the encoder has a feature level (other than the deepest)
    cskips = [blk.conv1[0].in_channels - cin for blk, cin in
              zip(m.decoder, [m.encoder.feature_info.channels()[-1], *TINY_DECODER[:-1]])]
    expected = [dict(zip(reds[:-1], m.encoder.feature_info.channels()[:-1])).get(r, 0) for r in (16, 8, 4, 2, 1)]
    assert cskips == expected
    with torch.no_grad():
        for size in (64, 96):
            y = m(torch.randn(2, 3, size, size))
            assert y.shape == (2, 3, size, size)
            assert torch.isfinite(y).all()
    assert m.spec.output == "softmax" and m.spec.out_channels == 3


def test_non_divisible_size_raises_naming_size():
    m = create_model("unet", encoder="resnet18", decoder_channels=TINY_DECODER)
    with pytest.raises(ValueError, match="80x64"):
        m(torch.randn(1, 3, 80, 64))
    with pytest.raises(ValueError, match="input_size"):
        create_model("unet", encoder="resnet18", input_size=500)


def test_bad_arguments():
    with pytest.raises(ValueError, match="decoder_channels needs 5"):
        TimmUNet("resnet18", decoder_channels=(16, 8))
    with pytest.raises(ValueError, match="resnet18"):  # did-you-mean for a misspelt timm encoder
        TimmUNet("resnet1B")
    with pytest.raises(ValueError, match="classes"):
        TimmUNet("resnet18", classes=0)


@pytest.mark.parametrize("encoder", ENCODERS)
def test_every_parameter_gets_a_gradient(encoder):
    torch.manual_seed(0)
    m = create_model("unet", encoder=encoder, classes=2, decoder_channels=TINY_DECODER).train()
    # timm zero-initialises the last BN of each residual block (zero_init_last), which silences the
    # residual branch at init and so zeroes its gradients; give all-zero parameters a small value first.
    with torch.no_grad():
        for p in m.parameters():
            if not torch.any(p != 0):
                p.normal_(0.0, 0.1)
    y = m(torch.randn(2, 3, 64, 64))
    (y * torch.randn_like(y)).sum().backward()
    bad = [n for n, p in m.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not bad, f"parameters without gradient: {bad}"


def test_channels_last_matches_contiguous():
    torch.manual_seed(0)
    m = create_model("unet", encoder="resnet18", decoder_channels=TINY_DECODER).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = m(x)
        m_cl = m.to(memory_format=torch.channels_last)
        out = m_cl(x.contiguous(memory_format=torch.channels_last))
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_eval_is_deterministic():
    torch.manual_seed(0)
    m = create_model("unet", encoder="resnet18", decoder_channels=TINY_DECODER).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(m(x), m(x))


def _dice_bce(logits, target):
    p = torch.sigmoid(logits)
    inter = (p * target).sum((1, 2, 3))
    dice = 1 - (2 * inter + 1) / (p.sum((1, 2, 3)) + target.sum((1, 2, 3)) + 1)
    return dice.mean() + torch.nn.functional.binary_cross_entropy_with_logits(logits, target)


@pytest.mark.slow
def test_tiny_unet_overfits_8_synthetic_fundus_images():
    """Vessel masks of 8 synthetic 96 px frames (~2-4% vessel pixels) are learnt: loss -90%, eval Dice > 0.8."""
    torch.manual_seed(0)
    frames = [make_fundus(seed, 96, 96, lesions=False) for seed in range(8)]
    m = create_model("vessel_unet", encoder="mobilenetv3_small_100", decoder_channels=(32, 32, 16, 16, 16),
                     input_size=96)
    mean = torch.tensor(m.spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(m.spec.std).view(1, 3, 1, 1)
    x = (torch.from_numpy(np.stack([f.image for f in frames])).permute(0, 3, 1, 2).float() / 255 - mean) / std
    y = torch.from_numpy(np.stack([f.vessel_mask for f in frames])).float()[:, None]
    assert 0.005 < y.mean() < 0.2
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    m.train()
    losses = []
    for _ in range(150):
        opt.zero_grad()
        loss = _dice_bce(m(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0], f"loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    m.eval()
    with torch.no_grad():
        pred = (torch.sigmoid(m(x)) > 0.5).float()
    dice = (2 * (pred * y).sum() / (pred.sum() + y.sum())).item()
    assert dice > 0.8, f"eval Dice {dice:.3f}"


def test_compact_vessel_unet_full_resolution_small_and_rebuildable(tmp_path):
    from dr_ray.models import load_model_dir, save_model_dir

    torch.manual_seed(0)
    m = create_model("compact_vessel_unet", input_size=64)
    n = sum(p.numel() for p in m.parameters())
    assert 300_000 < n < 1_000_000  # ~2 MB of float32: small enough to ship in the package
    x = torch.randn(2, 3, 64, 96)
    y = m(x)
    assert y.shape == (2, 1, 64, 96)
    y.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    with pytest.raises(ValueError, match="not divisible by 8"):
        m(torch.randn(1, 3, 60, 64))
    with pytest.raises(ValueError, match="no published pretrained weights"):
        create_model("compact_vessel_unet", pretrained=True)
    with pytest.raises(ValueError, match="channels"):
        create_model("compact_vessel_unet", channels=[16])
    m.eval()
    loaded, meta = load_model_dir(save_model_dir(m, tmp_path / "m", config={}, train_data_hash=None))
    assert meta["spec"]["kwargs"]["channels"] == [16, 32, 64, 128]
    with torch.no_grad():
        assert torch.equal(loaded(x), m(x))
