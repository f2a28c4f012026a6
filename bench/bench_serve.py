"""Benchmark the model server (components.serve): latency, throughput and a canary move under load.

    .venv/bin/python bench/bench_serve.py [--workdir bench/out] [--requests 2000]
        [--latency-requests 400] [--poll-seconds 0.5] [--rebuild]

Prints figures, judges nothing. Everything talks to 127.0.0.1 only; every loop is bounded.

  1. registry: versions 1 and 2 of `cfpb` (2,000 synthetic rows, 1 epoch, seeds 1 and 2), built
     by the real steps (datagen -> ingest -> transform -> train twice -> registry.publish, the
     recipe of tests/test_serve.py) under `<workdir>/serve-registry/`, reused on later runs;
  2. the floor: the SavedModel's own `serving_default` call time for one example (version 1,
     loaded with tf.saved_model.load in this process, 200 timed calls after a warm-up), both
     with prebuilt tensors and with the tensors built from Python strings (what the server does
     per request);
  3. the server, `python -m components.serve` as a child process on free ports, deployment.json
     at 90/10 (1 stable, 2 canary); single-example predictions of version 1 over REST
     (http.client, one keep-alive connection per worker thread) and gRPC (PredictionServiceStub,
     one channel per worker thread) at concurrency 1, 8 and 32: p50/p99 latency and throughput
     (`--latency-requests` timed requests per level, after a warm-up). REST overhead = REST p50
     at concurrency 1 - floor p50 (goal < 2 ms);
  4. canary move under load: 8 threads send REST predictions without a request key; phase A at
     90/10, then deployment.json is rewritten to promote 2 (0/100, `deployment.promote`), then
     rolled back to 90/10 (`deployment.rollback`). A monitor thread polls
     GET /v1/models/cfpb until the server serves the new version set; the split of each phase is
     counted over the requests *sent* after that moment only (each phase runs until it has
     ceil(`--requests`/3) such requests, so the total is at least `--requests`). Failed requests
     (any status but 200, or a connection error) are counted over the whole run (goal 0); the
     observed share of version 2 (the response's model_version) is compared with the configured
     one (goal within 3 points).

The table goes to stdout and, as JSON, to `<workdir>/bench_serve.json`; the server's log to
`<workdir>/serve-server.log`. The server is stopped (SIGTERM, then SIGKILL) at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from benchlib import (
    OUT,
    PYTHON,
    REPO,
    code_version,
    ensure_data,
    figure,
    machine,
    markdown,
    write_json,
)

# importable once benchlib has put the repository on sys.path
from components.common import registry
from components.common.artifacts import deployment
from components.common.artifacts import model as model_artifact

HOST = "127.0.0.1"
NAME = "cfpb"
FAST = {"epochs": 1, "batch_size": 256, "hidden_units": [8], "embedding_dim": 4}
ROW = {"product": "Mortgage", "sub_product": "Conventional fixed mortgage",
       "issue": "Loan servicing, payments, escrow account",
       "company_response": "Closed with explanation", "state": "CA", "zip_code": "90210",
       "narrative": "The bank lost my payment and charged a late fee twice."}
CONCURRENCY = (1, 8, 32)
LOAD_THREADS = 8
SWITCH_TIMEOUT = 120.0  # seconds to wait for the server to apply a deployment change
READY_TIMEOUT = 180.0


# ---------------------------------------------------------------------------------------------
# Helpers.

def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


# ---------------------------------------------------------------------------------------------
# 1. The registry.

def ensure_registry(workdir: str, rebuild: bool) -> tuple[str, float | None]:
    """Versions 1 and 2 of NAME under <workdir>/serve-registry; (root, build seconds or None).
    The data, `<workdir>/complaints-2000-seed1.csv`, is generated once and reused."""
    root = os.path.join(workdir, "serve-registry")
    if not rebuild and os.path.isdir(root):
        try:
            index = registry.read_index(root, NAME)
            versions = {int(v["version"]) for v in index.get("versions", [])}
        except Exception:  # noqa: BLE001 - anything unreadable is rebuilt
            versions = set()
        if {1, 2} <= versions:
            return root, None
    from components.common.dataset_config import load_dataset_config
    from components.common.hparams import parse_hparams
    from components.ingest.ingest import ingest
    from components.train.train import train
    from components.transform.transform import transform

    started = time.perf_counter()
    work = os.path.join(workdir, "serve-build")
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(work)
    csv_path, _ = ensure_data(workdir, 2000, 1)
    config = load_dataset_config()
    examples, transformed = os.path.join(work, "ex"), os.path.join(work, "tf")
    ingest(csv_path, examples, config)
    transform(examples, transformed, config)
    baseline = None
    for seed in (1, 2):
        model_dir = os.path.join(work, f"m{seed}")
        info = train(examples, transformed, model_dir, config,
                     parse_hparams(json.dumps({**FAST, "seed": seed})))
        lineage = {**info, "baseline_version": baseline, "baseline": {"version": baseline}}
        baseline = registry.publish(root, NAME, model_artifact.saved_model_dir(model_dir),
                                    lineage).version
    shutil.rmtree(work, ignore_errors=True)
    return root, time.perf_counter() - started


def write_split(root: str) -> dict:
    """deployment.json at 90/10 (1 stable, 2 canary), through the shared strategies."""
    record = deployment.empty_record(NAME)
    record = deployment.canary(record, 1)          # 1 stable, 100%
    record = deployment.canary(record, 2, 10)      # 2 canary, 10%
    deployment.save(root, NAME, record)
    return record


# ---------------------------------------------------------------------------------------------
# 2. The floor.

def floor(root: str, calls: int = 200) -> dict:
    import tensorflow as tf

    fn = tf.saved_model.load(registry.version_uri(root, NAME, 1)).signatures[
        model_artifact.RAW_SIGNATURE]
    tensors = {f: tf.constant([ROW[f]]) for f in ROW}
    for _ in range(20):
        fn(**tensors)[model_artifact.OUTPUT].numpy()
    prebuilt = []
    for _ in range(calls):
        t = time.perf_counter()
        fn(**tensors)[model_artifact.OUTPUT].numpy()
        prebuilt.append(time.perf_counter() - t)
    from_python = []
    for _ in range(calls):
        t = time.perf_counter()
        built = {f: tf.constant([ROW[f]], dtype=tf.string) for f in ROW}
        [float(p) for p in fn(**built)[model_artifact.OUTPUT].numpy().reshape(-1)]
        from_python.append(time.perf_counter() - t)
    return {"calls": calls,
            "p50_ms": ms(percentile(prebuilt, 50)), "p99_ms": ms(percentile(prebuilt, 99)),
            "with_tensor_build_p50_ms": ms(percentile(from_python, 50)),
            "with_tensor_build_p99_ms": ms(percentile(from_python, 99))}


# ---------------------------------------------------------------------------------------------
# 3. The server.

class Server:
    def __init__(self, root: str, log_path: str, poll_seconds: float):
        self.rest_port, self.grpc_port = free_port(), free_port()
        self.log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "components.serve", "--registry", root, "--model-name", NAME,
             "--host", HOST, "--rest-port", str(self.rest_port),
             "--grpc-port", str(self.grpc_port), "--poll-seconds", str(poll_seconds)],
            cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)
        self.started = time.perf_counter()

    def wait_ready(self) -> float:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited with {self.proc.returncode}; "
                                 f"see {self.log.name}")
            try:
                with urllib.request.urlopen(f"http://{HOST}:{self.rest_port}/readyz",
                                            timeout=2) as answer:
                    if answer.status == 200:
                        return time.perf_counter() - self.started
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise SystemExit(f"the server was not ready after {READY_TIMEOUT:.0f} s")

    def served_versions(self) -> list[int] | None:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.rest_port}/v1/models/{NAME}",
                                        timeout=5) as answer:
                body = json.loads(answer.read())
            return sorted(int(s["version"]) for s in body["model_version_status"])
        except (urllib.error.URLError, OSError, ValueError, KeyError):
            return None

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()
        return self.proc.returncode


class RestClient:
    """One keep-alive connection; predict() -> (ok, model_version or error text)."""

    def __init__(self, port: int, path: str):
        self.port, self.path = port, path
        self.body = json.dumps({"instances": [ROW]}).encode()
        self.headers = {"Content-Type": "application/json"}
        self.conn = http.client.HTTPConnection(HOST, port, timeout=30)

    def predict(self) -> tuple[bool, str]:
        try:
            self.conn.request("POST", self.path, body=self.body, headers=self.headers)
            answer = self.conn.getresponse()
            raw = answer.read()
        except (http.client.HTTPException, OSError) as exc:
            self.conn.close()
            self.conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
            return False, f"{type(exc).__name__}: {exc}"
        if answer.status != 200:
            return False, f"HTTP {answer.status}: {raw[:200]!r}"
        return True, json.loads(raw)["model_version"]

    def close(self) -> None:
        self.conn.close()


class GrpcClient:
    """One channel per client (= per worker thread)."""

    def __init__(self, port: int, request):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.grpc = grpc
        self.channel = grpc.insecure_channel(f"{HOST}:{port}")
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self.request = request

    def predict(self) -> tuple[bool, str]:
        try:
            answer = self.stub.Predict(self.request, timeout=30)
        except self.grpc.RpcError as exc:
            return False, f"{exc.code()}: {exc.details()}"
        return True, str(answer.model_spec.version.value)

    def close(self) -> None:
        self.channel.close()


def grpc_request(version: int):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = NAME
    request.model_spec.version.value = version
    for feature, value in ROW.items():
        request.inputs[feature].CopyFrom(tf.make_tensor_proto([value], tf.string))
    return request


def run_level(make_client, concurrency: int, total: int, warmup: int = 5) -> dict:
    """`total` timed requests spread over `concurrency` threads, each with its own client."""
    per_thread = [total // concurrency + (1 if i < total % concurrency else 0)
                  for i in range(concurrency)]
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    failures = [0] * concurrency
    barrier = threading.Barrier(concurrency + 1)
    done = threading.Barrier(concurrency + 1)

    def worker(i: int) -> None:
        client = make_client()
        try:
            for _ in range(warmup):
                client.predict()
            barrier.wait(timeout=120)
            for _ in range(per_thread[i]):
                t = time.perf_counter()
                ok, _version = client.predict()
                latencies[i].append(time.perf_counter() - t)
                failures[i] += not ok
        finally:
            client.close()
            done.wait(timeout=300)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True)
               for i in range(concurrency)]
    for thread in threads:
        thread.start()
    barrier.wait(timeout=120)
    started = time.perf_counter()
    done.wait(timeout=300)
    wall = time.perf_counter() - started
    for thread in threads:
        thread.join(timeout=10)
    flat = [x for part in latencies for x in part]
    return {"concurrency": concurrency, "requests": len(flat), "failed": sum(failures),
            "p50_ms": ms(percentile(flat, 50)), "p99_ms": ms(percentile(flat, 99)),
            "throughput_rps": round(len(flat) / wall, 1), "wall_s": round(wall, 3)}


# ---------------------------------------------------------------------------------------------
# 4. Canary move under load.

def canary_move(server: Server, root: str, record: dict, requests: int) -> dict:
    per_phase = math.ceil(requests / 3)
    cap = 20 * requests + 10_000  # a hard bound on the total, whatever happens
    records: list[tuple[float, bool, str]] = []  # (sent at, ok, model_version or error)
    lock = threading.Lock()
    stop = threading.Event()
    path = f"/v1/models/{NAME}:predict"  # routed by the split; no key: random by weight

    def worker() -> None:
        client = RestClient(server.rest_port, path)
        try:
            while not stop.is_set():
                with lock:
                    if len(records) >= cap:
                        return
                sent = time.monotonic()
                ok, what = client.predict()
                with lock:
                    records.append((sent, ok, what))
        finally:
            client.close()

    promoted = deployment.promote(record, 2)
    rolled_back = deployment.rollback(promoted)
    plan = [  # (name, record to write or None, served versions once applied, share of v2 %)
        ("A: 90/10", None, [1, 2], record["traffic"]["2"]),
        ("B: promote 2 (0/100)", promoted, [2], 100),
        ("C: back to 90/10", rolled_back, [1, 2], rolled_back["traffic"]["2"]),
    ]
    phases = []
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(LOAD_THREADS)]
    load_started = time.monotonic()
    for thread in threads:
        thread.start()
    try:
        for name, new_record, expected, share in plan:
            written = time.monotonic()
            if new_record is not None:
                deployment.save(root, NAME, new_record)
                deadline = written + SWITCH_TIMEOUT
                while time.monotonic() < deadline and server.served_versions() != expected:
                    time.sleep(0.01)
            effective = time.monotonic()
            switched = server.served_versions() == expected
            deadline = effective + SWITCH_TIMEOUT
            while time.monotonic() < deadline:
                with lock:
                    counted = sum(1 for sent, *_ in records if sent >= effective)
                    if counted >= per_phase or len(records) >= cap:
                        break
                time.sleep(0.01)
            phases.append({"phase": name, "written_at": written, "effective_at": effective,
                           "switch_observed": switched, "expected_versions": expected,
                           "configured_v2_percent": share})
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    ended = time.monotonic()
    total = len(records)
    failed = [what for _sent, ok, what in records if not ok]
    for i, phase in enumerate(phases):
        end = phases[i + 1]["written_at"] if i + 1 < len(phases) else math.inf
        in_phase = [r for r in records if phase["written_at"] <= r[0] < end]
        counted = [r for r in in_phase if r[0] >= phase["effective_at"] and r[1]]
        share = phase["configured_v2_percent"] / 100
        v2 = sum(1 for r in counted if r[2] == "2")
        observed = 100 * v2 / len(counted) if counted else float("nan")
        phase.update({
            "requests": len(in_phase),
            "switch_seconds": round(phase["effective_at"] - phase["written_at"], 3),
            "counted_requests": len(counted),
            "v2_requests": v2,
            "observed_v2_percent": round(observed, 2),
            "difference_points": round(observed - phase["configured_v2_percent"], 2),
            # the binomial sampling error of the observed share at this n (random routing)
            "sampling_sd_points": round(100 * math.sqrt(
                share * (1 - share) / len(counted)), 2) if counted else None,
            "versions_seen": sorted({r[2] for r in counted}),
        })
    for phase in phases:
        for key in ("written_at", "effective_at"):
            phase[key] = round(phase[key] - load_started, 3)
    return {"threads": LOAD_THREADS, "requests": total, "failed": len(failed),
            "failures_sample": failed[:5], "seconds": round(ended - load_started, 2),
            "throughput_rps": round(total / (ended - load_started), 1), "phases": phases}


# ---------------------------------------------------------------------------------------------
# Report.

def build_table(result: dict) -> list[dict]:
    rows = []

    def add(name: str, value, unit: str = "", goal: str = "", digits: int = 1) -> None:
        rows.append(figure(name, value, unit, goal, digits))

    fl = result["floor"]
    add("floor: serving_default, 1 example, p50 / p99",
        f"{fl['p50_ms']:.3f} / {fl['p99_ms']:.3f}", "ms")
    add("floor incl. building tensors from strings, p50 / p99",
        f"{fl['with_tensor_build_p50_ms']:.3f} / {fl['with_tensor_build_p99_ms']:.3f}", "ms")
    for protocol in ("rest", "grpc"):
        for level in result[protocol]:
            add(f"{protocol.upper()} c={level['concurrency']}: p50 / p99 "
                f"({level['requests']} req, {level['failed']} failed)",
                f"{level['p50_ms']:.3f} / {level['p99_ms']:.3f}", "ms")
            add(f"{protocol.upper()} c={level['concurrency']}: throughput",
                level["throughput_rps"], "req/s")
    add("REST overhead over the floor, p50 (c=1)", f"{result['rest_overhead_p50_ms']:.3f}",
        "ms", "< 2 ms")
    canary = result["canary"]
    add(f"canary move: requests ({canary['threads']} threads, {canary['seconds']} s)",
        canary["requests"], "", ">= " + str(result["args"]["requests"]), digits=0)
    add("canary move: failed requests", canary["failed"], "", "0", digits=0)
    for phase in canary["phases"]:
        add(f"canary {phase['phase']}: v2 share observed vs configured "
            f"(n={phase['counted_requests']}, switch {phase['switch_seconds']} s)",
            f"{phase['observed_v2_percent']:.2f} vs {phase['configured_v2_percent']}",
            "%", f"within 3 points (diff {phase['difference_points']:+.2f}, "
                 f"sampling sd {phase['sampling_sd_points']})")
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default=str(OUT))
    parser.add_argument("--requests", type=int, default=2000,
                        help="at least this many REST requests during the canary move")
    parser.add_argument("--latency-requests", type=int, default=400,
                        help="timed requests per protocol and concurrency level")
    parser.add_argument("--poll-seconds", type=float, default=0.5,
                        help="the server's --poll-seconds")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the registry")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    load_before = os.getloadavg()
    root, build_seconds = ensure_registry(workdir, args.rebuild)
    how = f"built in {build_seconds:.1f} s" if build_seconds else "reused"
    print(f"registry {root} ({how})", flush=True)
    record = write_split(root)
    floor_figures = floor(root)
    print(f"floor {floor_figures}", flush=True)

    server = Server(root, os.path.join(workdir, "serve-server.log"), args.poll_seconds)
    result: dict = {"args": vars(args), "registry": root,
                    "registry_build_seconds": build_seconds, "floor": floor_figures}
    try:
        result["server_ready_seconds"] = round(server.wait_ready(), 2)
        print(f"server ready in {result['server_ready_seconds']} s "
              f"(REST {server.rest_port}, gRPC {server.grpc_port})", flush=True)
        rest_path = f"/v1/models/{NAME}/versions/1:predict"
        request = grpc_request(1)
        for protocol, make in (("rest", lambda: RestClient(server.rest_port, rest_path)),
                               ("grpc", lambda: GrpcClient(server.grpc_port, request))):
            result[protocol] = []
            for concurrency in CONCURRENCY:
                level = run_level(make, concurrency, args.latency_requests)
                print(f"{protocol} {level}", flush=True)
                result[protocol].append(level)
        result["rest_overhead_p50_ms"] = round(
            result["rest"][0]["p50_ms"] - floor_figures["p50_ms"], 3)
        result["canary"] = canary_move(server, root, record, args.requests)
        print(f"canary {json.dumps(result['canary'])}", flush=True)
    finally:
        result["server_exit_code"] = server.stop()
    result["machine"] = machine(load_before)
    result["code_version"] = code_version()
    result["table"] = build_table(result)
    out = write_json(os.path.join(workdir, "bench_serve.json"), result)
    print()
    print(markdown(result["table"], compact=True))
    print(f"\nJSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
