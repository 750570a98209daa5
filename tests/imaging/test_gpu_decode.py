"""The batched (nvJPEG) decoder of ``preprocess.decode_device: cuda``, run here with torchvision's CPU decode_jpeg
(``device="cpu"``): same images as the CPU path within a grey level or two, same geometry, the same refusal
reasons for bad files, per-image CPU fallback that is logged, and the preprocess / label step-1 batch functions
wired to it (their device picker monkeypatched to "cpu"). The GPU numbers: benchmarks/bench_gpu_decode.py."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pytest

pytest.importorskip("torchvision")

from dr_ray.config import Config, PreprocessConfig, config_hash, load_config  # noqa: E402
from dr_ray.imaging import ImageDecodeError, decode, decode_png, preprocess_decoded, preprocess_image  # noqa: E402
from dr_ray.io import columns as C  # noqa: E402
from dr_ray.pipelines import gpu_decode  # noqa: E402
from dr_ray.testing import encode_jpeg, make_bad_files, make_fundus  # noqa: E402

LIMITS = {"max_pixels": 120_000_000, "min_side": 64}
TOLERANCE = 2.0  # mean absolute difference to the CPU decode, grey levels


def _png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


def _cpu(data: bytes, target: int | None, reduced: bool = True):
    """What dr_ray.imaging.decode gives: (image, factor, header), or the ImageDecodeError it raises."""
    try:
        return decode(data, target=target, reduced=reduced, **LIMITS)
    except ImageDecodeError as e:
        return e


def _assert_like_cpu(got, want, what: str) -> None:
    if isinstance(want, ImageDecodeError):
        assert isinstance(got, ImageDecodeError) and str(got) == str(want), (what, got, want)
        return
    image, factor, header = got
    assert not isinstance(got, ImageDecodeError), (what, got)
    assert (factor, header) == want[1:], what
    assert image.shape == want[0].shape and image.dtype == np.uint8, (what, image.shape, want[0].shape)
    diff = np.abs(image.astype(np.int16) - want[0]).mean()
    assert diff < TOLERANCE, (what, diff)


@pytest.fixture(scope="module")
def synthetic_jpegs() -> list[bytes]:
    """EyePACS-like frames whose reduction is 1, 2, 4 and 8 at target 128, one with odd sides (ceil sizes)."""
    sizes = [(600, 400), (480, 300), (1001, 667), (1536, 1024)]
    return [encode_jpeg(make_fundus(seed=40 + i, width=w, height=h, style="eyepacs").image, 90)
            for i, (w, h) in enumerate(sizes)]


@pytest.mark.parametrize("target,reduced", [(128, True), (None, True), (128, False)])
def test_batched_decode_matches_cpu_decode_on_synthetic_jpegs(synthetic_jpegs, target, reduced):
    got, fallback = gpu_decode.decode_batch_report(synthetic_jpegs, target=target, reduced=reduced, device="cpu",
                                                   **LIMITS)
    assert fallback == {} and len(got) == len(synthetic_jpegs)
    factors = []
    for i, (data, g) in enumerate(zip(synthetic_jpegs, got)):
        _assert_like_cpu(g, _cpu(data, target, reduced), f"synthetic {i}")
        factors.append(g[1])
    if target is not None and reduced:
        assert factors == [2, 2, 4, 8]  # min side 400/2, 300/2, 667/4 (ceil 167), 1024/8 >= 128


@pytest.mark.shared_data
def test_batched_decode_matches_cpu_decode_on_real_eyepacs(eyepacs_paths):
    blobs = [p.read_bytes() for p in eyepacs_paths]
    got, fallback = gpu_decode.decode_batch_report(blobs, target=512, reduced=True, device="cpu", **LIMITS)
    assert fallback == {}
    for p, data, g in zip(eyepacs_paths, blobs, got):
        assert g[1] == 4, p.name  # 2592 / 4 = 648 >= 512
        _assert_like_cpu(g, _cpu(data, 512), p.name)


@pytest.mark.shared_data
def test_real_eyepacs_preprocessed_after_the_batched_decode_matches_the_cpu_chain(eyepacs_paths):
    """The whole chain at the default 512 px: the FOV within 0.5% of the radius, same gradable flag, sharpness
    within 5%, images within 3 grey levels (the bound the reduced-vs-naive decode test uses)."""
    cfg = PreprocessConfig()
    blobs = [p.read_bytes() for p in eyepacs_paths]
    decoded = gpu_decode.decode_batch(blobs, target=cfg.size, reduced=True, device="cpu", **LIMITS)
    for p, data, d in zip(eyepacs_paths, blobs, decoded):
        a, b = preprocess_decoded(*d, cfg), preprocess_image(data, cfg)
        assert np.hypot(a.fov.cx - b.fov.cx, a.fov.cy - b.fov.cy) < 0.005 * b.fov.radius, p.name
        assert abs(a.fov.radius - b.fov.radius) < 0.005 * b.fov.radius, p.name
        assert a.gradable == b.gradable and abs(a.quality.sharpness / b.quality.sharpness - 1) < 0.05, p.name
        assert np.abs(a.image.astype(np.int16) - b.image).mean() < 3.0, p.name


def test_mixed_batch_png_falls_back_and_bad_files_keep_their_reasons(tmp_path, synthetic_jpegs, caplog):
    bad = make_bad_files(tmp_path)
    png = _png(make_fundus(seed=3, width=400, height=300, style="eyepacs").image)
    names = ["good_0", "png", "truncated_jpeg", "good_1", "zero_byte", "not_an_image", "grayscale",
             "decompression_bomb", "tiny_1x1", "all_black"]
    files = {"good_0": synthetic_jpegs[0], "good_1": synthetic_jpegs[2], "png": png}
    blobs = [files[n] if n in files else bad[n].read_bytes() for n in names]
    with caplog.at_level(logging.WARNING, logger=gpu_decode.__name__):
        got, fallback = gpu_decode.decode_batch_report(blobs, target=128, reduced=True, device="cpu", **LIMITS)
    assert len(got) == len(blobs)  # rows in = rows out, in order
    for n, data, g in zip(names, blobs, got):
        _assert_like_cpu(g, _cpu(data, 128), n)
    assert fallback == {names.index("png"): "not a JPEG (PNG)"}  # good JPEGs and all_black went through decode_jpeg
    np.testing.assert_array_equal(got[names.index("png")][0], _cpu(png, 128)[0])  # the CPU decode itself
    assert str(got[names.index("zero_byte")]) == "empty file (0 bytes)"
    assert "truncated JPEG" in str(got[names.index("truncated_jpeg")])
    assert [r.getMessage() for r in caplog.records] == [
        "batched JPEG decode on cpu: 1 of 10 images decoded on CPU instead (1 x not a JPEG (PNG))"]


def test_jpegs_go_through_one_batched_decode_jpeg_call(monkeypatch, synthetic_jpegs, caplog):
    import torchvision.io

    real, calls = torchvision.io.decode_jpeg, []

    def counting(inputs, **kw):
        calls.append(len(inputs))
        return real(inputs, **kw)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", counting)
    with caplog.at_level(logging.WARNING, logger=gpu_decode.__name__):
        got = gpu_decode.decode_batch(synthetic_jpegs + [_png(np.full((80, 80, 3), 90, np.uint8))], target=128,
                                      reduced=True, device="cpu", **LIMITS)
    assert calls == [len(synthetic_jpegs)] and len(got) == len(synthetic_jpegs) + 1


def test_an_image_decode_jpeg_refuses_falls_back_to_cpu_and_is_logged(monkeypatch, synthetic_jpegs, caplog):
    import torchvision.io

    real, calls = torchvision.io.decode_jpeg, []
    refused = synthetic_jpegs[1]

    def flaky(inputs, **kw):
        calls.append(len(inputs))
        if len(inputs) > 1 or bytes(inputs[0].numpy()) == refused:
            raise RuntimeError("nvjpegDecode failed: 6 (simulated)")
        return real(inputs, **kw)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", flaky)
    with caplog.at_level(logging.WARNING, logger=gpu_decode.__name__):
        got, fallback = gpu_decode.decode_batch_report(synthetic_jpegs, target=128, reduced=True, device="cpu",
                                                       **LIMITS)
    assert calls == [len(synthetic_jpegs)] + [1] * len(synthetic_jpegs)  # the batch, then one by one
    assert fallback == {1: "decode_jpeg failed (RuntimeError: nvjpegDecode failed: 6 (simulated))"}
    np.testing.assert_array_equal(got[1][0], _cpu(refused, 128)[0])  # decoded by the CPU path
    for i, data in enumerate(synthetic_jpegs):
        _assert_like_cpu(got[i], _cpu(data, 128), f"synthetic {i}")
    (msg,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "1 of 4 images decoded on CPU instead (1 x decode_jpeg failed (RuntimeError: nvjpegDecode" in msg
    assert "the batched decode_jpeg call failed (RuntimeError: nvjpegDecode failed: 6 (simulated))" in msg


def test_a_decode_that_does_not_match_the_header_falls_back(monkeypatch, synthetic_jpegs):
    import torchvision.io

    real = torchvision.io.decode_jpeg
    monkeypatch.setattr(torchvision.io, "decode_jpeg", lambda inputs, **kw: [t[:, 1:] for t in real(inputs, **kw)])
    got, fallback = gpu_decode.decode_batch_report(synthetic_jpegs[:1], target=128, reduced=True, device="cpu",
                                                   **LIMITS)
    assert list(fallback) == [0] and "device resize / copy failed (ValueError: decode_jpeg gave" in fallback[0]
    np.testing.assert_array_equal(got[0][0], _cpu(synthetic_jpegs[0], 128)[0])


# --- the batch functions of the preprocess stage and of `dr-ray label` step 1 ------------------------------------

@pytest.fixture(scope="module")
def catalog_batch(tmp_path_factory) -> pa.Table:
    """Catalog rows: 4 good JPEGs, a PNG, every bad-file kind (missing file included)."""
    root = tmp_path_factory.mktemp("gpu_decode_batch")
    paths = {f"good_{i}": root / f"good_{i}.jpeg" for i in range(4)}
    for i, p in enumerate(paths.values()):
        p.write_bytes(encode_jpeg(make_fundus(seed=60 + i, width=900, height=600, style="eyepacs").image, 90))
    paths["png"] = root / "frame.png"
    paths["png"].write_bytes(_png(make_fundus(seed=70, width=450, height=300, style="eyepacs").image))
    paths.update(make_bad_files(root))
    rows = [{C.IMAGE_ID: f"t/{name}", C.PATIENT_ID: f"t/p{i}", C.EYE: "left", C.DATASET: "eyepacs", C.PATH: str(p),
             C.GRADE: i % 5, C.REFERABLE: i % 5 >= 2, C.FOLD: i % 2} for i, (name, p) in enumerate(paths.items())]
    return pa.Table.from_pylist(rows, schema=C.CATALOG_SCHEMA)


def _cfgs(**kw) -> tuple[PreprocessConfig, PreprocessConfig]:
    cpu = PreprocessConfig(size=128, **kw)
    return cpu, PreprocessConfig(size=128, decode_device="cuda", decode_gpus_per_task=0.5, **kw)


def _assert_same_rows(got: pa.Table, want: pa.Table, cfg: PreprocessConfig) -> None:
    """``got`` (decode_device cuda) has ``want``'s rows (decode_device cpu): same ids, statuses, reasons, decode
    scales and source sizes, the FOV within half a decoded pixel, and each image exactly what the chain after the
    decode (:func:`preprocess_decoded`) makes of the batched decoder's frame: only the decoder differs."""
    assert got.num_rows == want.num_rows and got.schema == want.schema
    for a, b in zip(got.to_pylist(), want.to_pylist()):
        assert (a[C.IMAGE_ID], a[C.STATUS], a[C.ERROR]) == (b[C.IMAGE_ID], b[C.STATUS], b[C.ERROR])
        if a[C.STATUS] != C.STATUS_OK:
            continue
        same = (C.DECODE_SCALE, C.ORIG_WIDTH, C.ORIG_HEIGHT, C.SIZE, C.GRADABLE)
        assert [a[k] for k in same] == [b[k] for k in same], a[C.IMAGE_ID]
        half_px = 0.5 * a[C.DECODE_SCALE]
        assert max(abs(a[k] - b[k]) for k in (C.FOV_CX, C.FOV_CY, C.FOV_RADIUS)) < half_px, a[C.IMAGE_ID]
        data = Path(a[C.PATH]).read_bytes()
        (d,) = gpu_decode.decode_batch([data], target=cfg.size, reduced=cfg.reduced_decode, device="cpu", **LIMITS)
        np.testing.assert_array_equal(decode_png(a[C.IMAGE_PNG]), preprocess_decoded(*d, cfg).image)
        # vs the CPU chain: a sub-pixel FOV difference can move the integer crop box by one decoded pixel, which
        # CLAHE amplifies on these small noisy frames (real EyePACS at 512 px: see the shared-data test below)
        diff = np.abs(decode_png(a[C.IMAGE_PNG]).astype(np.int16) - decode_png(b[C.IMAGE_PNG])).mean()
        assert diff < 8.0, (a[C.IMAGE_ID], diff)


def test_preprocess_batch_with_cuda_decode_gives_the_cpu_rows(monkeypatch, catalog_batch):
    from dr_ray.pipelines.preprocess import preprocess_batch

    monkeypatch.setattr(gpu_decode, "select_device", lambda setting: "cpu")
    cpu, cuda = _cfgs()
    want = preprocess_batch(catalog_batch, cfg=cpu, cfg_hash="h")
    got = preprocess_batch(catalog_batch, cfg=cuda, cfg_hash="h")
    _assert_same_rows(got, want, cuda)
    status = dict(zip(got.column(C.IMAGE_ID).to_pylist(), got.column(C.STATUS).to_pylist()))
    assert [k for k, s in status.items() if s == C.STATUS_OK] == ["t/good_0", "t/good_1", "t/good_2", "t/good_3",
                                                                   "t/png"]
    errors = [e for e in got.column(C.ERROR).to_pylist() if e]
    assert any(e.endswith(": file not found") for e in errors) and any("no field of view" in e for e in errors)


def test_label_step_1_with_cuda_decode_gives_the_cpu_rows_and_arrays(monkeypatch, catalog_batch):
    from dr_ray.pipelines.label_steps import IMAGE_ARRAY, STAGES, TODO, label_preprocess_batch

    monkeypatch.setattr(gpu_decode, "select_device", lambda setting: "cpu")
    batch = catalog_batch
    for s in STAGES:
        batch = batch.append_column(TODO[s], pa.array([True] * batch.num_rows, pa.bool_()))
    cpu, cuda = _cfgs()
    want = label_preprocess_batch(batch, cfg=cpu, cfg_hash="h")
    got = label_preprocess_batch(batch, cfg=cuda, cfg_hash="h")
    cols = list(C.PREPROCESS_SCHEMA.names)
    _assert_same_rows(got.select(cols), want.select(cols), cuda)
    for s in STAGES:
        assert got.column(TODO[s]).to_pylist() == want.column(TODO[s]).to_pylist()
    images = got.column(IMAGE_ARRAY).combine_chunks().to_numpy()  # (n, 128, 128, 3) uint8; zeros where quarantined
    assert images.shape == (batch.num_rows, 128, 128, 3) and images.dtype == np.uint8
    for img, png in zip(images, got.column(C.IMAGE_PNG).to_pylist()):
        np.testing.assert_array_equal(img, decode_png(png) if png is not None else np.zeros_like(img))


def test_cuda_decode_without_a_cuda_device_fails_clearly(monkeypatch, catalog_batch):
    import torch

    from dr_ray.pipelines.label_steps import STAGES, TODO, label_preprocess_batch
    from dr_ray.pipelines.preprocess import preprocess_batch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _, cuda = _cfgs()
    with pytest.raises(RuntimeError, match=r"preprocess\.decode_device=cuda, but this process sees no CUDA device"):
        preprocess_batch(catalog_batch, cfg=cuda, cfg_hash="h")
    batch = catalog_batch
    for s in STAGES:
        batch = batch.append_column(TODO[s], pa.array([True] * batch.num_rows, pa.bool_()))
    with pytest.raises(RuntimeError, match=r"preprocess\.decode_gpus_per_task > 0"):
        label_preprocess_batch(batch, cfg=cuda, cfg_hash="h")


class _RecordingDataset:
    """Stands in for a Ray dataset: records each map_batches call's function and keyword arguments."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, dict]] = []

    def map_batches(self, fn, **kw):
        self.calls.append((fn, kw))
        return self


@pytest.mark.parametrize("device,gpus", [("cpu", None), ("cuda", 0.25)])
def test_the_decode_tasks_ask_ray_for_a_gpu_share_only_with_cuda(device, gpus):
    pytest.importorskip("ray")
    from dr_ray.pipelines.label_steps import PRE, label_preprocess_batch, build_label_pipeline
    from dr_ray.pipelines.preprocess import build_preprocess_pipeline, preprocess_batch

    sets = [f"preprocess.decode_device={device}"] + ([f"preprocess.decode_gpus_per_task={gpus}"] if gpus else [])
    cfg = load_config(None, sets)
    ds = _RecordingDataset()
    build_preprocess_pipeline(ds, cfg)
    hashes = {PRE: config_hash(cfg.preprocess), "vessels": "v", "pseudo_labels": "p", "vessel_model": "vm",
              "lesion_model": "lm"}
    build_label_pipeline(ds, cfg, hashes=hashes)
    steps = {fn: kw for fn, kw in ds.calls if fn in (preprocess_batch, label_preprocess_batch)}
    assert set(steps) == {preprocess_batch, label_preprocess_batch}
    for kw in steps.values():
        assert kw.get("num_gpus") == gpus and kw["num_cpus"] == cfg.ray.cpus_per_task
    assert Config().preprocess.decode_device == "cpu"


def test_preprocess_hash_ignores_the_decode_resources_and_keeps_cpu_hashes():
    """decode_gpus_per_task is a resource (resume must not be refused over it); decode_device=cpu hashes as the
    settings did before the switch existed; cuda changes pixels, so it changes the hash."""
    import dataclasses
    import hashlib
    import json

    from dr_ray.config import Config, to_dict
    from dr_ray.pipelines.preprocess import preprocess_hash

    pre = Config().preprocess
    before = {k: v for k, v in to_dict(pre).items() if k not in ("decode_device", "decode_gpus_per_task")}
    assert preprocess_hash(pre) == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
    cuda = dataclasses.replace(pre, decode_device="cuda", decode_gpus_per_task=0.25)
    assert preprocess_hash(cuda) == preprocess_hash(dataclasses.replace(cuda, decode_gpus_per_task=1.0))
    assert preprocess_hash(cuda) != preprocess_hash(pre)
    assert preprocess_hash(dataclasses.replace(pre, size=256)) != preprocess_hash(pre)
