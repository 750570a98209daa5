"""Patient-level stratified folds: no patient split across folds, grade shares kept, deterministic."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from dr_ray.io import assign_folds, read_eyepacs
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
