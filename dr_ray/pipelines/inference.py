"""What the model stages (vessels, pseudo labels) share: a model actor base class for Ray Data actor pools, and
the run logic "preprocessed shards -> model stage -> Parquet" with resume, refusal of mixed settings and
reconciled counts."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dr_ray.config import Config, dump_yaml
from dr_ray.imaging import ImageDecodeError, decode_png
from dr_ray.io import columns as C
from dr_ray.io import fs
from dr_ray.pipelines.reconcile import StageSummary, check_resumable, finish_stage
from dr_ray.pipelines.runtime import init_ray, stage_dir
from dr_ray.pipelines.scan import scan_outputs

log = logging.getLogger(__name__)

# Columns a model stage reads from the preprocess shards (the image bytes only for the rows to do).
INPUT_COLUMNS = [*C.CATALOG_COLUMNS, C.IMAGE_PNG, C.SIZE]


class ModelActor:
    """Base of the Ray Data model actors: loads a saved model directory once (GPU when asked, bf16 autocast
    and channels_last there), decodes a batch's PNGs on ``threads`` threads (PNG decode and OpenCV release the
    GIL, so they keep the model fed), and runs whole batches under ``torch.inference_mode``.

    Subclasses implement :meth:`check_model` and ``__call__``; :meth:`transform` turns a decoded image into the
    model input (after the resize to ``input_size``).
    """

    stage = "model"

    def __init__(self, model_dir: str, *, input_size: int = 0, use_gpu: bool = False, amp_bf16: bool = True,
                 threads: int = 1, model_hash: str = "") -> None:
        import torch

        from dr_ray.models import load_model_dir

        if use_gpu and not torch.cuda.is_available():
            raise RuntimeError(f"{self.stage}.gpus_per_actor > 0 but this actor sees no CUDA device "
                               "(CUDA_VISIBLE_DEVICES is empty or the torch build has no CUDA)")
        if not use_gpu:
            torch.set_num_threads(max(1, threads))
        self.torch = torch
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.amp = bool(amp_bf16 and use_gpu)
        model, meta = load_model_dir(model_dir, map_location=self.device)
        if self.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        self.model = model.eval()
        self.meta = meta
        spec = meta["spec"]
        if spec["in_channels"] != 3 or spec["output"] != "sigmoid":
            raise ValueError(f"{model_dir}: expected an RGB-input model with sigmoid outputs, got "
                             f"{spec['in_channels']} input channels and {spec['output']!r} outputs")
        self.check_model(model_dir, meta)
        shape = (1, 3, 1, 1)
        self.mean = torch.tensor(spec["mean"], dtype=torch.float32, device=self.device).view(shape)
        self.std = torch.tensor(spec["std"], dtype=torch.float32, device=self.device).view(shape)
        self.input_size = int(input_size)
        self.model_hash = model_hash
        self.pool = ThreadPoolExecutor(max_workers=max(1, threads))

    def check_model(self, model_dir: str, meta: dict) -> None:
        """Raise ValueError when the model does not fit the stage (output channels, metadata)."""

    def transform(self, image: np.ndarray) -> np.ndarray:
        """Decoded (and resized) RGB image -> model input image (H, W, 3) uint8. Identity by default."""
        return image

    def forward(self, images: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 -> (B, K, H, W) uint8 probabilities (p * 255, rounded)."""
        torch = self.torch
        import torch.nn.functional as F

        x = torch.from_numpy(images).to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        x = (x / 255.0 - self.mean) / self.std
        h, w = x.shape[-2:]
        ph, pw = -h % 32, -w % 32  # the encoders' stride
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "constant")
        if self.device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.amp:
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    logits = self.model(x)
            else:
                logits = self.model(x)
            prob = torch.sigmoid(logits.float())[:, :, :h, :w]
            return (prob * 255.0).round().to(torch.uint8).cpu().numpy()

    def decode_inputs(self, batch: pa.Table) -> tuple[list[np.ndarray | None], list[str], list[str | None]]:
        """Model inputs of a batch (None for a row that cannot be decoded), statuses and errors, row for row."""
        pngs = batch.column(C.IMAGE_PNG).to_pylist()
        ids = batch.column(C.IMAGE_ID).to_pylist()
        errors: list[str | None] = [None] * batch.num_rows

        def decode(i: int) -> np.ndarray | None:
            try:
                if pngs[i] is None:
                    raise ImageDecodeError("no processed image in the preprocess row")
                return decode_png(pngs[i])
            except (ImageDecodeError, ValueError) as e:
                errors[i] = f"{ids[i]}: {e}"
                return None

        images = list(self.pool.map(decode, range(batch.num_rows)))
        return self.prepare_inputs(images, batch.column(C.SIZE).to_pylist(), ids, errors=errors)

    def prepare_inputs(self, images: list[np.ndarray | None], sizes: list[int], ids: list[str], *,
                       errors: list[str | None] | None = None
                       ) -> tuple[list[np.ndarray | None], list[str], list[str | None]]:
        """Stored images (each (size, size, 3) uint8 RGB, or None with its reason in ``errors``) -> model inputs
        (checked, resized to ``input_size``, :meth:`transform`-ed; on the actor's threads), statuses, errors.

        ``dr-ray label`` calls this with the preprocessed arrays; :meth:`decode_inputs` with decoded PNGs."""
        import cv2

        n = len(images)
        errors = list(errors) if errors is not None else [None] * n
        status = [C.STATUS_OK] * n

        def prepare(i: int) -> np.ndarray | None:
            img = images[i]
            try:
                if img is None:
                    raise ImageDecodeError(errors[i] or f"{ids[i]}: no processed image")
                if img.ndim != 3 or img.shape[2] != 3 or img.shape[:2] != (sizes[i], sizes[i]):
                    raise ImageDecodeError(f"{ids[i]}: processed image has shape {img.shape}, expected "
                                           f"({sizes[i]}, {sizes[i]}, 3)")
            except ImageDecodeError as e:
                status[i], errors[i] = C.STATUS_QUARANTINED, str(e)
                return None
            if self.input_size and self.input_size != img.shape[0]:
                img = cv2.resize(img, (self.input_size, self.input_size), interpolation=cv2.INTER_AREA)
            return self.transform(img)

        return list(self.pool.map(prepare, range(n))), status, errors

    def predict(self, inputs: list[np.ndarray | None]) -> list[np.ndarray | None]:
        """(K, h, w) uint8 probabilities per decodable input (None elsewhere), batched by image shape."""
        by_shape: dict[tuple, list[int]] = {}
        for i, img in enumerate(inputs):
            if img is not None:
                by_shape.setdefault(img.shape, []).append(i)
        out: list[np.ndarray | None] = [None] * len(inputs)
        for rows in by_shape.values():
            for i, p in zip(rows, self.forward(np.stack([inputs[i] for i in rows]))):
                out[i] = p
        return out


def map_actor_pool(ds, actor_cls: type, section, *, constructor_kwargs: dict, ray_cfg=None):
    """``ds.map_batches`` over an actor pool of ``actor_cls`` sized by a config ``section`` (its ``batch_size``,
    ``actors``, ``gpus_per_actor``, ``cpus_per_actor``). With ``ray_cfg`` (the ``ray`` section) each actor call
    is retried at most ``ray.max_task_retries`` times (Ray Data's default: forever)."""
    import ray

    from dr_ray.pipelines.commit_stream import actor_retry_args

    return ds.map_batches(
        actor_cls,
        batch_format="pyarrow",
        batch_size=section.batch_size,
        compute=ray.data.ActorPoolStrategy(size=section.actors),
        num_gpus=section.gpus_per_actor,
        num_cpus=section.cpus_per_actor,
        fn_constructor_kwargs=constructor_kwargs,
        **(actor_retry_args(ray_cfg) if ray_cfg is not None else {}),
    )


def map_model_actor(ds, actor_cls: type, section, *, model_hash: str, ray_cfg=None, **constructor_kwargs):
    """:func:`map_actor_pool` for a :class:`ModelActor` of a stage's config ``section`` (also its ``model_dir``
    and ``amp_bf16``); extra keyword arguments go to the actor's constructor."""
    return map_actor_pool(ds, actor_cls, section, ray_cfg=ray_cfg, constructor_kwargs={
        "model_dir": section.model_dir, "use_gpu": section.gpus_per_actor > 0, "amp_bf16": section.amp_bf16,
        "threads": int(section.cpus_per_actor), "model_hash": model_hash, **constructor_kwargs})


def read_input_index(input_dir: str) -> pa.Table:
    """Catalog columns of the preprocess stage's ``status=ok`` rows (no image bytes): a model stage's input rows."""
    from dr_ray.pipelines.scan import read_committed

    ok_dir = fs.join(input_dir, f"{C.STATUS}={C.STATUS_OK}")
    if not fs.is_dir(ok_dir):
        raise FileNotFoundError(f"{ok_dir} not found: run `dr-ray preprocess` first, or point the stage's input "
                                f"to a preprocess stage folder")
    # committed shards only, one row per image id (dr_ray.pipelines.commit)
    return read_committed(input_dir, list(C.CATALOG_COLUMNS)).cast(C.CATALOG_SCHEMA)


def preprocess_fov_margin(input_dir: str, key: str) -> float:
    """``preprocess.fov_margin`` of the run that wrote ``input_dir`` (its saved config.yaml): with it, the FOV of
    a stored image is ``circle_mask(size, margin=...)``."""
    import yaml

    path = fs.join(input_dir, "config.yaml")
    try:
        tree = yaml.safe_load(fs.read_bytes(path))
        return float(tree["preprocess"]["fov_margin"])
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: run `dr-ray preprocess` first, or set {key} to a folder "
                                f"written by it") from None
    except (KeyError, TypeError, ValueError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: cannot read preprocess.fov_margin ({type(e).__name__}: {e})") from e


def check_model_dir(model_dir: str, key: str, how: str) -> str:
    """The model directory's content hash; clear errors for an empty setting or a URI."""
    from dr_ray.models import artifact_hash

    if not model_dir:
        raise ValueError(f"{key} is empty: {how}")
    if fs.is_uri(model_dir):
        raise ValueError(f"{key}={model_dir!r}: the model is loaded from a local (or mounted) path")
    return artifact_hash(model_dir)


def run_model_stage(cfg: Config, *, stage: str, input_dir: str, cfg_hash: str, what: str,
                    build: Callable) -> StageSummary:
    """Preprocessed rows not done yet -> ``build(ds)`` -> commits under ``<output.dir>/<stage>/status=*/`` (one
    writer: :class:`~dr_ray.pipelines.lease.StageLease`); refuses a rerun with other settings (``what`` names
    them) or other input rows before writing anything; returns the reconciled summary."""
    import ray

    from dr_ray.pipelines.commit_stream import bounded_data_context, run_commits, with_context
    from dr_ray.pipelines.lease import StageLease
    from dr_ray.pipelines.runtime import check_shared_storage
    from dr_ray.pipelines.scan import committed_paths

    inputs = read_input_index(input_dir)
    out = stage_dir(cfg.output.dir, stage)
    with StageLease([out], ttl_s=cfg.output.lease_ttl_s) as lease:
        before = scan_outputs(out, run_id=lease.run_id)
        check_resumable(before.table, cfg_hash, out, cfg.output.resume, what=what, catalog=inputs)
        fs.makedirs(out)
        fs.write_text(fs.join(out, "config.yaml"), dump_yaml(cfg))
        done = before.ids()
        todo = inputs.filter(pc.invert(pc.is_in(inputs.column(C.IMAGE_ID), value_set=done)))
        already = inputs.num_rows - todo.num_rows
        log.info("%s: %d preprocessed images in %s, %d done by earlier runs, %d to process -> %s (run %s)",
                 stage, inputs.num_rows, input_dir, already, todo.num_rows, out, lease.run_id)

        elapsed = 0.0
        if todo.num_rows:
            from ray.data.expressions import col

            init_ray(cfg.ray)
            check_shared_storage(out)
            t0 = time.perf_counter()
            # no isolated second pass here yet: a block whose actor calls all failed fails the job (bounded)
            with with_context(bounded_data_context(cfg.ray, drop_failed_blocks=False)):
                # Blocks of at most ray.rows_per_file rows: Ray Data would otherwise merge small shards into one
                # read task, and a crash would then lose (and a resume redo) everything that task had done.
                ds = ray.data.read_parquet(committed_paths(input_dir), partitioning=None,
                                           override_num_blocks=max(1, -(-inputs.num_rows // cfg.ray.rows_per_file)))
                ds = ds.select_columns(INPUT_COLUMNS)
                # the input index is deduplicated; the shards may hold an id twice only before their stage finished
                ds = ds.filter(expr=col(C.IMAGE_ID).is_in(todo.column(C.IMAGE_ID).to_pylist()))
                ds = build(ds)
                run_commits(ds, out, run_id=lease.run_id, rows_per_file=cfg.ray.rows_per_file, ray_cfg=cfg.ray)
            elapsed = time.perf_counter() - t0

        return finish_stage(stage, inputs, before, out, label_problems=0, already_done=already,
                            processed_now=todo.num_rows, run_seconds=elapsed, run_id=lease.run_id)


__all__ = ["INPUT_COLUMNS", "ModelActor", "check_model_dir", "map_actor_pool", "map_model_actor",
           "preprocess_fov_margin",
           "read_input_index", "run_model_stage"]
