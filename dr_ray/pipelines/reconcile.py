"""Resume checks and the end-of-run reconciliation every batch stage shares: refuse a resume over other settings
or a changed catalog (:func:`check_resumable`), release rows quarantined for a transient reason
(:func:`release_retryable`), and at the end repair duplicates, count what the stage folder holds against its input
(:class:`StageSummary`: written + quarantined = catalog rows) and write ``quarantine.csv`` / ``summary.json``
(:func:`finish_stage`)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from dr_ray.io import columns as C
from dr_ray.io import fs
from dr_ray.pipelines.commit import recommit_without
from dr_ray.pipelines.scan import OutputScan, dedupe_latest, scan_outputs
from dr_ray.pipelines.stage_layout import parse_part_name

log = logging.getLogger(__name__)


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
    duplicates_repaired: int = 0  # rows of an image id committed twice (e.g. a retried task) removed at the end
    retried: int = 0  # quarantined-for-I/O rows of earlier runs processed again by this run
    catalog_hash: str = ""  # hash of the input rows' ids, patients, grades, folds, paths

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
            f"  duplicates by image id {self.duplicates} (repaired {self.duplicates_repaired}), quarantined"
            f" rows retried {self.retried}",
            *(f"  quarantined: {n} x {reason}" for reason, n in sorted(self.quarantine_reasons.items())),
            f"  output: {self.output}",
        ]


def reason_kind(error: str) -> str:
    """The reason part of an error string "<path>: <reason> (...)" with details stripped, for grouping."""
    reason = error.split(": ", 1)[1] if ": " in error else error
    return reason.split(" (")[0].split(":")[0].strip()


def summarise(stage: str, catalog: pa.Table, scan: OutputScan, *, label_problems: int, already_done: int,
              processed_now: int, output: str, run_seconds: float = 0.0,
              removed_incomplete: int | None = None, duplicates_repaired: int = 0) -> StageSummary:
    """Counts of ``scan`` against ``catalog``: written/quarantined count image ids (the latest commit of
    each), ``duplicates`` the rows beyond one per image id. ``removed_incomplete`` defaults to the shards
    ``scan`` removed."""
    ids = catalog.column(C.IMAGE_ID)
    out = scan.unique()
    in_cat = pc.is_in(out.column(C.IMAGE_ID), value_set=ids.combine_chunks())
    inside = out.filter(in_cat)
    ok = inside.filter(pc.equal(inside.column(C.STATUS), C.STATUS_OK)).num_rows
    bad = inside.filter(pc.equal(inside.column(C.STATUS), C.STATUS_QUARANTINED))
    reasons: dict[str, int] = {}
    for err in bad.column(C.ERROR).to_pylist():
        k = reason_kind(err or "no reason recorded")
        reasons[k] = reasons.get(k, 0) + 1
    return StageSummary(
        stage=stage, catalog_rows=catalog.num_rows, label_problems=label_problems, already_done=already_done,
        processed_now=processed_now, written=ok, quarantined=bad.num_rows, duplicates=scan.duplicates,
        not_in_catalog=out.num_rows - inside.num_rows,
        removed_incomplete=len(scan.removed_incomplete) if removed_incomplete is None else removed_incomplete,
        output=output, quarantine_reasons=reasons, run_seconds=run_seconds,
        duplicates_repaired=duplicates_repaired,
    )


# Quarantine reasons that say nothing about the image (the storage failed, not the file): a resumed run
# processes such rows again instead of counting them as done. Persistent bad inputs stay quarantined.
RETRYABLE_REASONS = ("cannot read file",)


def is_retryable(error: str | None) -> bool:
    return bool(error) and reason_kind(error) in RETRYABLE_REASONS


# Input columns a stage's rows copy from its input: a resumed run must see the same values for the same ids.
CATALOG_CHECK_COLUMNS = (C.PATIENT_ID, C.GRADE, C.FOLD, C.PATH)


def catalog_hash(catalog: pa.Table) -> str:
    """Hash of a catalog's content: ids, patients, grades, folds, paths (sorted by id), 16 hex digits."""
    import hashlib

    cols = [c for c in (C.IMAGE_ID, *CATALOG_CHECK_COLUMNS) if c in catalog.column_names]
    t = catalog.select(cols).sort_by([(C.IMAGE_ID, "ascending")])
    h = hashlib.sha256()
    for c in cols:
        h.update(json.dumps([c, t.column(c).to_pylist()]).encode())
    return h.hexdigest()[:16]


def check_catalog(scan_table: pa.Table, catalog: pa.Table, out: str) -> None:
    """Refuse a resume whose input rows disagree with the rows already written for the same image ids.

    Row by row, stronger than one hash: any id whose patient, grade, fold or path differs (a changed
    ``data.seed`` moves folds, a corrected grade, a re-rooted dataset) is refused. Rows only ADDED to the
    catalog (new ids, every earlier row unchanged) are accepted and processed; rows removed (a smaller
    ``data.limit``) are counted as ``not_in_catalog``. Adding patients normally re-draws folds, and is then
    refused by the fold check.
    """
    if scan_table.num_rows == 0:
        return
    cols = [c for c in CATALOG_CHECK_COLUMNS if c in catalog.column_names and c in scan_table.column_names
            and scan_table.column(c).null_count < scan_table.num_rows]
    if not cols:
        return
    cat = catalog.select([C.IMAGE_ID, *cols])
    cat = cat.rename_columns([C.IMAGE_ID, *[f"new_{c}" for c in cols]])
    old = dedupe_latest(scan_table).select([C.IMAGE_ID, *cols])
    j = old.join(cat, C.IMAGE_ID, join_type="inner")
    bad_mask = None
    for c in cols:
        a, b = j.column(c).cast(catalog.schema.field(c).type), j.column(f"new_{c}")
        differ = pc.fill_null(pc.not_equal(a, b), True)
        both_null = pc.and_(pc.is_null(a), pc.is_null(b))
        differ = pc.and_(differ, pc.invert(both_null))
        bad_mask = differ if bad_mask is None else pc.or_(bad_mask, differ)
    bad = j.filter(bad_mask)
    if bad.num_rows:
        r = bad.slice(0, 1).to_pylist()[0]
        what = ", ".join(f"{c} {r[c]!r} -> {r['new_' + c]!r}" for c in cols if r[c] != r["new_" + c])
        raise ValueError(
            f"{out}: {bad.num_rows} of {j.num_rows} rows written earlier disagree with the input rows now "
            f"(e.g. {r[C.IMAGE_ID]}: {what}): the catalog changed (data.seed, grades, folds, paths or patients); "
            "a resumed run must see the same catalog; choose a new output.dir")


def check_resumable(scan_table: pa.Table, cfg_hash: str, out: str, resume: bool, *, what: str,
                    catalog: pa.Table | None = None) -> None:
    """Refuse (before anything is written) a run over an output made with other settings, or any run over a
    non-empty output when ``resume`` is false. ``what`` names the settings, e.g. "preprocess settings".
    With ``catalog`` (the stage's input rows), also :func:`check_catalog`."""
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
    if catalog is not None:
        check_catalog(scan_table, catalog, out)


def _drop_rows(out: str, scan_table: pa.Table, drop: dict[str, set[str]], *, run_id: str) -> int:
    """Rewrite the commits holding ``drop`` (file -> ids to remove from it) without those rows. A commit's
    files (one per status) are rewritten together, as one new attempt of the same task key."""
    all_files = sorted(set(scan_table.column("_file").to_pylist()))
    key_of = {f: (parse_part_name(f.rsplit("/", 1)[-1]) or (None,))[0] for f in all_files}
    groups: dict = {}
    for f, ids in drop.items():
        key = key_of.get(f)
        g = ("legacy", f) if key is None else key
        files = [f] if key is None else [x for x in all_files if key_of[x] == key]
        prev = groups.get(g, (files, set()))
        groups[g] = (files, prev[1] | ids)
    dropped = 0
    for g, (files, ids) in groups.items():
        dropped += recommit_without(out, None if isinstance(g, tuple) else g, files, ids, run_id=run_id)
    return dropped


def release_retryable(out: str, scan: OutputScan, *, run_id: str) -> int:
    """Remove the quarantined rows whose reason is transient (``RETRYABLE_REASONS``: the storage failed, not
    the image) from their commits, so this run processes them again. Returns how many."""
    t = scan.unique()
    t = t.filter(pc.equal(t.column(C.STATUS), C.STATUS_QUARANTINED))
    ids = {i for i, e in zip(t.column(C.IMAGE_ID).to_pylist(), t.column(C.ERROR).to_pylist()) if is_retryable(e)}
    if not ids:
        return 0
    drop: dict[str, set[str]] = {}
    for i, f in zip(scan.table.column(C.IMAGE_ID).to_pylist(), scan.table.column("_file").to_pylist()):
        if i in ids:
            drop.setdefault(f, set()).add(i)
    return _drop_rows(out, scan.table, drop, run_id=run_id)


def repair_duplicates(out: str, scan: OutputScan, *, run_id: str) -> int:
    """Keep one row per image id (the latest commit), rewriting the older commits without theirs."""
    if scan.duplicates == 0:
        return 0
    counts = pc.value_counts(scan.table.column(C.IMAGE_ID))
    dup = {d["values"] for d in counts.to_pylist() if d["counts"] > 1}
    log.warning("%s: %d image ids were committed more than once; keeping each one's latest commit", out, len(dup))
    latest = dedupe_latest(scan.table)
    keep_file = dict(zip(latest.column(C.IMAGE_ID).to_pylist(), latest.column("_file").to_pylist()))
    drop: dict[str, set[str]] = {}
    for i, f in zip(scan.table.column(C.IMAGE_ID).to_pylist(), scan.table.column("_file").to_pylist()):
        if i in dup and f != keep_file[i]:
            drop.setdefault(f, set()).add(i)
    return _drop_rows(out, scan.table, drop, run_id=run_id)


def finish_stage(stage: str, catalog: pa.Table, before: OutputScan, out: str, *, label_problems: int,
                 already_done: int, processed_now: int, run_seconds: float, run_id: str | None = None,
                 retried: int = 0) -> StageSummary:
    """Scan what the stage folder holds now (as the lease holder ``run_id``: unfinished commits rolled forward,
    duplicates by image id repaired), write ``quarantine.csv`` and ``summary.json``, and fail unless every
    input row is written or quarantined exactly once."""
    after = scan_outputs(out, run_id=run_id)
    repaired = 0
    if after.duplicates and run_id is not None:
        repaired = repair_duplicates(out, after, run_id=run_id)
        after = scan_outputs(out, run_id=run_id)
    summary = summarise(stage, catalog, after, label_problems=label_problems, already_done=already_done,
                        processed_now=processed_now, output=out, run_seconds=run_seconds,
                        removed_incomplete=len(before.removed_incomplete) + len(after.removed_incomplete),
                        duplicates_repaired=repaired)
    summary.retried = retried
    summary.catalog_hash = catalog_hash(catalog)
    u = after.unique()
    bad = u.filter(pc.equal(u.column(C.STATUS), C.STATUS_QUARANTINED))
    fs.write_csv(fs.join(out, "quarantine.csv"), bad.select([C.IMAGE_ID, C.PATH, C.ERROR]))
    fs.write_text(fs.join(out, "summary.json"), json.dumps(summary.as_dict(), indent=2))
    if not summary.reconciles:
        raise RuntimeError(f"{stage} counts do not reconcile: {summary.as_dict()}")
    return summary
