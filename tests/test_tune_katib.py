"""The tune step's katib backend: the Experiment it builds, checked the way Katib v0.19's
admission webhook checks one (its CRD carries no schema), and its behaviour against a fake
Kubernetes API server for every way an Experiment ends.

The fake (http.server on 127.0.0.1) serves Experiments (create, get, delete), Trials (list by
label), Pods (list by label) and pod logs; the real `kubernetes` client talks to it. A created
Experiment jumps to the outcome the test chose, with its Trials.
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from components.common.errors import StepError
from components.common.hparams import DEFAULTS, METRIC_FILTER, METRICS, metric_lines
from components.tune import katib, search_space
from components.tune.tune import TuneOptions, tune

NS = "team"
SPACE = {"parameters": [
    {"name": "learning_rate", "parameterType": "double",
     "feasibleSpace": {"min": "0.0003", "max": "0.01", "distribution": "logUniform"}},
    {"name": "embedding_dim", "parameterType": "int",
     "feasibleSpace": {"min": "8", "max": "32", "step": "8"}},
    {"name": "hidden_units", "parameterType": "categorical",
     "feasibleSpace": {"list": ["64,32", "128,64"]}},
    {"name": "dropout", "parameterType": "discrete", "feasibleSpace": {"list": [0.1, 0.2]}},
]}
GRID_SPACE = {"parameters": [
    {"name": "learning_rate", "parameterType": "double",
     "feasibleSpace": {"min": "0.001", "max": "0.01", "step": "0.003"}},
    {"name": "epochs", "parameterType": "int", "feasibleSpace": {"min": "1", "max": "3"}},
]}


def parameters(space=SPACE):
    return search_space.parse(space, "space.yaml")


def settings(**overrides) -> katib.Settings:
    values = {"namespace": NS, "name": katib.experiment_name("s3://b/ex", "s3://b/tr"),
              "image": "registry.example.com/ml/cfpb-pipeline-train:0.1.0-abc",
              "examples": "s3://mlpipeline/v2/artifacts/run/ingest/examples",
              "transform": "s3://mlpipeline/v2/artifacts/run/transform/transform",
              "base_hparams": dict(DEFAULTS), "s3_endpoint_url": "http://minio:9000",
              "s3_secret": "mlpipeline-minio-artifact"}
    return katib.Settings(**{**values, **overrides})


# --- the Experiment, checked as Katib's webhook checks it -----------------------------------

REPLACE = re.compile(r"\$\{trialParameters\.([^}]+)\}")


def webhook_errors(experiment: dict) -> list[str]:
    """What Katib v0.19's experiment validator (pkg/webhook/v1beta1/experiment/validator)
    refuses, for the parts this step sets."""
    errors = []
    name = experiment["metadata"]["name"]
    if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) or len(name) > 40:
        errors.append(f"metadata.name {name!r}")
    spec = experiment["spec"]
    counts = {k: spec.get(k) for k in ("maxTrialCount", "parallelTrialCount",
                                       "maxFailedTrialCount")}
    if counts["maxTrialCount"] is not None and counts["maxTrialCount"] <= 0:
        errors.append("maxTrialCount must be > 0")
    if counts["parallelTrialCount"] is not None and counts["parallelTrialCount"] <= 0:
        errors.append("parallelTrialCount must be > 0")
    if (counts["maxFailedTrialCount"] or 0) > (counts["maxTrialCount"] or 0):
        errors.append("maxFailedTrialCount > maxTrialCount")
    if (counts["parallelTrialCount"] or 0) > (counts["maxTrialCount"] or 0):
        errors.append("parallelTrialCount > maxTrialCount")
    objective = spec["objective"]
    if objective["type"] not in ("minimize", "maximize"):
        errors.append("objective.type")
    if not objective.get("objectiveMetricName"):
        errors.append("objectiveMetricName")
    if objective["objectiveMetricName"] in (objective.get("additionalMetricNames") or []):
        errors.append("additionalMetricNames contains the objective")
    if spec["algorithm"]["algorithmName"] not in ("random", "tpe", "bayesianoptimization",
                                                  "grid", "cmaes", "hyperband", "sobol",
                                                  "multivariate-tpe"):
        errors.append("algorithmName")
    for i, parameter in enumerate(spec["parameters"]):
        kind, space = parameter["parameterType"], parameter["feasibleSpace"]
        if kind not in ("int", "double", "categorical", "discrete"):
            errors.append(f"parameters[{i}].parameterType")
        if not space:
            errors.append(f"parameters[{i}].feasibleSpace required")
        if kind in ("int", "double"):
            if space.get("list") or not space.get("min") or not space.get("max"):
                errors.append(f"parameters[{i}] needs min and max, no list")
            for key in ("min", "max", "step"):
                if key in space and not isinstance(space[key], str):
                    errors.append(f"parameters[{i}].{key} must be a string")
        elif any(space.get(k) for k in ("min", "max", "step")):
            errors.append(f"parameters[{i}] takes a list only")
        if space.get("distribution") not in (None, "", "uniform", "logUniform", "normal",
                                             "logNormal"):
            errors.append(f"parameters[{i}].distribution")
    template = spec["trialTemplate"]
    if not template.get("primaryContainerName"):
        errors.append("primaryContainerName")
    if not template.get("successCondition") or not template.get("failureCondition"):
        errors.append("success/failure condition")
    text = json.dumps(template["trialSpec"])
    names = [p["name"] for p in spec["parameters"]]
    seen_names, seen_refs = set(), set()
    for parameter in template["trialParameters"]:
        if not parameter.get("name") or not parameter.get("reference") \
                or "{" in parameter["name"] or "}" in parameter["name"]:
            errors.append("trialParameters name/reference")
        if parameter["name"] in seen_names or parameter["reference"] in seen_refs:
            errors.append("trialParameters duplicated")
        seen_names.add(parameter["name"])
        seen_refs.add(parameter["reference"])
        if parameter["reference"] not in names:
            errors.append(f"trialParameters reference {parameter['reference']} not a parameter")
        placeholder = "${trialParameters." + parameter["name"] + "}"
        if placeholder not in text:
            errors.append(f"{placeholder} not in the trial template")
        text = text.replace(placeholder, "1")
    if REPLACE.search(text):
        errors.append(f"undefined trial parameters {REPLACE.findall(text)}")
    trial = template["trialSpec"]
    if "name" in trial.get("metadata", {}) or "namespace" in trial.get("metadata", {}):
        errors.append("trialSpec metadata.name/namespace must be omitted")
    if not trial.get("apiVersion") or not trial.get("kind"):
        errors.append("trialSpec apiVersion/kind")
    containers = trial["spec"]["template"]["spec"]["containers"]
    if template["primaryContainerName"] not in [c["name"] for c in containers]:
        errors.append("primaryContainerName names no container of the template")
    collector = spec.get("metricsCollectorSpec", {}).get("collector", {}).get("kind", "StdOut")
    if collector not in ("StdOut", "File", "TensorFlowEvent", "PrometheusMetric", "Custom",
                         "Push", "None"):
        errors.append("metrics collector kind")
    return errors


def job_is_a_valid_batch_job(job: dict) -> None:
    """The trial template deserializes into the kubernetes client's V1Job with nothing lost
    (Katib converts it to a batch/v1 Job and rejects what does not convert)."""
    from kubernetes import client

    api = client.ApiClient()
    sample = json.loads(REPLACE.sub("1", json.dumps(job)))

    class Response:
        data = json.dumps(sample)

    model = api.deserialize(Response(), "V1Job")
    assert api.sanitize_for_serialization(model) == sample


@pytest.mark.parametrize("algorithm", katib.ALGORITHMS)
def test_the_experiment_passes_katibs_checks_for_every_algorithm(algorithm):
    space = GRID_SPACE if algorithm == "grid" else SPACE
    experiment = katib.experiment(parameters(space), settings(algorithm=algorithm))
    assert webhook_errors(experiment) == []
    assert experiment["spec"]["algorithm"]["algorithmName"] == algorithm
    job_is_a_valid_batch_job(experiment["spec"]["trialTemplate"]["trialSpec"])
    # the objective is one of the metrics train prints, each read at its latest value
    objective = experiment["spec"]["objective"]
    assert objective["objectiveMetricName"] in METRICS
    assert {s["name"]: s["value"] for s in objective["metricStrategies"]} == {
        m: "latest" for m in METRICS}
    assert experiment["spec"]["metricsCollectorSpec"]["collector"]["kind"] == "StdOut"


def test_a_trial_runs_train_with_its_values_in_the_base_hparams():
    experiment = katib.experiment(parameters(), settings())
    (container,) = experiment["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"][
        "spec"]["containers"]
    assert container["command"] == ["python", "-m", "components.train"]
    args = container["args"]
    assert args[args.index("--examples") + 1].startswith("s3://")
    assert args[args.index("--transform") + 1].startswith("s3://")
    # Katib substitutes the values; the result is the JSON train takes
    hparams = args[args.index("--hparams") + 1]
    values = {"learning_rate": "0.00123", "embedding_dim": "16", "hidden_units": "128,64",
              "dropout": "0.2"}
    filled = REPLACE.sub(lambda m: values[m.group(1)], hparams)
    from components.common.hparams import parse_hparams

    parsed = parse_hparams(filled)
    assert parsed["learning_rate"] == 0.00123 and parsed["embedding_dim"] == 16
    assert parsed["hidden_units"] == [128, 64] and parsed["dropout"] == 0.2
    assert parsed["epochs"] == DEFAULTS["epochs"]  # untouched keys keep the base value
    env = {e["name"]: e for e in container["env"]}
    assert env["S3_ENDPOINT_URL"]["value"] == "http://minio:9000"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "mlpipeline-minio-artifact", "key": "secretkey"}
    assert "resources" in container


def test_what_train_prints_is_what_katibs_collector_parses():
    """Katib's default StdOut filter (a Go RE2 expression: the same in Python) over train's
    output finds every metric with its value."""
    printed = metric_lines({"auc": 0.7123456, "loss": 0.51, "accuracy": 0.8,
                            "precision": 0.4, "recall": 0.6})
    found = {m.group(1): float(m.group(2)) for m in re.finditer(METRIC_FILTER, printed)}
    assert found == {"auc": 0.712346, "loss": 0.51, "accuracy": 0.8, "precision": 0.4,
                     "recall": 0.6}


def test_grid_without_a_step_is_refused_before_anything():
    with pytest.raises(StepError, match="learning_rate: a grid search needs feasibleSpace.step"):
        katib.experiment(parameters(), settings(algorithm="grid"))


# --- a fake Kubernetes API -----------------------------------------------------------------

class FakeKatib:
    """Experiments, Trials, Pods and logs in dicts; `outcome` decides how a new Experiment
    ends: "succeeded", "failed", "running" (never ends) or "no-success" (Succeeded, every
    trial failed)."""

    EXPERIMENTS = re.compile(r"^/apis/kubeflow\.org/v1beta1/namespaces/([^/]+)/experiments"
                             r"(?:/([^/?]+))?")
    TRIALS = re.compile(r"^/apis/kubeflow\.org/v1beta1/namespaces/([^/]+)/trials")
    PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods(?:/([^/?]+)/log)?")

    def __init__(self, outcome: str):
        self.outcome = outcome
        self.experiments: dict[tuple[str, str], dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, body, content_type="application/json"):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                with fake.lock:
                    fake.requests.append((method, self.path))
                    code, answer, kind = fake.handle(method, self.path, body)
                self._send(code, answer, kind)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def do_DELETE(self):
                self._handle("DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.host = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def _trials(self, experiment: dict) -> list[dict]:
        name = experiment["metadata"]["name"]
        out = []
        for i, (status, auc) in enumerate(self._plan(), start=1):
            conditions = [{"type": "Created", "status": "True"},
                          {"type": status, "status": "True",
                           "reason": f"Trial{status}", "message": f"Trial has {status.lower()}"}]
            observation = {"metrics": [{"name": "auc", "latest": str(auc), "min": str(auc),
                                        "max": str(auc)},
                                       {"name": "loss", "latest": "0.5"}]} if auc else {}
            out.append({
                "metadata": {"name": f"{name}-trial{i}", "labels": {katib.EXPERIMENT_LABEL: name}},
                "spec": {"parameterAssignments": [
                    {"name": "learning_rate", "value": f"0.00{i}"},
                    {"name": "embedding_dim", "value": str(8 * i)},
                    {"name": "hidden_units", "value": "64,32"},
                    {"name": "dropout", "value": "0.1"}]},
                "status": {"conditions": conditions, "observation": observation,
                           "startTime": "2026-11-30T01:00:00Z",
                           "completionTime": f"2026-11-30T01:00:{10 * i:02d}Z"}})
        return out

    def _plan(self) -> list[tuple[str, float | None]]:
        return {"succeeded": [("Succeeded", 0.70), ("Succeeded", 0.74), ("Failed", None)],
                "failed": [("Failed", None), ("Failed", None), ("Succeeded", 0.7)],
                "no-success": [("Failed", None), ("Failed", None)],
                "running": []}[self.outcome]

    def handle(self, method, path, body):
        url = urlsplit(path)
        query = parse_qs(url.query)
        if match := self.EXPERIMENTS.match(url.path):
            ns, name = match[1], match[2]
            if method == "POST":
                key = (ns, body["metadata"]["name"])
                if key in self.experiments:
                    return 409, {"kind": "Status", "code": 409}, "application/json"
                obj = json.loads(json.dumps(body))
                final = {"succeeded": ("Succeeded", "ExperimentMaxTrialsReached"),
                         "no-success": ("Succeeded", "ExperimentMaxTrialsReached"),
                         "failed": ("Failed", "ExperimentMaxFailedTrialsReached"),
                         "running": ("Running", "ExperimentRunning")}[self.outcome]
                obj["status"] = {"conditions": [
                    {"type": "Created", "status": "True"},
                    {"type": final[0], "status": "True", "reason": final[1],
                     "message": f"Experiment is {final[0].lower()}"}],
                    "trialsSucceeded": 2, "trialsFailed": 1}
                self.experiments[key] = obj
                return 201, obj, "application/json"
            obj = self.experiments.get((ns, name))
            if obj is None:
                return 404, {"kind": "Status", "code": 404}, "application/json"
            if method == "DELETE":
                del self.experiments[(ns, name)]
                return 200, {"kind": "Status", "status": "Success"}, "application/json"
            return 200, obj, "application/json"
        if self.TRIALS.match(url.path):
            selector = query.get("labelSelector", [""])[0]
            name = selector.split("=", 1)[1]
            obj = next(o for o in self.experiments.values() if o["metadata"]["name"] == name)
            return 200, {"items": self._trials(obj)}, "application/json"
        if match := self.PODS.match(url.path):
            if match[2]:  # a log
                return 200, f"epoch 1: ...\nerror: train: {match[2]} ran out of memory\n".encode(
                ), "text/plain"
            trial = query.get("labelSelector", [""])[0].split("=", 1)[1]
            return 200, {"items": [{"metadata": {"name": f"{trial}-pod"}}]}, "application/json"
        return 404, {"kind": "Status", "code": 404}, "application/json"


@pytest.fixture
def fake_katib():
    made = []

    def make(outcome: str):
        from kubernetes import client

        fake = FakeKatib(outcome)
        made.append(fake)
        return fake, katib.KatibApi(client.ApiClient(client.Configuration(host=fake.host)))

    yield make
    for fake in made:
        fake.close()


def options(**overrides) -> TuneOptions:
    values = {"backend": "katib", "max_trials": 3, "parallel_trials": 1, "max_failed_trials": 1,
              "trial_image": "local/cfpb-pipeline-train:x", "namespace": NS,
              "s3_secret": "mlpipeline-minio-artifact", "timeout_minutes": 1}
    return TuneOptions(**{**values, **overrides})


def run_tune(tmp_path, api, **overrides):
    return tune("/in/examples", "/in/transform", str(tmp_path / "out"), options(**overrides),
                examples_uri="s3://mlpipeline/ex", transform_uri="s3://mlpipeline/tr",
                run_key="run-1", katib_api=api)


def test_a_succeeded_experiment_gives_the_best_trial(tmp_path, fake_katib):
    fake, api = fake_katib("succeeded")
    result = run_tune(tmp_path, api)
    assert result["best"]["name"].endswith("-trial2") and result["best"]["objective"] == 0.74
    best = json.loads((tmp_path / "out" / "best_hparams.json").read_text())
    assert best == {**DEFAULTS, "learning_rate": 0.002, "embedding_dim": 16,
                    "hidden_units": "64,32", "dropout": 0.1}
    trials = json.loads((tmp_path / "out" / "trials.json").read_text())
    assert [t["status"] for t in trials] == ["Succeeded", "Succeeded", "Failed"]
    assert trials[0]["seconds"] == 10.0
    experiment = yaml.safe_load((tmp_path / "out" / "experiment.yaml").read_text())
    assert webhook_errors(experiment) == []
    assert (tmp_path / "out" / "report.html").is_file()
    methods = [m for m, _p in fake.requests]
    assert methods.count("POST") == 1 and "DELETE" not in methods


def test_a_failed_experiment_fails_the_step_with_each_failed_trials_last_line(tmp_path,
                                                                               fake_katib):
    fake, api = fake_katib("failed")
    with pytest.raises(StepError) as info:
        run_tune(tmp_path, api, cleanup=True)
    message = str(info.value)
    assert "failed: ExperimentMaxFailedTrialsReached" in message
    assert "trial1 failed: error: train:" in message and "ran out of memory" in message
    assert "\n" not in message
    assert not (tmp_path / "out").exists()  # nothing half-written
    assert fake.experiments == {}  # --cleanup deleted it even on failure


def test_no_successful_trial_fails_the_step(tmp_path, fake_katib):
    fake, api = fake_katib("no-success")
    with pytest.raises(StepError, match="succeeded without a trial that reported its objective"):
        run_tune(tmp_path, api)


def test_an_experiment_that_does_not_finish_times_out(tmp_path, fake_katib, monkeypatch):
    fake, api = fake_katib("running")
    real_run = katib.run
    monkeypatch.setattr(katib, "run", lambda *a, **k: real_run(
        *a, **{**k, "timeout_seconds": 1.0, "poll_seconds": 0.1}))
    started = time.monotonic()
    with pytest.raises(StepError, match="timedout: not finished after 1 s"):
        run_tune(tmp_path, api)
    assert time.monotonic() - started < 10


def test_a_retried_step_waits_for_its_own_experiment(tmp_path, fake_katib):
    fake, api = fake_katib("succeeded")
    run_tune(tmp_path / "first", api)
    run_tune(tmp_path / "again", api)  # the same task retried: the same Experiment name
    assert [m for m, _p in fake.requests].count("POST") == 1


def verbs_the_tune_step_uses() -> set[tuple[str, str]]:
    """(resource, verb) of every call the katib backend makes, over every outcome."""
    used = set()
    for outcome in ("succeeded", "failed"):
        fake = FakeKatib(outcome)
        try:
            from kubernetes import client

            api = katib.KatibApi(client.ApiClient(client.Configuration(host=fake.host)))
            with tempfile.TemporaryDirectory() as out, contextlib.suppress(StepError):
                tune("/e", "/t", str(Path(out) / "tuning"), options(cleanup=True),
                     examples_uri="s3://b/e", transform_uri="s3://b/t", katib_api=api)
        finally:
            fake.close()
        for method, path in fake.requests:
            url = urlsplit(path).path
            if url.endswith("/log"):
                used.add(("pods/log", "get"))
            elif "/pods" in url:
                used.add(("pods", "list"))
            elif "/trials" in url:
                used.add(("trials", "list"))
            else:
                named = re.search(r"/experiments/[^/]+$", url) is not None
                used.add(("experiments", {"POST": "create", "DELETE": "delete",
                                          "GET": "get" if named else "list"}[method]))
    return used


def test_the_calls_the_step_makes():
    assert verbs_the_tune_step_uses() == {
        ("experiments", "create"), ("experiments", "get"), ("experiments", "delete"),
        ("trials", "list"), ("pods", "list"), ("pods/log", "get")}


def test_dry_run_prints_the_experiment_and_needs_no_cluster(tmp_path, cli):
    result = cli("components.tune", "--examples", "s3://b/ex", "--transform", "s3://b/tr",
                 "--output", str(tmp_path / "out"), "--backend", "katib", "--trial-image",
                 "reg/cfpb-pipeline-train:1", "--namespace", NS, "--algorithm", "random",
                 "--dry-run", env={"KUBECONFIG": str(tmp_path / "none")})
    assert result.returncode == 0, result.stderr
    experiment = yaml.safe_load(result.stdout)
    assert experiment["kind"] == "Experiment" and webhook_errors(experiment) == []
    assert not (tmp_path / "out").exists()
