"""Tests for the deploy step: the local target (deployment.json, model_config, CLI, executor
output) and the KServe target against a local fake Kubernetes API server.

The fake server (http.server on 127.0.0.1 in a thread) implements GET, POST and merge-PATCH of
`/apis/serving.kserve.io/v1beta1/namespaces/<ns>/inferenceservices[/<name>]`, keeps objects in
a dict, bumps metadata.generation on every write and sets the Ready condition either at once or
never; the real `kubernetes` client talks to it over HTTP.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from components.common.artifacts import deployment
from components.common.errors import StepError
from components.deploy import kserve
from components.deploy.deploy import STATUS_NOT_PUSHED, deploy

MODULE = "components.deploy"
NAME = "cfpb-dispute"
NS = "models"


def make_registry(root: Path, versions=(1, 2, 3)) -> str:
    """A registry per the push contract: index.json and <N>/ directories (fake model bytes)."""
    base = root / NAME
    for n in versions:
        (base / str(n) / "variables").mkdir(parents=True)
        (base / str(n) / "saved_model.pb").write_bytes(b"model %d" % n)
        (base / str(n) / "variables" / "variables.index").write_bytes(b"vars %d" % n)
    index = {"model_name": NAME, "current": max(versions),
             "versions": [{"version": n, "semver": f"1.{n}.0", "model_id": f"id{n}",
                           "uri": str(base / str(n)), "tensorflow_version": "2.16.2"}
                          for n in versions]}
    (base / "index.json").write_text(json.dumps(index))
    return str(root)


@pytest.fixture
def registry_root(tmp_path) -> str:
    return make_registry(tmp_path / "registry")


def executor_input(tmp_path: Path) -> dict:
    return {
        "inputs": {"artifacts": {}, "parameterValues": {}},
        "outputs": {
            "artifacts": {"deployment": {"artifacts": [
                {"name": "deployment", "uri": str(tmp_path / "deployment")}]}},
            "parameters": {"deployed": {"outputFile": str(tmp_path / "d")},
                           "revision": {"outputFile": str(tmp_path / "r")}},
            "outputFile": str(tmp_path / "out" / "executor_output.json"),
        },
    }


def run_deploy(cli, tmp_path, *args):
    output_file = tmp_path / "out" / "executor_output.json"
    output_file.unlink(missing_ok=True)
    result = cli(MODULE, *args, "--executor-input", json.dumps(executor_input(tmp_path)))
    output = json.loads(output_file.read_text()) if output_file.exists() else None
    return result, output


# --- local target ------------------------------------------------------------------------------

def test_local_canary_promote_rollback_update_the_record(registry_root, tmp_path):
    out = tmp_path / "out1"
    first = deploy(registry_root, NAME, 2, "promote", output=str(out))
    assert first["deployed"] and first["revision"] == 1 and first["traffic"] == {"2": 100}
    second = deploy(registry_root, NAME, 3, "canary", canary_percent=20, output=str(out))
    assert second["traffic"] == {"2": 80, "3": 20} and second["revision"] == 2
    record = deployment.load(registry_root, NAME)
    assert record == json.loads((out / "deployment.json").read_text())
    assert (out / "model_config.pbtxt").read_text() == deployment.tf_serving_model_config(
        record, NAME, str(Path(registry_root) / NAME))
    assert json.loads((out / "deploy.json").read_text())["revision"] == 2
    again = deploy(registry_root, NAME, 3, "canary", canary_percent=20)
    assert again["status"] == "unchanged" and again["revision"] == 2
    back = deploy(registry_root, NAME, None, "rollback")
    assert back["traffic"] == {"2": 100} and back["revision"] == 3 and back["version"] == 2


def test_local_rejects_a_version_not_in_the_index(registry_root):
    with pytest.raises(StepError, match="version 7 is not in the registry index"):
        deploy(registry_root, NAME, 7, "canary")
    assert not (Path(registry_root) / NAME / "deployment.json").exists()


def test_not_pushed_is_a_skip_that_touches_nothing(tmp_path):
    missing = str(tmp_path / "no-registry")
    for kwargs in ({"pushed": False, "version_": 3}, {"pushed": True, "version_": 0}):
        result = deploy(missing, NAME, kwargs["version_"], "canary", pushed=kwargs["pushed"],
                        target="kserve")
        assert result["deployed"] is False and result["status"] == STATUS_NOT_PUSHED
        assert result["revision"] == 0
    assert not Path(missing).exists()


def test_cli_local_writes_record_config_and_executor_output(registry_root, tmp_path, cli):
    result, output = run_deploy(cli, tmp_path, "--registry", registry_root, "--model-name", NAME,
                                "--version", "3", "--strategy", "canary", "--pushed", "true",
                                "--target", "local", "--namespace", "", "--service-name", "")
    assert result.returncode == 0, result.stderr
    assert output["parameterValues"] == {"deployed": True, "revision": 1}
    metadata = output["artifacts"]["deployment"]["artifacts"][0]["metadata"]
    assert metadata["status"] == "deployed" and metadata["traffic"] == {"3": 100}
    artifact_dir = tmp_path / "deployment"
    assert {p.name for p in artifact_dir.iterdir()} == {
        "deploy.json", "deployment.json", "model_config.pbtxt"}
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    config = text_format.Parse((artifact_dir / "model_config.pbtxt").read_text(),
                               model_server_config_pb2.ModelServerConfig())
    assert dict(config.model_config_list.config[0].version_labels) == {"stable": 3}


def test_cli_not_pushed_exits_zero_with_deployed_false(tmp_path, cli):
    result, output = run_deploy(cli, tmp_path, "--registry", str(tmp_path / "none"),
                                "--model-name", NAME, "--version", "0", "--pushed", "false")
    assert result.returncode == 0, result.stderr
    assert output["parameterValues"] == {"deployed": False, "revision": 0}
    assert json.loads((tmp_path / "deployment" / "deploy.json").read_text())["status"] == (
        STATUS_NOT_PUSHED)


@pytest.mark.parametrize("args, message", [
    (["--version", "9"], "version 9 is not in the registry index"),
    (["--strategy", "rollback"], "nothing to roll back"),
    (["--version", "2", "--canary-percent", "150"], "canary percent 150"),
    (["--version", "2", "--strategy", "sideways"], "invalid choice"),
    (["--version", "2", "--pushed", "maybe"], "not a boolean"),
    (["--strategy", "promote"], "needs --version"),
])
def test_cli_errors_are_one_line_with_exit_code_2(registry_root, tmp_path, cli, args, message):
    result, output = run_deploy(cli, tmp_path, "--registry", registry_root,
                                "--model-name", NAME, *args)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: deploy: ") and message in lines[0]
    assert "Traceback" not in result.stderr
    assert output is None


# --- KServe target: a fake Kubernetes API server --------------------------------------------

class FakeKube:
    """InferenceServices in a dict; `ready` is "now" (Ready at once), "never" or "failed"."""

    PATH = re.compile(r"^/apis/serving\.kserve\.io/v1beta1/namespaces/([^/]+)/inferenceservices"
                      r"(?:/([^/?]+))?")

    def __init__(self, ready: str = "now"):
        self.ready = ready
        # statuses to answer the next requests with, in order (0: answer normally)
        self.failures: list[int] = []
        self.objects: dict[tuple[str, str], dict] = {}
        self.requests: list[tuple[str, str, str | None, dict | None]] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str):
                match = fake.PATH.match(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                with fake.lock:
                    fake.requests.append((method, self.path, self.headers.get("Content-Type"),
                                          body))
                    if not match:
                        return self._send(404, {"kind": "Status", "reason": "NotFound"})
                    status = fake.failures.pop(0) if fake.failures else 0
                    if status:
                        return self._send(status, {"kind": "Status", "code": status,
                                                   "reason": "InjectedFailure"})
                    code, obj = fake.handle(method, match[1], match[2], body)
                self._send(code, obj)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def do_PATCH(self):
                self._handle("PATCH")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.host = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def _status(self, obj: dict) -> dict:
        generation = obj["metadata"]["generation"]
        if self.ready == "now":
            condition = {"type": "Ready", "status": "True"}
        elif self.ready == "failed":
            condition = {"type": "Ready", "status": "False", "reason": "RevisionFailed",
                         "message": "Revision failed: storage initializer could not download"}
        else:
            condition = {"type": "Ready", "status": "Unknown", "reason": "RevisionMissing",
                         "message": "Configuration is waiting for a Revision to become ready."}
        return {"observedGeneration": generation, "conditions": [condition],
                "url": f"http://{obj['metadata']['name']}.example.com"}

    def handle(self, method, namespace, name, body):
        if method == "GET":
            obj = self.objects.get((namespace, name))
            return (200, obj) if obj else (404, {"kind": "Status", "reason": "NotFound",
                                                 "code": 404})
        if method == "POST":
            key = (namespace, body["metadata"]["name"])
            if key in self.objects:
                return 409, {"kind": "Status", "reason": "AlreadyExists", "code": 409}
            obj = json.loads(json.dumps(body))
            obj["metadata"]["generation"] = 1
            obj["status"] = self._status(obj)
            self.objects[key] = obj
            return 201, obj
        obj = self.objects.get((namespace, name))
        if obj is None:
            return 404, {"kind": "Status", "reason": "NotFound", "code": 404}
        merged = merge_patch(obj, body)
        merged["metadata"]["generation"] = obj["metadata"]["generation"] + 1
        merged["status"] = self._status(merged)
        self.objects[(namespace, name)] = merged
        return 200, merged

    def writes(self) -> list[tuple[str, str | None, dict]]:
        return [(m, ct, b) for m, _p, ct, b in self.requests if m != "GET"]


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


@pytest.fixture
def fake_kube():
    servers = []

    def make(ready: str = "now") -> tuple[FakeKube, kserve.KServeApi]:
        from kubernetes import client

        fake = FakeKube(ready)
        servers.append(fake)
        api_client = client.ApiClient(client.Configuration(host=fake.host))
        return fake, kserve.KServeApi(api_client)

    yield make
    for fake in servers:
        fake.close()


def target(prefix: str, service_account: str | None = "minio-reader") -> kserve.Target:
    return kserve.Target(namespace=NS, name="cfpb-dispute", storage_uri_prefix=prefix,
                         service_account=service_account)


def check_manifest_shape(obj: dict) -> None:
    assert obj["apiVersion"] == "serving.kserve.io/v1beta1"
    assert obj["kind"] == "InferenceService"
    assert obj["metadata"]["name"] == "cfpb-dispute" and obj["metadata"]["namespace"] == NS
    predictor = obj["spec"]["predictor"]
    assert predictor["model"]["modelFormat"] == {"name": "tensorflow"}
    # TF Serving 2.16.1 for models exported by TF 2.16 (KServe's default 2.6 cannot load them)
    assert predictor["model"]["runtimeVersion"] == "2.16.1"
    assert predictor["model"]["storageUri"]
    assert "env" not in predictor and "secret" not in json.dumps(obj).lower()


def uri(prefix: str, n: int) -> str:
    return f"{prefix}/{NAME}/serving/{n}"


RUNTIMES = {n: "2.16.1" for n in (1, 2, 3)}


def test_manifest_shape_and_storage_layout():
    record = deployment.canary(deployment.promote(deployment.empty_record(NAME), 2), 3, 10)
    body = kserve.manifest(target("s3://models/registry"), NAME, record, RUNTIMES)
    check_manifest_shape(body)
    assert body["spec"]["predictor"]["model"]["storageUri"] == uri("s3://models/registry", 3)
    assert body["spec"]["predictor"]["serviceAccountName"] == "minio-reader"
    assert body["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert json.loads(body["metadata"]["annotations"][kserve.A_RECORD]) == record
    stable_only = deployment.promote(record, 3)
    predictor = kserve.manifest(target("s3://m", None), NAME, stable_only,
                                RUNTIMES)["spec"]["predictor"]
    assert "serviceAccountName" not in predictor and "canaryTrafficPercent" not in predictor
    assert predictor["model"]["storageUri"] == uri("s3://m", 3)


def test_kserve_canary_promote_rollback_manifests(registry_root, fake_kube, tmp_path):
    fake, api = fake_kube("now")
    prefix = registry_root
    t = target(prefix)
    run = {"target": "kserve", "kserve_target": t, "kserve_api": api, "timeout_seconds": 5,
           "poll_seconds": 0.05}

    first = deploy(registry_root, NAME, 2, "canary", **run)
    (method, _ct, body), = fake.writes()
    assert method == "POST"
    check_manifest_shape(body)
    assert body["spec"]["predictor"]["model"]["storageUri"] == uri(prefix, 2)
    assert "canaryTrafficPercent" not in body["spec"]["predictor"]  # nothing to split with
    assert first["deployed"] and first["revision"] == 1
    # the serving view holds version 2 as <N>/ (TF Serving layout under storageUri)
    view = Path(uri(prefix, 2)) / "2"
    assert (view / "saved_model.pb").read_bytes() == b"model 2"
    assert (view / "variables" / "variables.index").exists()

    canary = deploy(registry_root, NAME, 3, "canary", canary_percent=10, **run)
    method, content_type, patch = fake.writes()[-1]
    assert method == "PATCH" and content_type == "application/merge-patch+json"
    assert patch["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert patch["spec"]["predictor"]["model"]["storageUri"] == uri(prefix, 3)
    stored = fake.objects[(NS, "cfpb-dispute")]
    check_manifest_shape(stored)
    assert stored["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert canary["canary_traffic_percent"] == 10 and canary["revision"] == 2

    promoted = deploy(registry_root, NAME, 3, "promote", **run)
    _m, _ct, patch = fake.writes()[-1]
    assert patch["spec"]["predictor"]["canaryTrafficPercent"] is None  # removed: 100% to it
    stored = fake.objects[(NS, "cfpb-dispute")]
    assert "canaryTrafficPercent" not in stored["spec"]["predictor"]
    assert stored["spec"]["predictor"]["model"]["storageUri"] == uri(prefix, 3)
    assert promoted["canary_traffic_percent"] is None and promoted["version"] == 3

    # The one rollback rule (the local target's): back to the previous state, the canary
    # split. KServe splits a canary against the revision last rolled out at 100%, so version 2
    # is rolled out first, then version 3 gets its 10% again.
    writes = len(fake.writes())
    back = deploy(registry_root, NAME, None, "rollback", **run)
    (_m, _ct, stable_first), (_m2, _ct2, canary_again) = fake.writes()[writes:]
    assert stable_first["spec"]["predictor"]["model"]["storageUri"] == uri(prefix, 2)
    assert stable_first["spec"]["predictor"]["canaryTrafficPercent"] is None
    assert "metadata" not in stable_first  # the record changes once the rollout is complete
    assert canary_again["spec"]["predictor"]["model"]["storageUri"] == uri(prefix, 3)
    assert canary_again["spec"]["predictor"]["canaryTrafficPercent"] == 10
    stored = fake.objects[(NS, "cfpb-dispute")]
    check_manifest_shape(stored)
    assert back["version"] == 2 and back["revision"] == 4
    assert back["traffic"] == {"2": 90, "3": 10} and back["canary_traffic_percent"] == 10
    record = json.loads(stored["metadata"]["annotations"][kserve.A_RECORD])
    assert record["traffic"] == back["traffic"] and record["revision"] == 4


def timeless(record: dict) -> dict:
    """A record without its clock times (the two targets apply a step a moment apart)."""
    return {**{k: v for k, v in record.items() if k != "updated_at"},
            "history": [{k: v for k, v in entry.items() if k != "at"}
                        for entry in record["history"]]}


def test_kserve_and_local_targets_follow_the_same_rules(registry_root, fake_kube, tmp_path):
    """One record type, one set of rules: the same strategies give the same records."""
    fake, api = fake_kube("now")
    local_registry = make_registry(tmp_path / "local")
    run = {"target": "kserve", "kserve_target": target(registry_root), "kserve_api": api,
           "timeout_seconds": 5, "poll_seconds": 0.05}
    steps = [(1, "promote", 10), (2, "canary", 20), (3, "canary", 5), (3, "promote", 10),
             (None, "rollback", 10), (None, "rollback", 10), (2, "canary", 20)]
    for version, strategy, percent in steps:
        on_kserve = deploy(registry_root, NAME, version, strategy, canary_percent=percent, **run)
        on_local = deploy(local_registry, NAME, version, strategy, canary_percent=percent)
        for key in ("status", "revision", "version", "versions", "traffic"):
            assert on_kserve[key] == on_local[key], (strategy, key)
        stored = fake.objects[(NS, "cfpb-dispute")]
        annotated = json.loads(stored["metadata"]["annotations"][kserve.A_RECORD])
        local = deployment.load(local_registry, NAME)
        assert timeless(annotated) == timeless(local)
        predictor = stored["spec"]["predictor"]
        canary = deployment.canary_version(local)
        serving = canary or deployment.stable_version(local)
        assert predictor["model"]["storageUri"] == uri(registry_root, serving)
        assert predictor.get("canaryTrafficPercent") == (
            local["traffic"][str(canary)] if canary else None)


def test_kserve_refuses_an_inference_service_it_did_not_make(registry_root, fake_kube):
    fake, api = fake_kube("now")
    fake.objects[(NS, "cfpb-dispute")] = {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": "cfpb-dispute", "namespace": NS, "generation": 1},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "tensorflow"},
                                         "storageUri": "s3://someone/else"}}}}
    with pytest.raises(StepError, match="was not deployed by this step"):
        deploy(registry_root, NAME, 2, "canary", target="kserve",
               kserve_target=target(registry_root), kserve_api=api, timeout_seconds=5)
    assert fake.writes() == []


def test_kserve_rollback_of_a_canary_restores_the_stable_version(registry_root, fake_kube):
    fake, api = fake_kube("now")
    run = {"target": "kserve", "kserve_target": target(registry_root), "kserve_api": api,
           "timeout_seconds": 5, "poll_seconds": 0.05}
    deploy(registry_root, NAME, 1, "promote", **run)
    deploy(registry_root, NAME, 2, "promote", **run)
    deploy(registry_root, NAME, 3, "canary", canary_percent=25, **run)
    back = deploy(registry_root, NAME, None, "rollback", **run)
    stored = fake.objects[(NS, "cfpb-dispute")]["spec"]["predictor"]
    assert stored["model"]["storageUri"] == uri(registry_root, 2)
    assert "canaryTrafficPercent" not in stored and back["version"] == 2
    deploy(registry_root, NAME, None, "rollback", **run)
    stored = fake.objects[(NS, "cfpb-dispute")]["spec"]["predictor"]
    assert stored["model"]["storageUri"] == uri(registry_root, 1)
    with pytest.raises(StepError, match="nothing to roll back"):
        deploy(registry_root, NAME, None, "rollback", **run)


def test_kserve_rollback_without_previous_fails(registry_root, fake_kube):
    fake, api = fake_kube("now")
    run = {"target": "kserve", "kserve_target": target(registry_root), "kserve_api": api,
           "timeout_seconds": 5, "poll_seconds": 0.05}
    with pytest.raises(StepError, match="does not exist; nothing to roll back"):
        deploy(registry_root, NAME, None, "rollback", **run)
    deploy(registry_root, NAME, 1, "promote", **run)
    with pytest.raises(StepError, match="nothing to roll back"):
        deploy(registry_root, NAME, None, "rollback", **run)


def test_kserve_never_ready_fails_within_the_timeout(registry_root, fake_kube):
    fake, api = fake_kube("never")
    start = time.monotonic()
    with pytest.raises(StepError) as info:
        deploy(registry_root, NAME, 2, "canary", target="kserve",
               kserve_target=target(registry_root), kserve_api=api, timeout_seconds=2,
               poll_seconds=0.2)
    elapsed = time.monotonic() - start
    assert 2 <= elapsed < 5
    message = str(info.value)
    assert "did not become Ready within 2s" in message
    assert "RevisionMissing" in message and "\n" not in message


def test_kserve_failed_condition_fails_at_once(registry_root, fake_kube):
    fake, api = fake_kube("failed")
    start = time.monotonic()
    with pytest.raises(StepError, match="not ready: status False, reason 'RevisionFailed'"):
        deploy(registry_root, NAME, 2, "promote", target="kserve",
               kserve_target=target(registry_root), kserve_api=api, timeout_seconds=30,
               poll_seconds=0.05)
    assert time.monotonic() - start < 5


def test_ready_of_an_older_generation_does_not_count():
    obj = {"metadata": {"generation": 3},
           "status": {"observedGeneration": 2, "conditions": [{"type": "Ready",
                                                              "status": "True"}]}}
    assert kserve.ready_condition(obj) is None
    obj["status"]["observedGeneration"] = 3
    assert kserve.ready_condition(obj)["status"] == "True"


def test_bad_service_name_is_rejected(registry_root, fake_kube):
    fake, api = fake_kube("now")
    bad = kserve.Target(namespace=NS, name="CFPB_dispute", storage_uri_prefix=registry_root)
    with pytest.raises(StepError, match="DNS label"):
        deploy(registry_root, NAME, 1, "promote", target="kserve", kserve_target=bad,
               kserve_api=api)
    assert fake.writes() == []


def test_cli_kserve_never_ready_exits_non_zero(registry_root, tmp_path, cli):
    """The real CLI with a kubeconfig pointing at the fake server: the step fails loudly."""
    fake = FakeKube("never")
    try:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": fake.host}}],
            "users": [{"name": "fake", "user": {"token": "t"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        }))
        result = cli(MODULE, "--registry", registry_root, "--model-name", NAME, "--version", "2",
                     "--strategy", "canary", "--target", "kserve", "--namespace", NS,
                     "--service-name", "cfpb-dispute", "--service-account", "minio-reader",
                     "--timeout-seconds", "1", "--executor-input",
                     json.dumps(executor_input(tmp_path)),
                     env={"KUBECONFIG": str(kubeconfig), "KUBERNETES_SERVICE_HOST": ""})
    finally:
        fake.close()
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "did not become Ready within 1s" in errors[0]
    assert not (tmp_path / "out" / "executor_output.json").exists()
    assert [m for m, *_ in fake.requests if m != "GET"] == ["POST"]


# --- TF Serving runtime, retries, dry runs ---------------------------------------------------

@pytest.mark.parametrize(("lineage", "message"), [
    ({}, "does not say which TensorFlow exported it"),
    ({"tensorflow_version": "2.99.0"}, "exported by TensorFlow 2.99.0; no known TF Serving"),
])
def test_kserve_refuses_a_model_no_known_runtime_loads(tmp_path, fake_kube, lineage, message):
    root = make_registry(tmp_path / "registry", versions=(1,))
    index_path = Path(root) / NAME / "index.json"
    index = json.loads(index_path.read_text())
    index["versions"][0].pop("tensorflow_version")
    index["versions"][0].update(lineage)
    index_path.write_text(json.dumps(index))
    fake, api = fake_kube("now")
    with pytest.raises(StepError, match=message):
        deploy(root, NAME, 1, "promote", target="kserve", kserve_target=target(root),
               kserve_api=api, timeout_seconds=5)
    assert fake.writes() == []


def test_kserve_calls_retry_transient_failures_only(registry_root, fake_kube):
    fake, api = fake_kube("now")
    fake.failures = [503, 429, 0, 502]  # the get twice, then the create once
    run = {"target": "kserve", "kserve_target": target(registry_root), "kserve_api": api,
           "timeout_seconds": 10, "poll_seconds": 0.05}
    assert deploy(registry_root, NAME, 1, "promote", **run)["deployed"]
    assert [m for m, *_ in fake.requests][:5] == ["GET", "GET", "GET", "POST", "POST"]
    fake.requests.clear()
    fake.failures = [403]  # forbidden is not transient: one request, one line, no retry
    with pytest.raises(StepError, match=r"get InferenceService models/cfpb-dispute: "
                                        r"Kubernetes API error 403"):
        deploy(registry_root, NAME, 2, "canary", **run)
    assert len(fake.requests) == 1


def test_dry_run_from_a_record_needs_no_cluster_and_changes_nothing(registry_root, tmp_path, cli):
    import yaml

    record = deployment.promote(deployment.empty_record(NAME), 2, known_versions=[1, 2, 3])
    record_file = tmp_path / "deployment.json"
    record_file.write_text(json.dumps(record))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = cli(MODULE, "--registry", registry_root, "--model-name", NAME, "--version", "3",
                 "--strategy", "canary", "--canary-percent", "20", "--target", "kserve",
                 "--namespace", NS, "--service-name", "cfpb-dispute", "--dry-run",
                 "--record", str(record_file),
                 env={"KUBECONFIG": str(tmp_path / "no-such-kubeconfig"),
                      "KUBERNETES_SERVICE_HOST": ""})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# dry run: canary on target kserve; nothing was changed")
    plan, *requests = yaml.safe_load_all(result.stdout)
    assert plan["deployment_record"]["traffic"] == {"2": 80, "3": 20}
    assert plan["status"] == "deployed"
    ((action, body),) = [(r["action"], r["body"]) for r in requests]
    assert action == "patch"
    assert body["spec"]["predictor"]["canaryTrafficPercent"] == 20
    assert body["spec"]["predictor"]["model"]["storageUri"] == uri(registry_root, 3)
    assert json.loads(body["metadata"]["annotations"][kserve.A_RECORD])["revision"] == 2
    # nothing written: no serving views, no output, no record in the registry
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not (Path(registry_root) / NAME / "serving").exists()


def test_dry_run_of_a_first_deployment_shows_the_object_to_create(registry_root, fake_kube):
    from components.deploy.deploy import dry_run

    fake, api = fake_kube("now")
    plan = dry_run(registry_root, NAME, 2, "canary", target="kserve",
                   kserve_target=target(registry_root), kserve_api=api)
    ((action, body),) = plan["requests"]
    assert action == "create"
    check_manifest_shape(body)
    assert [m for m, *_ in fake.requests] == ["GET"]  # read the current state, nothing else
    local = dry_run(registry_root, NAME, 2, "canary")
    assert local["record"]["traffic"] == {"2": 100} and "versions: 2" in local["model_config"]
    assert not (Path(registry_root) / NAME / "deployment.json").exists()


def test_kserve_without_a_cluster_writes_nothing(registry_root, tmp_path, cli):
    """The cluster is asked first: no Kubernetes configuration is one line, and no serving
    view was copied into the registry before finding that out."""
    before = sorted(p.relative_to(registry_root) for p in Path(registry_root).rglob("*"))
    result = cli(MODULE, "--registry", registry_root, "--model-name", NAME, "--version", "2",
                 "--strategy", "canary", "--target", "kserve", "--namespace", NS,
                 env={"KUBECONFIG": str(tmp_path / "no-such-kubeconfig"),
                      "KUBERNETES_SERVICE_HOST": ""})
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr
    assert "no Kubernetes configuration" in errors[0]
    assert sorted(p.relative_to(registry_root) for p in Path(registry_root).rglob("*")) == before


def test_kserve_payload_logger_sends_each_version_to_the_log_receiver():
    """With a receiver URL, KServe logs every request and answer there, tagged with the version
    that answered, so the feedback step reads the cluster's predictions too."""
    record = deployment.canary(deployment.promote(deployment.empty_record(NAME), 2), 3, 10)
    logged = kserve.Target(namespace=NS, name="cfpb-dispute", storage_uri_prefix="s3://m",
                           payload_log_url="http://receiver:8080/v1/log")
    logger = kserve.manifest(logged, NAME, record, RUNTIMES)["spec"]["predictor"]["logger"]
    assert logger == {"mode": "all", "url": "http://receiver:8080/v1/log?model_version=3",
                      "metadataHeaders": ["X-Request-Key"]}
    assert "logger" not in kserve.manifest(target("s3://m"), NAME, record,
                                           RUNTIMES)["spec"]["predictor"]
