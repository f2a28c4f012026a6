"""Submitting to a Kubeflow Pipelines backend: the real kfp.Client against a fake KFP API server.

The fake (http.server on 127.0.0.1, in a thread) serves the v2beta1 REST endpoints kfp.Client
calls for a run and a recurring run: healthz, experiments (list by name, get, create), runs
(create, get) and recurring runs (create). It records every request, so the tests see what
kfp.Client sent and that a rejected command sent nothing.
"""

from __future__ import annotations

import itertools
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

kfp = pytest.importorskip("kfp")  # the pipeline-SDK environment (.venv-sdk) only

pytestmark = pytest.mark.sdk

import pipeline  # noqa: E402
from orchestration import definition, submit  # noqa: E402

API = "/apis/v2beta1"


class FakeKfpApi:
    """State and routes of the fake API server; `requests` is every (method, path, query, body).

    `states` are the successive states GET runs/{id} answers (the last one repeats);
    `failure` is the run_details and error of a FAILED run.
    """

    def __init__(self, multi_user: bool = False):
        self.multi_user = multi_user
        self.requests: list[tuple[str, str, dict, dict | None]] = []
        self.authorization: list[str | None] = []  # each request's Authorization header
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.recurring_runs: dict[str, dict] = {}
        self.states = ["SUCCEEDED"]
        self.failure: dict = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._served: dict[str, int] = {}

    def handle(self, method: str, path: str, query: dict, body: dict | None):
        with self._lock:
            self.requests.append((method, path, query, body))
            parts = path.removeprefix(API).strip("/").split("/")
            route = (method, parts[0], len(parts))
            if route == ("GET", "healthz", 1):
                return 200, {"multi_user": self.multi_user, "pipeline_store": "database"}
            if route == ("GET", "experiments", 1):
                return 200, self._list_experiments(query)
            if route == ("GET", "experiments", 2) and parts[1] in self.experiments:
                return 200, self.experiments[parts[1]]
            if route == ("POST", "experiments", 1):
                experiment = {**body, "experiment_id": f"exp-{next(self._ids)}",
                              "created_at": "2024-05-01T00:00:00Z", "storage_state": "AVAILABLE"}
                self.experiments[experiment["experiment_id"]] = experiment
                return 200, experiment
            if route == ("POST", "runs", 1):
                run = {**body, "run_id": f"run-{next(self._ids)}", "state": "PENDING",
                       "created_at": "2024-05-01T00:00:00Z", "storage_state": "AVAILABLE"}
                self.runs[run["run_id"]] = run
                return 200, run
            if route == ("GET", "runs", 2) and parts[1] in self.runs:
                return 200, self._run_now(parts[1])
            if route == ("POST", "recurringruns", 1):
                recurring = {**body, "recurring_run_id": f"rr-{next(self._ids)}",
                             "status": "ENABLED", "created_at": "2024-05-01T00:00:00Z"}
                self.recurring_runs[recurring["recurring_run_id"]] = recurring
                return 200, recurring
            return 404, {"code": 5, "message": f"{method} {path}: not found (fake KFP API)"}

    def _list_experiments(self, query: dict) -> dict:
        name = None
        if "filter" in query:
            predicates = json.loads(query["filter"][0])["predicates"]
            name = next(p["stringValue"] for p in predicates if p["key"] == "display_name")
        namespace = query.get("namespace", [""])[0]
        found = [e for e in self.experiments.values()
                 if (name is None or e["display_name"] == name)
                 and (e.get("namespace") or "") == namespace]
        return {"experiments": found, "total_size": len(found)} if found else {}

    def _run_now(self, run_id: str) -> dict:
        served = self._served.get(run_id, 0)
        self._served[run_id] = served + 1
        state = self.states[min(served, len(self.states) - 1)]
        run = {**self.runs[run_id], "state": state}
        if state == "FAILED":
            run.update(self.failure)
        return run

    def calls(self, method: str | None = None, path: str | None = None) -> list:
        return [r for r in self.requests
                if (method is None or r[0] == method) and (path is None or r[1] == API + path)]


def serve(api: FakeKfpApi):
    class Handler(BaseHTTPRequestHandler):
        def _answer(self, method: str):
            url = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            api.authorization.append(self.headers.get("Authorization"))
            status, payload = api.handle(method, url.path, parse_qs(url.query), body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 (http.server's naming)
            self._answer("GET")

        def do_POST(self):  # noqa: N802
            self._answer("POST")

        def log_message(self, *args):  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture
def fake_kfp(monkeypatch, tmp_path):
    """A fresh fake API, its URL in `.url`; kfp's context file and token path kept out of HOME."""
    from kfp.client import client as kfp_client

    monkeypatch.setattr(kfp_client.Client, "_LOCAL_KFP_CONTEXT",
                        str(tmp_path / "kfp-context.json"))
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.delenv("KF_PIPELINES_UI_ENDPOINT", raising=False)
    monkeypatch.setattr(submit, "POLL_SECONDS", 0.05)
    api = FakeKfpApi()
    server, thread = serve(api)
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield api
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def run_cli(tmp_path, *args: str) -> int:
    return pipeline.main(["--output", str(tmp_path / "pipeline.yaml"), *args])


def test_submit_creates_a_run_from_the_compiled_package(fake_kfp, tmp_path, capsys):
    code = run_cli(tmp_path, "--submit", "--host", fake_kfp.url + "/", "--experiment", "nightly",
                   "--run-name", "try-1", "--image-registry", "registry.example.com/ml",
                   "--image-tag", "1.2.3", "--s3-secret", "my-minio",
                   "--param", "source=s3://data/complaints.csv",
                   "--param", "canary_percent=25", "--param", "fail_on_anomalies=false")
    assert code == 0
    (run_id,) = fake_kfp.runs
    out = capsys.readouterr().out
    assert f"{fake_kfp.url}/#/runs/details/{run_id}" in out

    assert fake_kfp.calls("GET", "/healthz")  # kfp asks whether the install is multi-user
    # the experiment: looked up by name, then created
    (_, _, query, _), = fake_kfp.calls("GET", "/experiments")
    assert json.loads(query["filter"][0])["predicates"][0]["stringValue"] == "nightly"
    (_, _, _, experiment), = fake_kfp.calls("POST", "/experiments")
    assert experiment["display_name"] == "nightly"
    (experiment_id,) = fake_kfp.experiments

    (_, _, _, body), = fake_kfp.calls("POST", "/runs")
    assert body["experiment_id"] == experiment_id
    assert body["display_name"] == "try-1"
    assert body["runtime_config"]["parameters"] == {
        "source": "s3://data/complaints.csv", "canary_percent": 25, "fail_on_anomalies": False}
    # the package compiled with the same options as --compile: images, Secret
    package = list(yaml.safe_load_all((tmp_path / "pipeline.yaml").read_text()))
    sent = body["pipeline_spec"]
    assert sent["pipeline_spec"]["pipelineInfo"]["name"] == definition.PIPELINE_NAME
    assert sent["pipeline_spec"]["root"] == json.loads(json.dumps(package[0]["root"]))
    images = {e["container"]["image"]
              for e in sent["pipeline_spec"]["deploymentSpec"]["executors"].values()}
    assert images == {e["container"]["image"]
                      for e in package[0]["deploymentSpec"]["executors"].values()}
    assert all(i.startswith("registry.example.com/ml/") and i.endswith(":1.2.3")
               for i in images)
    secrets = {s["secretName"] for e in sent["platform_spec"]["platforms"]["kubernetes"]
               ["deploymentSpec"]["executors"].values() for s in e["secretAsEnv"]}
    assert secrets == {"my-minio"}
    assert not fake_kfp.calls("GET", f"/runs/{run_id}")  # no --wait: no polling


def test_an_existing_experiment_is_reused_and_namespace_sent(fake_kfp, tmp_path):
    fake_kfp.experiments["exp-0"] = {"experiment_id": "exp-0", "display_name": "Default",
                                     "namespace": "team-a"}
    assert run_cli(tmp_path, "--submit", "--host", fake_kfp.url, "--namespace", "team-a",
                   "--param", "source=s3://d/c.csv") == 0
    assert not fake_kfp.calls("POST", "/experiments")
    assert not fake_kfp.calls("GET", "/healthz")  # with a namespace kfp does not ask
    (_, _, query, _), = fake_kfp.calls("GET", "/experiments")
    assert query["namespace"] == ["team-a"]
    (_, _, _, body), = fake_kfp.calls("POST", "/runs")
    assert body["experiment_id"] == "exp-0"


def test_wait_returns_zero_when_the_run_succeeds(fake_kfp, tmp_path, capsys):
    fake_kfp.states = ["PENDING", "RUNNING", "RUNNING", "SUCCEEDED"]
    assert run_cli(tmp_path, "--submit", "--host", fake_kfp.url, "--wait",
                   "--param", "source=s3://d/c.csv") == 0
    (run_id,) = fake_kfp.runs
    assert len(fake_kfp.calls("GET", f"/runs/{run_id}")) == 4
    out = capsys.readouterr().out
    assert f"run {run_id}: RUNNING" in out and f"run {run_id} succeeded" in out


def test_wait_fails_with_the_failed_task_and_its_error(fake_kfp, tmp_path, capsys):
    fake_kfp.states = ["RUNNING", "FAILED"]
    fake_kfp.failure = {
        "error": {"code": 9, "message": "run failed"},
        "run_details": {"task_details": [
            {"task_id": "t-root", "display_name": "root", "state": "FAILED"},
            {"task_id": "t-ingest", "display_name": "ingest", "state": "SUCCEEDED",
             "parent_task_id": "t-root"},
            {"task_id": "t-validate", "display_name": "validate", "state": "FAILED",
             "parent_task_id": "t-root",
             "error": {"code": 2, "message": "validate: 3 anomalies in\nexamples"}},
        ]},
    }
    code = run_cli(tmp_path, "--submit", "--host", fake_kfp.url, "--wait",
                   "--param", "source=s3://d/c.csv")
    assert code == submit.EXIT_RUN_FAILED
    (run_id,) = fake_kfp.runs
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: pipeline: ")
    assert f"run {run_id} failed in task validate: " in err and "root" not in err
    assert "validate: 3 anomalies in examples" in err
    assert f"{fake_kfp.url}/#/runs/details/{run_id}" in err


def test_a_failed_run_without_task_details_reports_the_run_error(fake_kfp):
    fake_kfp.states = ["FAILED"]
    fake_kfp.failure = {"error": {"code": 13, "message": "pod evicted"}}
    fake_kfp.runs["r"] = {"run_id": "r", "display_name": "x"}
    client = submit.connect(fake_kfp.url)
    run = submit.wait_for_run(client, "r", timeout_seconds=5)
    assert submit.failure_reason(run) == "run r failed: pod evicted"


def test_wait_gives_up_at_the_timeout(fake_kfp, tmp_path, capsys):
    fake_kfp.states = ["RUNNING"]
    code = run_cli(tmp_path, "--submit", "--host", fake_kfp.url, "--wait",
                   "--timeout-minutes", "0.005", "--param", "source=s3://d/c.csv")
    assert code == submit.EXIT_TIMEOUT
    (run_id,) = fake_kfp.runs
    assert len(fake_kfp.calls("GET", f"/runs/{run_id}")) >= 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"run {run_id} still RUNNING after 0.005 minute(s)" in err


@pytest.mark.parametrize(("params", "message"), [
    (["source=s3://d/c.csv", "sorce=x"], "--param sorce: the pipeline has no such parameter "
                                         "(parameters: canary_percent, data_store,"),
    (["source=s3://d/c.csv", "canary_percent=ten"], "--param canary_percent=ten: "
                                                    "canary_percent is an integer"),
    (["source=s3://d/c.csv", "canary_percent=2.5"], "canary_percent is an integer"),
    (["source=s3://d/c.csv", "fail_on_anomalies=maybe"], "fail_on_anomalies is a boolean"),
    (["source"], "--param 'source': expected key=value"),
    (["source=a", "source=b"], "--param source: given more than once"),
    (["canary_percent=5"], "missing required parameter(s): --param source=..."),
])
def test_bad_params_are_rejected_before_any_request(fake_kfp, tmp_path, capsys, params,
                                                    message):
    args = [a for p in params for a in ("--param", p)]
    assert run_cli(tmp_path, "--submit", "--host", fake_kfp.url, *args) == submit.EXIT_REJECTED
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err
    assert fake_kfp.requests == []


def test_schedule_creates_a_recurring_run(fake_kfp, tmp_path, capsys):
    code = run_cli(tmp_path, "--schedule", "0  0 2 * * MON-FRI", "--host", fake_kfp.url,
                   "--run-name", "nightly", "--param", "source=s3://d/c.csv",
                   "--param", "canary_percent=5")
    assert code == 0
    assert not fake_kfp.calls("POST", "/runs")
    (_, _, _, body), = fake_kfp.calls("POST", "/recurringruns")
    (recurring_id,) = fake_kfp.recurring_runs
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 2 * * MON-FRI"}}
    assert body["display_name"] == "nightly"
    assert body["mode"] == "ENABLE" and body["max_concurrency"] == 1 and body["no_catchup"]
    assert body["runtime_config"]["parameters"] == {"source": "s3://d/c.csv", "canary_percent": 5}
    assert body["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == \
        definition.PIPELINE_NAME
    assert body["experiment_id"] in fake_kfp.experiments
    assert f"{fake_kfp.url}/#/recurringrun/details/{recurring_id}" in capsys.readouterr().out


@pytest.mark.parametrize(("cron", "message"), [
    ("0 2 * * *", "KFP cron has 6 fields (second minute hour day-of-month month day-of-week), "
                  "got 5; the 5-field crontab '0 2 * * *' is '0 0 2 * * *' in KFP"),
    ("0 0 24 * * *", "hour field '24': 24 is outside 0-23"),
    ("0 0 2 0 * *", "day-of-month field '0': 0 is outside 1-31"),
    ("0 0 2 * 13 *", "month field '13': 13 is outside 1-12"),
    ("0 0 2 * * FUN", "day-of-week field 'FUN': 'FUN' is not a number or a name"),
    ("0 */0 * * * *", "minute field '*/0': step '0' is not a positive whole number"),
    ("0 0 5-2 * * *", "hour field '5-2': range '5-2' runs backwards"),
    ("0 0 1,,2 * * *", "hour field '1,,2': empty list item"),
    ("@daily", "got 1"),
])
def test_a_bad_cron_is_rejected_before_any_request(fake_kfp, tmp_path, capsys, cron, message):
    code = run_cli(tmp_path, "--schedule", cron, "--host", fake_kfp.url,
                   "--param", "source=s3://d/c.csv")
    assert code == submit.EXIT_REJECTED
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err
    assert fake_kfp.requests == []
    assert not (tmp_path / "pipeline.yaml").exists()  # checked before compiling


@pytest.mark.parametrize("cron", ["0 0 2 * * *", "*/30 * * * * ?", "0 0 9 ? * 2-6",
                                  "0 15 10 1,15 jan-jun sun", "5/10 0 0 * * *"])
def test_kfp_cron_expressions_pass(cron):
    assert submit.check_cron(cron) == cron


def test_the_api_error_is_one_line_without_headers(fake_kfp, tmp_path, capsys):
    def refuse(method, path, query, body):
        fake_kfp.requests.append((method, path, query, body))
        if path.endswith("/runs"):
            return 400, {"code": 3, "message": "Invalid input error: bad\nspec"}
        return FakeKfpApi.handle(fake_kfp, method, path, query, body)

    fake_kfp.handle = refuse
    code = run_cli(tmp_path, "--submit", "--host", fake_kfp.url, "--param", "source=x")
    assert code == submit.EXIT_REJECTED
    err = capsys.readouterr().err.strip()
    assert err == (f"error: pipeline: create the run: KFP API at {fake_kfp.url}: HTTP 400 "
                   "Bad Request: Invalid input error: bad spec")


def test_an_unreachable_host_is_one_line(tmp_path, capsys, monkeypatch):
    from kfp.client import client as kfp_client

    monkeypatch.setattr(kfp_client.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "ctx.json"))
    server, thread = serve(FakeKfpApi())
    url = f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
    code = run_cli(tmp_path, "--submit", "--host", url, "--param", "source=x")
    assert code == submit.EXIT_REJECTED
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: pipeline: connect: cannot reach the KFP API at {url}")
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize(("args", "message"), [
    (["--submit"], "--submit/--schedule need --host URL"),
    (["--compile", "--param", "source=x"], "--param: only with --submit or --schedule"),
    (["--schedule", "0 0 2 * * *", "--host", "http://h", "--wait"], "--wait: only for"),
    (["--submit", "--run", "local", "--host", "http://h"], "pick one"),
])
def test_flag_combinations(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exited:
        run_cli(tmp_path, *args)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_host_needs_a_scheme(tmp_path, capsys):
    assert run_cli(tmp_path, "--submit", "--host", "localhost:8080",
                   "--param", "source=x") == submit.EXIT_REJECTED
    assert "expected an http:// or https:// URL" in capsys.readouterr().err


def test_the_pod_token_is_sent_by_kfp_and_never_printed(fake_kfp, tmp_path, monkeypatch,
                                                         capsys):
    """In a pod kfp reads the projected token file itself and sends it as a Bearer header."""
    token = tmp_path / "token"
    token.write_text("sa-token-value\n")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))
    assert run_cli(tmp_path, "--submit", "--host", fake_kfp.url, "--param", "source=x") == 0
    assert fake_kfp.authorization and set(fake_kfp.authorization) == {"Bearer sa-token-value"}
    printed = capsys.readouterr()
    assert "sa-token-value" not in printed.out + printed.err


def test_no_token_file_no_authorization(fake_kfp, tmp_path):
    assert run_cli(tmp_path, "--submit", "--host", fake_kfp.url, "--param", "source=x") == 0
    assert set(fake_kfp.authorization) == {None}


def test_a_refused_health_check_logs_no_response_headers(fake_kfp, tmp_path, monkeypatch,
                                                          capsys, caplog):
    """kfp retries healthz and logs each failure with the exception (HTTP headers): kept out."""
    from kfp.client import client as kfp_client

    def refuse(method, path, query, body):
        fake_kfp.requests.append((method, path, query, body))
        return 401, {"code": 16, "message": "login required"}

    fake_kfp.handle = refuse
    monkeypatch.setattr(kfp_client.time, "sleep", lambda seconds: None)
    code = run_cli(tmp_path, "--submit", "--host", fake_kfp.url, "--param", "source=x")
    assert code == submit.EXIT_REJECTED
    assert len(fake_kfp.calls("GET", "/healthz")) == 5
    err = capsys.readouterr().err.strip()
    assert err == "error: pipeline: connect: Failed getting healthz endpoint after 5 attempts."
    logged = [r for r in caplog.records if "healthz" in r.getMessage()]
    assert logged and all(r.exc_info is None and r.exc_text is None for r in logged)
    assert "HTTP response headers" not in caplog.text
