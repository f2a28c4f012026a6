"""Runs and recurring runs on a Kubeflow Pipelines backend, through `kfp.Client`.

`pipeline.py --submit` / `--schedule` compile the package, then call `submit_package`. What is
checked here happens before any request: the host URL, the cron expression (KFP's 6 fields) and
the `--param key=value` pairs against the parameters the package declares, typed as declared.
The functions that talk to the backend take a client object (`connect` makes the real one), so
tests point a real `kfp.Client` at a fake API server.

Authentication is kfp.Client's own: none for a port-forwarded standalone install; in a cluster
the projected service-account token (the file at $KF_PIPELINES_SA_TOKEN_PATH, default
/var/run/secrets/kubeflow/pipelines/token), which kfp reads on every request. This module never
reads, prints or logs a token, and never prints an API response's headers.
"""

import contextlib
import datetime as dt
import io
import json
import logging
import math
import os
import re
import sys
import time

from orchestration.definition import PIPELINE_NAME

DEFAULT_EXPERIMENT = "Default"  # the experiment KFP itself falls back to
POLL_SECONDS = 5.0  # between two looks at a run's state while waiting
# Run states (v2beta1 RuntimeState) after which a run changes no more.
FINISHED = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED")
# Exit codes of `pipeline.py --submit/--schedule`.
EXIT_RUN_FAILED, EXIT_REJECTED, EXIT_TIMEOUT = 1, 2, 3


class SubmitError(Exception):
    """Why a submission stopped, in one line (`error: pipeline: <message>`), with its exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_REJECTED):
        super().__init__(message)
        self.exit_code = exit_code


# ---------------------------------------------------------------- checks before any request

# KFP's scheduler parses cron with robfig/cron v1: 6 fields, seconds first, evaluated in UTC;
# `?` means "any" like `*`; months and weekdays also by name.
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
CRON_FIELDS = (
    ("second", 0, 59, {}),
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day-of-month", 1, 31, {}),
    ("month", 1, 12, {name: number for number, name in enumerate(MONTHS, 1)}),
    ("day-of-week", 0, 6, {name: number for number, name in enumerate(WEEKDAYS)}),
)
CRON_FORMAT = "second minute hour day-of-month month day-of-week"


def check_cron(expression: str) -> str:
    """The expression, normalised to single spaces, if KFP's scheduler accepts it."""
    fields = expression.split()
    if len(fields) != len(CRON_FIELDS):
        hint = (f"; the 5-field crontab {' '.join(fields)!r} is {'0 ' + ' '.join(fields)!r} "
                "in KFP (seconds first)" if len(fields) == 5 else "")
        raise SubmitError(f"--schedule {expression!r}: KFP cron has 6 fields ({CRON_FORMAT}), "
                          f"got {len(fields)}{hint}")
    for text, (name, low, high, names) in zip(fields, CRON_FIELDS, strict=True):
        for item in text.split(","):
            problem = _cron_item_problem(item, low, high, names)
            if problem:
                raise SubmitError(f"--schedule {expression!r}: {name} field {text!r}: {problem}")
    return " ".join(fields)


def _cron_item_problem(item: str, low: int, high: int, names: dict[str, int]) -> str | None:
    """What is wrong with one list item (`*`, `?`, `N`, `N-M`, each optionally `/step`)."""
    if not item:
        return "empty list item"
    span, _, step = item.partition("/")
    if "/" in step:
        return f"{item!r} has more than one '/'"
    if "/" in item and not (step.isdigit() and int(step) > 0):
        return f"step {step!r} is not a positive whole number"
    if span in ("*", "?"):
        return None
    bounds = span.split("-")
    if len(bounds) > 2:
        return f"{span!r} has more than one '-'"
    values = []
    for bound in bounds:
        if bound.lower() in names:
            values.append(names[bound.lower()])
        elif bound.isdigit():
            values.append(int(bound))
        else:
            return f"{bound!r} is not a number{' or a name' if names else ''}"
        if not low <= values[-1] <= high:
            return f"{bound} is outside {low}-{high}"
    if values[0] > values[-1]:
        return f"range {span!r} runs backwards"
    return None


def check_host(host: str) -> str:
    """The API URL without a trailing slash; an explicit http(s) scheme is required."""
    if not re.match(r"https?://[^/\s]+", host or ""):
        raise SubmitError(f"--host {host!r}: expected an http:// or https:// URL, e.g. "
                          "http://localhost:8080 (a port-forwarded ml-pipeline-ui)")
    return host.rstrip("/")


def read_package(package: str) -> dict:
    """The pipeline spec (first YAML document) of a compiled package."""
    import yaml

    if not package.endswith((".yaml", ".yml")):
        raise SubmitError(f"{package}: kfp.Client submits a .yaml package; use --output "
                          "<name>.yaml")
    try:
        with open(package, encoding="utf-8") as handle:
            spec = next(yaml.safe_load_all(handle), None)
    except (OSError, yaml.YAMLError) as exc:
        raise SubmitError(f"{package}: cannot read the package: {exc}") from exc
    if not isinstance(spec, dict) or "root" not in spec:
        raise SubmitError(f"{package}: not a compiled pipeline (no root)")
    return spec


def declared_parameters(spec: dict) -> dict[str, dict]:
    """name -> {parameterType, isOptional, defaultValue} from the package's root inputs."""
    return dict(spec["root"].get("inputDefinitions", {}).get("parameters", {}))


# The pipeline spec's parameter types: a description and a parser from the command-line text.
def _integer(text: str) -> int:
    if not re.fullmatch(r"\s*[+-]?\d+\s*", text):
        raise ValueError
    return int(text)


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError
    return value


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise ValueError


def _json_of(kind: type):
    def parse(text: str):
        value = json.loads(text)
        if not isinstance(value, kind):
            raise ValueError
        return value

    return parse


PARAMETER_TYPES = {
    "STRING": ("a string", str),
    "NUMBER_INTEGER": ("an integer", _integer),
    "NUMBER_DOUBLE": ("a number", _number),
    "BOOLEAN": ("a boolean (true/false)", _boolean),
    "LIST": ("a JSON list", _json_of(list)),
    "STRUCT": ("a JSON object", _json_of(dict)),
}


def parse_params(pairs: list[str], declared: dict[str, dict]) -> dict:
    """`key=value` pairs as run parameters typed per the declaration; every required one given."""
    known = ", ".join(sorted(declared))
    params: dict = {}
    for pair in pairs:
        key, equals, text = pair.partition("=")
        key = key.strip()
        if not equals or not key:
            raise SubmitError(f"--param {pair!r}: expected key=value")
        if key not in declared:
            raise SubmitError(f"--param {key}: the pipeline has no such parameter "
                              f"(parameters: {known})")
        if key in params:
            raise SubmitError(f"--param {key}: given more than once")
        kind = declared[key].get("parameterType", "STRING")
        description, parse = PARAMETER_TYPES.get(kind, ("a string", str))
        try:
            params[key] = parse(text)
        except ValueError:
            raise SubmitError(f"--param {key}={text}: {key} is {description}") from None
    missing = sorted(name for name, spec in declared.items()
                     if not spec.get("isOptional") and name not in params)
    if missing:
        raise SubmitError("missing required parameter(s): "
                          + ", ".join(f"--param {name}=..." for name in missing))
    return params


# ---------------------------------------------------------------------- the backend


def _api_message(body) -> str:
    """The `message` of a google.rpc.Status error body, else the body's first line."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    text = str(body or "").strip()
    with contextlib.suppress(ValueError, AttributeError):
        decoded = json.loads(text)
        text = str(decoded.get("message") or decoded.get("error") or text)
    return " ".join(text.split())[:300]


@contextlib.contextmanager
def api_errors(host: str, doing: str):
    """kfp's and the transport's exceptions as one-line SubmitErrors (never headers or tokens)."""
    import kfp_server_api
    import urllib3

    try:
        yield
    except kfp_server_api.ApiException as exc:
        message = _api_message(exc.body)
        status = f"HTTP {exc.status} {exc.reason or ''}".strip() if exc.status else exc.reason
        raise SubmitError(f"{doing}: KFP API at {host}: {status}"
                          + (f": {message}" if message else "")) from None
    except urllib3.exceptions.HTTPError as exc:
        reason = getattr(exc, "reason", None) or exc
        raise SubmitError(f"{doing}: cannot reach the KFP API at {host}: "
                          f"{' '.join(str(reason).split())}") from None
    except (TimeoutError, ValueError, OSError) as exc:
        raise SubmitError(f"{doing}: {' '.join(str(exc).split())}") from None


class _NoTracebacks(logging.Filter):
    """kfp logs a failed health check with logging.exception: the exception's text holds the
    HTTP response's headers (cookies of an auth proxy). Keep the message, drop the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True


def token_path() -> str | None:
    """Where kfp would read a projected service-account token, if the file is there (its
    content is read by kfp, per request, never here)."""
    from kfp import client as kfp_client

    path = os.environ.get(kfp_client.KF_PIPELINES_SA_TOKEN_ENV) or \
        kfp_client.KF_PIPELINES_SA_TOKEN_PATH
    return path if os.path.isfile(path) else None


def connect(host: str, namespace: str | None = None):
    """A kfp.Client for the API at `host` (port-forward or in-cluster URL).

    In a pod with a projected pipelines token, kfp's ServiceAccountTokenVolumeCredentials sends
    it (kfp.Client only does so by itself when no host is given). Without a namespace kfp asks
    the health endpoint whether the install is multi-user (then --namespace is needed).
    """
    import warnings

    import kfp
    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    path = token_path()
    credentials = ServiceAccountTokenVolumeCredentials(path) if path else None
    root = logging.getLogger()
    quiet = _NoTracebacks()
    root.addFilter(quiet)
    try:
        with api_errors(host, "connect"), warnings.catch_warnings():
            # "This client only works with Kubeflow Pipeline v2.0.0-beta.2 and later versions."
            warnings.simplefilter("ignore", FutureWarning)
            return kfp.Client(host=host, namespace=namespace or "kubeflow",
                              credentials=credentials)
    finally:
        root.removeFilter(quiet)


@contextlib.contextmanager
def _kfp_quiet():
    """kfp prints its own `Experiment details:` / `Run details:` links; we print ours."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def run_url(host: str, run_id: str) -> str:
    return f"{host.rstrip('/')}/#/runs/details/{run_id}"


def recurring_run_url(host: str, recurring_run_id: str) -> str:
    return f"{host.rstrip('/')}/#/recurringrun/details/{recurring_run_id}"


def experiment_id(client, name: str, namespace: str | None = None) -> str:
    """The experiment's id, created when it does not exist yet."""
    with _kfp_quiet():
        return client.create_experiment(name=name, namespace=namespace or None).experiment_id


def submit_run(client, package: str, params: dict, experiment: str, run_name: str,
               namespace: str | None = None):
    """Creates one run of the package; returns kfp's V2beta1Run."""
    exp_id = experiment_id(client, experiment, namespace)
    with _kfp_quiet():
        return client.run_pipeline(experiment_id=exp_id, job_name=run_name,
                                   pipeline_package_path=package, params=params)


def schedule_run(client, package: str, params: dict, cron: str, experiment: str, name: str,
                 namespace: str | None = None):
    """Creates an enabled recurring run on the cron schedule, one run at a time, missed runs
    not backfilled; returns kfp's V2beta1RecurringRun."""
    exp_id = experiment_id(client, experiment, namespace)
    with _kfp_quiet():
        return client.create_recurring_run(
            experiment_id=exp_id, job_name=name, cron_expression=check_cron(cron),
            pipeline_package_path=package, params=params, max_concurrency=1, no_catchup=True,
            enabled=True)


def wait_for_run(client, run_id: str, timeout_seconds: float,
                 poll_seconds: float | None = None, on_state=None):
    """The run once it is finished (FINISHED states); SubmitError(EXIT_TIMEOUT) at the deadline.

    `on_state(state)` is called whenever the state changes.
    """
    poll = POLL_SECONDS if poll_seconds is None else poll_seconds
    deadline = time.monotonic() + timeout_seconds
    last = None
    while True:
        run = client.get_run(run_id)
        state = str(run.state or "RUNTIME_STATE_UNSPECIFIED").upper()
        if state != last and on_state:
            on_state(state)
        last = state
        if state in FINISHED:
            return run
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise SubmitError(f"run {run_id} still {state} after {timeout_seconds / 60:g} "
                              "minute(s); the run continues on the backend", EXIT_TIMEOUT)
        time.sleep(min(poll, remaining))


def failed_tasks(run) -> list:
    """The failed tasks that are not just the parents of a failed task (the DAG, a condition)."""
    details = getattr(run, "run_details", None)
    tasks = list(getattr(details, "task_details", None) or [])
    failed = [t for t in tasks if str(t.state or "").upper() == "FAILED"]
    ids = {t.task_id for t in failed}
    parents = {t.parent_task_id for t in failed} | {
        t.task_id for t in failed if any(c.task_id in ids for c in t.child_tasks or [])}
    leaves = [t for t in failed if t.task_id not in parents]
    return leaves or failed


def failure_reason(run) -> str:
    """One line: the state, the failed task(s) and the error message the API gives."""
    state = str(run.state or "").upper()
    tasks = failed_tasks(run)
    parts = [f"run {run.run_id} {state.lower()}"]
    if tasks:
        names = ", ".join(t.display_name or t.task_id or "?" for t in tasks)
        parts = [f"{parts[0]} in task {names}"]
    messages = [t.error.message for t in tasks if t.error and t.error.message]
    if not messages and run.error and run.error.message:
        messages = [run.error.message]
    if messages:
        parts.append(" ".join(" | ".join(messages).split())[:500])
    return ": ".join(parts)


def default_name() -> str:
    return f"{PIPELINE_NAME} {dt.datetime.now(dt.UTC):%Y-%m-%d %H-%M-%S}"


def submit_package(package: str, host: str, *, params: list[str], experiment: str | None = None,
                   run_name: str | None = None, namespace: str | None = None,
                   cron: str | None = None, wait: bool = False,
                   timeout_minutes: float | None = None, client=None, out=None) -> int:
    """`pipeline.py --submit/--schedule` after compiling: checks, then one run (optionally
    waited for) or a recurring run. Prints the UI link; returns the exit code, raising
    SubmitError (one line, its exit code) for what stops it."""
    out = out or sys.stdout
    host = check_host(host)
    if cron is not None:
        cron = check_cron(cron)
    typed = parse_params(params, declared_parameters(read_package(package)))
    experiment = experiment or DEFAULT_EXPERIMENT
    name = run_name or (f"{PIPELINE_NAME} on {cron!r}" if cron else default_name())
    if client is None:
        client = connect(host, namespace)
    if cron is not None:
        with api_errors(host, "create the recurring run"):
            recurring = schedule_run(client, package, typed, cron, experiment, name, namespace)
        print(f"recurring run {name!r} (cron {cron!r}, UTC) in experiment {experiment!r}: "
              f"{recurring_run_url(host, recurring.recurring_run_id)}", file=out)
        return 0
    with api_errors(host, "create the run"):
        run = submit_run(client, package, typed, experiment, name, namespace)
    url = run_url(host, run.run_id)
    print(f"run {name!r} in experiment {experiment!r}: {url}", file=out, flush=True)
    if not wait:
        return 0
    with api_errors(host, f"wait for run {run.run_id}"):
        limit = math.inf if timeout_minutes is None else timeout_minutes * 60
        finished = wait_for_run(client, run.run_id, limit,
                                on_state=lambda s: print(f"run {run.run_id}: {s}", file=out,
                                                         flush=True))
    if str(finished.state).upper() != "SUCCEEDED":
        raise SubmitError(f"{failure_reason(finished)} ({url})", EXIT_RUN_FAILED)
    print(f"run {run.run_id} succeeded: {url}", file=out)
    return 0
