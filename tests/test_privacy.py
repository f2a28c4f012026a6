"""Differentially private training (components/train/privacy.py): the accounting is
dp-accounting's, every example's gradient is clipped to C, settings above the epsilon ceiling
are refused before training, and a DP-SGD model still learns on generated complaints."""

from __future__ import annotations

import json

import numpy as np
import pytest

from components.common.artifacts import model as model_artifact
from components.common.dataset_config import load_dataset_config
from components.common.errors import StepError
from components.common.hparams import DEFAULTS, parse_hparams
from components.train import privacy

CONFIG = load_dataset_config()
# Noisy gradients want a larger step than Adam's default; two hidden units' worth of model.
DP_HPARAMS = {"privacy": "dp-sgd", "noise_multiplier": 1.0, "l2_clip": 1.0, "epochs": 5,
              "batch_size": 128, "hidden_units": [16], "embedding_dim": 8,
              "learning_rate": 0.01, "early_stopping_patience": 5}


def rdp_epsilon(noise: float, rate: float, steps: int, delta: float,
                one_by_one: bool = False) -> float:
    """dp-accounting's own figure, asked here directly (not through privacy.py): the steps as
    one self-composed event, or composed one by one."""
    import dp_accounting

    step = dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(noise))
    accountant = dp_accounting.rdp.RdpAccountant()
    if one_by_one:
        for _ in range(steps):
            accountant.compose(step)
    else:
        accountant.compose(dp_accounting.SelfComposedDpEvent(step, steps))
    return accountant.get_epsilon(delta)


# ---------------------------------------------------------------------------------------------
# Accounting and settings (no training).

def test_epsilon_is_dp_accountings_figure_for_a_known_setting():
    """The classic DP-SGD setting: 60,000 rows, batches of 256, noise 1.1, 15 epochs."""
    rate, steps = 256 / 60_000, 15 * 235
    expected = rdp_epsilon(1.1, rate, steps, 1e-5)
    assert privacy.epsilon(1.1, rate, steps, 1e-5) == pytest.approx(expected, rel=1e-9)
    assert 1.2 < expected < 1.4  # 1.28
    # 40 steps composed one by one: the same figure (RDP adds up over the steps)
    assert privacy.epsilon(1.1, rate, 40, 1e-5) == pytest.approx(
        rdp_epsilon(1.1, rate, 40, 1e-5, one_by_one=True), rel=1e-9)
    planned = privacy.plan(parse_hparams(json.dumps(
        {"privacy": "dp-sgd", "noise_multiplier": 1.1, "batch_size": 256, "epochs": 15,
         "target_delta": 1e-5})), 60_000)
    assert planned["steps_per_epoch"] == 235 and planned["sampling_rate"] == rate
    assert planned["planned_epsilon"] == pytest.approx(expected, rel=1e-9)
    spent = privacy.spent(planned, epochs_run=15)
    assert spent["steps"] == steps and spent["epsilon"] == pytest.approx(expected, rel=1e-9)


def test_epsilon_moves_the_right_way_and_delta_defaults_to_one_over_n():
    base = parse_hparams(json.dumps({"privacy": "dp-sgd", "epochs": 4}))
    planned = privacy.plan(base, 10_000)
    assert planned["target_delta"] == 1e-4 and planned["delta_source"] == "1/n"
    assert planned["sampling"] == "poisson" and planned["expected_batch_size"] == \
        pytest.approx(DEFAULTS["batch_size"])
    noisier = privacy.plan({**base, "noise_multiplier": 2.0}, 10_000)
    longer = privacy.plan({**base, "epochs": 8}, 10_000)
    assert noisier["planned_epsilon"] < planned["planned_epsilon"] < longer["planned_epsilon"]
    # Early stopping after 2 of 4 epochs spends less than planned.
    assert privacy.spent(planned, 2)["epsilon"] < planned["planned_epsilon"]
    assert privacy.plan(parse_hparams(None), 10_000) is None  # not private: no plan


def test_settings_above_the_ceiling_are_refused():
    hparams = parse_hparams(json.dumps({"privacy": "dp-sgd", "noise_multiplier": 0.5,
                                        "max_epsilon": 1.0}))
    with pytest.raises(StepError, match=r"exceeds max_epsilon 1; raise noise_multiplier"):
        privacy.plan(hparams, 5_000)
    fine = privacy.plan({**hparams, "noise_multiplier": 5.0}, 5_000)
    assert fine["planned_epsilon"] <= 1.0


@pytest.mark.parametrize("given,message", [
    ({"privacy": "dp"}, "one of none, dp-sgd"),
    ({"noise_multiplier": 0}, "noise_multiplier"),
    ({"l2_clip": -1}, "l2_clip"),
    ({"target_delta": 1.5}, "target_delta"),
    ({"max_epsilon": "big"}, "max_epsilon"),
])
def test_bad_privacy_hparams_are_one_line_errors(given, message):
    with pytest.raises(StepError, match=message):
        parse_hparams(json.dumps(given))


def test_privacy_keys_are_tunable():
    """tune's search space names the DP keys like any other hyperparameter."""
    from components.tune.search_space import parse

    parameters = parse({"parameters": [
        {"name": "noise_multiplier", "parameterType": "double",
         "feasibleSpace": {"min": "0.5", "max": "2.0"}},
        {"name": "max_epsilon", "parameterType": "discrete", "feasibleSpace": {"list": [3, 8]}},
        {"name": "privacy", "parameterType": "categorical",
         "feasibleSpace": {"list": ["none", "dp-sgd"]}},
    ]}, "space.yaml")
    assert [p.value(v) for p, v in zip(parameters, ("1.5", "3", "dp-sgd"), strict=True)] == \
        [1.5, 3.0, "dp-sgd"]
    with pytest.raises(StepError, match="not a value train accepts"):
        parse({"parameters": [{"name": "privacy", "parameterType": "categorical",
                               "feasibleSpace": {"list": ["none", "laplace"]}}]}, "space.yaml")


def test_poisson_sampling_takes_each_row_independently():
    rows, rate = 2_000, 0.05
    features = {"x": np.arange(rows, dtype=np.int32)}
    batches = privacy.poisson_batches(features, np.zeros(rows, np.int64), rate, seed=3)
    sizes, seen = [], np.zeros(rows)
    for x, y in batches.take(400):
        sizes.append(int(y.shape[0]))
        ids = x["x"].numpy()
        assert len(set(ids.tolist())) == ids.size  # a row at most once per batch
        seen[ids] += 1
    # Binomial(2000, 0.05) batch sizes: mean 100, standard deviation ~9.7 (not fixed).
    assert abs(np.mean(sizes) - rows * rate) < 3 and 6 < np.std(sizes) < 14
    assert abs(seen.mean() - 400 * rate) < 0.5  # every row equally likely


# ---------------------------------------------------------------------------------------------
# Per-example gradients and clipping (a real network, no data files).

@pytest.fixture(scope="module")
def network():
    import keras

    from components.train.model import build_model

    keras.utils.set_random_seed(1)
    sizes = {"product": 5, "sub_product": 4, "issue": 6, "company_response": 3, "state": 7,
             "zip_code": 9, "narrative": 30}
    return build_model(CONFIG, sizes, {**DEFAULTS, "hidden_units": [8], "embedding_dim": 4})


def random_batch(size: int, seed: int = 0):
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    limits = {"product": 5, "sub_product": 4, "issue": 6, "company_response": 3, "state": 7,
              "zip_code": 9}
    features = {name: tf.constant(rng.integers(0, high, size), tf.int64)
                for name, high in limits.items()}
    tokens = rng.integers(0, 30, (size, 12))
    tokens[:, 8:] = 0  # padding
    features["narrative"] = tf.constant(tokens, tf.int64)
    labels = tf.constant(rng.integers(0, 2, size), tf.int64)
    return features, labels


def test_per_example_gradients_are_each_examples_own(network):
    import keras
    import tensorflow as tf

    features, labels = random_batch(6)
    weights = tf.constant([1.0, 3.0, 1.0, 1.0, 3.0, 0.5])
    batched = privacy.per_example_gradients(network, features, labels, weights)
    for i in (0, 4):
        one = {name: values[i:i + 1] for name, values in features.items()}
        with tf.GradientTape() as tape:
            p = network(one, training=False)
            loss = weights[i] * keras.losses.binary_crossentropy(
                tf.cast(tf.reshape(labels[i], [1, 1]), tf.float32), p)[0]
        for got, want, variable in zip(batched, tape.gradient(loss, network.trainable_variables),
                                       network.trainable_variables, strict=True):
            assert got.shape[1:] == variable.shape
            np.testing.assert_allclose(got[i].numpy(), tf.convert_to_tensor(want).numpy(),
                                       atol=1e-6)


@pytest.mark.parametrize("clip", [1e-3, 0.05, 100.0])
def test_clipped_per_example_gradients_never_exceed_c(network, clip):
    import tensorflow as tf

    features, labels = random_batch(32, seed=7)
    gradients = privacy.per_example_gradients(network, features, labels, tf.fill([32], 3.0))
    clipped, norms = privacy.clip_gradients(gradients, clip)
    clipped_norms = np.sqrt(sum(np.sum(np.square(g.numpy()).reshape(32, -1), axis=1)
                                for g in clipped))
    assert np.all(clipped_norms <= clip * (1 + 1e-5))
    small = norms.numpy() <= clip  # already within the bound: untouched
    np.testing.assert_allclose(clipped_norms[small], norms.numpy()[small], rtol=1e-5)
    np.testing.assert_allclose(clipped_norms[~small], clip, rtol=1e-5)
    if clip == 1e-3:
        assert not small.any()  # the bound really bit
    # what the training step sums is the sum of these clipped gradients
    for total, each in zip(privacy.clipped_sum(gradients, clip), clipped, strict=True):
        np.testing.assert_allclose(total.numpy(), np.sum(each.numpy(), axis=0), rtol=1e-4,
                                   atol=1e-7)


def test_an_empty_poisson_batch_is_noise_only(network):
    import tensorflow as tf

    features, labels = random_batch(0)
    gradients = privacy.per_example_gradients(network, features, labels, tf.zeros([0]))
    update = privacy.noisy_mean(privacy.clipped_sum(gradients, 1.0), 2.0, 50.0)
    assert [u.shape for u in update] == [v.shape for v in network.trainable_variables]
    assert 0.02 < float(np.std(update[0].numpy())) < 0.06  # N(0, 2^2) / 50


# ---------------------------------------------------------------------------------------------
# Training for real (generated data).

@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    from components.ingest.ingest import ingest
    from components.transform.transform import transform
    from tests.conftest import run_cli

    work = tmp_path_factory.mktemp("privacy")
    result = run_cli("datagen", "--rows", "4000", "--seed", "11", "--out",
                     str(work / "data.csv"))
    assert result.returncode == 0, result.stderr
    ingest(str(work / "data.csv"), str(work / "examples"), CONFIG)
    transform(str(work / "examples"), str(work / "transform"), CONFIG)
    return work


def executor_input(tmp_path) -> dict:
    return {"inputs": {"artifacts": {}, "parameterValues": {}}, "outputs": {
        "artifacts": {name: {"artifacts": [{"name": name, "uri": str(tmp_path / name)}]}
                      for name in ("model", "metrics")},
        "parameters": {"model_id": {"outputFile": str(tmp_path / "model_id")}},
        "outputFile": str(tmp_path / "executor_output.json")}}


@pytest.fixture(scope="module")
def dp_run(data_dirs, tmp_path_factory):
    """train --privacy dp-sgd, the real CLI with a KFP executor input."""
    from tests.conftest import run_cli

    out = tmp_path_factory.mktemp("dp-run")
    hparams = {k: v for k, v in DP_HPARAMS.items() if k not in ("privacy", "noise_multiplier")}
    result = run_cli("components.train", "--examples", str(data_dirs / "examples"),
                     "--transform", str(data_dirs / "transform"), "--output", str(out / "model"),
                     "--hparams", json.dumps(hparams), "--privacy", "dp-sgd",
                     "--noise-multiplier", "1.0", "--max-epsilon", "20",
                     "--executor-input", json.dumps(executor_input(out)))
    assert result.returncode == 0, result.stderr
    return out, result


def test_a_dp_model_still_learns(dp_run):
    out, _ = dp_run
    training = json.loads((out / "model" / "training.json").read_text())
    assert training["hparams"]["privacy"] == "dp-sgd"
    assert training["metrics"]["auc"] > 0.58, training["metrics"]  # clearly above chance
    # and it is a complete model: calibrated, with a threshold, servable
    assert training["calibration"]["method"] == "platt"
    assert model_artifact.is_saved_model(str(out / "model" / "model"))


def test_epsilon_is_recorded_as_dp_accounting_computes_it(dp_run):
    out, result = dp_run
    training = json.loads((out / "model" / "training.json").read_text())
    record = model_artifact.privacy_of(training)
    rows = training["rows"]["fit"]
    assert record["rows"] == rows and record["sampling"] == "poisson"
    assert record["target_delta"] == pytest.approx(1 / rows)
    assert record["sampling_rate"] == pytest.approx(128 / rows)
    assert record["steps_per_epoch"] == -(-rows // 128)
    assert record["epochs_run"] == training["epochs_run"]
    assert record["steps"] == training["epochs_run"] * record["steps_per_epoch"]
    assert record["epsilon"] == pytest.approx(rdp_epsilon(
        1.0, record["sampling_rate"], record["steps"], record["target_delta"]), rel=1e-9)
    assert record["epsilon"] <= record["planned_epsilon"] <= 20
    # The KFP Metrics artifact, the model artifact's metadata and the Katib lines carry it.
    output = json.loads((out / "executor_output.json").read_text())
    metrics = output["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert metrics["dp_epsilon"] == pytest.approx(record["epsilon"], abs=1e-6)
    assert metrics["dp_delta"] == pytest.approx(record["target_delta"])
    model_meta = output["artifacts"]["model"]["artifacts"][0]["metadata"]
    assert model_meta["privacy"] == "dp-sgd"
    assert f"dp_epsilon={record['epsilon']:.6f}" in result.stdout


def test_class_weights_and_early_stopping_still_apply_under_dp(dp_run):
    out, _ = dp_run
    training = json.loads((out / "model" / "training.json").read_text())
    weights = training["class_weights"]
    assert float(weights["1"]) > 1.0 > float(weights["0"])  # the minority class counts more
    record = training["privacy"]
    assert "kept" in record["class_weights"] and "eval" in record["early_stopping"]
    # No figure of the training rows in the logs: only eval metrics and the step count.
    assert set(training["metrics"]) == {"auc", "accuracy", "precision", "recall", "loss"}


def test_early_stopping_under_dp_spends_only_the_steps_run(data_dirs, tmp_path):
    """Patience 0 with 4 epochs: the run may stop early; epsilon counts the steps taken."""
    from components.train.train import train

    info = train(str(data_dirs / "examples"), str(data_dirs / "transform"), str(tmp_path / "m"),
                 CONFIG, parse_hparams(json.dumps({**DP_HPARAMS, "epochs": 4,
                                                   "early_stopping_patience": 0,
                                                   "learning_rate": 0.05})))
    record = info["privacy"]
    assert record["steps"] == info["epochs_run"] * record["steps_per_epoch"]
    if info["epochs_run"] < 4:
        assert record["epsilon"] < record["planned_epsilon"]
    else:
        assert record["epsilon"] == pytest.approx(record["planned_epsilon"])


def test_the_ceiling_is_checked_before_training(data_dirs, tmp_path, cli):
    result = cli("components.train", "--examples", str(data_dirs / "examples"), "--transform",
                 str(data_dirs / "transform"), "--output", str(tmp_path / "m"),
                 "--privacy", "dp-sgd", "--noise-multiplier", "0.6", "--max-epsilon", "0.5")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: train: dp-sgd: epsilon ") and "exceeds max_epsilon 0.5" in last
    assert "epoch 1" not in result.stderr  # refused before training started
    assert not (tmp_path / "m").exists()


def test_dp_flags_without_dp_sgd_are_refused(data_dirs, tmp_path, cli):
    result = cli("components.train", "--examples", str(data_dirs / "examples"), "--transform",
                 str(data_dirs / "transform"), "--output", str(tmp_path / "m"),
                 "--noise-multiplier", "2")
    assert result.returncode == 2
    assert "--noise-multiplier: used only with --privacy dp-sgd" in result.stderr
    # the same settings as hparams keys are fine (defaults a tuner may carry along)
    assert parse_hparams(json.dumps({"noise_multiplier": 2.0}))["privacy"] == "none"
