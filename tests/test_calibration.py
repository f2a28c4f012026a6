"""Calibration and the decision threshold, on arrays: a planted, known-miscalibrated score comes
out calibrated; the TensorFlow ops the SavedModel runs equal scikit-learn's fitted calibrators;
the threshold policies on a case computed by hand; the holdout's rows; the config's keys.

The trained model's side (the calibration inside the exported SavedModel, lineage, metadata)
is in test_train.py; evaluate's in test_evaluate.py; the server's decisions in test_serve.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from components.common import calibration as metrics
from components.common.dataset_config import (
    ThresholdPolicy,
    load_dataset_config,
    parse_dataset_config,
    parse_threshold_policy,
)
from components.common.errors import StepError
from components.train import calibration

CONFIG = load_dataset_config()


def planted(n: int, seed: int, shift: float = 1.5, scale: float = 1.3):
    """True probabilities q, labels drawn from them, and a miscalibrated score of the same
    ranking: sigmoid(scale * logit(q) + shift), too high and too sure, as class weights make
    a network."""
    rng = np.random.default_rng(seed)
    q = 1 / (1 + np.exp(-rng.normal(-1.3, 1.0, n)))  # ~25% positives
    y = (rng.random(n) < q).astype(np.int64)
    raw = 1 / (1 + np.exp(-(scale * np.log(q / (1 - q)) + shift)))
    return q, y, raw.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# A planted miscalibration comes out calibrated.

@pytest.mark.parametrize("method, tolerance", [("platt", 0.02), ("isotonic", 0.04)])
def test_a_planted_miscalibrated_score_comes_out_calibrated(method, tolerance):
    q, y, raw = planted(20_000, seed=1)
    parameters = calibration.fit(method, y, raw)
    # Fresh rows: the calibration is judged out of sample.
    q2, y2, raw2 = planted(50_000, seed=2)
    calibrated = calibration.calibrate_numpy(raw2, parameters).astype(np.float64)
    before, after = metrics.summary(y2, raw2, 0.5), metrics.summary(y2, calibrated, 0.5)
    # As the model: ECE ~0.2, "disputed" predicted for ~44% against ~25% in reality.
    assert before["ece"] > 0.18 and before["predicted_positive_rate"] > y2.mean() + 0.15
    assert after["ece"] < tolerance
    assert abs(after["mean_probability"] - y2.mean()) < tolerance / 2
    assert after["brier"] < before["brier"]
    # Close to the true probabilities themselves (on the central 98% of scores).
    inner = (q2 > np.quantile(q2, 0.01)) & (q2 < np.quantile(q2, 0.99))
    assert np.mean(np.abs(calibrated[inner] - q2[inner])) < tolerance
    if method == "platt":  # the planted distortion is in Platt's family: a, b recovered
        assert parameters["a"] == pytest.approx(1 / 1.3, rel=0.05)
        assert parameters["b"] == pytest.approx(-1.5 / 1.3, abs=0.06)
        assert np.max(np.abs(calibrated[inner] - q2[inner])) < 0.02


def test_tensorflow_ops_equal_scikit_learns_fitted_calibrators():
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression

    _, y, raw = planted(5_000, seed=3)
    probe = np.concatenate([raw, np.float32([0.0, 1e-9, 0.5, 1.0 - 1e-7, 1.0])])

    platt = calibration.fit("platt", y, raw)
    reference = LogisticRegression(C=np.inf, max_iter=1000).fit(
        calibration.logit(raw).reshape(-1, 1), y)
    expected = reference.predict_proba(calibration.logit(probe).reshape(-1, 1))[:, 1]
    np.testing.assert_allclose(calibration.calibrate_numpy(probe, platt), expected, atol=1e-6)

    isotonic = calibration.fit("isotonic", y, raw)
    reference = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(
        raw.astype(np.float64), y)
    np.testing.assert_allclose(calibration.calibrate_numpy(probe, isotonic),
                               reference.predict(probe.astype(np.float64)), atol=1e-6)

    assert calibration.fit("none", y, raw) == {"method": "none"}
    np.testing.assert_array_equal(calibration.calibrate_numpy(probe, {"method": "none"}), probe)


def test_platt_keeps_the_ranking_and_isotonic_only_ties_it():
    _, y, raw = planted(5_000, seed=4)
    auc = skm.roc_auc_score(y, raw)
    platt = calibration.calibrate_numpy(raw, calibration.fit("platt", y, raw))
    assert skm.roc_auc_score(y, platt) == pytest.approx(auc, abs=1e-6)
    isotonic = calibration.calibrate_numpy(raw, calibration.fit("isotonic", y, raw))
    order = np.argsort(raw, kind="stable")
    assert np.all(np.diff(isotonic[order]) >= 0)  # never reordered, only tied
    assert abs(skm.roc_auc_score(y, isotonic) - auc) < 0.01


def test_a_score_that_ranks_nothing_becomes_the_base_rate():
    rng = np.random.default_rng(5)
    y = (rng.random(2_000) < 0.3).astype(int)
    raw = np.where(y == 1, 0.4, 0.6) + rng.normal(0, 0.05, y.size)  # ranks upside down
    parameters = calibration.fit("platt", y, np.clip(raw, 0, 1))
    assert parameters["a"] == 0.0
    out = calibration.calibrate_numpy(np.float32([0.1, 0.5, 0.9]), parameters)
    np.testing.assert_allclose(out, y.mean(), atol=1e-6)


def test_one_class_holdout_is_a_one_line_error_naming_the_keys():
    with pytest.raises(StepError) as raised:
        calibration.fit("platt", [0, 0, 0], [0.1, 0.2, 0.3], "ex: train split")
    message = str(raised.value)
    assert message.startswith("ex: train split: the calibration holdout has 3 rows, 0 positive")
    assert "calibration.holdout_fraction" in message and "\n" not in message


# ---------------------------------------------------------------------------------------------
# The threshold policies, by hand.

# p:  0.1 0.2 0.3 0.4 0.5 0.6 0.7 0.8      positives: 0.3, 0.5, 0.6, 0.8
# t   TP FP FN  F1       cost(1,1) cost(1,3) cost(3,1)
# 0.1  4  4  0  8/12=.667   4        4        12
# 0.2  4  3  0  8/11=.727   3        3         9
# 0.3  4  2  0  8/10=.800   2        2         6
# 0.4  3  2  1  6/9 =.667   3        5         7
# 0.5  3  1  1  6/8 =.750   2        4         4
# 0.6  2  1  2  4/7 =.571   3        7         5
# 0.7  1  1  3  2/6 =.333   4       10         6
# 0.8  1  0  3  2/5 =.400   3        9         3
# >0.8 0  0  4  0           4       12         4
HAND_Y = [0, 0, 1, 0, 1, 1, 0, 1]
HAND_P = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]


@pytest.mark.parametrize("policy, expected, figures", [
    (ThresholdPolicy("fixed", value=0.45), 0.45, {"f1": 0.75, "precision": 0.75}),
    (ThresholdPolicy("max_f1"), 0.3, {"f1": 0.8, "recall": 1.0}),
    # cost 2 at 0.3 and at 0.5: the higher threshold wins the tie
    (ThresholdPolicy("min_cost", cost_false_positive=1, cost_false_negative=1), 0.5,
     {"cost": 2.0, "false_positives": 1, "false_negatives": 1}),
    (ThresholdPolicy("min_cost", cost_false_positive=1, cost_false_negative=3), 0.3,
     {"cost": 2.0, "bayes_threshold": 0.25}),
    (ThresholdPolicy("min_cost", cost_false_positive=3, cost_false_negative=1), 0.8,
     {"cost": 3.0, "predicted_positive_rate": 1 / 8}),
])
def test_threshold_policies_on_a_hand_computed_case(policy, expected, figures):
    chosen = calibration.choose_threshold(policy, HAND_Y, HAND_P)
    assert chosen["policy"] == policy.policy
    assert chosen["value"] == pytest.approx(expected)
    for key, value in figures.items():
        assert chosen[key] == pytest.approx(value), key
    assert chosen["rows"] == 8 and chosen["positives"] == 4


def test_nothing_positive_is_a_candidate_when_errors_cost_that_much():
    # t=0.2: FP 1 (cost 10); t=0.9: FP 1, FN 1 (11); above 0.9: FN 1 (1).
    chosen = calibration.choose_threshold(
        ThresholdPolicy("min_cost", cost_false_positive=10, cost_false_negative=1),
        [1, 0], [0.2, 0.9])
    assert 0.9 < chosen["value"] <= 1.0 and chosen["predicted_positive_rate"] == 0.0
    assert chosen["cost"] == 1.0


# ---------------------------------------------------------------------------------------------
# The holdout.

def test_holdout_is_a_fixed_share_of_ids_the_same_on_every_run():
    import tensorflow as tf

    ids = tf.constant([str(i) for i in range(20_000)])
    first = calibration.holdout_mask(ids, 0.1).numpy()
    assert np.array_equal(first, calibration.holdout_mask(ids, 0.1).numpy())
    assert abs(first.mean() - 0.1) < 0.01
    # A larger fraction holds out a superset; a salt draws other rows.
    assert np.all(calibration.holdout_mask(ids, 0.2).numpy()[first])
    salted = calibration.holdout_mask(ids, 0.1, "other").numpy()
    assert abs(np.mean(salted & first) - 0.01) < 0.005  # independent draws
    # Pinned: FarmHash64 never changes (TensorFlow's promise), so neither does the holdout.
    assert np.flatnonzero(first[:200]).tolist() == PINNED_HOLDOUT


PINNED_HOLDOUT = [7, 17, 18, 24, 27, 75, 78, 98, 99, 107, 122, 123, 127, 134, 140, 154, 157, 165,
                  175, 188, 192, 198]  # ids "0".."199" at fraction 0.1, computed once


def test_holdout_is_independent_of_the_eval_split():
    import tensorflow as tf

    from components.ingest.split import is_eval

    ids = [str(i) for i in range(20_000)]
    train_ids = [i for i in ids if not is_eval(i, 0.1)]
    held = calibration.holdout_mask(tf.constant(train_ids), 0.1).numpy()
    assert abs(held.mean() - 0.1) < 0.01


# ---------------------------------------------------------------------------------------------
# The configuration.

def test_the_builtin_config_calibrates_and_maximises_f1():
    assert CONFIG.calibration.method == "platt"
    assert CONFIG.calibration.holdout_fraction == 0.1
    assert CONFIG.evaluation.decision_threshold == ThresholdPolicy("max_f1", value=0.5)


def test_a_number_is_a_fixed_threshold_and_a_mapping_a_policy():
    where = "c.yaml: evaluation.decision_threshold"
    assert parse_threshold_policy(None, where) == ThresholdPolicy("fixed", 0.5)
    assert parse_threshold_policy(0.3, where) == ThresholdPolicy("fixed", 0.3)
    assert parse_threshold_policy(
        {"policy": "min_cost", "cost_false_positive": 1, "cost_false_negative": 4}, where
    ) == ThresholdPolicy("min_cost", 0.5, 1.0, 4.0)


@pytest.mark.parametrize("change, message", [
    ({"evaluation": {"decision_threshold": {"policy": "max_recall"}}},
     "evaluation.decision_threshold.policy: 'max_recall' is not one of"),
    ({"evaluation": {"decision_threshold": {"policy": "min_cost", "cost_false_positive": 0}}},
     "evaluation.decision_threshold: policy min_cost needs cost_false_positive and"),
    ({"evaluation": {"decision_threshold": {"policy": "fixed", "value": 1.5}}},
     "evaluation.decision_threshold.value: must be between 0 and 1"),
    ({"evaluation": {"decision_threshold": {"threshold": 0.4}}},
     "evaluation.decision_threshold: unknown key(s) ['threshold']"),
    ({"evaluation": {"decision_threshold": "high"}},
     "evaluation.decision_threshold: expected a number or a mapping"),
    ({"evaluation": {"decision_threshold": {"cost_false_negative": "x"}}},
     "evaluation.decision_threshold.cost_false_negative: expected a number"),
    ({"calibration": {"method": "beta"}}, "calibration.method: 'beta' is not one of"),
    ({"calibration": {"holdout_fraction": 0}}, "calibration.holdout_fraction must be between"),
    ({"calibration": {"holdout": 0.1}}, "calibration: unknown key(s) ['holdout']"),
])
def test_bad_calibration_settings_are_one_line_errors_naming_the_key(change, message):
    raw = {**CONFIG.raw, **{k: {**CONFIG.raw.get(k, {}), **v} for k, v in change.items()}}
    with pytest.raises(StepError) as raised:
        parse_dataset_config(raw, "c.yaml")
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_no_holdout_only_without_calibration_and_with_a_fixed_threshold():
    raw = {**CONFIG.raw, "calibration": {"method": "none", "holdout_fraction": 0},
           "evaluation": {**CONFIG.raw["evaluation"], "decision_threshold": 0.4}}
    config = parse_dataset_config(raw, "c.yaml")
    assert config.calibration.holdout_fraction == 0
    raw["evaluation"]["decision_threshold"] = {"policy": "max_f1"}
    with pytest.raises(StepError, match="holdout_fraction"):
        parse_dataset_config(raw, "c.yaml")
