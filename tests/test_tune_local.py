"""tune's local backend: optuna samplers over trials that are real processes.

A fake trainer (a small script, the `trial_command`) stands in for train in all tests but one: it
reads the same flags, prints the same `name=value` lines, and does what the environment asks
(sleep, fail, print no metric, start a child). The last test runs the real train step.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from components.common.errors import StepError
from components.common.hparams import DEFAULTS
from components.tune import local
from components.tune.search_space import Parameter

FAKE_TRAINER = r'''
import json, math, os, signal, subprocess, sys, time

args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
hparams = json.loads(args["--hparams"])
trial = os.path.basename(os.path.dirname(args["--output"]))
started = time.time()
env = os.environ.get
record = {"trial": trial, "argv": sys.argv[1:], "pid": os.getpid(), "start": started}
if env("FAKE_IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if env("FAKE_CHILD"):
    record["child"] = subprocess.Popen(["sleep", "60"]).pid
with open(os.path.join(env("FAKE_DIR"), trial + ".start.json"), "w") as f:
    json.dump(record, f)
print("fake trainer: starting " + trial, file=sys.stderr, flush=True)
time.sleep(float(env("FAKE_SLEEP", "0")))
if trial in env("FAKE_FAIL", "").split(",") or env("FAKE_FAIL") == "*":
    print("Traceback (most recent call last): ...", file=sys.stderr)
    print("fake trainer: " + trial + " failed on purpose", file=sys.stderr)
    sys.exit(1)
lr, dropout = hparams["learning_rate"], hparams["dropout"]
auc = (0.95 - 0.08 * (math.log10(lr) + 2.5) ** 2 - 0.6 * (dropout - 0.3) ** 2
       - 0.002 * abs(hparams["embedding_dim"] - 12) - 0.00005 * abs(hparams["batch_size"] - 128)
       - 0.01 * (hparams["hidden_units"] != "64,32") - 0.005 * hparams["epochs"])
metrics = {"auc": auc, "loss": 1.0 - auc, "accuracy": auc - 0.1}
if trial in env("FAKE_NO_METRIC", "").split(","):
    metrics.pop("auc")
if trial in env("FAKE_INF", "").split(","):
    metrics["auc"] = "1e999"
with open(os.path.join(env("FAKE_DIR"), trial + ".end.json"), "w") as f:
    json.dump({**record, "end": time.time(), "auc": metrics.get("auc")}, f)
print("Epoch 1/1 - loss: 0.5")
for name, value in sorted(metrics.items()):
    print(f"{name}={value}")
'''

# Every parameter type; learning_rate on a log scale.
SPACE = [
    Parameter("learning_rate", "double", min=1e-4, max=0.1, distribution="logUniform"),
    Parameter("dropout", "double", min=0.0, max=0.5, step=0.1),
    Parameter("embedding_dim", "int", min=4, max=16, step=4),
    Parameter("epochs", "int", min=1, max=3),
    Parameter("batch_size", "discrete", values=(64.0, 128.0, 256.0)),
    Parameter("hidden_units", "categorical", values=("64,32", "32", "16,8")),
]
# The same with a finite learning_rate (grid search).
GRID_SPACE = [Parameter("learning_rate", "double", min=0.001, max=0.009, step=0.002), *SPACE[1:]]
BASE = {**DEFAULTS, "seed": 7}


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Calls local.run with the fake trainer; FAKE_* variables reach it through the environment."""
    script = tmp_path / "fake_train.py"
    script.write_text(FAKE_TRAINER)
    seen = tmp_path / "seen"
    seen.mkdir()
    monkeypatch.setenv("FAKE_DIR", str(seen))
    runs = iter(range(1000))

    def run(parameters=SPACE, **overrides):
        options = dict(examples="/data/examples", transform="/data/transform",
                       base_hparams=BASE, objective="auc", goal="maximize",
                       algorithm="random", max_trials=4, parallel=1, max_failed=0,
                       timeout_seconds=60, dataset_config=None, seed=1,
                       workdir=str(tmp_path / f"work{next(runs)}"),
                       trial_command=[sys.executable, str(script)])
        options.update(overrides)
        return local.run(parameters, **options)

    run.seen = seen
    run.tmp = tmp_path
    return run


def started(seen: Path, trial: str) -> dict:
    return json.loads((seen / f"{trial}.start.json").read_text())


def assert_feasible(record: dict, parameters: list[Parameter]) -> None:
    for p in parameters:
        value = record["parameters"][p.name]
        assert record["hparams"][p.name] == value
        if p.type == "categorical":
            assert isinstance(value, str) and value in p.values
        elif p.type == "discrete":
            assert isinstance(value, int) and float(value) in p.values  # int hyperparameter
        elif p.type == "int":
            assert isinstance(value, int) and p.min <= value <= p.max
            assert (value - p.min) % (p.step or 1) == 0
        else:
            assert isinstance(value, float) and p.min <= value <= p.max
            if p.step:
                k = (value - p.min) / p.step
                assert abs(k - round(k)) < 1e-9 and value == float(f"{value:.12g}")


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (psutil when installed, else /proc)."""
    try:
        import psutil
    except ImportError:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return False
        return "\nState:\tZ" not in status
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("algorithm", local.ALGORITHMS)
def test_every_sampler_runs_trials_in_the_feasible_space(fake, algorithm):
    parameters = GRID_SPACE if algorithm == "grid" else SPACE
    records = fake(parameters, algorithm=algorithm, max_trials=8, dataset_config="cfg.yaml")

    assert [r["name"] for r in records] == [f"trial-{i:03d}" for i in range(1, 9)]
    for record in records:
        assert record["status"] == "Succeeded" and record["message"] == ""
        assert_feasible(record, parameters)
        assert record["hparams"] == {**BASE, **record["parameters"]}
        assert record["objective"] == record["metrics"]["auc"]
        assert set(record["metrics"]) == {"auc", "loss", "accuracy"}
        assert record["seconds"] > 0
        # The command: train's flags, the trial's own output, the hparams as JSON.
        argv = started(fake.seen, record["name"])["argv"]
        flags = dict(zip(argv[::2], argv[1::2], strict=True))
        workdir = fake.tmp / "work0"
        assert flags == {"--examples": "/data/examples", "--transform": "/data/transform",
                         "--output": str(workdir / record["name"] / "model"),
                         "--hparams": json.dumps(record["hparams"]),
                         "--dataset-config": "cfg.yaml"}
        log_text = (workdir / f"{record['name']}.log").read_text()
        assert "fake trainer: starting" in log_text and "auc=" in log_text  # stderr + stdout
    if algorithm == "grid":
        assert len({json.dumps(r["parameters"], sort_keys=True) for r in records}) == 8

    def suggestions(seed):
        return [r["parameters"] for r in fake(parameters, algorithm=algorithm, max_trials=8,
                                              seed=seed)]

    assert suggestions(1) == [r["parameters"] for r in records]
    assert suggestions(2) != suggestions(1)


def test_grid_runs_the_whole_grid_once_when_it_is_smaller_than_max_trials(fake):
    space = [Parameter("dropout", "double", min=0.1, max=0.3, step=0.1),
             Parameter("hidden_units", "categorical", values=("64,32", "32"))]
    records = fake(space, algorithm="grid", max_trials=10, parallel=2)
    assert sorted((r["parameters"]["dropout"], r["parameters"]["hidden_units"])
                  for r in records) == [(d, h) for d in (0.1, 0.2, 0.3) for h in ("32", "64,32")]


def test_grid_refuses_a_double_without_step_before_any_trial(fake):
    with pytest.raises(StepError, match="learning_rate") as error:
        fake(SPACE, algorithm="grid", max_trials=3)
    assert "\n" not in str(error.value) and "step" in str(error.value)
    assert list(fake.seen.iterdir()) == []
    assert not list(fake.tmp.glob("work*/trial-*"))


def test_parallel_trials_overlap(fake, monkeypatch):
    monkeypatch.setenv("FAKE_SLEEP", "0.8")
    begin = time.monotonic()
    records = fake(max_trials=4, parallel=2)
    elapsed = time.monotonic() - begin
    assert [r["status"] for r in records] == ["Succeeded"] * 4
    spans = [json.loads((fake.seen / f"trial-{i:03d}.end.json").read_text()) for i in (1, 2)]
    assert spans[0]["start"] < spans[1]["end"] and spans[1]["start"] < spans[0]["end"]
    assert elapsed < 4 * 0.8  # sequential would take at least that


def test_failed_trials_are_recorded_within_max_failed(fake, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL", "trial-002")
    monkeypatch.setenv("FAKE_NO_METRIC", "trial-003")
    monkeypatch.setenv("FAKE_INF", "trial-004")
    records = fake(max_trials=5, max_failed=3, goal="minimize", objective="loss")
    assert [r["status"] for r in records] == ["Succeeded", "Failed", "Succeeded", "Succeeded",
                                              "Succeeded"]
    failed = records[1]
    assert failed["objective"] is None and failed["metrics"] == {}
    assert failed["message"] == "fake trainer: trial-002 failed on purpose"
    assert records[2]["objective"] == records[2]["metrics"]["loss"]  # objective loss is there

    records = fake(max_trials=4, max_failed=3)
    assert [r["status"] for r in records] == ["Succeeded", "Failed", "Failed", "Failed"]
    assert records[2]["message"].startswith("no auc= line in the output")
    assert "not finite" in records[3]["message"] and records[3]["objective"] is None


def test_more_failures_than_allowed_stop_the_search_with_their_last_lines(fake, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL", "trial-002,trial-003")
    with pytest.raises(StepError) as error:
        fake(max_trials=6, max_failed=1)
    message = str(error.value)
    assert "\n" not in message and message.startswith("2 of 3 trials failed")
    assert "trial-002: fake trainer: trial-002 failed on purpose" in message
    assert "trial-003: fake trainer: trial-003 failed on purpose" in message
    assert not (fake.tmp / "work0" / "trial-004.log").exists()  # no trial started after


def test_no_successful_trial_is_an_error(fake, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL", "*")
    with pytest.raises(StepError, match=r"no trial succeeded \(3 failed\): trial-001: fake "):
        fake(max_trials=3, max_failed=5, algorithm="tpe")


def test_timeout_terminates_the_running_trials_and_their_children(fake, monkeypatch):
    monkeypatch.setenv("FAKE_SLEEP", "60")
    monkeypatch.setenv("FAKE_CHILD", "1")
    monkeypatch.setenv("FAKE_IGNORE_TERM", "1")  # so SIGKILL after the grace period it is
    monkeypatch.setattr(local, "TERMINATE_GRACE_SECONDS", 0.5)
    begin = time.monotonic()
    with pytest.raises(StepError, match=r"^timed out after 1.5 s with 0 of 4 trials done$"):
        fake(max_trials=4, parallel=2, timeout_seconds=1.5)
    assert time.monotonic() - begin < 10
    pids = [started(fake.seen, t)[key] for t in ("trial-001", "trial-002")
            for key in ("pid", "child")]
    assert not [pid for pid in pids if alive(pid)]


def test_an_interrupt_leaves_no_trial_running(fake, monkeypatch):
    monkeypatch.setenv("FAKE_SLEEP", "60")
    monkeypatch.setenv("FAKE_CHILD", "1")
    main = threading.main_thread().ident
    timer = threading.Timer(1.0, signal.pthread_kill, (main, signal.SIGINT))  # a real Ctrl-C
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            fake(max_trials=2, parallel=2)
    finally:
        timer.cancel()
    pids = [started(fake.seen, t)[key] for t in ("trial-001", "trial-002")
            for key in ("pid", "child")]
    assert not [pid for pid in pids if alive(pid)]


@pytest.mark.parametrize("change,message", [
    ({"goal": "up"}, "goal 'up'"),
    ({"objective": "f1"}, "objective 'f1'"),
    ({"algorithm": "hyperband"}, "algorithm 'hyperband'"),
    ({"parallel": 0}, "parallel"),
])
def test_bad_settings_are_refused(fake, change, message):
    with pytest.raises(StepError, match=message):
        fake(**change)


def test_bayesian_optimization_beats_random_search_on_a_smooth_function(fake):
    """The fake's loss in (log learning rate, dropout), minimized: same budget, several seeds,
    3 trials at a time (so the GP also proposes while trials are running)."""
    space = [Parameter("learning_rate", "double", min=1e-5, max=0.1, distribution="logUniform"),
             Parameter("dropout", "double", min=0.0, max=0.9)]
    base = {**BASE, "hidden_units": "64,32", "embedding_dim": 12, "batch_size": 128,
            "epochs": 1}
    lowest = 1 - (0.95 - 0.005)  # at learning_rate 10**-2.5, dropout 0.3

    def regrets(algorithm):
        return [min(r["objective"] for r in fake(
            space, base_hparams=base, algorithm=algorithm, objective="loss", goal="minimize",
            max_trials=15, parallel=3, seed=seed)) - lowest for seed in range(4)]

    gp, random = regrets("bayesianoptimization"), regrets("random")
    assert min(gp) >= -1e-9
    assert sum(gp) < 0.5 * sum(random), (gp, random)
    assert sum(g < r for g, r in zip(gp, random, strict=True)) >= 3, (gp, random)


@pytest.mark.slow
def test_real_train_trials_and_the_best_hparams_train_again(tmp_path, cli):
    from components.common.dataset_config import load_dataset_config
    from components.ingest.ingest import ingest
    from components.transform.transform import transform

    config = load_dataset_config()
    result = cli("datagen", "--rows", "2000", "--seed", "3", "--out", str(tmp_path / "d.csv"))
    assert result.returncode == 0, result.stderr
    ingest(str(tmp_path / "d.csv"), str(tmp_path / "examples"), config)
    transform(str(tmp_path / "examples"), str(tmp_path / "transform"), config)
    space = [Parameter("learning_rate", "double", min=0.001, max=0.01,
                       distribution="logUniform"),
             Parameter("hidden_units", "categorical", values=("16", "8,4"))]
    base = {**DEFAULTS, "epochs": 1, "batch_size": 256, "embedding_dim": 4}
    records = local.run(space, examples=str(tmp_path / "examples"),
                        transform=str(tmp_path / "transform"), base_hparams=base,
                        objective="auc", goal="maximize", algorithm="tpe", max_trials=2,
                        parallel=1, max_failed=0, timeout_seconds=300, dataset_config=None,
                        seed=3, workdir=str(tmp_path / "tune"))
    assert [r["status"] for r in records] == ["Succeeded"] * 2, records
    for record in records:
        assert 0 < record["objective"] <= 1 and math.isfinite(record["metrics"]["loss"])
        assert (tmp_path / "tune" / record["name"] / "model" / "training.json").is_file()
    best = max(records, key=lambda r: r["objective"])
    again = cli("components.train", "--examples", str(tmp_path / "examples"), "--transform",
                str(tmp_path / "transform"), "--output", str(tmp_path / "best"),
                "--hparams", json.dumps(best["hparams"]))
    assert again.returncode == 0, again.stderr
    trained = json.loads((tmp_path / "best" / "training.json").read_text())
    assert trained["hparams"]["learning_rate"] == best["hparams"]["learning_rate"]
    assert os.path.isdir(tmp_path / "best" / "model")
