"""Patient-level stratified K-fold assignment for a catalog table, the inner validation split of nested CV
(:func:`inner_split`) and the patient-level flag every CV output carries (:func:`patient_level`)."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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

    from sklearn.model_selection import KFold, StratifiedKFold  # here: scikit-learn costs ~2 s of import

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


def images_without_patient(table: pa.Table) -> int:
    """Rows whose ``patient_id`` is their own ``image_id``: the reader knew no patient for them (the catalog
    convention of :func:`dr_ray.io.catalog._rows.new_row`), so their other images, if any, may sit in other folds."""
    for name in (C.PATIENT_ID, C.IMAGE_ID):
        if name not in table.column_names:
            raise ValueError(f"images_without_patient: table has no {name!r} column (columns: {table.column_names})")
    same = pc.equal(table.column(C.PATIENT_ID).cast(pa.string()), table.column(C.IMAGE_ID).cast(pa.string()))
    return int(pc.sum(pc.fill_null(same, True).cast(pa.int64())).as_py() or 0)


def patient_level(table: pa.Table) -> dict:
    """``{"patient_level": bool, "images_without_patient_id": int, "images": int}`` for a catalog-like table.

    ``patient_level`` is false as soon as one image has no known patient (APTOS, IDRiD, FGADR, Messidor-2 without
    its exam pairing): folds are then image-level for those images and the two eyes of one person may be split
    between training and test. Every CV output carries this record (cv.json, tune results, the report header).
    """
    n_without = images_without_patient(table)
    return {"patient_level": n_without == 0, "images_without_patient_id": n_without, "images": table.num_rows}


def inner_split(table: pa.Table, train_folds, *, fraction: float, seed: int = 0) -> np.ndarray:
    """Inner validation rows drawn from the outer training folds only: a (n_rows,) bool mask.

    The patients with rows in ``train_folds`` (the outer training folds; rows of every other fold are never
    looked at, so the outer test fold cannot influence the split) are split patient-level into inner training
    and inner validation: ``round(fraction * n_patients)`` patients (at least 1, at most n - 1) go to
    validation, all their rows in ``train_folds`` with them. The split is stratified on the patient's worst grade
    (like :func:`assign_folds`; ungraded patients form one stratum) by scikit-learn's
    ``StratifiedShuffleSplit``; when that is impossible (a stratum with one patient, or fewer validation patients
    than strata) it is stratified on worst referable (grade >= 2) instead, and unstratified (``ShuffleSplit``) as a
    last resort (logged). Patients are sorted by id first and ``random_state=seed``, so the mask depends only on
    the (patient, grade, fold) rows of ``train_folds`` and the seed, never on row order.

    Raises ValueError when ``fraction`` is not in (0, 1) or ``train_folds`` hold fewer than 2 patients.
    """
    from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit

    if isinstance(fraction, bool) or not (0.0 < float(fraction) < 1.0):
        raise ValueError(f"inner_split: fraction must be in (0, 1), got {fraction!r}")
    for name in (C.PATIENT_ID, C.GRADE, C.FOLD):
        if name not in table.column_names:
            raise ValueError(f"inner_split: table has no {name!r} column (columns: {table.column_names})")
    folds = np.asarray(pc.fill_null(table.column(C.FOLD).cast(pa.int64()), -1).to_numpy(zero_copy_only=False))
    wanted = sorted({int(f) for f in train_folds})
    pool = np.isin(folds, wanted)
    mask = np.zeros(table.num_rows, dtype=bool)
    patients_per_row = np.asarray(table.column(C.PATIENT_ID).cast(pa.string()).to_pylist(), dtype=object)
    grades = pc.fill_null(table.column(C.GRADE).cast(pa.int16()), _UNGRADED).to_numpy(zero_copy_only=False)
    pool_idx = np.flatnonzero(pool)
    patients, inverse = np.unique(patients_per_row[pool_idx].astype(str), return_inverse=True)
    n = len(patients)
    if n < 2:
        raise ValueError(f"inner_split: folds {wanted} hold {n} patient(s); an inner validation split needs >= 2")
    n_val = min(max(1, int(round(float(fraction) * n))), n - 1)
    worst = np.full(n, _UNGRADED, dtype=np.int16)
    np.maximum.at(worst, inverse, grades[pool_idx].astype(np.int16))
    referable = np.where(worst < 0, -1, (worst >= 2).astype(np.int16))
    val_patients = None
    for label, y in (("worst grade", worst), ("worst referable", referable)):
        _, counts = np.unique(y, return_counts=True)
        if counts.min() >= 2 and n_val >= len(counts) and n - n_val >= len(counts):
            split = StratifiedShuffleSplit(n_splits=1, test_size=n_val, random_state=seed)
            val_patients = next(split.split(np.zeros(n), y))[1]
            break
        log.info("inner_split: cannot stratify %d validation patients of %d on %s (stratum sizes %s)", n_val, n,
                 label, counts.tolist())
    if val_patients is None:
        val_patients = next(ShuffleSplit(n_splits=1, test_size=n_val, random_state=seed).split(np.zeros(n)))[1]
    chosen = np.zeros(n, dtype=bool)
    chosen[val_patients] = True
    mask[pool_idx] = chosen[inverse]
    return mask
