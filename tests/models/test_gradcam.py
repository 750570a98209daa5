"""Grad-CAM (dr_ray.models.gradcam): a CNN trained on a square in the top-left quadrant puts its class-1 map
there; Grad-CAM equals CAM for global-average-pool + linear heads; the three feature layouts agree; hooks,
train/eval modes and parameter gradients are left as they were; the overlay blends jet colours."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch_geometric.data import Batch, Data

from dr_ray.models import create_model
from dr_ray.models.gradcam import grad_cam, overlay

S = 64


class _TinyCNN(nn.Module):
    """3 convs (stride 4 in all: a 16 x 16 map at 64 px, receptive field 15 px) -> GAP -> linear.

    Stands in for a timm classifier in the localisation test: resnet18's 2 x 2 last map at 64 px (and its
    whole-image receptive field) cannot place evidence in a quadrant, and 128 px costs ~4x the CPU time."""

    gradcam_layout = "NCHW"

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, 2, 1), nn.ReLU())
        self.head = nn.Linear(16, 2)

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.features

    def forward(self, batch: dict) -> torch.Tensor:
        return self.head(self.features(batch["image"]).mean(dim=(2, 3)))


def _squares(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n noise images, odd ones with a bright 12 px square somewhere in the top-left quadrant (class 1)."""
    g = torch.Generator().manual_seed(seed)
    x = 0.2 * torch.randn(n, 3, S, S, generator=g)
    y = torch.arange(n) % 2
    for i in range(n):
        if y[i]:
            r, c = torch.randint(0, S // 2 - 12 + 1, (2,), generator=g).tolist()
            x[i, :, r:r + 12, c:c + 12] += 2.0
    return x, y


def _quadrant_means(cam: np.ndarray) -> np.ndarray:
    """(B, 4): mean of each map over the top-left, top-right, bottom-left, bottom-right quadrant."""
    h = cam.shape[1] // 2
    return np.stack([cam[:, :h, :h].mean((1, 2)), cam[:, :h, h:].mean((1, 2)), cam[:, h:, :h].mean((1, 2)),
                     cam[:, h:, h:].mean((1, 2))], axis=1)


def test_cam_of_trained_cnn_sits_in_the_top_left_quadrant():
    x, y = _squares(32, seed=0)
    torch.manual_seed(0)
    m = _TinyCNN()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(60):
        loss = F.cross_entropy(m({"image": x}), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    xt, yt = _squares(16, seed=1)
    m.eval()
    with torch.no_grad():
        assert torch.equal(m({"image": xt}).argmax(1), yt)
    cam = grad_cam(m, {"image": xt[yt == 1]}, target_class=1)
    assert cam.shape == (8, S, S) and cam.dtype == np.float32 and cam.min() >= 0 and cam.max() <= 1
    q = _quadrant_means(cam)
    assert (q[:, 0] > q[:, 1:].max(axis=1)).all(), q  # every image: top-left holds most of the map
    assert q[:, 0].mean() > 10 * q[:, 1:].mean()
    # and the peak of each map lies on (within 4 px of) its square
    imgs = xt[yt == 1].mean(1).numpy()
    for c, img in zip(cam, imgs):
        r, k = np.unravel_index(np.argmax(c), c.shape)
        assert img[max(r - 4, 0):r + 5, max(k - 4, 0):k + 5].max() > 1.0


def test_grad_cam_equals_cam_for_a_gap_linear_head():
    """With global average pooling + linear, α_k = w_ck / (h w): Grad-CAM is CAM (Zhou et al. 2016)."""
    torch.manual_seed(0)
    m = _TinyCNN().eval()
    x = torch.randn(3, 3, S, S)
    targets = [1, 0, 1]
    cam = grad_cam(m, {"image": x}, target_class=targets)
    with torch.no_grad():
        a = m.features(x)
        w = m.head.weight[targets]  # (B, K)
        ref = F.relu((w[:, :, None, None] * a).sum(1, keepdim=True))
        ref = F.interpolate(ref, size=(S, S), mode="bilinear", align_corners=False)[:, 0]
        ref = ref - ref.amin(dim=(1, 2), keepdim=True)
        ref = ref / ref.amax(dim=(1, 2), keepdim=True)
    np.testing.assert_allclose(cam, ref.numpy(), atol=1e-5)
    with torch.no_grad():
        pred = m({"image": x}).argmax(1).tolist()
    np.testing.assert_array_equal(grad_cam(m, {"image": x}), grad_cam(m, {"image": x}, target_class=pred))
    assert not np.allclose(grad_cam(m, {"image": x}, target_class=0), grad_cam(m, {"image": x}, target_class=1))


class _Twin(nn.Module):
    """Patch conv -> feature map in one of three layouts -> pooled -> linear; the layouts must give one CAM."""

    def __init__(self, layout: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 8, stride=8)  # 8 x 8 grid at 64 px
        self.head = nn.Linear(8, 2)
        self.layer = nn.Identity()
        self.gradcam_layout = layout

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.layer

    def forward(self, batch: dict) -> torch.Tensor:
        f = torch.tanh(self.conv(batch["image"]))
        if self.gradcam_layout == "NCHW":
            pooled = self.layer(f).mean(dim=(2, 3))
        elif self.gradcam_layout == "NHWC":
            pooled = self.layer(f.permute(0, 2, 3, 1)).mean(dim=(1, 2))
        else:  # a class token in front, as in ViT
            t = f.flatten(2).transpose(1, 2)
            t = self.layer(torch.cat([torch.zeros_like(t[:, :1]), t], dim=1))
            pooled = t[:, 1:].mean(dim=1)
        return self.head(pooled)


def test_token_and_channels_last_layouts_match_nchw():
    x = torch.randn(2, 3, S, S)
    ref = grad_cam(_Twin("NCHW"), {"image": x}, target_class=1)
    assert ref.std() > 0
    np.testing.assert_allclose(grad_cam(_Twin("NHWC"), {"image": x}, target_class=1), ref, atol=1e-6)
    np.testing.assert_allclose(grad_cam(_Twin("NLC"), {"image": x}, target_class=1), ref, atol=1e-6)
    wrong = _Twin("NLC")
    wrong.gradcam_prefix_tokens = 2  # 63 tokens left: not a square grid
    with pytest.raises(ValueError, match="not a square grid"):
        grad_cam(wrong, {"image": x})


def _hooks(layer: nn.Module) -> int:
    return len(layer._forward_hooks) + len(layer._backward_hooks) + len(layer._forward_pre_hooks)


@pytest.mark.parametrize("train", [True, False])
def test_hooks_removed_modes_kept_and_parameter_grads_untouched(train):
    torch.manual_seed(0)
    m = create_model("timm_classifier", backbone="resnet18", input_size=S).train(train)
    m.head.train(not train)  # a mixed state comes back exactly
    modes = {n: mod.training for n, mod in m.named_modules()}
    x = torch.randn(2, 3, S, S)
    cam = grad_cam(m, {"image": x, "label": torch.tensor([0, 1])})
    assert cam.shape == (2, S, S) and 0 <= cam.min() and cam.max() == pytest.approx(1.0)
    assert _hooks(m.gradcam_layer) == 0 and m.gradcam_layer is m.image_encoder.layer4
    assert {n: mod.training for n, mod in m.named_modules()} == modes
    assert all(p.grad is None for p in m.parameters())
    with pytest.raises(ValueError, match="target_class must be in"):  # raised after the forward pass
        grad_cam(m, {"image": x}, target_class=7)
    assert _hooks(m.gradcam_layer) == 0 and {n: mod.training for n, mod in m.named_modules()} == modes
    with pytest.raises(ValueError, match="2 ints"):
        grad_cam(m, {"image": x}, target_class=[0, 1, 1])


def _graphs(sizes: list[int]) -> Batch:
    g = torch.Generator().manual_seed(0)
    data = []
    for n in sizes:
        ei = torch.stack([torch.arange(n - 1), torch.arange(1, n)]) if n > 1 else torch.zeros(2, 0, dtype=torch.long)
        ei = torch.cat([ei, ei.flip(0)], dim=1)
        data.append(Data(x=torch.randn(n, 6, generator=g), edge_index=ei, edge_attr=torch.randn(ei.shape[1], 10)))
    return Batch.from_data_list(data)


@pytest.mark.parametrize("name,kw,layout", [
    # light backbones (CPU time); the defaults differ only in the timm encoder
    ("graph_fusion", dict(backbone="mobilenetv3_small_050", hidden_dim=64, fusion_layers=1), "NCHW"),
    ("cross_feature_fusion", dict(backbone="mobilenetv3_small_050", lesion_backbone="mobilenetv3_small_050",
                                  lesion_size=64, hidden_dim=64, fusion_layers=1), "NCHW"),
    ("dcat", dict(backbone="test_efficientnet", backbone2="test_resnet", hidden_dim=64, fusion_layers=1), "NCHW"),
    ("swin_t", dict(window_size=4), "NHWC"),
    ("vit_b", dict(backbone="vit_tiny_patch16_224"), "NLC"),
])
def test_registered_classifiers_give_maps_at_input_size(name, kw, layout):
    torch.manual_seed(0)
    m = create_model(name, input_size=S, num_classes=5, **kw).eval()
    assert m.gradcam_layout == layout
    g = torch.Generator().manual_seed(1)
    batch = dict(image=torch.randn(3, 3, S, S, generator=g), lesion=torch.rand(3, 4, 64, 64, generator=g),
                 graph=_graphs([4, 0, 6]), stats=torch.randn(3, 8, generator=g))
    cams = np.concatenate([grad_cam(m, batch, target_class=c) for c in range(5)])
    assert cams.shape == (15, S, S) and np.isfinite(cams).all() and cams.min() >= 0
    peaks = cams.reshape(15, -1).max(axis=1)
    assert np.all((peaks == 0) | (np.abs(peaks - 1) < 1e-6))  # min-max scaled, an all-negative map stays 0
    # untrained, the (2 x 2) map can be all-negative for a class (the ReLU leaves 0), not for all 5 classes
    assert cams.reshape(15, -1).std(axis=1).max() > 0.1
    assert _hooks(m.gradcam_layer) == 0 and not m.training
    if name == "graph_fusion":
        graph_only = create_model(name, input_size=S, modalities=("graph",), hidden_dim=32, fusion_layers=1)
        with pytest.raises(ValueError, match="no gradcam_layer"):
            grad_cam(graph_only, batch)


def test_dcat_grad_cam_is_cam_of_its_first_branch():
    """After ``cbam_a`` DCAT pools and applies a linear head: α_k = w_ck / (h w) over the first d columns."""
    torch.manual_seed(1)
    m = create_model("dcat", input_size=S, backbone="test_efficientnet", backbone2="test_resnet", hidden_dim=64,
                     fusion_layers=1).eval()
    x = torch.randn(3, 3, S, S, generator=torch.Generator().manual_seed(2))
    captured = []
    handle = m.cbam_a.register_forward_hook(lambda mod, i, o: captured.append(o))
    with torch.no_grad():
        m({"image": x})
    handle.remove()
    for c in (0, 1):
        ref = F.relu((m.head.weight[c, :64, None, None] * captured[0]).sum(1, keepdim=True))
        ref = F.interpolate(ref, size=(S, S), mode="bilinear", align_corners=False)[:, 0]
        ref = ref - ref.amin(dim=(1, 2), keepdim=True)
        peak = ref.amax(dim=(1, 2), keepdim=True)
        ref = torch.where(peak > 0, ref / peak.clamp_min(1e-12), ref)
        np.testing.assert_allclose(grad_cam(m, {"image": x}, target_class=c), ref.detach().numpy(), atol=1e-5)
    assert grad_cam(m, {"image": x}, target_class=0).max() == pytest.approx(1.0)  # not a vacuous comparison


def test_overlay_blends_jet_colours():
    img = np.zeros((4, 6, 3), np.uint8)
    img[:, :3] = 200
    cam = np.zeros((4, 6), np.float32)
    cam[:, 3:] = 1.0
    jet0 = cv2.applyColorMap(np.zeros((1, 1), np.uint8), cv2.COLORMAP_JET)[0, 0, ::-1]  # RGB of cam 0
    np.testing.assert_array_equal(jet0, [0, 0, 128])  # dark blue
    out = overlay(img, cam, alpha=0.5)
    assert out.dtype == np.uint8 and out.shape == (4, 6, 3)
    np.testing.assert_array_equal(out[0, 0], [100, 100, 164])  # 0.5 * 200 + 0.5 * (0, 0, 128)
    np.testing.assert_array_equal(out[0, 5], [64, 0, 0])  # 0.5 * 0 + 0.5 * dark red (128, 0, 0)
    np.testing.assert_array_equal(overlay(img, cam, alpha=0.0), img)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        overlay(img, cam * 2)
    with pytest.raises(ValueError, match="image_rgb_uint8"):
        overlay(img.astype(np.float32), cam)
    with pytest.raises(ValueError, match="cam must be"):
        overlay(img, cam[:, :5])
