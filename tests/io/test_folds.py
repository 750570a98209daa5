"""Patient-level stratified folds: no patient split across folds, grade shares kept, deterministic."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from dr_ray.io import assign_folds, read_eyepacs
from dr_ray.io.folds import inner_split, patient_level
from dr_ray.io import columns as C

WORST_P = [0.55, 0.15, 0.15, 0.08, 0.07]  # skewed, like EyePACS


def _catalog(n_patients: int = 500, seed: int = 1, n_ungraded: int = 25) -> pa.Table:
    """Two eyes per patient; the worse eye has the patient's stratum grade, the other eye <= it.
    The last ``n_ungraded`` patients have null grades on both eyes; every 20th patient one null eye."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        worst = int(rng.choice(5, p=WORST_P))
        other = int(rng.integers(0, worst + 1))
        grades = [worst, other] if rng.random() < 0.5 else [other, worst]
        if p >= n_patients - n_ungraded:
            grades = [None, None]
        elif p % 20 == 0:
            grades[1] = None
        for eye, g in zip(("left", "right"), grades):
            rows.append({C.IMAGE_ID: f"syn/{p}_{eye}", C.PATIENT_ID: f"syn/{p}", C.EYE: eye, C.DATASET: "syn",
                         C.PATH: f"/x/{p}_{eye}.png", C.GRADE: g, C.REFERABLE: None if g is None else g >= 2})
    return pa.Table.from_pylist(rows, schema=C.CATALOG_SCHEMA)


def _fold_of(table: pa.Table) -> dict[str, int]:
    return dict(zip(table.column(C.IMAGE_ID).to_pylist(), table.column(C.FOLD).to_pylist()))


def test_patients_never_split_and_sizes_balanced():
    t = assign_folds(_catalog(), k=5, seed=0)
    assert t.schema.equals(C.CATALOG_SCHEMA)
    folds_per_patient = defaultdict(set)
    for p, f in zip(t.column(C.PATIENT_ID).to_pylist(), t.column(C.FOLD).to_pylist()):
        folds_per_patient[p].add(f)
    assert all(len(s) == 1 for s in folds_per_patient.values())
    assert t.column(C.FOLD).null_count == 0
    patients_per_fold = Counter(next(iter(s)) for s in folds_per_patient.values())
    assert sorted(patients_per_fold) == [0, 1, 2, 3, 4]
    assert max(patients_per_fold.values()) - min(patients_per_fold.values()) <= 5  # 100 +/- a few


def test_grade_shares_per_fold():
    t = assign_folds(_catalog(), k=5, seed=0)
    rows = t.to_pylist()
    # Patient level: stratum (worst grade, or ungraded) shares are near-exact (within 1 patient per stratum).
    worst = {}
    for r in rows:
        g = -1 if r[C.GRADE] is None else r[C.GRADE]
        worst[r[C.PATIENT_ID]] = max(worst.get(r[C.PATIENT_ID], -1), g)
    fold_of_patient = {r[C.PATIENT_ID]: r[C.FOLD] for r in rows}
    strata = Counter(worst.values())
    for fold in range(5):
        in_fold = Counter(worst[p] for p, f in fold_of_patient.items() if f == fold)
        for s, n in strata.items():
            assert abs(in_fold[s] - n / 5) <= 1, (fold, s, in_fold[s], n / 5)
    # Row level: each grade's share within 5 percentage points of the overall share.
    graded = [r for r in rows if r[C.GRADE] is not None]
    overall = Counter(r[C.GRADE] for r in graded)
    for fold in range(5):
        fr = [r for r in graded if r[C.FOLD] == fold]
        c = Counter(r[C.GRADE] for r in fr)
        for g in range(5):
            assert abs(c[g] / len(fr) - overall[g] / len(graded)) <= 0.05, (fold, g)
    # Ungraded rows got folds too, spread over all folds.
    assert {r[C.FOLD] for r in rows if r[C.GRADE] is None} == {0, 1, 2, 3, 4}


def test_deterministic_seeded_and_order_independent():
    t = _catalog()
    a = _fold_of(assign_folds(t, k=5, seed=0))
    assert _fold_of(assign_folds(t, k=5, seed=0)) == a
    b = _fold_of(assign_folds(t, k=5, seed=1))
    assert sum(a[i] != b[i] for i in a) > len(a) // 2  # a different seed reshuffles most patients
    perm = np.random.default_rng(7).permutation(t.num_rows)
    shuffled = assign_folds(t.take(pa.array(perm)), k=5, seed=0)
    assert _fold_of(shuffled) == a
    # rows stay in the order given
    assert shuffled.column(C.IMAGE_ID).to_pylist() == t.take(pa.array(perm)).column(C.IMAGE_ID).to_pylist()


def test_errors_and_small_inputs():
    t = _catalog(n_patients=4, n_ungraded=0)
    with pytest.raises(ValueError, match=r"k=5 folds from 4 patient"):
        assign_folds(t, k=5)
    with pytest.raises(ValueError, match="k must be an integer >= 2"):
        assign_folds(t, k=1)
    with pytest.raises(ValueError, match="no 'grade' column"):
        assign_folds(t.drop_columns([C.GRADE]), k=2)
    # 4 patients, k=4: every patient alone in a fold, both eyes together (stratification impossible -> KFold)
    f = assign_folds(t, k=4, seed=3)
    pairs = {}
    for p, fold in zip(f.column(C.PATIENT_ID).to_pylist(), f.column(C.FOLD).to_pylist()):
        pairs.setdefault(p, set()).add(fold)
    assert sorted(next(iter(s)) for s in pairs.values()) == [0, 1, 2, 3]
    # all grades null: folds still assigned
    ungraded = _catalog(n_patients=30, n_ungraded=30)
    assert sorted(set(assign_folds(ungraded, k=3).column(C.FOLD).to_pylist())) == [0, 1, 2]


@pytest.mark.shared_data
def test_folds_on_real_sample(shared_data: Path):
    t = assign_folds(read_eyepacs(str(shared_data / "EyePACS_kaggle_sample")).table, k=3, seed=0)
    folds = dict(zip(t.column(C.IMAGE_ID).to_pylist(), t.column(C.FOLD).to_pylist()))
    for p in (10, 15, 16):
        assert folds[f"eyepacs/{p}_left"] == folds[f"eyepacs/{p}_right"]
    assert sorted(set(folds.values())) == [0, 1, 2]


# --- nested CV: the inner validation split ---------------------------------------------------------


def test_inner_split_uses_only_outer_training_folds_patient_level_and_stratified():
    t = assign_folds(_catalog(), k=5, seed=0)
    folds = np.asarray(t.column(C.FOLD).to_pylist())
    train_folds = [0, 1, 3, 4]  # outer test fold 2
    mask = inner_split(t, train_folds, fraction=0.15, seed=0)
    assert mask.dtype == bool and mask.shape == (t.num_rows,)
    assert not mask[folds == 2].any()  # never a row of the outer test fold
    patients = np.asarray(t.column(C.PATIENT_ID).to_pylist())
    val_patients, train_patients = set(patients[mask]), set(patients[~mask & (folds != 2)])
    assert not val_patients & train_patients  # patient-level: both eyes on one side
    pool = set(patients[folds != 2])
    assert len(val_patients) == round(0.15 * len(pool))
    # stratified on the worst grade: each stratum's share within one patient of 15 %
    worst: dict[str, int] = {}
    for p, g in zip(t.column(C.PATIENT_ID).to_pylist(), t.column(C.GRADE).to_pylist()):
        worst[p] = max(worst.get(p, -1), -1 if g is None else g)
    for s, n in Counter(worst[p] for p in pool).items():
        got = sum(worst[p] == s for p in val_patients)
        assert abs(got - 0.15 * n) <= 1, (s, got, n)
    # deterministic from the seed and the rows; a different seed draws other patients
    assert np.array_equal(inner_split(t, train_folds, fraction=0.15, seed=0), mask)
    other = inner_split(t, train_folds, fraction=0.15, seed=1)
    assert set(patients[other]) != val_patients


def test_inner_split_ignores_the_outer_test_fold_labels_and_row_order():
    t = assign_folds(_catalog(), k=5, seed=0)
    mask = inner_split(t, [1, 2, 3, 4], fraction=0.2, seed=3)
    folds = np.asarray(t.column(C.FOLD).to_pylist())
    grades = np.asarray([(-1 if g is None else g) for g in t.column(C.GRADE).to_pylist()])
    changed = np.where(folds == 0, 4 - np.maximum(grades, 0), grades)  # relabel the outer test fold entirely
    assert (changed != grades).any()
    t2 = t.set_column(t.column_names.index(C.GRADE), C.CATALOG_SCHEMA.field(C.GRADE),
                      pa.array(changed.tolist(), C.CATALOG_SCHEMA.field(C.GRADE).type))
    assert np.array_equal(inner_split(t2, [1, 2, 3, 4], fraction=0.2, seed=3), mask)
    perm = np.random.default_rng(0).permutation(t.num_rows)
    assert np.array_equal(inner_split(t.take(pa.array(perm)), [1, 2, 3, 4], fraction=0.2, seed=3), mask[perm])


def test_inner_split_small_data_falls_back_and_errors():
    # 6 patients with 4 distinct worst grades: grade strata are too small, referable strata are not
    t = assign_folds(_catalog(n_patients=12, seed=2, n_ungraded=0), k=2, seed=0)
    mask = inner_split(t, [0], fraction=0.34, seed=0)
    patients = np.asarray(t.column(C.PATIENT_ID).to_pylist())
    pool = set(patients[np.asarray(t.column(C.FOLD).to_pylist()) == 0])
    assert 1 <= len(set(patients[mask])) < len(pool) and set(patients[mask]) <= pool
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\)"):
        inner_split(t, [0], fraction=0.0)
    with pytest.raises(ValueError, match="hold 0 patient"):
        inner_split(t, [7], fraction=0.2)


def test_patient_level_flag():
    t = _catalog(n_patients=4, n_ungraded=0)
    assert patient_level(t) == {"patient_level": True, "images_without_patient_id": 0, "images": 8}
    ids = t.column(C.IMAGE_ID).to_pylist()
    own = t.set_column(t.column_names.index(C.PATIENT_ID), C.PATIENT_ID,
                       pa.array(ids[:3] + t.column(C.PATIENT_ID).to_pylist()[3:], pa.string()))
    assert patient_level(own) == {"patient_level": False, "images_without_patient_id": 3, "images": 8}
