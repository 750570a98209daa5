"""DR classifiers (dr_ray.models.classifiers) and their blocks: known answers of the blocks and the GCN encoder,
every parameter of every registered classifier getting a gradient, overfitting random labels through each
fusion path, modality switches and empty graphs, MC dropout, spec round trips and encoder transfer."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch_geometric.data import Batch, Data

from dr_ray.models import create_model, list_models, load_model_dir, save_encoder, save_model_dir
from dr_ray.models import classifiers, registry
from dr_ray.models.blocks import (
    CBAM,
    CrossAttentionBlock,
    DilatedConvBlock,
    SqueezeExcite,
    map_to_tokens,
    sincos_position_embedding_2d,
    tokens_to_map,
)
from dr_ray.models.classifiers import mc_dropout_predict
from dr_ray.models.gnn import GraphEncoder
from dr_ray.models.transfer import load_encoder_file

S = 64  # input px in every test: 2 x 2 cells at stride 32
LESION = 64  # lesion map px: 2 x 2 lesion tokens (at 32 px a single key would make the attention weights trivial)
# Small configurations of every registered classifier with its DEFAULT backbones (Swin-T at 64 px needs window 4:
# stage grids 16, 8, 4, 2).
SMALL = {
    "resnet50": {},
    "efficientnet_b0": {},
    "swin_t": dict(window_size=4),
    "vit_b": {},
    "timm_classifier": dict(backbone="resnet18"),
    "cross_feature_fusion": dict(lesion_size=LESION),
    "dcat": {},
    "graph_fusion": {},
}
# Lighter backbones for the tests that train or rebuild many times (CPU time on a shared 2-core box; one
# forward + backward of 16 x 64 px on one thread: resnet18 0.48 s, efficientnet_b0 0.51 s, resnet10t 0.25 s,
# mobilenetv3_small_050 0.11 s, timm's test_resnet 0.09 s, test_efficientnet 0.06 s). Same families as the
# defaults: mobilenetv3_small_050 for graph_fusion's mobilenetv3_large_100 and (a light ImageNet CNN) for
# cross_feature_fusion's resnet34 pair; timm's tiny test_efficientnet + test_resnet for dcat's EfficientNet-B4 +
# ResNet34.
LIGHT = {
    "cross_feature_fusion": dict(backbone="mobilenetv3_small_050", lesion_backbone="mobilenetv3_small_050",
                                 lesion_size=LESION, hidden_dim=64, fusion_layers=1),
    "dcat": dict(backbone="test_efficientnet", backbone2="test_resnet", hidden_dim=64, fusion_layers=1),
    "graph_fusion": dict(backbone="mobilenetv3_small_050", hidden_dim=64, fusion_layers=1),
}
# resnet18 branches: the encoder-transfer tests export a resnet18 lesion_unet encoder into them
CFF_R18 = dict(backbone="resnet18", lesion_backbone="resnet18", lesion_size=LESION, hidden_dim=64, fusion_layers=1)
FUSION = tuple(LIGHT)
# num_classes = 2 runs on tiny variants through each builder's ``backbone`` kwarg (num_classes = 5 on the defaults)
TINY = {
    **LIGHT,
    "resnet50": dict(backbone="resnet18"),
    "efficientnet_b0": dict(backbone="mobilenetv3_small_100"),
    "swin_t": dict(window_size=4),  # Swin-T is timm's smallest Swin v1
    "vit_b": dict(backbone="vit_tiny_patch16_224"),
    "timm_classifier": dict(backbone="resnet10t"),
}


def _registered() -> list[str]:
    return [n for n in list_models() if registry._REGISTRY[n].__module__.startswith("dr_ray.models.classifiers")]


def _graph(n: int, g: torch.Generator) -> Data:
    """A random tree on n nodes (edges in both directions), 6 node and 10 edge features."""
    if n > 1:
        parents = torch.tensor([int(torch.randint(0, i, (1,), generator=g)) for i in range(1, n)])
        ei = torch.stack([parents, torch.arange(1, n)])
        ei = torch.cat([ei, ei.flip(0)], dim=1)
    else:
        ei = torch.zeros(2, 0, dtype=torch.long)
    return Data(x=torch.randn(n, 6, generator=g), edge_index=ei, edge_attr=torch.randn(ei.shape[1], 10, generator=g))


def _graphs(sizes: list[int], seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    return Batch.from_data_list([_graph(n, g) for n in sizes])


def _batch(b: int, seed: int = 0, sizes: list[int] | None = None, same_image: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(1 if same_image else b, 3, S, S, generator=g).expand(b, -1, -1, -1).contiguous()
    return dict(image=image, lesion=torch.rand(b, 4, LESION, LESION, generator=g),
                graph=_graphs(sizes or [4 + i % 5 for i in range(b)], seed), stats=torch.randn(b, 8, generator=g),
                label=torch.randint(0, 2, (b,), generator=g))


def _build(name: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, input_size=S, **kw)


def _modes(model: torch.nn.Module) -> dict[str, bool]:
    return {n: m.training for n, m in model.named_modules()}


# --- blocks ------------------------------------------------------------------------------------------------


def test_squeeze_excite_follows_eqs_6_to_8():
    torch.manual_seed(0)
    se = SqueezeExcite(8, reduction=2)
    x = torch.randn(2, 8, 5, 7)
    z = x.mean(dim=(2, 3))  # eq. (6)
    s = torch.sigmoid(se.fc2(torch.relu(se.fc1(z))))  # eq. (7)
    torch.testing.assert_close(se(x), x * s[:, :, None, None])  # eq. (8)
    with torch.no_grad():
        se.fc2.weight.zero_()
        se.fc2.bias.zero_()
    torch.testing.assert_close(se(x), 0.5 * x)  # s = sigmoid(0)


def test_cbam_zero_weights_halve_twice_and_channel_attention_uses_avg_and_max():
    torch.manual_seed(0)
    cbam = CBAM(16, reduction=4)
    x = torch.randn(2, 16, 6, 6)
    with torch.no_grad():
        cbam.channel.mlp[2].weight.zero_()
        cbam.channel.mlp[2].bias.zero_()
        cbam.spatial.conv.weight.zero_()
        cbam.spatial.conv.bias.zero_()
    torch.testing.assert_close(cbam(x), 0.25 * x)
    torch.manual_seed(1)
    ca = CBAM(16, reduction=4).channel
    mlp = ca.mlp
    expected = torch.sigmoid(mlp(x.mean(dim=(2, 3), keepdim=True)) + mlp(x.amax(dim=(2, 3), keepdim=True)))
    torch.testing.assert_close(ca(x), expected)


def test_dilated_block_branches_sample_at_their_dilation_and_keep_size():
    block = DilatedConvBlock(1, 1, dilations=(1, 2, 3)).eval()
    impulse = torch.zeros(1, 1, 15, 15)
    impulse[0, 0, 7, 7] = 1.0
    for d, branch in zip((1, 2, 3), block.branches):
        with torch.no_grad():
            branch[0].weight.fill_(1.0)
            response = branch[0](impulse)[0, 0]
        support = {(int(i) - 7, int(j) - 7) for i, j in torch.nonzero(response)}
        assert support == {(a * d, b * d) for a in (-1, 0, 1) for b in (-1, 0, 1)}, d  # eq. (5)
    assert block(torch.randn(2, 1, 15, 15)).shape == (2, 1, 15, 15)
    assert DilatedConvBlock(8, 4).residual is False and DilatedConvBlock(8, 8).residual is True
    with pytest.raises(ValueError, match="dilations"):
        DilatedConvBlock(4, 4, dilations=(1, 0))


def test_cross_attention_is_invariant_to_key_order_and_equivariant_to_query_order():
    torch.manual_seed(0)
    block = CrossAttentionBlock(32, heads=4, dropout=0.1).eval()
    x, y = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    with torch.no_grad():
        out = block(x, y)
        torch.testing.assert_close(block(x, y[:, torch.randperm(7)]), out)
        perm = torch.randperm(5)
        torch.testing.assert_close(block(x[:, perm], y), out[:, perm])
        w = block.attention(x, y)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 5))
    assert not torch.allclose(out, block(x, torch.randn(2, 7, 32)))  # the keys matter
    with pytest.raises(ValueError, match="divisible by heads"):
        CrossAttentionBlock(30, heads=4)


def test_sincos_position_codes_known_values_and_token_round_trip():
    pe = sincos_position_embedding_2d(3, 4, 16)
    q = 4
    torch.testing.assert_close(pe[0], torch.tensor([0.0] * q + [1.0] * q + [0.0] * q + [1.0] * q))
    # row 1, column 2 -> token 1 * 4 + 2; channel 0 = sin(row * ω_0), ω_0 = 1; channel 2q = sin(col)
    assert pe[6, 0].item() == pytest.approx(math.sin(1.0)) and pe[6, 2 * q].item() == pytest.approx(math.sin(2.0))
    assert torch.unique(pe, dim=0).shape[0] == 12  # every position distinct
    m = torch.randn(2, 16, 3, 4)
    torch.testing.assert_close(tokens_to_map(map_to_tokens(m), 3, 4), m)
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_position_embedding_2d(2, 2, 6)


# --- GCN encoder -------------------------------------------------------------------------------------------


def test_graph_encoder_empty_graphs_are_zero_and_graphs_independent():
    torch.manual_seed(0)
    enc = GraphEncoder(6, 16, layers=3, dropout=0.1)
    with torch.no_grad():  # non-trivial running statistics for the eval-mode input norm
        enc.norm.running_mean.uniform_(-1, 1)
        enc.norm.running_var.uniform_(0.5, 2)
    enc.eval()
    g = torch.Generator().manual_seed(1)
    a, b = _graph(5, g), _graph(7, g)
    empty = _graph(0, g)
    with torch.no_grad():
        out = enc(Batch.from_data_list([a, empty, b, empty]))
        alone_a = enc(Batch.from_data_list([a]))
        perm = torch.randperm(7)
        inv = torch.argsort(perm)
        b_perm = Data(x=b.x[perm], edge_index=inv[b.edge_index], edge_attr=b.edge_attr)
        permuted = enc(Batch.from_data_list([b_perm]))
    assert out.shape == (4, 16)
    assert torch.equal(out[1], torch.zeros(16)) and torch.equal(out[3], torch.zeros(16))
    assert out[0].abs().sum() > 0 and not torch.allclose(out[0], out[2])
    torch.testing.assert_close(out[0], alone_a[0])  # no leakage between graphs of a batch
    torch.testing.assert_close(permuted[0], out[2], atol=1e-5, rtol=1e-5)  # node order does not matter


@pytest.mark.parametrize("sizes", [[0, 0, 0], [1], [0, 1], [0]])
def test_graph_encoder_trains_on_batches_with_under_two_nodes(sizes):
    torch.manual_seed(0)
    enc = GraphEncoder(6, 8, layers=2, dropout=0.0).train()
    out = enc(_graphs(sizes))
    assert out.shape == (len(sizes), 8) and torch.isfinite(out).all()
    for i, n in enumerate(sizes):
        assert (out[i].abs().sum() > 0) == (n > 0)
    assert torch.equal(enc.norm.running_mean, torch.zeros(6))  # no statistics from < 2 nodes


# --- every registered classifier ----------------------------------------------------------------------------


def test_registered_classifiers_are_the_tested_ones():
    assert set(_registered()) == set(SMALL) == set(TINY)


@pytest.mark.parametrize("name,num_classes,kw", [(n, 5, SMALL[n]) for n in sorted(SMALL)]
                         + [(n, 2, TINY[n]) for n in sorted(TINY)])
def test_every_parameter_gets_a_gradient_and_mc_dropout_varies(name, num_classes, kw):
    m = _build(name, num_classes=num_classes, **kw)
    assert m.spec.name == name and m.spec.out_channels == num_classes and m.spec.output == "softmax"
    assert m.spec.input_size == S and "pretrained" not in m.spec.kwargs
    assert set(m.modalities) <= {"image", "lesion", "graph", "stats"} and m.modalities[0] == "image"
    # timm zero-initialises the last BN of each residual block (zero_init_last), which silences the residual
    # branch at init and so zeroes its gradients; give all-zero parameters a small value first (as test_unet).
    with torch.no_grad():
        for p in m.parameters():
            if not torch.any(p != 0):
                p.normal_(0.0, 0.1)
    batch = _batch(2, seed=1)
    m.train()
    logits = m(batch)
    assert logits.shape == (2, num_classes) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert not torch.allclose(logits[0], logits[1])  # the two samples differ
    F.cross_entropy(logits, batch["label"] % num_classes).backward()
    bad = [n for n, p in m.named_parameters() if p.requires_grad and (
        p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.abs().sum() > 0)]
    assert not bad, f"{len(bad)} parameters without a usable gradient: {bad[:10]}"
    if num_classes == 5:  # default backbones: MC dropout below runs on the tiny variants (CPU time)
        return
    # Monte-Carlo dropout works for every classifier: passes differ, probabilities sum to 1
    torch.manual_seed(0)
    p1, h1 = mc_dropout_predict(m, batch, samples=3)
    torch.manual_seed(1)
    p2, h2 = mc_dropout_predict(m, batch, samples=3)
    assert p1.shape == (2, num_classes) and h1.shape == (2,) and p1.dtype == np.float32
    np.testing.assert_allclose(p1.sum(1), 1.0, rtol=1e-5)
    assert not np.allclose(p1, p2) and not np.allclose(h1, h2)
    assert (h1 >= 0).all() and (h1 <= math.log(num_classes) + 1e-5).all()


def test_input_size_rules_of_swin_and_vit():
    m = create_model("swin_t", input_size=224).eval()  # window 7: multiples of 224
    assert m.spec.kwargs["window_size"] == 7 and m.gradcam_layout == "NHWC"
    with pytest.raises(ValueError, match="input_size 256 gives Swin token grids"):
        create_model("swin_t", input_size=256)
    # the default is 448 px: the common default 512 would not fit window 7
    assert inspect.signature(classifiers.swin_t).parameters["input_size"].default == 448
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        create_model("vit_b", input_size=72)


def test_builder_arguments_are_validated_naming_the_parameter():
    cases = [
        ("resnet50", dict(num_classes=1), "num_classes"),
        ("resnet50", dict(dropout=1.0), "dropout"),
        ("resnet50", dict(input_size=16), "input_size"),
        ("resnet50", dict(modalities=("image", "graph")), "modalities"),
        ("timm_classifier", dict(backbone="resnet_18"), "backbone"),
        ("cross_feature_fusion", dict(hidden_dim=30, heads=4), "hidden_dim"),
        ("cross_feature_fusion", dict(modalities=("lesion",)), "modalities"),
        ("cross_feature_fusion", dict(lesion_backbone="nope"), "lesion_backbone"),
        ("cross_feature_fusion", dict(lesion_kinds=0), "lesion_kinds"),
        ("dcat", dict(backbone2="resnet_34"), "backbone2"),
        ("dcat", dict(modalities=("image", "lesion")), "modalities"),
        ("dcat", dict(fusion_layers=0), "fusion_layers"),
        ("graph_fusion", dict(modalities=()), "modalities"),
        ("graph_fusion", dict(modalities="image"), "modalities"),
        ("graph_fusion", dict(gnn_layers=0), "gnn_layers"),
        ("graph_fusion", dict(stats_dim=0), "stats_dim"),
    ]
    for name, kw, param in cases:
        with pytest.raises(ValueError, match=param):
            create_model(name, **kw)
    with pytest.raises(TypeError):
        create_model("dcat", lesion_size=64)  # not a dcat argument


def test_pretrained_offline_fails_fast_for_classifiers(monkeypatch):
    from huggingface_hub import constants

    from dr_ray.models import unet as unet_mod

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(unet_mod, "reachable", lambda host: f"cannot resolve {host}: test")
    with pytest.raises(RuntimeError, match="could not download pretrained weights for resnet50.*pretrained=False"):
        create_model("resnet50", pretrained=True)
    with pytest.raises(RuntimeError, match="could not download pretrained weights for mobilenetv3_large_100"):
        create_model("graph_fusion", pretrained=True)


# --- overfitting -------------------------------------------------------------------------------------------


def _fits(m: torch.nn.Module, batch: dict, y: torch.Tensor, max_steps: int, lr: float = 3e-3) -> int:
    """Adam steps (checked every 5) until the eval-mode predictions equal ``y``; max_steps + 1 if never."""
    opt = torch.optim.Adam(m.parameters(), lr=lr)
    for step in range(1, max_steps + 1):
        m.train()
        loss = F.cross_entropy(m(batch), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 5 == 0:
            m.eval()
            with torch.no_grad():
                if torch.equal(m(batch).argmax(1), y):
                    return step
    return max_steps + 1


@pytest.mark.slow
@pytest.mark.parametrize("name,kw,same_image", [
    # one image shared by all 16 samples: the labels can only be read from the lesion maps (cross attention)
    ("cross_feature_fusion", LIGHT["cross_feature_fusion"], True),
    ("dcat", LIGHT["dcat"], False),
    # one shared image: the labels can only come from the graphs and biomarkers (GCN, projections, fusion)
    ("graph_fusion", LIGHT["graph_fusion"], True),
    ("graph_fusion", dict(modalities=("graph",), hidden_dim=64, fusion_layers=1), False),
])
def test_fusion_model_overfits_16_random_samples(name, kw, same_image):
    """16 fixed random samples, random binary labels (seed 0), Adam lr 3e-3: 5-50 steps here."""
    batch = _batch(16, seed=0, same_image=same_image)
    steps = _fits(_build(name, **kw), batch, batch["label"], max_steps=150)
    assert steps <= 150, f"{name} {kw} did not reach 100 % training accuracy in 150 steps"


@pytest.mark.slow
def test_resnet18_baseline_overfits_16_random_samples():
    batch = _batch(16, seed=0)
    assert _fits(_build("timm_classifier", backbone="resnet18"), batch, batch["label"], max_steps=100) <= 100


# --- modalities, empty graphs, batch validation -----------------------------------------------------------


def test_graph_fusion_image_only_needs_no_graph_and_has_fewer_parameters():
    full = _build("graph_fusion", **LIGHT["graph_fusion"])
    image_only = _build("graph_fusion", **{**LIGHT["graph_fusion"], "modalities": ("image",)})
    assert image_only.modalities == ("image",) and full.modalities == ("image", "graph", "stats")
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(image_only) < n(full) and image_only.gnn is None
    b = _batch(2)
    image_only.eval()
    with torch.no_grad():
        out = image_only({"image": b["image"]})
    assert out.shape == (2, 2) and torch.isfinite(out).all()
    stats_only = _build("graph_fusion", modalities=("stats",), hidden_dim=32, fusion_layers=1).eval()
    assert stats_only.gradcam_layer is None and stats_only.type_embed.shape[1] == 2  # cls + stats
    with torch.no_grad():
        assert stats_only({"stats": b["stats"]}).shape == (2, 2)


def test_missing_or_malformed_modality_raises_naming_the_key():
    gf = _build("graph_fusion", **LIGHT["graph_fusion"]).eval()
    b = _batch(2)
    for key in ("image", "graph", "stats"):
        with pytest.raises(ValueError, match=f"missing '{key}'"):
            gf({k: v for k, v in b.items() if k != key})
    cff = _build("cross_feature_fusion", **LIGHT["cross_feature_fusion"]).eval()
    with pytest.raises(ValueError, match="missing 'lesion'"):
        cff({"image": b["image"]})
    with pytest.raises(ValueError, match=r"batch\['lesion'\] must be \(B, 4, 64, 64\)"):
        cff({**b, "lesion": torch.rand(2, 3, LESION, LESION)})
    with pytest.raises(ValueError, match=r"batch\['image'\] must be \(B, 3, 64, 64\)"):
        cff({**b, "image": torch.randn(2, 3, 96, 96)})
    with pytest.raises(ValueError, match=r"batch\['stats'\] must be \(B, 8\)"):
        gf({**b, "stats": torch.randn(2, 5)})
    with pytest.raises(ValueError, match="disagree on the batch size"):
        gf({**b, "graph": _graphs([3, 4, 5])})
    with pytest.raises(ValueError, match="torch_geometric.data.Batch"):
        gf({**b, "graph": b["graph"].to_data_list()})


@pytest.mark.parametrize("sizes", [[5, 0, 3], [0, 0, 0]])
def test_empty_graphs_give_finite_logits_for_every_row(sizes):
    m = _build("graph_fusion", **LIGHT["graph_fusion"])
    b = _batch(3, seed=2, sizes=sizes)
    for train in (True, False):
        m.train(train)
        with torch.no_grad():
            out = m(b)
        assert out.shape == (3, 2) and torch.isfinite(out).all()
    graph_only = _build("graph_fusion", modalities=("graph",), hidden_dim=32, fusion_layers=1).eval()
    with torch.no_grad():
        out = graph_only({"graph": b["graph"]})
    assert out.shape == (3, 2) and torch.isfinite(out).all()
    for i, j in ((0, 1), (1, 2), (0, 2)):  # empty graphs are indistinguishable from each other, others are not
        assert torch.allclose(out[i], out[j]) == (sizes[i] == 0 and sizes[j] == 0)


@pytest.mark.parametrize("name", FUSION)
def test_logits_are_float32_under_bf16_autocast(name):
    m = _build(name, **LIGHT[name]).eval()
    b = _batch(2, seed=5)
    with torch.no_grad():
        ref = m(b)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(b)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, atol=0.1, rtol=0.1)  # bf16 keeps ~3 significant digits


def test_dcat_warns_when_its_backbones_normalise_differently(caplog):
    with caplog.at_level("WARNING", logger="dr_ray.models.classifiers"):
        m = _build("dcat", **LIGHT["dcat"])  # test_efficientnet: ImageNet mean/std; test_resnet: 0.5 / 0.5
    assert "expect different normalisation" in caplog.text
    assert m.spec.mean == timm.models.get_pretrained_cfg("test_efficientnet").mean


# --- determinism, MC dropout modes --------------------------------------------------------------------------


@pytest.mark.parametrize("name", FUSION)
def test_eval_deterministic_and_mc_dropout_restores_modes(name):
    m = _build(name, **LIGHT[name])
    b = _batch(2, seed=3)
    m.eval()
    with torch.no_grad():
        assert torch.equal(m(b), m(b))
    m.train()
    m.head.eval()  # a mixed state must come back exactly
    next(mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)).eval()
    before = _modes(m)
    bn = {k: v.clone() for k, v in m.state_dict().items() if "running" in k}
    probs, ent = mc_dropout_predict(m, b, samples=4)
    assert _modes(m) == before
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in bn.items())  # BatchNorm stayed in eval mode
    np.testing.assert_allclose(ent, -(probs * np.log(probs)).sum(1), rtol=1e-5)
    with pytest.raises(ValueError, match="samples"):
        mc_dropout_predict(m, b, samples=0)


def test_mc_dropout_reaches_transformer_dropout_behind_the_fast_path():
    # only the fusion transformer's dropout is left: nn.TransformerEncoderLayer's eval fast path would skip it
    m = _build("graph_fusion", modalities=("stats",), hidden_dim=32, fusion_layers=1, dropout=0.3)
    m.drop.p = 0.0
    b = _batch(2)
    torch.manual_seed(0)
    p1, _ = mc_dropout_predict(m, b, samples=2)
    torch.manual_seed(1)
    p2, _ = mc_dropout_predict(m, b, samples=2)
    assert not np.allclose(p1, p2)
    for mod in m.modules():
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    with pytest.raises(ValueError, match="no nn.Dropout"):
        mc_dropout_predict(m, b, samples=2)


# --- spec round trip --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FUSION)
def test_model_dir_round_trip_reproduces_eval_logits(name, tmp_path):
    m = _build(name, **LIGHT[name])
    b = _batch(4, seed=4)
    with torch.no_grad():  # move weights and BatchNorm statistics away from a fresh init
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))
        m.train()
        m(b)
    m.eval()
    with torch.no_grad():
        ref = m(b)
    save_model_dir(m, tmp_path / name, config={"test": True}, train_data_hash=None)
    loaded, meta = load_model_dir(tmp_path / name)
    assert loaded.spec == m.spec and meta["spec"]["kwargs"]["modalities"] == list(m.modalities)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(b), ref)
        assert not torch.allclose(_build(name, **LIGHT[name]).eval()(b), ref)  # a fresh build differs


# --- encoder transfer ------------------------------------------------------------------------------------


def _seg_encoder_state(tmp_path, encoder: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(7)
    seg = create_model("lesion_unet", encoder=encoder, lesion_kinds=["ma", "he", "ex", "se"], pretrained=False,
                       input_size=S, decoder_channels=(32, 16, 16, 8, 8))
    with torch.no_grad():
        for p in seg.encoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
        seg.train()
        seg(torch.randn(2, 3, S, S))  # BatchNorm statistics differ from a fresh init
    path = save_encoder(seg, tmp_path / f"{encoder}.pt")
    state, meta = load_encoder_file(path)
    assert meta["encoder"] == encoder
    return state


def test_segmentation_encoder_loads_into_image_and_lesion_branches(tmp_path):
    state = _seg_encoder_state(tmp_path, "resnet18")
    cff = _build("cross_feature_fusion", **CFF_R18)
    report = cff.load_segmentation_encoder(state, "image")
    assert report.missing_keys == [] and report.unexpected_keys == []
    own = cff.image_encoder.state_dict()
    assert set(own) == set(state) and all(torch.equal(own[k], state[k]) for k in state)

    cff.load_segmentation_encoder(state, "lesion")
    les = cff.lesion_encoder.state_dict()
    assert les["conv1.weight"].shape == (64, 4, 7, 7)
    assert torch.equal(les["conv1.weight"], timm.models.adapt_input_conv(4, state["conv1.weight"]))
    assert all(torch.equal(les[k], state[k]) for k in state if k != "conv1.weight")

    with pytest.raises(ValueError, match="branch"):
        cff.load_segmentation_encoder(state, "graph")
    image_only = _build("cross_feature_fusion", **{**CFF_R18, "modalities": ("image",)})
    with pytest.raises(ValueError, match="lesion modality"):
        image_only.load_segmentation_encoder(state, "lesion")


def test_mismatching_segmentation_encoder_is_refused(tmp_path):
    state34 = _seg_encoder_state(tmp_path, "resnet34")
    cff = _build("cross_feature_fusion", **CFF_R18)  # resnet18 branches
    before = {k: v.clone() for k, v in cff.state_dict().items()}
    for branch in ("image", "lesion"):
        with pytest.raises(ValueError, match="does not match"):
            cff.load_segmentation_encoder(state34, branch)
    assert all(torch.equal(v, cff.state_dict()[k]) for k, v in before.items())  # nothing half-loaded


# --- the papers' switches: Swin lesion branch from a Swin U-Net encoder at 512 px, GraphFusion blocks ----------

# a light Swin v1 (timm's Swin-T layout with 1 block and 1 head per stage): what a tiny train-lesions run exports
TINY_SWIN = dict(embed_dim=24, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1])


def _swin_unet_encoder(tmp_path, *, input_size: int, window_size: int) -> tuple[torch.nn.Module, str]:
    """A tiny trained-looking swin_unet and its encoder.pt (save_encoder, as train-lesions writes it)."""
    torch.manual_seed(0)
    seg = create_model("swin_unet", input_size=input_size, window_size=window_size, encoder_kwargs=TINY_SWIN,
                       decoder_channels=(16, 8, 8, 8, 8), stem_channels=())
    with torch.no_grad():  # not the init: every tensor differs from a fresh model's
        for p in seg.encoder.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = save_encoder(seg, tmp_path / "encoder.pt")
    return seg.eval(), str(path)


def _train_cfg(**train):
    from dr_ray.config import load_config

    return load_config(None, [f"train.{k}={v}" for k, v in train.items()]).train


def test_swin_unet_encoder_loads_into_the_cff_lesion_branch_with_identical_features_at_512(tmp_path):
    from dr_ray.training.ray_fusion import build_classifier, init_encoders

    seg, path = _swin_unet_encoder(tmp_path, input_size=512, window_size=8)
    # train.lesion_encoder_init: the branch is built as the exported encoder (name + Swin kwargs from encoder.json)
    t = _train_cfg(model="cross_feature_fusion", backbone="resnet18", lesion_encoder_init=path, image_size=64,
                   lesion_size=512, hidden_dim=32, heads=2, fusion_layers=1)
    cff = build_classifier(t)
    assert cff.spec.kwargs["lesion_backbone"] == "swin_tiny_patch4_window7_224"
    assert cff.spec.kwargs["lesion_backbone_kwargs"] == {**TINY_SWIN, "window_size": 8}
    # 3 lesion kinds: the stem needs no channel adaptation, so the branch is the segmentation encoder exactly
    cff3 = create_model("cross_feature_fusion", **{**cff.spec.kwargs, "lesion_kinds": 3})
    before = {k: v.clone() for k, v in cff3.lesion_encoder.state_dict().items()}
    assert init_encoders(cff3, t) == [f"lesion <- {path} (swin_tiny_patch4_window7_224, from swin_unet)"]
    cff3.eval()
    y = torch.rand(2, 3, 512, 512, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = seg.encoder(y), cff3.lesion_encoder(y)
    assert [tuple(f.shape) for f in got] == [(2, 128, 128, 24), (2, 64, 64, 48), (2, 32, 32, 96), (2, 16, 16, 192)]
    assert all(torch.equal(a, b) for a, b in zip(want, got))
    assert not torch.equal(before["patch_embed.proj.weight"], cff3.lesion_encoder.state_dict()["patch_embed.proj.weight"])
    # 4 kinds (the pseudo-label default): the stem is adapted, every other tensor is the encoder's
    init_encoders(cff, t)
    own, src = cff.lesion_encoder.state_dict(), seg.encoder.state_dict()
    assert own["patch_embed.proj.weight"].shape == (24, 4, 4, 4)
    assert all(torch.equal(own[k], src[k]) for k in src if k != "patch_embed.proj.weight")
    logits = cff.eval()(dict(image=torch.randn(2, 3, 64, 64), lesion=torch.rand(2, 4, 512, 512)))
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    # a name that contradicts the encoder is refused, naming both keys
    with pytest.raises(ValueError, match="train.lesion_backbone='resnet34' but train.lesion_encoder_init"):
        build_classifier(_train_cfg(model="cross_feature_fusion", lesion_backbone="resnet34",
                                    lesion_encoder_init=path))


def test_window7_swin_unet_encoder_is_resampled_into_a_window8_branch_at_512(tmp_path, caplog):
    from dr_ray.training.ray_fusion import build_classifier, init_encoders

    seg, path = _swin_unet_encoder(tmp_path, input_size=224, window_size=7)  # the poster's window, 224 px
    # window 7 cannot tile 512 px (grids 128 .. 16): refused with the way out
    with pytest.raises(ValueError, match="lesion_backbone 'swin_tiny_patch4_window7_224' at 512 px.*swin_window"):
        build_classifier(_train_cfg(model="cross_feature_fusion", backbone="resnet18", lesion_encoder_init=path,
                                    lesion_size=512))
    t = _train_cfg(model="cross_feature_fusion", backbone="resnet18", lesion_encoder_init=path, swin_window=8,
                   image_size=64, lesion_size=512, hidden_dim=32, heads=2, fusion_layers=1)
    cff = build_classifier(t)
    with caplog.at_level("WARNING"):
        init_encoders(cff, t)
    assert "resampled 4 Swin relative-position tables" in caplog.text
    own, src = cff.lesion_encoder.state_dict(), seg.encoder.state_dict()
    table = "layers_0.blocks.0.attn.relative_position_bias_table"
    assert src[table].shape == (13 * 13, 1) and own[table].shape == (15 * 15, 1)
    assert torch.allclose(own[table].view(15, 15)[7, 7], src[table].view(13, 13)[6, 6], atol=0.02)  # centre kept
    same = [k for k in src if k != "patch_embed.proj.weight" and not k.endswith("relative_position_bias_table")]
    assert same and all(torch.equal(own[k], src[k]) for k in same)
    assert torch.isfinite(cff.eval()(dict(image=torch.randn(1, 3, 64, 64), lesion=torch.rand(1, 4, 512, 512)))).all()


def test_swin_image_branch_runs_at_512_with_window_8():
    kw = dict(backbone="swin_tiny_patch4_window7_224", backbone_kwargs={**TINY_SWIN, "window_size": 8},
              modalities=("image",), hidden_dim=32, heads=2, fusion_layers=1)
    with pytest.raises(ValueError, match="backbone 'swin_tiny_patch4_window7_224' at 512 px"):
        create_model("cross_feature_fusion", input_size=512, **{**kw, "backbone_kwargs": TINY_SWIN})
    with pytest.raises(ValueError, match="must not set \\['img_size'\\]"):
        create_model("cross_feature_fusion", input_size=512, **{**kw, "backbone_kwargs": {"img_size": 512}})
    m = create_model("cross_feature_fusion", input_size=512, **kw).eval()
    x = torch.randn(1, 3, 512, 512, requires_grad=True)
    m(dict(image=x)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


GF_BLOCK_SUBSETS = [(), ("se",), ("dilated",), ("cbam",), ("se", "dilated"), ("se", "cbam"), ("dilated", "cbam"),
                    ("se", "dilated", "cbam")]  # paper Table 6's rows


@pytest.mark.parametrize("blocks", GF_BLOCK_SUBSETS, ids=lambda b: "+".join(b) or "baseline")
def test_graph_fusion_block_switches_build_only_their_blocks_and_train(blocks):
    d = 64
    kw = dict(LIGHT["graph_fusion"], blocks=list(blocks))
    m = _build("graph_fusion", **kw)
    assert m.spec.kwargs["blocks"] == list(blocks) and m.blocks == blocks
    own = {"se": SqueezeExcite(d), "dilated": DilatedConvBlock(d, d, dilations=(1, 2, 3)), "cbam": CBAM(d)}
    for name, block in own.items():
        built = getattr(m, name)
        assert (built is not None) == (name in blocks)
        if built is not None:
            assert type(built) is type(block)
    n_params = sum(p.numel() for p in m.parameters())
    base = sum(p.numel() for p in _build("graph_fusion", **dict(kw, blocks=[])).parameters())
    assert n_params - base == sum(sum(p.numel() for p in own[b].parameters()) for b in blocks)
    last = next((b for b in ("cbam", "dilated", "se") if b in blocks), None)
    assert m.gradcam_layer is (getattr(m, last) if last else m.reduce)
    with torch.no_grad():  # as in the every-parameter test: timm zero-inits some BN weights
        for p in m.parameters():
            if not torch.any(p != 0):
                p.normal_(0.0, 0.1)
    batch = _batch(2, seed=3)
    F.cross_entropy(m.train()(batch), batch["label"]).backward()
    bad = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not bad, bad[:5]


def test_graph_fusion_blocks_are_validated_and_ordered():
    with pytest.raises(ValueError, match="blocks must be distinct names .*unknown: \\['fpn'\\]"):
        _build("graph_fusion", **dict(LIGHT["graph_fusion"], blocks=["se", "fpn"]))
    m = _build("graph_fusion", **dict(LIGHT["graph_fusion"], blocks=["cbam", "se"]))
    assert m.blocks == ("se", "cbam")  # applied in GRAPH_FUSION_BLOCKS order whatever the list order
    from dr_ray.training.ray_fusion import classifier_kwargs

    assert classifier_kwargs(_train_cfg(graph_fusion_blocks="[dilated]"))["blocks"] == ["dilated"]
