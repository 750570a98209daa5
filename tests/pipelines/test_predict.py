"""`dr-ray predict`'s pure parts: the ensemble arithmetic, the rows it writes, the train-run checks and its config.
The run on Ray (a trained run predicting a second cohort, resume, external evaluation) is in test_train_stage.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dr_ray.config import ConfigError, load_config
from dr_ray.io import columns as C
from dr_ray.pipelines.predict import combine, load_ensemble, prediction_table


def test_combine_averages_the_fold_models_and_measures_their_disagreement():
    # 2 fold models, 3 images, referable task
    probs = np.array([[[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]],
                      [[0.7, 0.3], [0.4, 0.6], [np.nan, np.nan]]])
    mc = probs.copy()
    out = combine(probs, mc, threshold=0.5)
    np.testing.assert_allclose(out["probs"][:2], [[0.8, 0.2], [0.3, 0.7]])
    np.testing.assert_allclose(out["p_referable"][:2], [0.2, 0.7])
    np.testing.assert_allclose(out["fold_spread"][:2], [0.1, 0.1])
    np.testing.assert_allclose(out["fold_p_referable"][:2], [[0.1, 0.3], [0.8, 0.6]])
    assert out["referable"][:2].tolist() == [False, True] and out["grade"] is None
    # entropy of the mean: H(0.2, 0.8) in nats; a row a model could not score stays undefined
    h = -(0.2 * np.log(0.2) + 0.8 * np.log(0.8))
    assert out["entropy"][0] == pytest.approx(h) and np.isnan(out["entropy"][2]) and np.isnan(out["p_referable"][2])


def test_combine_five_classes_grade_is_the_argmax_and_referable_sums_grades_2_to_4():
    p = np.array([[[0.1, 0.5, 0.2, 0.1, 0.1]], [[0.1, 0.3, 0.4, 0.1, 0.1]]])
    out = combine(p, p, threshold=0.5)
    assert out["grade"].tolist() == [1]  # mean (0.1, 0.4, 0.3, 0.1, 0.1)
    assert out["p_referable"][0] == pytest.approx(0.5) and out["referable"][0]
    np.testing.assert_allclose(out["fold_p_referable"][0], [0.4, 0.6])


def test_prediction_rows_are_null_where_quarantined_and_carry_the_models():
    import pyarrow as pa

    cat = pa.table({C.IMAGE_ID: ["a", "b"], C.PATIENT_ID: ["p", "p"], C.DATASET: ["x", "x"], C.PATH: ["/a", "/b"],
                    C.GRADE: pa.array([None, 3], pa.int8())})
    out = combine(np.array([[[0.4, 0.6], [0.5, 0.5]]]), np.array([[[0.4, 0.6], [0.5, 0.5]]]), threshold=0.5)
    t = prediction_table(cat, out, ok=np.array([True, False]), errors=[None, "b: bad png"], folds=[3],
                         hashes=["h3"], config_hash="c")
    assert t.schema == C.PREDICTIONS_SCHEMA
    a, b = t.to_pylist()
    assert a[C.STATUS] == "ok" and a[C.P_REFERABLE] == pytest.approx(0.6) and a[C.MODEL_HASHES] == ["h3"]
    assert a[C.GRADE] is None and a[C.ERROR] is None
    assert b[C.STATUS] == "quarantined" and b[C.ERROR] == "b: bad png" and b[C.PROBS] is None
    assert b[C.P_REFERABLE] is None and b[C.MODEL_FOLDS] is None and b[C.CONFIG_HASH] == "c"
    everything_quarantined = prediction_table(cat, None, ok=np.zeros(2, bool), errors=["a: x", "b: y"], folds=[0],
                                              hashes=["h"], config_hash="c")
    assert everything_quarantined.column(C.STATUS).to_pylist() == ["quarantined"] * 2


def test_a_train_run_that_is_not_there_or_not_finished_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="predict.run_dir is empty"):
        load_ensemble("")
    with pytest.raises(FileNotFoundError, match="cv.json not found"):
        load_ensemble(str(tmp_path))
    (tmp_path / "cv.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a train run summary"):
        load_ensemble(str(tmp_path))
    (tmp_path / "cv.json").write_text(json.dumps({"model_dirs": {"0": str(tmp_path / "nope")}}))
    with pytest.raises(FileNotFoundError, match="not a saved model directory"):
        load_ensemble(str(tmp_path))
    with pytest.raises(ValueError, match="local"):
        load_ensemble("s3://bucket/run")


def test_predict_config_is_checked():
    assert load_config(None, []).predict.threshold == 0.5
    with pytest.raises(ConfigError, match="predict.threshold"):
        load_config(None, ["predict.threshold=1.5"])
    with pytest.raises(ConfigError, match="predict.name"):
        load_config(None, ["predict.name=../up"])
