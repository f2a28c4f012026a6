"""The prediction log keeps no personal field in clear: the dataset config's
`privacy.personal_fields` are logged as keyed hashes (HMAC-SHA256, key from
PREDICTION_LOG_KEY) or dropped, by the model server's CLI, its log receiver and the writer."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import http.client
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.common import registry
from components.common.artifacts.prediction_log import (
    HASH_PREFIX,
    KEY_ENV,
    LogReader,
    keyed_hash,
    predictions_uri,
)
from components.common.dataset_config import (
    PrivacySpec,
    load_dataset_config,
    parse_dataset_config,
)
from components.common.errors import StepError
from components.serve.prediction_log import PredictionLog, Redaction
from tests.conftest import ROOT

CONFIG = load_dataset_config()
NAME = "cfpb"
KEY = "test-key-0123456789abcdef"
ROWS = [
    {"product": "Mortgage", "sub_product": "Conventional fixed mortgage",
     "issue": "Loan servicing, payments, escrow account", "company_response":
     "Closed with explanation", "state": "CA", "zip_code": "90210",
     "narrative": "Jane Roe at 12 Elm Street was charged twice by the bank."},
    {"product": "Credit card", "sub_product": "", "issue": "Other", "company_response":
     "Closed with monetary relief", "state": "GA", "zip_code": "30490-1234",
     "narrative": "My card ending 4242 was cancelled without notice."},
]
SECRETS = ("90210", "30490-1234", "Jane Roe", "12 Elm Street", "4242")


def log_text(store: Path) -> str:
    files = sorted((store / NAME / "predictions").glob("*/*.jsonl"))
    assert files, f"no prediction log under {store}"
    return "".join(f.read_text() for f in files)


def assert_nothing_in_clear(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} is in the log in clear"


# ---------------------------------------------------------------------------------------------
# The config and the writer.

def test_cfpb_marks_narrative_and_zip_code_personal_and_hashes_them():
    assert CONFIG.privacy == PrivacySpec(personal_fields=("narrative", "zip_code"), mode="hash")


def test_privacy_section_defaults_and_checks():
    raw = dict(CONFIG.raw)
    raw.pop("privacy")
    assert parse_dataset_config(raw).privacy.personal_fields == ("narrative",)  # text features
    explicit = parse_dataset_config({**raw, "privacy": {"personal_fields": [], "mode": "drop"}})
    assert explicit.privacy == PrivacySpec((), "drop")
    with pytest.raises(StepError, match=r"privacy.personal_fields: \['email'\] are not columns"):
        parse_dataset_config({**raw, "privacy": {"personal_fields": ["email"]}})
    with pytest.raises(StepError, match="privacy.mode: 'encrypt'"):
        parse_dataset_config({**raw, "privacy": {"mode": "encrypt"}})


def test_hash_mode_with_a_key_keeps_keyed_hashes_only(tmp_path, caplog):
    redaction = Redaction.from_config(CONFIG, {KEY_ENV: KEY})
    assert redaction.mode == "hash"
    with caplog.at_level(logging.INFO, "components.serve.prediction_log"):
        log = PredictionLog(str(tmp_path), NAME, flush_seconds=60, redaction=redaction)
    assert "narrative, zip_code are logged as HMAC-SHA256 keyed hashes" in caplog.text
    log.record("r1", 3, [dict(r) for r in ROWS], [0.2, 0.7], keys=["c1", "c2"])
    log.close()
    text = log_text(tmp_path)
    assert_nothing_in_clear(text)
    first = json.loads(text.splitlines()[0])
    assert set(first["inputs"]) == set(CONFIG.feature_names) - {"narrative", "zip_code"}
    assert first["redacted"] == ["narrative", "zip_code"] and first["key"] == "c1"
    expected = HASH_PREFIX + hmac.new(KEY.encode(), b"90210", hashlib.sha256).hexdigest()
    assert first["hashed"]["zip_code"] == expected == keyed_hash(KEY.encode(), "90210")
    # readers: a redacted field is missing from the inputs; equal values hash alike
    records = list(LogReader(predictions_uri(str(tmp_path), NAME)).records())
    assert "narrative" not in records[0].inputs and records[0].redacted == ("narrative",
                                                                           "zip_code")
    assert records[1].hashed["narrative"] == keyed_hash(KEY.encode(), ROWS[1]["narrative"])
    assert keyed_hash(b"another key", "90210") != expected


@pytest.mark.parametrize("environment", [{KEY_ENV: KEY}, {}], ids=["hash", "no key"])
def test_a_lone_surrogate_loses_no_record(tmp_path, environment):
    """JSON lets a request send "\\ud800" (not encodable as UTF-8): the record is written
    escaped, its personal field hashed or dropped, and the records batched with it are kept."""
    odd = dict(ROWS[0], issue="Other \ud800", narrative="Jane Roe \udfff")
    log = PredictionLog(str(tmp_path), NAME, flush_seconds=60,
                        redaction=Redaction.from_config(CONFIG, environment))
    log.record("r1", 3, [odd, dict(ROWS[1])], [0.2, 0.7])
    log.close()
    assert log.written == 2
    records = [json.loads(line) for line in log_text(tmp_path).splitlines()]
    assert [r["inputs"]["issue"] for r in records] == ["Other \ud800", "Other"]
    assert "narrative" not in records[0]["inputs"]
    if environment:
        assert records[0]["hashed"]["narrative"] == keyed_hash(KEY.encode(), "Jane Roe \udfff")
    # what feedback and the log's other readers get: text UTF-8 can hold
    read = list(LogReader(predictions_uri(str(tmp_path), NAME)).records())
    assert [r.inputs["issue"] for r in read] == ["Other \ufffd", "Other"]
    for record in read:
        json.dumps(record.inputs, ensure_ascii=False).encode("utf-8")


def test_hash_mode_without_a_key_drops_and_says_so(tmp_path, caplog):
    redaction = Redaction.from_config(CONFIG, {})
    assert (redaction.mode, redaction.requested) == ("drop", "hash")
    with caplog.at_level(logging.INFO, "components.serve.prediction_log"):
        log = PredictionLog(str(tmp_path), NAME, flush_seconds=60, redaction=redaction)
    warning = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning and f"{KEY_ENV} is not set" in warning[0].getMessage()
    log.record("r1", 1, [dict(ROWS[0])], [0.3])
    log.close()
    line = json.loads(log_text(tmp_path))
    assert "hashed" not in line and line["redacted"] == ["narrative", "zip_code"]
    assert_nothing_in_clear(json.dumps(line))


def test_drop_mode_drops_even_with_a_key(tmp_path):
    config = dataclasses.replace(CONFIG, privacy=PrivacySpec(("narrative", "zip_code"), "drop"))
    redaction = Redaction.from_config(config, {KEY_ENV: KEY})
    assert redaction.mode == "drop" and redaction.key is None
    log = PredictionLog(str(tmp_path), NAME, flush_seconds=60, redaction=redaction)
    log.record("r1", 1, [dict(ROWS[0])], [0.3])
    log.close()
    line = json.loads(log_text(tmp_path))
    assert "hashed" not in line and "narrative" not in line["inputs"]


def test_a_personal_id_redacts_the_routing_key_too(tmp_path):
    config = dataclasses.replace(CONFIG, privacy=PrivacySpec(("complaint_id", "narrative"),
                                                             "hash"))
    log = PredictionLog(str(tmp_path), NAME, flush_seconds=60,
                        redaction=Redaction.from_config(config, {KEY_ENV: KEY}))
    log.record("r1", 1, [dict(ROWS[0])], [0.3], key="3309951")
    log.close()
    line = json.loads(log_text(tmp_path))
    assert line["key"] == keyed_hash(KEY.encode(), "3309951")
    assert "3309951" not in json.dumps(line) and "complaint_id" in line["redacted"]


def test_the_log_receiver_redacts_payload_logger_events(tmp_path):
    from components.serve.log_receiver import LogReceiver

    log = PredictionLog(str(tmp_path), NAME, flush_seconds=60,
                        redaction=Redaction.from_config(CONFIG, {KEY_ENV: KEY}))
    receiver = LogReceiver(log, pending_seconds=60)

    def event(kind: str, payload: dict):
        headers = {"ce-id": "call-1", "ce-type": f"org.kubeflow.serving.inference.{kind}",
                   "ce-specversion": "1.0", "ce-source": "test",
                   "content-type": "application/json"}
        return headers, json.dumps(payload).encode()

    receiver.receive(*event("request", {"instances": [{**ROWS[0], "complaint_id": "7"}]}))
    status, _ = receiver.receive(*event("response", {"predictions": [[0.4]]}))
    assert status == 200
    log.close()
    text = log_text(tmp_path)
    assert_nothing_in_clear(text)
    assert json.loads(text)["key"] == "7"  # the id is not personal: feedback joins on it


def test_feedback_writes_redacted_fields_blank(tmp_path):
    from components.common.artifacts.prediction_log import parse_line
    from components.feedback.dataset import NewRows

    line = json.dumps({"request_id": "r", "time": "2026-01-01T00:00:00+00:00",
                       "model_version": 1, "inputs": {"product": "Mortgage"},
                       "hashed": {"narrative": keyed_hash(b"k", "x")},
                       "redacted": ["narrative", "zip_code"], "outputs": {"probability": 0.5},
                       "key": "9"})
    rows = NewRows(str(tmp_path), CONFIG)
    rows.add(parse_line(line), 1)
    rows.close()
    header, row = (Path(rows.path).read_text().splitlines())
    values = dict(zip(header.split(","), row.split(","), strict=True))
    assert values["Consumer complaint narrative"] == "" and values["ZIP code"] == ""
    assert values["Product"] == "Mortgage" and rows.redacted == {"narrative": 1, "zip_code": 1}


# ---------------------------------------------------------------------------------------------
# The model server's command line, end to end.

@pytest.fixture(scope="module")
def registry_root(tmp_path_factory) -> Path:
    """One registry version trained by the real steps, deployed as stable."""
    from components.common.hparams import parse_hparams
    from components.ingest.ingest import ingest
    from components.train.train import train
    from components.transform.transform import transform

    work = tmp_path_factory.mktemp("redaction-model")
    data = subprocess.run([sys.executable, "-m", "datagen", "--rows", "1500", "--seed", "3",
                           "--out", str(work / "f.csv")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert data.returncode == 0, data.stderr
    ingest(str(work / "f.csv"), str(work / "ex"), CONFIG)
    transform(str(work / "ex"), str(work / "tf"), CONFIG)
    info = train(str(work / "ex"), str(work / "tf"), str(work / "m"), CONFIG, parse_hparams(
        json.dumps({"epochs": 1, "batch_size": 256, "hidden_units": [8], "embedding_dim": 4})))
    root = work / "registry"
    registry.publish(str(root), NAME, str(work / "m" / "model"), info)
    (root / NAME / "deployment.json").write_text(json.dumps({
        "model_name": NAME, "versions": {"1": {"labels": ["stable"]}}, "traffic": {"1": 100},
        "revision": 1, "history": [], "updated_at": None, "strategy": "canary"}))
    return root


def serve_and_predict(registry_root: Path, store: Path, env: dict) -> str:
    """`python -m components.serve --log-store ...`, one REST predict, SIGTERM (flushes)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "components.serve", "--registry", str(registry_root),
         "--model-name", NAME, "--rest-port", "0", "--grpc-port", "-1", "--log-store",
         str(store), "--dataset-config", "cfpb"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**{k: v for k, v in os.environ.items() if k != KEY_ENV},
             "PYTHONPATH": str(ROOT), **env})
    try:
        line = process.stdout.readline()
        assert line.startswith("REST http://"), line + process.stderr.read()
        port = int(line.split()[1].rsplit(":", 1)[1])
        deadline = time.monotonic() + 60
        while True:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                break
            assert time.monotonic() < deadline, "the server never became ready"
            time.sleep(0.2)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("POST", f"/v1/models/{NAME}:predict",
                           json.dumps({"instances": ROWS}),
                           {"Content-Type": "application/json", "X-Request-Key": "k-1"})
        response = connection.getresponse()
        assert response.status == 200, response.read()
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    return stderr


def test_the_served_log_has_no_personal_field_in_clear(registry_root, tmp_path):
    stderr = serve_and_predict(registry_root, tmp_path / "hashed", {KEY_ENV: KEY})
    assert "logged as HMAC-SHA256 keyed hashes" in stderr
    text = log_text(tmp_path / "hashed")
    assert_nothing_in_clear(text)
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == 2 and all(line["key"] == "k-1" for line in lines)
    assert lines[0]["hashed"] == {"narrative": keyed_hash(KEY.encode(), ROWS[0]["narrative"]),
                                  "zip_code": keyed_hash(KEY.encode(), "90210")}
    assert lines[0]["inputs"]["product"] == "Mortgage"  # the rest as received

    stderr = serve_and_predict(registry_root, tmp_path / "dropped", {})
    assert f"{KEY_ENV} is not set" in stderr
    text = log_text(tmp_path / "dropped")
    assert_nothing_in_clear(text)
    assert all("hashed" not in json.loads(line) for line in text.splitlines())
