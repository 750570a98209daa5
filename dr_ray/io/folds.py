"""Patient-level stratified K-fold assignment for a catalog table."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sklearn.model_selection import KFold, StratifiedKFold

from dr_ray.io import columns as C

log = logging.getLogger(__name__)

_UNGRADED = -1  # stratum of patients with no graded image


def assign_folds(table: pa.Table, k: int = 5, seed: int = 0) -> pa.Table:
    """Fill the ``fold`` column (int16, 0..k-1) with a patient-level stratified K-fold.

    All rows of a patient (both eyes) share one fold. Patients are stratified on their worst
    (maximum) grade; patients with no graded image form one more stratum, so rows with a null
    grade still get a fold. ``StratifiedKFold(shuffle=True, random_state=seed)`` runs over the
    patients sorted by id, so the result depends only on the set of (patient, grade) pairs and the
    seed, never on row order. When no stratum has ``k`` patients, stratification is impossible and
    plain ``KFold`` over patients is used (logged).

    table: any table with ``patient_id`` (non-null) and ``grade`` columns, normally the catalog.
    Returns the table with ``fold`` replaced (added when absent), rows in their original order.
    Raises ValueError when k < 2 or the table has fewer than k patients.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ValueError(f"k must be an integer >= 2, got {k!r}")
    for name in (C.PATIENT_ID, C.GRADE):
        if name not in table.column_names:
            raise ValueError(f"assign_folds: table has no {name!r} column (columns: {table.column_names})")
    patient_col = table.column(C.PATIENT_ID)
    if patient_col.null_count:
        raise ValueError(f"assign_folds: {patient_col.null_count} row(s) have a null patient_id")
    patients_per_row = np.asarray(patient_col.cast(pa.string()).to_pylist(), dtype=object)
    grades = pc.fill_null(table.column(C.GRADE).cast(pa.int16()), _UNGRADED).to_numpy()

    patients, inverse = np.unique(patients_per_row.astype(str), return_inverse=True)  # sorted ids
    if len(patients) < k:
        raise ValueError(f"cannot make k={k} folds from {len(patients)} patient(s); need at least k patients")
    worst = np.full(len(patients), _UNGRADED, dtype=np.int16)
    np.maximum.at(worst, inverse, grades.astype(np.int16))

    _, counts = np.unique(worst, return_counts=True)
    order = np.zeros(len(patients), dtype=np.int64)
    if counts.max() >= k:
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            # Strata smaller than k (e.g. a handful of grade-4 patients) are spread as evenly as possible.
            warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
            splits = splitter.split(np.zeros(len(patients)), worst)
            for fold, (_, test) in enumerate(splits):
                order[test] = fold
    else:
        log.info("assign_folds: no grade stratum has %d patients; using unstratified KFold", k)
        for fold, (_, test) in enumerate(KFold(n_splits=k, shuffle=True, random_state=seed).split(patients)):
            order[test] = fold
    folds = pa.array(order[inverse].astype(np.int16), pa.int16())
    if C.FOLD in table.column_names:
        i = table.column_names.index(C.FOLD)
        field = table.schema.field(i).with_type(pa.int16())
        return table.set_column(i, field, folds)
    return table.append_column(pa.field(C.FOLD, pa.int16()), folds)
