"""Backend katib: the search as a Katib Experiment (kubeflow.org/v1beta1) on the cluster.

Each trial is a batch/v1 Job running the train image (`python -m components.train ...
--hparams <the trial's values in the base hyperparameters>`); the examples and the transform
come from MinIO (s3:// URIs, credentials from the same Secret the steps use). Katib's StdOut
metrics collector reads the `name=value` lines train prints (`common.hparams.METRIC_FILTER`,
Katib's default filter); the latest value of each metric counts.

The step waits for the Experiment: Succeeded gives the trials; Failed, a timeout, or no
successful trial fails the step with Katib's reason and each failed trial's last log line (the
old kubeflow/pipelines Katib launcher exited 0 on a failed Experiment: not here). The Experiment
is deleted afterwards with `cleanup`. Calls: experiments create/get/delete, trials list, pods
list, pods/log get (manifests' tuner Role grants exactly these).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field

from components.common import kube
from components.common.errors import StepError
from components.common.hparams import METRIC_FILTER, METRICS
from components.tune.search_space import Parameter, assignment_hparams

log = logging.getLogger(__name__)

GROUP = "kubeflow.org"
VERSION = "v1beta1"
EXPERIMENTS = "experiments"
TRIALS = "trials"
KIND = "Experiment"
ALGORITHMS = ("random", "tpe", "bayesianoptimization", "grid")
PRIMARY_CONTAINER = "training"
TRIAL_OUTPUT = "/tmp/trial-output"
EXPERIMENT_LABEL = "katib.kubeflow.org/experiment"
TRIAL_LABEL = "katib.kubeflow.org/trial"
JOB_SUCCEEDED = 'status.conditions.#(type=="Complete")#|#(status=="True")#'
JOB_FAILED = 'status.conditions.#(type=="Failed")#|#(status=="True")#'
PLACEHOLDER = re.compile(r"\$\{trialParameters\.([^}]+)\}")
NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class Settings:
    """Everything the Experiment is made of besides the search space."""

    namespace: str
    name: str
    image: str
    examples: str          # s3:// URIs the trial pods read
    transform: str
    base_hparams: dict
    objective: str = "auc"
    goal: str = "maximize"
    algorithm: str = "tpe"
    max_trials: int = 12
    parallel: int = 2
    max_failed: int = 3
    early_stopping: bool = False
    dataset_config: str | None = None
    s3_endpoint_url: str | None = None
    s3_secret: str | None = None
    resources: dict = field(default_factory=lambda: {
        "requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}})


def experiment_name(*parts: str) -> str:
    """A DNS label of at most 40 characters (Katib's limit), the same for the same inputs: a
    retried step finds its own Experiment again instead of starting a second one."""
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]
    return f"cfpb-tune-{digest}"


# ---------------------------------------------------------------------------------------------
# The Experiment (pure).

def _hparams_template(parameters: list[Parameter], base: dict) -> str:
    """The --hparams JSON of a trial: `base` with a `${trialParameters.x}` per parameter
    (numbers unquoted, categorical values as JSON strings)."""
    marks = {p.name: f"@@{p.name}@@" for p in parameters}
    text = json.dumps({**base, **marks}, sort_keys=True)
    for p in parameters:
        reference = "${trialParameters." + p.name + "}"
        text = text.replace(json.dumps(marks[p.name]),
                            f'"{reference}"' if p.type == "categorical" else reference)
    return text


def trial_job(parameters: list[Parameter], settings: Settings) -> dict:
    """The batch/v1 Job each trial runs (no name or namespace: Katib sets them)."""
    args = ["--examples", settings.examples, "--transform", settings.transform,
            "--output", TRIAL_OUTPUT, "--hparams",
            _hparams_template(parameters, settings.base_hparams)]
    if settings.dataset_config:
        args += ["--dataset-config", settings.dataset_config]
    env = []
    if settings.s3_endpoint_url:
        env.append({"name": "S3_ENDPOINT_URL", "value": settings.s3_endpoint_url})
    if settings.s3_secret:
        for key, variable in (("accesskey", "AWS_ACCESS_KEY_ID"),
                              ("secretkey", "AWS_SECRET_ACCESS_KEY")):
            env.append({"name": variable, "valueFrom": {"secretKeyRef": {
                "name": settings.s3_secret, "key": key}}})
    container = {"name": PRIMARY_CONTAINER, "image": settings.image,
                 "command": ["python", "-m", "components.train"], "args": args,
                 "resources": settings.resources}
    if env:
        container["env"] = env
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "spec": {
            "backoffLimit": 0,
            "template": {
                # No Istio sidecar: it would keep the trial's pod (and Job) running forever.
                "metadata": {"annotations": {"sidecar.istio.io/inject": "false"}},
                "spec": {"restartPolicy": "Never", "containers": [container]},
            },
        },
    }


def experiment(parameters: list[Parameter], settings: Settings) -> dict:
    """The Experiment, built through the Katib SDK's typed models, as a JSON-ready dict."""
    from kubeflow import katib
    from kubernetes import client

    if settings.algorithm not in ALGORITHMS:
        raise StepError(f"algorithm {settings.algorithm!r}: expected one of "
                        f"{', '.join(ALGORITHMS)}")
    if settings.algorithm == "grid":
        for p in parameters:
            if p.type == "double" and p.step is None:
                raise StepError(f"{p.name}: a grid search needs feasibleSpace.step (or a list) "
                                "for a double parameter")
    others = [m for m in METRICS if m != settings.objective]
    spec = katib.V1beta1ExperimentSpec(
        objective=katib.V1beta1ObjectiveSpec(
            type=settings.goal, objective_metric_name=settings.objective,
            additional_metric_names=others,
            metric_strategies=[katib.V1beta1MetricStrategy(name=m, value="latest")
                               for m in (settings.objective, *others)]),
        algorithm=katib.V1beta1AlgorithmSpec(algorithm_name=settings.algorithm),
        early_stopping=katib.V1beta1EarlyStoppingSpec(algorithm_name="medianstop")
        if settings.early_stopping else None,
        parallel_trial_count=settings.parallel,
        max_trial_count=settings.max_trials,
        max_failed_trial_count=settings.max_failed,
        metrics_collector_spec=katib.V1beta1MetricsCollectorSpec(
            collector=katib.V1beta1CollectorSpec(kind="StdOut")),
        parameters=[katib.V1beta1ParameterSpec(
            name=p.name, parameter_type=p.type,
            feasible_space=katib.V1beta1FeasibleSpace(**p.to_katib()["feasibleSpace"]))
            for p in parameters],
        trial_template=katib.V1beta1TrialTemplate(
            primary_container_name=PRIMARY_CONTAINER,
            success_condition=JOB_SUCCEEDED, failure_condition=JOB_FAILED,
            trial_parameters=[katib.V1beta1TrialParameterSpec(
                name=p.name, reference=p.name,
                description=f"train --hparams {p.name}") for p in parameters],
            trial_spec=trial_job(parameters, settings)),
    )
    body = katib.V1beta1Experiment(
        api_version=f"{GROUP}/{VERSION}", kind=KIND,
        metadata=client.V1ObjectMeta(
            name=settings.name, namespace=settings.namespace,
            labels={"app.kubernetes.io/managed-by": "cfpb-pipeline-tune"}),
        spec=spec)
    return client.ApiClient().sanitize_for_serialization(body)


# ---------------------------------------------------------------------------------------------
# The calls.

class KatibApi:
    """The Kubernetes calls of the katib backend, retried on transient failures."""

    def __init__(self, api_client=None):
        from kubernetes import client

        api_client = api_client or kube.load_api_client()
        self._custom = client.CustomObjectsApi(api_client)
        self._core = client.CoreV1Api(api_client)

    def create(self, namespace: str, body: dict) -> dict:
        return kube.with_retries(
            f"create {KIND} {namespace}/{body['metadata']['name']}",
            lambda: self._custom.create_namespaced_custom_object(GROUP, VERSION, namespace,
                                                                 EXPERIMENTS, body))

    def get(self, namespace: str, name: str) -> dict | None:
        return kube.get_or_none(
            f"get {KIND} {namespace}/{name}",
            lambda: self._custom.get_namespaced_custom_object(GROUP, VERSION, namespace,
                                                              EXPERIMENTS, name))

    def delete(self, namespace: str, name: str) -> None:
        kube.with_retries(
            f"delete {KIND} {namespace}/{name}",
            lambda: self._custom.delete_namespaced_custom_object(GROUP, VERSION, namespace,
                                                                 EXPERIMENTS, name))

    def trials(self, namespace: str, name: str) -> list[dict]:
        listed = kube.with_retries(
            f"list trials of {KIND} {namespace}/{name}",
            lambda: self._custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, TRIALS, label_selector=f"{EXPERIMENT_LABEL}={name}"))
        return list(listed.get("items") or [])

    def last_log_line(self, namespace: str, trial: str) -> str:
        """The last non-empty line the trial's training container wrote ("" if none)."""
        pods = kube.with_retries(
            f"list pods of trial {namespace}/{trial}",
            lambda: self._core.list_namespaced_pod(namespace,
                                                   label_selector=f"{TRIAL_LABEL}={trial}"))
        for pod in pods.items:
            text = kube.with_retries(
                f"read the log of pod {namespace}/{pod.metadata.name}",
                lambda pod=pod: self._core.read_namespaced_pod_log(
                    pod.metadata.name, namespace, container=PRIMARY_CONTAINER, tail_lines=20))
            lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
            if lines:
                return lines[-1]
        return ""


# ---------------------------------------------------------------------------------------------
# Waiting and results.

def condition(obj: dict | None) -> tuple[str, str] | None:
    """The Experiment's (or Trial's) final condition, (type, 'reason: message'), if any."""
    for entry in reversed(((obj or {}).get("status") or {}).get("conditions") or []):
        if entry.get("status") == "True" and entry.get("type") in (
                "Succeeded", "Failed", "Killed", "EarlyStopped", "MetricsUnavailable"):
            reason = ": ".join(x for x in (entry.get("reason"), entry.get("message")) if x)
            return entry["type"], reason
    return None


def _seconds(status: dict) -> float | None:
    try:
        start = dt.datetime.fromisoformat(status["startTime"].replace("Z", "+00:00"))
        end = dt.datetime.fromisoformat(status["completionTime"].replace("Z", "+00:00"))
    except (KeyError, AttributeError, ValueError):
        return None
    return round((end - start).total_seconds(), 1)


def trial_record(trial: dict, parameters: list[Parameter], base: dict,
                 objective: str) -> dict:
    """A Katib Trial as the tune step records every trial (the local backend's shape)."""
    assignment = {a["name"]: a["value"]
                  for a in (trial.get("spec") or {}).get("parameterAssignments") or []}
    status = trial.get("status") or {}
    final = condition(trial)
    metrics = {}
    for metric in ((status.get("observation") or {}).get("metrics") or []):
        try:
            metrics[metric["name"]] = float(metric.get("latest"))
        except (TypeError, ValueError):
            continue
    by_name = {p.name: p for p in parameters}
    return {
        "name": trial["metadata"]["name"],
        "parameters": {k: by_name[k].value(v) if k in by_name else v
                       for k, v in assignment.items()},
        "hparams": assignment_hparams(parameters, assignment, base),
        "status": final[0] if final else "Running",
        "objective": metrics.get(objective),
        "metrics": metrics,
        "seconds": _seconds(status),
        "message": final[1] if final and final[0] != "Succeeded" else "",
    }


def run(api: KatibApi, parameters: list[Parameter], settings: Settings, *,
        timeout_seconds: float, cleanup: bool = False, poll_seconds: float = 10.0) -> list[dict]:
    """Create (or find again) the Experiment, wait for it, return the trial records."""
    where = f"{KIND} {settings.namespace}/{settings.name}"
    body = experiment(parameters, settings)
    if api.get(settings.namespace, settings.name) is None:
        api.create(settings.namespace, body)
        log.info("created %s: %d trials (%d in parallel), %s on %s (%s)", where,
                 settings.max_trials, settings.parallel, settings.algorithm, settings.objective,
                 settings.goal)
    else:
        log.info("%s exists (a retried step): waiting for it", where)
    try:
        final = _wait(api, settings, timeout_seconds, poll_seconds)
        trials = [trial_record(t, parameters, settings.base_hparams, settings.objective)
                  for t in api.trials(settings.namespace, settings.name)]
        trials.sort(key=lambda t: t["name"])
        succeeded = [t for t in trials if t["status"] == "Succeeded"
                     and t["objective"] is not None]
        if final[0] != "Succeeded" or not succeeded:
            raise StepError(_failure(api, settings, final, trials))
        return trials
    finally:
        if cleanup:
            api.delete(settings.namespace, settings.name)
            log.info("deleted %s", where)


def _wait(api: KatibApi, settings: Settings, timeout_seconds: float,
          poll_seconds: float) -> tuple[str, str]:
    where = f"{KIND} {settings.namespace}/{settings.name}"
    deadline = time.monotonic() + timeout_seconds
    shown = None
    while True:
        obj = api.get(settings.namespace, settings.name)
        if obj is None:
            raise StepError(f"{where} disappeared while the step was waiting for it")
        status = obj.get("status") or {}
        counts = tuple(status.get(k, 0) for k in ("trialsSucceeded", "trialsRunning",
                                                  "trialsFailed"))
        if counts != shown:
            optimal = ((status.get("currentOptimalTrial") or {}).get("observation") or {})
            best = {m["name"]: m.get("latest") for m in optimal.get("metrics") or []}
            log.info("%s: %d succeeded, %d running, %d failed of %d; best %s=%s", where,
                     *counts, settings.max_trials, settings.objective,
                     best.get(settings.objective, "-"))
            shown = counts
        final = condition(obj)
        if final:
            return final
        if time.monotonic() >= deadline:
            return "TimedOut", (f"not finished after {timeout_seconds:g} s "
                                f"({counts[0]} trials succeeded, {counts[2]} failed)")
        time.sleep(min(poll_seconds, max(0.0, deadline - time.monotonic())))


def _failure(api: KatibApi, settings: Settings, final: tuple[str, str],
             trials: list[dict]) -> str:
    """One line: Katib's reason, then each failed trial's last log line."""
    failed = [t for t in trials if t["status"] not in ("Succeeded", "Running")]
    parts = [f"{KIND} {settings.namespace}/{settings.name} "
             + (f"{final[0].lower()}: {final[1]}" if final[0] != "Succeeded"
                else "succeeded without a trial that reported its objective "
                     f"{settings.objective!r} (pattern {METRIC_FILTER})")]
    for trial in failed[:5]:
        line = api.last_log_line(settings.namespace, trial["name"]) or trial["message"]
        parts.append(f"{trial['name']} {trial['status'].lower()}: {line[:200]}")
    if len(failed) > 5:
        parts.append(f"{len(failed) - 5} more failed trials")
    return "; ".join(parts)
