"""The local model server against real SavedModels: two registry versions built by the real steps.

One module-scoped registry (datagen -> ingest -> transform -> train twice -> publish, ~25 s) and
one module-scoped server on free ports, in-process (REST in a thread, gRPC in its pool). Tests
that rewrite deployment.json put the base split (1 stable 90%, 2 canary 10%) back.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
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
from components.serve.server import ModelServer, RestLimits
from components.serve.service import MAX_INSTANCES, MAX_REQUEST_BYTES
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
                      log_store=str(logs),
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
    status, body = rest.predict(instances=[{**ROWS[0], "narrative": "x" * MAX_REQUEST_BYTES}])
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


# ---------------------------------------------------------------------------------------------
# Hostile clients (raw sockets): framing, stalled connections, odd paths, methods.

PREDICT = f"/v1/models/{NAME}:predict"


def request_head(method: str = "POST", path: str = PREDICT, *headers: str) -> bytes:
    return "\r\n".join([f"{method} {path} HTTP/1.1", "Host: test", *headers, "", ""]).encode(
        "latin-1")


class OneReader:
    """One buffered reader for every answer on a connection. http.client reads through
    `sock.makefile()` and closes that file after each answer: a new file per answer loses
    whatever the previous one had buffered of the next answer (pipelined answers that arrive
    together)."""

    def __init__(self, sock):
        self._file = sock.makefile("rb")

    def makefile(self, *_args, **_kwargs):
        return self

    def readline(self, *args):
        return self._file.readline(*args)

    def read(self, *args):
        return self._file.read(*args)

    def readinto(self, buffer):
        return self._file.readinto(buffer)

    def flush(self):
        pass

    def close(self):  # the connection's other answers are still to be read
        pass


def read_answer(sock, method: str = "POST"):
    """(status, headers, JSON body or None) of the answer on `sock`."""
    response = http.client.HTTPResponse(sock, method=method)
    response.begin()
    raw = response.read()
    assert response.getheader("Content-Type", "application/json") == "application/json"
    return response.status, dict(response.getheaders()), json.loads(raw) if raw else None


def raw_request(port: int, data: bytes, *, then: bytes = b"", method: str = "POST",
                timeout: float = 20.0):
    """`data` on a fresh connection, then `then` (a body the server should not wait for)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if then:
            with contextlib.suppress(OSError):  # the server may have closed its side
                sock.sendall(then)
        return read_answer(sock, method)


@pytest.mark.parametrize(("value", "status"), [
    ("-1", 400), ("+5", 400), ("5.0", 400), ("0x10", 400), ("", 400), ("\xb2", 400),
    ("1, 2", 400), ("9" * 40, 413), (str(MAX_REQUEST_BYTES + 1), 413)])
def test_a_bad_content_length_is_answered_before_any_body(server, value, status):
    """No body byte is sent: an answer at all proves the server did not wait for one."""
    code, headers, body = raw_request(server.rest_port,
                                      request_head("POST", PREDICT, f"Content-Length: {value}"))
    assert code == status, body
    assert ("Content-Length" if status == 400 else "limit") in body["error"]
    assert headers["Connection"] == "close"


def test_a_negative_content_length_with_a_3mb_body_is_400_and_the_server_goes_on(server, rest):
    code, _, body = raw_request(server.rest_port,
                                request_head("POST", PREDICT, "Content-Length: -1"),
                                then=b'{"instances": [' + b" " * 3_000_000 + b"]}")
    assert code == 400 and "bad Content-Length '-1'" in body["error"]
    code, _, body = raw_request(server.rest_port, request_head(
        "POST", PREDICT, "Content-Length: 5", "Content-Length: 6"))
    assert code == 400 and "conflicting" in body["error"]
    code, _, body = raw_request(server.rest_port, request_head(
        "POST", PREDICT, "Transfer-Encoding: chunked", "Content-Length: 5"), then=b"0\r\n\r\n")
    assert code == 411 and "Transfer-Encoding" in body["error"]
    assert rest.predict()[0] == 200


def test_stalled_clients_cost_no_thread_and_get_408(registry_root):
    """300 connections that send half a header (slowloris) and one that sends half a body:
    normal requests are answered meanwhile, the thread count stays bounded, and each stalled
    connection gets 408 at its deadline."""
    limits = RestLimits(request_timeout=1.5, max_connections=400, workers=4)
    srv = ModelServer(str(registry_root), NAME, rest_port=0, grpc_port=None,
                      limits=limits).start()
    stalled = []
    try:
        threads_before = threading.active_count()
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", srv.rest_port), timeout=20)
            sock.sendall(f"POST {PREDICT} HTTP/1.1\r\nHost: test\r\nContent-Le".encode())
            stalled.append(sock)
        sock = socket.create_connection(("127.0.0.1", srv.rest_port), timeout=20)
        sock.sendall(request_head("POST", PREDICT, "Content-Length: 100") + b'{"inst')
        stalled.append(sock)
        wait_for(lambda: srv._rest.open_connections == 301, what="301 connections")
        client = Rest(srv.rest_port)
        for _ in range(20):
            status, body = client.predict()
            assert status == 200, body
        assert threading.active_count() <= threads_before + limits.workers
        for sock in stalled:
            status, headers, body = read_answer(sock)
            assert status == 408 and "within 1.5 s" in body["error"]
            assert headers["Connection"] == "close"
            sock.close()
        assert client.predict()[0] == 200
        client.conn.close()
        wait_for(lambda: srv._rest.open_connections == 0, what="connections closed")
    finally:
        for sock in stalled:
            sock.close()
        srv.stop()


def test_connections_beyond_the_limit_get_503(tmp_path):
    (tmp_path / NAME).mkdir()  # nothing to serve: this is about connections only
    srv = ModelServer(str(tmp_path), NAME, rest_port=0, grpc_port=None,
                      limits=RestLimits(max_connections=5)).start()
    idle = [socket.create_connection(("127.0.0.1", srv.rest_port), timeout=10)
            for _ in range(5)]
    try:
        wait_for(lambda: srv._rest.open_connections == 5, what="5 connections")
        status, _, body = raw_request(srv.rest_port, request_head("GET", "/healthz"),
                                      method="GET")
        assert status == 503 and "too many connections (limit 5)" in body["error"]
        idle.pop().close()
        wait_for(lambda: srv._rest.open_connections == 4, what="a free slot")
        assert raw_request(srv.rest_port, request_head("GET", "/healthz"), method="GET")[0] \
            == 200
    finally:
        for sock in idle:
            sock.close()
        srv.stop()


def test_health_answers_while_the_versions_load(registry_root, monkeypatch):
    """Loading takes seconds (longer from S3): liveness at once, readiness 503 until loaded,
    predictions 503 / UNAVAILABLE meanwhile (not a hang, not 404)."""
    gate = threading.Event()
    real = models.load_version

    def held(*args, **kwargs):
        gate.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(models, "load_version", held)
    srv = ModelServer(str(registry_root), NAME, rest_port=0, grpc_port=0).start(wait=False)
    try:
        client = Rest(srv.rest_port)
        assert client.call("GET", "/healthz") == (200, {"status": "alive"})
        status, body = client.call("GET", "/readyz")
        assert status == 503 and body["status"] == "loading"
        status, body = client.predict()
        assert status == 503 and "loading" in body["error"]
        channel, predict_stub, _ = grpc_stubs(srv)
        with channel, pytest.raises(grpc.RpcError) as caught:
            predict_stub.Predict(predict_request(ROWS), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        gate.set()
        wait_for(lambda: client.call("GET", "/readyz")[0] == 200, what="ready")
        assert client.predict()[0] == 200
    finally:
        gate.set()
        srv.stop()


def test_the_cli_answers_health_before_the_versions_are_loaded(registry_root):
    """The real process: /healthz answers while /readyz still says loading (TensorFlow's
    import and the loads come after the REST port answers)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "components.serve", "--registry", str(registry_root),
         "--model-name", NAME, "--rest-port", str(port), "--grpc-port", "0"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        first = None
        deadline = time.monotonic() + 60
        while first is None:
            assert time.monotonic() < deadline and process.poll() is None, "no answer"
            try:
                first = raw_request(port, request_head("GET", "/readyz"), method="GET",
                                    timeout=2)
                assert raw_request(port, request_head("GET", "/healthz"), method="GET")[0] \
                    == 200
            except OSError:
                time.sleep(0.02)
        assert first[0] == 503 and first[2]["status"] == "loading", first
        while raw_request(port, request_head("GET", "/readyz"), method="GET")[0] != 200:
            assert time.monotonic() < deadline + 60 and process.poll() is None
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr[-2000:]


@pytest.mark.parametrize(("path", "what"), [
    (f"/v1/models/{NAME}/versions/\xb2:predict", "not a version number"),  # isdigit, not int
    (f"/v1/models/{NAME}/versions/\xc2\xb2:predict", "not a version number"),  # UTF-8 bytes
    (f"/v1/models/{NAME}/versions/%C2%B2:predict", "not a version number"),
    (f"/v1/models/{NAME}/versions/{'9' * 5000}:predict", "not a version number"),
    (f"/v1/models/{NAME}/versions/99999999999:predict", "version 99999999999 is not served"),
    (f"/v1/models/{NAME}/labels/{'x' * 3000}:predict", "is not assigned"),
    (f"/v1/models/{'n' * 3000}:predict", "is not served"),
])
def test_odd_paths_are_404_with_a_message(server, path, what):
    body = json.dumps({"instances": ROWS[:1]}).encode()
    status, _, answer = raw_request(server.rest_port, request_head(
        "POST", path, f"Content-Length: {len(body)}") + body)
    assert status == 404 and what in answer["error"], answer
    status, _, answer = raw_request(server.rest_port, request_head(
        "GET", path.replace(":predict", "/metadata")), method="GET")
    assert status == 404 and what in answer["error"], answer


@pytest.mark.parametrize(("body", "what"), [
    (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
    (b'{"instances": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", "nested too deeply"),
    (b'{"instances": [' + b"7" * 5000 + b"]}", "not valid JSON"),
    (b'{"instances": [{"product": "\\ud800"}]}', "missing feature"),
    (json.dumps({"instances": [{**ROWS[0], "narrative": "\ud800"}]}).encode(),
     "not valid Unicode"),
    (b"\xff\xfe{}", "not valid JSON"),
    (b"", "not valid JSON"),
    (json.dumps({"instances": [{**ROWS[0], "state": [[[[]]]]}]}).encode(), "'state'"),
    (json.dumps({"inputs": {f: [v] for f, v in ROWS[0].items()} | {"state": {}}}).encode(),
     "'state'"),
])
def test_odd_bodies_are_400_with_a_message(server, rest, body, what):
    status, answer = rest.call("POST", PREDICT, body)
    assert status == 400 and what in answer["error"], answer
    assert rest.predict()[0] == 200


def test_odd_keys_still_route(rest):
    """A key the JSON spells as a lone surrogate, a number or a nested value: answered."""
    for key in ("\ud800", 12345, 1.5, [1, [2]], {"a": None}, True):
        status, body = rest.predict(instances=[{**ROWS[0], "complaint_id": key}])
        assert status == 200, (key, body)


@pytest.mark.parametrize(("request_bytes", "status", "what"), [
    (request_head("PUT", PREDICT, "Content-Length: 2") + b"{}", 405, "not allowed"),
    (request_head("DELETE", "/healthz"), 405, "not allowed"),
    (request_head("OPTIONS", "*"), 405, "not allowed"),
    (request_head("BREW", "/coffee"), 501, "not supported"),
    (b"GARBAGE\r\n\r\n", 400, "Bad request syntax"),
    (b"   \r\n\r\n", 400, ""),
    (b"GET /healthz HTTP/2.0\r\n\r\n", 505, "Invalid HTTP version"),
    (b"GET /healthz HTTP/x\r\n\r\n", 400, "Bad request version"),
    (b"GET /healthz\r\n\r\n", 400, "HTTP/0.9"),
    (request_head("GET", "/healthz", "X-Big: " + "a" * 70_000), 431, "longer than"),
    (request_head("GET", "/healthz", *[f"X-{i}: {i}" for i in range(200)]), 431,
     "Too many headers"),
])
def test_unsupported_methods_and_bad_request_lines_are_json(server, rest, request_bytes,
                                                            status, what):
    code, headers, body = raw_request(server.rest_port, request_bytes, method="GET")
    assert code == status and what in body["error"], body
    if status == 405:
        assert headers["Allow"] == "GET, HEAD, POST"
    assert rest.call("GET", "/healthz")[0] == 200


def test_head_and_pipelined_requests(server):
    status, headers, body = raw_request(server.rest_port, request_head("HEAD", "/healthz"),
                                        method="HEAD")
    assert status == 200 and body is None and int(headers["Content-Length"]) > 0
    payload = json.dumps({"instances": ROWS[:1]}).encode()
    one = request_head("POST", f"/v1/models/{NAME}/versions/1:predict",
                       f"Content-Length: {len(payload)}") + payload
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=20) as sock:
        sock.sendall(b"\r\n" + one + one + request_head("GET", "/healthz"))
        reader = OneReader(sock)
        answers = [read_answer(reader, method) for method in ("POST", "POST", "GET")]
    assert [a[0] for a in answers] == [200, 200, 200]
    assert answers[0][2] == answers[1][2] and answers[2][2] == {"status": "alive"}


# ---------------------------------------------------------------------------------------------
# One request limit for both protocols.

@pytest.fixture(scope="module")
def generated_rows(registry_root) -> list[dict]:
    """MAX_INSTANCES + 1 rows of the generated CFPB sample (narratives included)."""
    import csv

    from components.common.dataset_config import load_dataset_config

    config = load_dataset_config()
    with open(registry_root.parent / "f.csv", newline="", encoding="utf-8") as handle:
        records = list(csv.DictReader(handle))
    rows = []
    for i in range(MAX_INSTANCES + 1):
        record = records[i % len(records)]
        row = {f: next(record[h] for h in config.columns[f] if h in record) for f in ROWS[0]}
        rows.append({**row, "complaint_id": str(i)})
    return rows


def test_the_documented_row_cap_fits_the_default_body_limit(rest, generated_rows):
    rows = generated_rows[:MAX_INSTANCES]
    body = json.dumps({"instances": rows}).encode()
    assert len(body) < MAX_REQUEST_BYTES
    status, answer = rest.call("POST", PREDICT, body)
    assert status == 200 and len(answer["predictions"]) == MAX_INSTANCES
    status, answer = rest.predict(instances=generated_rows)
    assert status == 400 and f"too many examples: {MAX_INSTANCES + 1}" in answer["error"]
    columns = {f: [r[f] for r in generated_rows] for f in ROWS[0]}
    status, answer = rest.call("POST", PREDICT, {"inputs": columns})
    assert status == 400 and f"too many examples: {MAX_INSTANCES + 1}" in answer["error"]


def test_grpc_has_the_same_limits(server, generated_rows):
    channel, predict_stub, _ = grpc_stubs(server)
    with channel:
        rows = [{f: r[f] for f in ROWS[0]} for r in generated_rows]
        response = predict_stub.Predict(predict_request(rows[:MAX_INSTANCES]), timeout=60)
        assert len(response.outputs["probability"].float_val) == MAX_INSTANCES
        with pytest.raises(grpc.RpcError) as caught:
            predict_stub.Predict(predict_request(rows), timeout=60)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert f"too many examples: {MAX_INSTANCES + 1}" in caught.value.details()
        big = [{**ROWS[0], "narrative": "x" * (MAX_REQUEST_BYTES // 2)} for _ in range(3)]
        with pytest.raises(grpc.RpcError) as caught:
            predict_stub.Predict(predict_request(big), timeout=60)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# ---------------------------------------------------------------------------------------------
# Rollback: the previous version stays loaded.

def test_a_rollback_swaps_back_the_version_still_loaded(server, registry_root, rest,
                                                          base_split, monkeypatch):
    loads = []
    real = models.load_version
    monkeypatch.setattr(models, "load_version",
                        lambda *args, **kwargs: loads.append(args) or real(*args, **kwargs))
    wait_for(lambda: sorted(server.manager.table.models) == [1, 2], what="base versions")
    previous = server.manager.table.models[1]
    write_deployment(registry_root, {"2": {"labels": ["stable"]}}, {"2": 100}, revision=70)
    wait_for(lambda: sorted(server.manager.table.models) == [2], what="promote")
    assert server.manager.retained_versions == [1]
    assert rest.predict("/versions/1")[0] == 404  # out of the table, still in memory
    write_deployment(registry_root, *BASE, revision=71)  # what a rollback writes
    wait_for(lambda: sorted(server.manager.table.models) == [1, 2], what="rollback")
    assert server.manager.table.models[1] is previous and loads == []
    assert server.manager.retained_versions == []
    assert rest.predict("/versions/1")[0] == 200


def test_retained_versions_expire_and_can_be_turned_off(registry_root, tmp_path, monkeypatch):
    import shutil

    root = tmp_path / "registry"
    shutil.copytree(registry_root / NAME, root / NAME)
    loads = []
    real = models.load_version
    monkeypatch.setattr(models, "load_version",
                        lambda *args, **kwargs: loads.append(args[2]) or real(*args, **kwargs))
    for keep, expected in ((0.3, [1]), (0.0, [])):
        loads.clear()
        write_deployment(root, *BASE, revision=1)
        manager = models.ModelManager(str(root), NAME, keep_previous_seconds=keep)
        manager.refresh()
        write_deployment(root, {"2": {"labels": ["stable"]}}, {"2": 100}, revision=2)
        manager.refresh()
        assert manager.retained_versions == expected
        time.sleep(0.4)
        manager.refresh()  # nothing changed, but the retained version expired
        assert manager.retained_versions == []
        write_deployment(root, *BASE, revision=3)
        manager.refresh()
        assert loads == [1, 2, 1]  # expired: read again
        manager.stop()


def test_a_port_in_use_is_one_line(tmp_path):
    (tmp_path / NAME).mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        for flags, what in ((["--rest-port", str(port), "--grpc-port", "-1"], "REST"),
                            (["--rest-port", "0", "--grpc-port", str(port)], "gRPC")):
            result = subprocess.run(
                [sys.executable, "-m", "components.serve", "--registry", str(tmp_path),
                 "--model-name", NAME, *flags], cwd=ROOT, capture_output=True, text=True,
                env=env, timeout=120)
            errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
            assert result.returncode == 2, result.stderr[-2000:]
            assert errors == [f"error: serve: {what} port 127.0.0.1:{port}: cannot listen there"
                              + (" (Address already in use)" if what == "REST" else
                                 " (in use, or not an address of this machine)")]
