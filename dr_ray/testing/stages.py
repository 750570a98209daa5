"""Reading a stage folder back in tests and benchmarks (local paths)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads

from dr_ray.io import columns as C


def read_stage(stage_dir: str | Path) -> pa.Table:
    """Every shard of a stage folder (both ``status=`` partitions, ``status`` as a column), sorted by image id."""
    stage_dir = Path(stage_dir)
    files = sorted(str(p) for p in stage_dir.glob(f"{C.STATUS}=*/*.parquet"))
    part = pads.partitioning(pa.schema([(C.STATUS, pa.string())]), flavor="hive")
    t = pads.dataset(files, format="parquet", partitioning=part, partition_base_dir=str(stage_dir)).to_table()
    return t.sort_by(C.IMAGE_ID)
