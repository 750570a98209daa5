"""Ray start-up and the bookkeeping every batch stage shares: stage folders, resume scans, summaries."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dr_ray.config import RayConfig
from dr_ray.io import columns as C
from dr_ray.io import fs

log = logging.getLogger(__name__)


def init_ray(cfg: RayConfig) -> None:
    """Join or start Ray once. Inside `ray job submit` (RAY_ADDRESS set) this joins that cluster."""
    import ray

    if ray.is_initialized():
        return
    kwargs: dict = {"configure_logging": False}
    if cfg.address:
        kwargs["address"] = cfg.address
    elif "RAY_ADDRESS" not in os.environ and cfg.num_cpus:
        kwargs["num_cpus"] = cfg.num_cpus
    ray.init(**kwargs)


def stage_dir(output_dir: str, stage: str) -> str:
    """``<output.dir>/<stage>`` as an absolute local path or a URI."""
    base = output_dir if fs.is_uri(output_dir) else os.path.abspath(output_dir)
    return fs.join(base, stage)


def partition_status(path: str) -> str | None:
    """``.../status=ok/x.parquet`` -> "ok" (hive partition written by ``write_parquet(partition_cols=[STATUS])``)."""
    for part in path.replace("\\", "/").split("/"):
        if part.startswith(f"{C.STATUS}="):
            return part.split("=", 1)[1]
    return None


@dataclass
class OutputScan:
    """What a stage folder already holds: one row per written record (no image bytes)."""

    table: pa.Table  # image_id, status, error, path, config_hash
    removed_incomplete: list[str] = field(default_factory=list)  # unreadable shards (killed writes) that were deleted

    def ids(self) -> pa.Array:
        return self.table.column(C.IMAGE_ID).combine_chunks()


_SCAN_COLUMNS = (C.IMAGE_ID, C.PATH, C.ERROR, C.CONFIG_HASH)


def scan_outputs(stage_path: str, *, remove_incomplete: bool = True) -> OutputScan:
    """Read the id/status columns of every Parquet shard under ``stage_path``.

    A shard that cannot be read (a write killed half-way leaves a file without its footer) holds no
    usable row; it is deleted when ``remove_incomplete`` (so a resumed run redoes its images) and named in
    the log. Files are read one by one so that one bad shard cannot hide the others.
    """
    schema = pa.schema([(C.IMAGE_ID, pa.string()), (C.STATUS, pa.string()), (C.ERROR, pa.string()),
                        (C.PATH, pa.string()), (C.CONFIG_HASH, pa.string())])
    tables, removed = [], []
    filesystem, _ = fs.resolve(stage_path)
    for path in fs.list_files(stage_path, recursive=True):
        if not path.endswith(".parquet"):
            continue
        status = partition_status(path)
        if status is None:
            continue
        _, inner = fs.resolve(path)
        try:
            t = pq.read_table(inner, columns=list(_SCAN_COLUMNS), filesystem=filesystem)
        except (pa.ArrowInvalid, OSError) as e:
            if not remove_incomplete:
                raise
            log.warning("removing unreadable shard %s (%s): its images will be processed again", path, e)
            fs.delete_file(path)
            removed.append(path)
            continue
        t = t.append_column(C.STATUS, pa.array([status] * t.num_rows, pa.string()))
        tables.append(t.select(schema.names).cast(schema))
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    return OutputScan(table=table, removed_incomplete=removed)


@dataclass
class StageSummary:
    """Counts that must reconcile: catalog_rows == written + quarantined, no duplicates."""

    stage: str
    catalog_rows: int
    label_problems: int
    already_done: int  # rows found from earlier runs (resume)
    processed_now: int  # rows handed to Ray in this run
    written: int  # status ok, ids in the catalog (all runs)
    quarantined: int  # status quarantined, ids in the catalog (all runs)
    duplicates: int  # ids present more than once in the output (must be 0)
    not_in_catalog: int  # output rows whose id is not in this catalog (e.g. a smaller --set data.limit)
    removed_incomplete: int  # unreadable shards deleted before this run
    output: str
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    run_seconds: float = 0.0  # wall time of this run's Ray execution (read + process + write), no start-up

    @property
    def reconciles(self) -> bool:
        return self.duplicates == 0 and self.catalog_rows == self.written + self.quarantined

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["reconciles"] = self.reconciles
        return d

    def lines(self) -> list[str]:
        return [
            f"{self.stage}: catalog rows {self.catalog_rows} (label problems {self.label_problems})",
            f"  in: {self.catalog_rows} = written {self.written} + quarantined {self.quarantined}"
            f"  [{'reconciles' if self.reconciles else 'DOES NOT RECONCILE'}]",
            f"  this run: processed {self.processed_now} in {self.run_seconds:.1f} s"
            f" ({self.processed_now / max(self.run_seconds, 1e-9):.1f} images/s), found done from earlier runs"
            f" {self.already_done}, removed incomplete shards {self.removed_incomplete}",
            *(f"  quarantined: {n} x {reason}" for reason, n in sorted(self.quarantine_reasons.items())),
            f"  output: {self.output}",
        ]


def reason_kind(error: str) -> str:
    """The reason part of an error string "<path>: <reason> (...)" with details stripped, for grouping."""
    reason = error.split(": ", 1)[1] if ": " in error else error
    return reason.split(" (")[0].split(":")[0].strip()


def summarise(stage: str, catalog: pa.Table, scan: OutputScan, *, label_problems: int, already_done: int,
              processed_now: int, output: str, run_seconds: float = 0.0,
              removed_incomplete: int | None = None) -> StageSummary:
    """Counts of ``scan`` against ``catalog``. ``removed_incomplete`` defaults to the shards ``scan`` removed."""
    ids = catalog.column(C.IMAGE_ID)
    out = scan.table
    in_cat = pc.is_in(out.column(C.IMAGE_ID), value_set=ids.combine_chunks())
    inside = out.filter(in_cat)
    unique = pc.count_distinct(out.column(C.IMAGE_ID)).as_py() if out.num_rows else 0
    ok = inside.filter(pc.equal(inside.column(C.STATUS), C.STATUS_OK)).num_rows
    bad = inside.filter(pc.equal(inside.column(C.STATUS), C.STATUS_QUARANTINED))
    reasons: dict[str, int] = {}
    for err in bad.column(C.ERROR).to_pylist():
        k = reason_kind(err or "no reason recorded")
        reasons[k] = reasons.get(k, 0) + 1
    return StageSummary(
        stage=stage, catalog_rows=catalog.num_rows, label_problems=label_problems, already_done=already_done,
        processed_now=processed_now, written=ok, quarantined=bad.num_rows, duplicates=out.num_rows - unique,
        not_in_catalog=out.num_rows - inside.num_rows,
        removed_incomplete=len(scan.removed_incomplete) if removed_incomplete is None else removed_incomplete,
        output=output, quarantine_reasons=reasons, run_seconds=run_seconds,
    )


def blocks_of(table: pa.Table, *, max_rows: int, min_blocks: int) -> list[pa.Table]:
    """Split a (metadata) table into blocks: at most ``max_rows`` rows, at least ``min_blocks`` blocks when
    there are enough rows, so small runs still use every CPU and large runs get files of ``max_rows`` rows."""
    n = table.num_rows
    if n == 0:
        return []
    rows = max(1, min(max_rows, -(-n // max(1, min_blocks))))
    return [table.slice(i, rows) for i in range(0, n, rows)]


def check_resumable(scan_table: pa.Table, cfg_hash: str, out: str, resume: bool, *, what: str) -> None:
    """Refuse (before anything is written) a run over an output made with other settings, or any run over a
    non-empty output when ``resume`` is false. ``what`` names the settings, e.g. "preprocess settings"."""
    if scan_table.num_rows == 0:
        return
    if not resume:
        raise FileExistsError(
            f"{out} already holds {scan_table.num_rows} rows and output.resume=false: "
            "choose a new output.dir or delete the old one (rows are never overwritten or duplicated)")
    hashes = set(pc.unique(scan_table.column(C.CONFIG_HASH)).to_pylist())
    if hashes != {cfg_hash}:
        raise ValueError(
            f"{out} holds rows made with other {what} (config hash {sorted(map(str, hashes))}, "
            f"now {cfg_hash}): a resumed run must use the same settings; choose a new output.dir")


def finish_stage(stage: str, catalog: pa.Table, before: OutputScan, out: str, *, label_problems: int,
                 already_done: int, processed_now: int, run_seconds: float) -> StageSummary:
    """Scan what the stage folder holds now, write ``quarantine.csv`` and ``summary.json``, and fail unless
    every input row is written or quarantined exactly once."""
    after = scan_outputs(out)
    summary = summarise(stage, catalog, after, label_problems=label_problems, already_done=already_done,
                        processed_now=processed_now, output=out, run_seconds=run_seconds,
                        removed_incomplete=len(before.removed_incomplete) + len(after.removed_incomplete))
    bad = after.table.filter(pc.equal(after.table.column(C.STATUS), C.STATUS_QUARANTINED))
    fs.write_csv(fs.join(out, "quarantine.csv"), bad.select([C.IMAGE_ID, C.PATH, C.ERROR]))
    fs.write_text(fs.join(out, "summary.json"), json.dumps(summary.as_dict(), indent=2))
    if not summary.reconciles:
        raise RuntimeError(f"{stage} counts do not reconcile: {summary.as_dict()}")
    return summary


def total_cpus() -> int:
    """CPUs of the connected Ray cluster (>= 1)."""
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def training_dir(cfg, name: str, stage: str) -> Path:
    """``<output.dir>/<name>`` for a training stage (created, with the resolved config saved); training writes
    a local model directory, so ``output.dir`` must be a local (or mounted shared) path."""
    from dr_ray.config import dump_yaml

    if fs.is_uri(cfg.output.dir):
        raise ValueError(f"output.dir={cfg.output.dir!r}: {stage} writes a local model directory; "
                         f"use a local (or mounted shared) path")
    out = Path(stage_dir(cfg.output.dir, name))
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_yaml(cfg))
    return out


def export_latest_checkpoint(result, model_dir: Path, *, build: Callable, config: dict, data_hash: str):
    """A Ray Train result's latest checkpoint -> saved model directory ``model_dir``; returns (model, history).

    ``build()`` makes the architecture (without pretrained weights: they come from the checkpoint).
    """
    from dr_ray.models import save_model_dir
    from dr_ray.training.loops import load_training_state

    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {result.path} finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        state, history = load_training_state(d)
    model = build()
    model.load_state_dict(state["model"])
    save_model_dir(model, model_dir, config=config, train_data_hash=data_hash,
                   extra={"epoch": int(state["epoch"]), "metrics": history[-1] if history else {}}, overwrite=True)
    return model, history
