"""The local model server against real SavedModels: two registry versions built by the real steps.

One module-scoped registry (datagen -> ingest -> transform -> train twice -> publish, ~25 s) and
one module-scoped server on free ports, in-process (REST in a thread, gRPC in its pool). Tests
that rewrite deployment.json put the base split (1 stable 90%, 2 canary 10%) back.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest

from components.common import registry, storage
from components.common.artifacts import deployment
from components.serve import models
from components.serve.models import RoutingTable, key_point
from components.serve.server import ModelServer
from tests.conftest import ROOT

NAME = "cfpb"
FAST = {"epochs": 1, "batch_size": 256, "hidden_units": [8], "embedding_dim": 4}
BASE = ({"1": {"labels": ["stable"]}, "2": {"labels": ["canary"]}}, {"1": 90, "2": 10})
ROWS = [
    {"product": "Mortgage", "sub_product": "Conventional fixed mortgage",
     "issue": "Loan servicing, payments, escrow account", "company_response":
     "Closed with explanation", "state": "CA", "zip_code": "90210",
     "narrative": "The bank lost my payment and charged a late fee twice."},
    {"product": "Credit card", "sub_product": "", "issue": "Other", "company_response":
     "Closed with monetary relief", "state": "GA", "zip_code": "30490", "narrative": ""},
    {"product": "Debt collection", "sub_product": "Medical", "issue":
     "Cont'd attempts collect debt not owed", "company_response": "In progress",
     "state": "", "zip_code": "", "narrative": "They keep calling about a debt I paid."},
    {"product": "never seen", "sub_product": "x", "issue": "y", "company_response": "z",
     "state": "ZZ", "zip_code": "00000", "narrative": "unknown words only qwxz"},
]


# ---------------------------------------------------------------------------------------------
# Fixtures.

@pytest.fixture(scope="module")
def registry_root(tmp_path_factory) -> Path:
    """Registry versions 1 and 2 of NAME, trained by the real steps (different seeds)."""
    from components.common.dataset_config import load_dataset_config
    from components.common.hparams import parse_hparams
    from components.ingest.ingest import ingest
    from components.train.train import train
    from components.transform.transform import transform

    work = tmp_path_factory.mktemp("serve-models")
    data = subprocess.run(
        [sys.executable, "-m", "datagen", "--rows", "2000", "--seed", "1",
         "--out", str(work / "f.csv")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert data.returncode == 0, data.stderr
    config = load_dataset_config()
    ingest(str(work / "f.csv"), str(work / "ex"), config)
    transform(str(work / "ex"), str(work / "tf"), config)
    root = work / "registry"
    baseline = None
    for seed in (1, 2):
        info = train(str(work / "ex"), str(work / "tf"), str(work / f"m{seed}"), config,
                     parse_hparams(json.dumps({**FAST, "seed": seed})))
        lineage = {**info, "baseline_version": baseline, "baseline": {"version": baseline}}
        baseline = registry.publish(str(root), NAME, str(work / f"m{seed}" / "model"),
                                    lineage).version
    assert registry.read_index(str(root), NAME)["current"] == 2
    return root


def write_deployment(root: Path, versions: dict, traffic: dict, revision: int) -> None:
    record = {"model_name": NAME, "versions": versions, "traffic": traffic,
              "revision": revision, "history": [], "updated_at": None, "strategy": "canary"}
    storage.write_bytes(str(root / NAME / "deployment.json"), json.dumps(record).encode())


def wait_for(condition, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def server(registry_root, tmp_path_factory):
    write_deployment(registry_root, *BASE, revision=1)
    logs = tmp_path_factory.mktemp("prediction-logs")
    srv = ModelServer(str(registry_root), NAME, rest_port=0, grpc_port=0, poll_seconds=0.1,
                      log_store=str(logs), max_request_bytes=64 * 1024,
                      log_flush_records=100, log_flush_seconds=0.2).start()
    srv.log_dir = logs
    assert srv.manager.ready
    yield srv
    srv.stop()


@pytest.fixture
def base_split(server, registry_root):
    """Restore the base deployment after a test that rewrites it."""
    yield
    write_deployment(registry_root, *BASE, revision=100 + int(time.time() * 1000) % 100000)
    wait_for(lambda: server.manager.table.traffic == {1: 90.0, 2: 10.0}, what="base split")
    server.manager.last_error = None


@pytest.fixture(scope="module")
def reference(registry_root):
    """Each version's own serving_default output for ROWS (the SavedModel, not the server)."""
    import tensorflow as tf

    out = {}
    for version in (1, 2):
        fn = tf.saved_model.load(str(registry_root / NAME / str(version))).signatures[
            "serving_default"]
        tensors = {f: tf.constant([row[f] for row in ROWS]) for f in ROWS[0]}
        out[version] = fn(**tensors)["probability"].numpy().tolist()
    assert not np.allclose(out[1], out[2])  # two different models: routing is observable
    return out


class Rest:
    """A keep-alive REST client."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call(self, method: str, path: str, body=None, headers=None):
        data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
        try:
            self.conn.request(method, path, body=data, headers=headers or {})
            response = self.conn.getresponse()
            raw = response.read()
        except (http.client.HTTPException, ConnectionError):
            self.conn.close()  # the server closed it (413): reconnect once
            self.conn.request(method, path, body=data, headers=headers or {})
            response = self.conn.getresponse()
            raw = response.read()
        if response.getheader("Content-Type", "").startswith("application/json"):
            return response.status, json.loads(raw)
        return response.status, raw.decode()

    def predict(self, path_suffix="", instances=None, headers=None):
        return self.call("POST", f"/v1/models/{NAME}{path_suffix}:predict",
                         {"instances": instances or ROWS[:1]}, headers)


@pytest.fixture
def rest(server):
    client = Rest(server.rest_port)
    yield client
    client.conn.close()


def grpc_stubs(server):
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    return (channel, prediction_service_pb2_grpc.PredictionServiceStub(channel),
            model_service_pb2_grpc.ModelServiceStub(channel))


def predict_request(rows, *, version=None, label=None, drop=None, dtype=None):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = NAME
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    for feature in rows[0]:
        if feature == drop:
            continue
        values = [row[feature] for row in rows]
        if dtype is not None and feature == "zip_code":
            request.inputs[feature].CopyFrom(tf.make_tensor_proto([1.0] * len(rows), dtype))
        else:
            request.inputs[feature].CopyFrom(tf.make_tensor_proto(values, tf.string))
    return request


# ---------------------------------------------------------------------------------------------
# Predictions equal the SavedModel's own.

def test_rest_predictions_equal_the_savedmodel(rest, reference):
    for version in (1, 2):
        status, body = rest.predict(f"/versions/{version}", ROWS)
        assert status == 200, body
        assert body["model_version"] == str(version)
        np.testing.assert_allclose(body["predictions"], reference[version], rtol=1e-6)
        columns = {f: [row[f] for row in ROWS] for f in ROWS[0]}
        status, body = rest.call("POST", f"/v1/models/{NAME}/versions/{version}:predict",
                                 {"inputs": columns})
        assert status == 200, body
        np.testing.assert_allclose(body["predictions"], reference[version], rtol=1e-6)
    # Numbers are accepted for string features (a ZIP code typed as a number).
    row = {**ROWS[0], "zip_code": 90210}
    status, body = rest.predict("/versions/1", [row])
    assert status == 200 and body["predictions"][0] == pytest.approx(reference[1][0], rel=1e-6)


def test_grpc_predictions_equal_the_savedmodel(server, reference):
    import tensorflow as tf
    from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

    channel, predict_stub, model_stub = grpc_stubs(server)
    with channel:
        for version in (1, 2):
            response = predict_stub.Predict(predict_request(ROWS, version=version), timeout=10)
            assert response.model_spec.version.value == version
            np.testing.assert_allclose(tf.make_ndarray(response.outputs["probability"]),
                                       reference[version], rtol=1e-6)
        response = predict_stub.Predict(predict_request(ROWS, label="canary"), timeout=10)
        assert response.model_spec.version.value == 2

        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = NAME
        request.model_spec.version.value = 1
        request.metadata_field.append("signature_def")
        metadata = predict_stub.GetModelMetadata(request, timeout=10)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        metadata.metadata["signature_def"].Unpack(signatures)
        serving = signatures.signature_def["serving_default"]
        assert set(serving.inputs) == set(ROWS[0])
        assert set(serving.outputs) == {"probability", "raw_probability"}
        assert "serving_tf_example" in signatures.signature_def

        status_request = get_model_status_pb2.GetModelStatusRequest()
        status_request.model_spec.name = NAME
        status = model_stub.GetModelStatus(status_request, timeout=10)
        assert [(s.version, s.state) for s in status.model_version_status] == [
            (1, get_model_status_pb2.ModelVersionStatus.State.AVAILABLE),
            (2, get_model_status_pb2.ModelVersionStatus.State.AVAILABLE)]


def test_rest_status_and_metadata(rest):
    status, body = rest.call("GET", f"/v1/models/{NAME}")
    assert status == 200
    assert [(s["version"], s["state"]) for s in body["model_version_status"]] == [
        ("1", "AVAILABLE"), ("2", "AVAILABLE")]
    status, body = rest.call("GET", f"/v1/models/{NAME}/labels/canary")
    assert [s["version"] for s in body["model_version_status"]] == ["2"]
    status, body = rest.call("GET", f"/v1/models/{NAME}/versions/1/metadata")
    assert status == 200 and body["model_spec"]["version"] == "1"
    serving = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert serving["inputs"]["product"]["dtype"] == "DT_STRING"
    assert sorted(serving["outputs"]) == ["probability", "raw_probability"]


# ---------------------------------------------------------------------------------------------
# Decisions: probability >= the version's own threshold.

def thresholds_of(root: Path) -> dict[int, float]:
    from components.common.artifacts import model as model_artifact

    out = {}
    for version in (1, 2):
        threshold, source = model_artifact.decision_threshold_of(str(root / NAME / str(version)))
        assert source == "model"
        out[version] = threshold
    return out


def test_rest_decisions_are_probability_at_the_versions_threshold(rest, reference,
                                                                   registry_root):
    thresholds = thresholds_of(registry_root)
    assert thresholds[1] != thresholds[2]  # each version answers with its own
    for version in (1, 2):
        status, body = rest.predict(f"/versions/{version}", ROWS)
        assert status == 200, body
        assert body["decision_threshold"] == thresholds[version]
        assert body["decisions"] == [p >= thresholds[version] for p in body["predictions"]]
        assert len(body["decisions"]) == len(ROWS)
        np.testing.assert_allclose(body["predictions"], reference[version], rtol=1e-6)
        columns = {f: [row[f] for row in ROWS] for f in ROWS[0]}
        status, columnar = rest.call("POST", f"/v1/models/{NAME}/versions/{version}:predict",
                                     {"inputs": columns})
        assert columnar["decisions"] == body["decisions"]


def test_grpc_decisions_are_probability_at_the_versions_threshold(server, registry_root):
    import tensorflow as tf

    thresholds = thresholds_of(registry_root)
    channel, predict_stub, _ = grpc_stubs(server)
    with channel:
        for version in (1, 2):
            response = predict_stub.Predict(predict_request(ROWS, version=version), timeout=10)
            probability = tf.make_ndarray(response.outputs["probability"])
            decision = tf.make_ndarray(response.outputs["decision"])
            threshold = tf.make_ndarray(response.outputs["decision_threshold"])
            assert decision.dtype == np.bool_ and decision.shape == (len(ROWS),)
            assert threshold.shape == () and float(threshold) == thresholds[version]
            assert decision.tolist() == [float(p) >= thresholds[version] for p in probability]


def test_a_version_without_a_threshold_is_served_with_the_default(registry_root, tmp_path):
    """A version published before thresholds were chosen: decisions at 0.5, documented."""
    import shutil

    from components.common.artifacts import model as model_artifact

    old = tmp_path / "old-model"
    shutil.copytree(registry_root / NAME / "1", old)
    (old / model_artifact.METADATA_FILE).unlink()
    registry.publish(str(tmp_path / "registry"), NAME, str(old),
                     {"model_id": model_artifact.model_id_of(str(old)), "signature_hash": "x"})
    srv = ModelServer(str(tmp_path / "registry"), NAME, rest_port=0, grpc_port=None).start()
    try:
        status, body = Rest(srv.rest_port).predict("", ROWS)
        assert status == 200, body
        assert body["decision_threshold"] == model_artifact.DEFAULT_DECISION_THRESHOLD == 0.5
        assert body["decisions"] == [p >= 0.5 for p in body["predictions"]]
        assert srv.manager.table.models[1].threshold_source == "default"
    finally:
        srv.stop()


# ---------------------------------------------------------------------------------------------
# Routing.

def test_split_is_observed_and_keys_are_sticky(rest):
    seen = Counter()
    for _ in range(1000):
        status, body = rest.predict()
        assert status == 200, body
        seen[body["model_version"]] += 1
    assert abs(seen["2"] / 10 - 10) <= 3.5, seen  # 10% configured; sd of the estimate ~1 pt

    for i in range(40):
        key = f"complaint-{i}"
        expected = "1" if key_point(key) < 90 else "2"
        answers = {rest.predict(headers={"X-Request-Key": key})[1]["model_version"]
                   for _ in range(3)}
        answers |= {rest.predict(instances=[{**ROWS[0], "complaint_id": key}])[1]
                    ["model_version"]}
        assert answers == {expected}, key


def test_label_and_version_routing(rest):
    assert rest.predict("/labels/stable")[1]["model_version"] == "1"
    assert rest.predict("/labels/canary")[1]["model_version"] == "2"
    assert rest.predict("/versions/2")[1]["model_version"] == "2"
    status, body = rest.predict("/labels/shadow")
    assert status == 404 and "shadow" in body["error"]
    status, body = rest.predict("/versions/7")
    assert status == 404 and "version 7" in body["error"]


def test_routing_table_unit():
    record = {**deployment.empty_record(NAME), "revision": 1,
              "versions": {"1": {"labels": ["stable"]}, "2": {"labels": ["canary"]}},
              "traffic": {"1": 70, "2": 30}}
    table = RoutingTable.build({1: "m1", 2: "m2"}, record)  # type: ignore[dict-item]
    for key in ("a", "b", "c", "12345"):
        assert table.route(key=key) == ("m1" if key_point(key) < 70 else "m2")
        assert len({table.route(key=key) for _ in range(5)}) == 1
    assert 0 <= key_point("x") < 100
    with pytest.raises(models.NotFound):
        table.route(version=3)
    assert table.labels == {"stable": 1, "canary": 2}
    with pytest.raises(Exception, match="sums to 50, not 100"):
        deployment.validate({**record, "versions": {"1": {"labels": ["stable"]}},
                             "traffic": {"1": 50}})


def test_without_a_deployment_record_current_is_stable(tmp_path):
    (tmp_path / NAME).mkdir()
    (tmp_path / NAME / "index.json").write_text(json.dumps(
        {"model_name": NAME, "current": 2, "versions": [{"version": 1}, {"version": 2}]}))
    record = deployment.serving_state(str(tmp_path), NAME)
    assert deployment.labels(record) == {"stable": 2} and deployment.traffic(record) == {2: 100}


# ---------------------------------------------------------------------------------------------
# Hot reload.

def test_hot_swap_under_load_fails_no_request(server, registry_root, base_split):
    failures, answers, stop = [], [], threading.Event()
    phase = {"n": 0}

    def client():
        rest = Rest(server.rest_port)
        while not stop.is_set():
            current = phase["n"]
            try:
                status, body = rest.predict()
            except Exception as exc:  # noqa: BLE001 - any failure counts
                failures.append(repr(exc))
                continue
            if status != 200:
                failures.append((status, body))
            else:
                answers.append((current, body["model_version"]))
        rest.conn.close()

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        # Move the canary up: 2 becomes stable with 90%, 1 the canary with 10%.
        write_deployment(registry_root, {"1": {"labels": ["canary"]}, "2": {"labels": ["stable"]}},
                         {"1": 10, "2": 90}, revision=2)
        wait_for(lambda: server.manager.table.traffic == {1: 10.0, 2: 90.0}, what="swap")
        phase["n"] = 1
        wait_for(lambda: sum(1 for p, _ in answers if p == 1) >= 600, what="600 answers")
        phase["n"] = 2
        # Promote 2: version 1 is unloaded.
        write_deployment(registry_root, {"2": {"labels": ["stable"]}}, {"2": 100}, revision=3)
        wait_for(lambda: sorted(server.manager.table.models) == [2], what="promote")
        phase["n"] = 3
        wait_for(lambda: sum(1 for p, _ in answers if p == 3) >= 200, what="200 answers")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert failures == []
    after_swap = Counter(v for p, v in answers if p == 1)
    assert abs(after_swap["2"] / sum(after_swap.values()) * 100 - 90) <= 5, after_swap
    assert {v for p, v in answers if p == 3} == {"2"}
    rest = Rest(server.rest_port)
    assert rest.predict("/labels/stable")[1]["model_version"] == "2"
    assert rest.predict("/versions/1")[0] == 404


def test_a_bad_record_keeps_the_old_versions_serving(server, registry_root, rest, base_split):
    write_deployment(registry_root, {"9": {"labels": ["stable"]}}, {"9": 100}, revision=50)
    wait_for(lambda: server.manager.last_error is not None, what="reload error")
    assert "9" in server.manager.last_error
    assert sorted(server.manager.table.models) == [1, 2]
    assert rest.predict()[0] == 200


# ---------------------------------------------------------------------------------------------
# Malformed requests.

def test_malformed_rest_requests_get_4xx_with_a_message(rest):
    path = f"/v1/models/{NAME}:predict"
    status, body = rest.call("POST", path, b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]
    status, body = rest.call("POST", path, [1, 2])
    assert status == 400 and "JSON object" in body["error"]
    status, body = rest.call("POST", path, {"rows": []})
    assert status == 400 and "'instances'" in body["error"]
    missing = {k: v for k, v in ROWS[0].items() if k != "narrative"}
    status, body = rest.predict(instances=[missing])
    assert status == 400 and "narrative" in body["error"]
    status, body = rest.predict(instances=[{**ROWS[0], "state": {"x": 1}}])
    assert status == 400 and "'state'" in body["error"] and "dict" in body["error"]
    status, body = rest.predict(instances=[{**ROWS[0], "state": True}])
    assert status == 400 and "'state'" in body["error"]
    status, body = rest.call("POST", path, {"inputs": {**{f: ["a"] for f in ROWS[0]},
                                                       "state": ["a", "b"]}})
    assert status == 400 and "same" in body["error"]
    status, body = rest.predict(instances=[{**ROWS[0], "narrative": "x" * 70_000}])
    assert status == 413 and "limit" in body["error"]
    status, body = rest.call("POST", "/v1/models/other:predict", {"instances": ROWS})
    assert status == 404 and "other" in body["error"]
    status, body = rest.predict("/versions/abc")
    assert status == 404
    status, body = rest.predict()  # still serving
    assert status == 200


def test_grpc_malformed_requests_are_invalid_argument(server):
    import tensorflow as tf

    channel, predict_stub, _ = grpc_stubs(server)
    with channel:
        with pytest.raises(grpc.RpcError) as caught:
            predict_stub.Predict(predict_request(ROWS, drop="narrative"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "narrative" in caught.value.details()
        with pytest.raises(grpc.RpcError) as caught:
            predict_stub.Predict(predict_request(ROWS, dtype=tf.float32), timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "zip_code" in caught.value.details() and "DT_FLOAT" in caught.value.details()
        with pytest.raises(grpc.RpcError) as caught:
            predict_stub.Predict(predict_request(ROWS, version=7), timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        other = predict_request(ROWS)
        other.model_spec.name = "other"
        with pytest.raises(grpc.RpcError) as caught:
            predict_stub.Predict(other, timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert "other" in caught.value.details()
        assert predict_stub.Predict(predict_request(ROWS), timeout=10).outputs["probability"]


# ---------------------------------------------------------------------------------------------
# Health, metrics, prediction log, CLI.

def test_health_readiness_and_metrics(server, rest, tmp_path):
    assert rest.call("GET", "/healthz")[0] == 200
    status, body = rest.call("GET", "/readyz")
    assert status == 200 and body["versions"] == [1, 2]
    rest.predict("/versions/1")
    rest.predict("/versions/7")
    status, text = rest.call("GET", "/metrics")
    assert status == 200
    assert 'serve_requests_total{protocol="rest",version="1",code="200"}' in text
    assert 'serve_errors_total{protocol="rest",code="404"}' in text
    assert 'serve_request_latency_seconds_bucket{version="1",le="+Inf"}' in text
    assert "serve_versions_loaded 2" in text

    (tmp_path / NAME).mkdir()  # a registry with nothing to serve: alive, not ready
    empty = ModelServer(str(tmp_path), NAME, rest_port=0, grpc_port=None, poll_seconds=5).start()
    try:
        client = Rest(empty.rest_port)
        assert client.call("GET", "/healthz")[0] == 200
        status, body = client.call("GET", "/readyz")
        assert status == 503 and "nothing to serve" in body["error"]
        assert client.predict()[0] == 404
    finally:
        empty.stop()


def test_predictions_are_logged_as_json_lines(server, rest):
    status, body = rest.predict("/versions/2", ROWS[:2], headers={"X-Request-Key": "k-1"})
    assert status == 200
    server.prediction_log.flush()
    files = sorted((server.log_dir / NAME / "predictions").glob("*/*.jsonl"))
    assert files
    records = [json.loads(line) for f in files for line in f.read_text().splitlines()]
    mine = [r for r in records if r.get("key") == "k-1"]
    assert len(mine) == 2 and mine[0]["request_id"] == mine[1]["request_id"]
    assert mine[0]["model_version"] == 2 and mine[0]["inputs"] == ROWS[0]
    assert mine[1]["outputs"]["probability"] == pytest.approx(body["predictions"][1])
    assert {"request_id", "time", "model_version", "inputs", "outputs"} <= set(records[0])


def test_each_example_of_a_batch_is_logged_with_its_own_key(server, rest):
    """The feedback step joins every example with its late label by its id: a batch's
    examples each keep their own key, over REST (rows and columns) and gRPC."""
    rows = [{**row, "complaint_id": f"batch-{i}"} for i, row in enumerate(ROWS[:3])]
    assert rest.predict("/versions/1", rows)[0] == 200
    columns = {f: [r[f] for r in rows] for f in rows[0]}
    status, _ = rest.call("POST", f"/v1/models/{NAME}/versions/1:predict",
                          {"inputs": {**columns, "complaint_id": ["col-0", "", "col-2"]}})
    assert status == 200
    import tensorflow as tf

    channel, predict_stub, _ = grpc_stubs(server)
    with channel:
        request = predict_request(ROWS[:2], version=1)
        request.inputs["complaint_id"].CopyFrom(tf.make_tensor_proto(["g-0", "g-1"]))
        predict_stub.Predict(request, timeout=10)
    server.prediction_log.flush()
    files = sorted((server.log_dir / NAME / "predictions").glob("*/*.jsonl"))
    keys = {json.loads(line).get("key") for f in files for line in f.read_text().splitlines()}
    assert {"batch-0", "batch-1", "batch-2", "col-0", "col-2", "g-0", "g-1"} <= keys


def test_kserve_logger_events_and_own_predictions_are_one_log_format(server, rest):
    """POST /v1/log (KServe's payload logger, as CloudEvents) lands beside the server's own
    prediction lines, and the feedback step's reader reads both alike."""
    from components.common.artifacts.prediction_log import LogReader, predictions_uri
    from components.serve.log_receiver import REQUEST_TYPE, RESPONSE_TYPE

    status, body = rest.predict("/versions/1", ROWS[:1], headers={"X-Request-Key": "own-1"})
    assert status == 200
    for kind, payload in ((REQUEST_TYPE, {"instances": [{**ROWS[1], "complaint_id": "ks-1"}]}),
                          (RESPONSE_TYPE, {"predictions": [[0.625]]})):
        status, answer = rest.call("POST", "/v1/log?model_version=2", payload, {
            "Ce-Id": "kserve-call-1", "Ce-Type": kind, "Ce-Specversion": "1.0",
            "Ce-Source": "http://localhost:9081/", "Content-Type": "application/json"})
        assert status in (200, 202), answer
    assert answer["examples"] == 1
    server.prediction_log.flush()
    reader = LogReader(predictions_uri(str(server.log_dir), NAME))
    found = {r.key: r for r in reader.records() if r.key in ("own-1", "ks-1")}
    assert reader.bad_lines == 0
    assert found["own-1"].model_version == 1 and found["own-1"].inputs == ROWS[0]
    assert found["own-1"].probability == pytest.approx(body["predictions"][0])
    assert found["ks-1"].model_version == 2 and found["ks-1"].inputs == ROWS[1]
    assert found["ks-1"].probability == 0.625 and found["ks-1"].request_id == "kserve-call-1"


def test_serves_an_s3_registry(registry_root, s3_bucket):
    uri = f"s3://{s3_bucket}/models"
    storage.upload_tree(str(registry_root / NAME), f"{uri}/{NAME}")
    storage.delete(f"{uri}/{NAME}/deployment.json")  # no record: current (2) is stable
    manager = models.ModelManager(uri, NAME)
    manager.refresh()
    try:
        model = manager.table.route(key="anything")
        assert model.version == 2 and model.path != str(registry_root / NAME / "2")
        assert len(model.predict({f: [ROWS[0][f]] for f in model.features})) == 1
    finally:
        model.close()


def test_cli_help_and_bad_arguments():
    env = {"PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "components.serve", "--help"], cwd=ROOT,
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0
    for flag in ("--registry", "--model-name", "--rest-port", "--grpc-port", "--poll-seconds",
                 "--log-store", "--max-request-bytes"):
        assert flag in result.stdout
    result = subprocess.run([sys.executable, "-m", "components.serve", "--registry", "r"],
                            cwd=ROOT, capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2 and "--model-name" in result.stderr
