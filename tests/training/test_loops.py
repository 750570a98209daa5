"""The Ray-free loop learns; whole-image inference handles sizes that are not multiples of 32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dr_ray.models import create_model
from dr_ray.training import (
    DiceBCELoss,
    VesselRecord,
    evaluate_vessels,
    load_vessel_images,
    patch_batches,
    predict_image,
    train_segmentation_epoch,
)

SMALL_DECODER = (64, 32, 16, 16, 8)


def _model(size=64):
    torch.manual_seed(0)
    return create_model("vessel_unet", encoder="resnet18", input_size=size, decoder_channels=SMALL_DECODER)


def test_loop_learns_synthetic_vessels(tmp_path):
    from dr_ray.pipelines.train_vessels import synthetic_vessel_records

    images = load_vessel_images(synthetic_vessel_records(str(tmp_path), range(4), 128))
    model = _model()
    before = evaluate_vessels(model, images, mean=model.spec.mean, std=model.spec.std)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(10):  # 10 epochs x 8 steps
        batches = patch_batches(images, patch=64, patches_per_image=16, batch_size=8, mean=model.spec.mean,
                                std=model.spec.std, rng=rng, augment_patches=False)
        r = train_segmentation_epoch(model, batches, opt, DiceBCELoss(), "cpu")
        assert r["steps"] == 8
        losses.append(r["loss"])
    after = evaluate_vessels(model, images, mean=model.spec.mean, std=model.spec.std)
    assert losses[-1] < 0.5 * losses[0], losses
    assert after["dice"] > 0.6 > before["dice"], (before, after)
    assert after["auc"] > 0.95


def test_train_segmentation_epoch_rejects_empty_batches():
    model = _model()
    with pytest.raises(ValueError, match="empty"):
        train_segmentation_epoch(model, [], torch.optim.SGD(model.parameters(), lr=0.1), DiceBCELoss(), "cpu")


def test_predict_image_pads_and_crops_odd_sizes():
    model = _model().eval()
    img = np.random.default_rng(0).integers(0, 255, (45, 70, 3), dtype=np.uint8)
    prob = predict_image(model, img, mean=model.spec.mean, std=model.spec.std)
    assert prob.shape == (45, 70) and prob.dtype == np.float32 and 0 <= prob.min() and prob.max() <= 1
    # the result for the top-left 32 x 64 block of a padded 64 x 96 input is the same computation
    padded = np.pad(img, ((0, 19), (0, 26), (0, 0)), mode="reflect")
    full = predict_image(model, padded, mean=model.spec.mean, std=model.spec.std)
    np.testing.assert_allclose(prob, full[:45, :70], atol=1e-5)
