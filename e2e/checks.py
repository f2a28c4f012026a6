"""The assertions of the kind end-to-end run (called by e2e/kind-e2e.sh).

    checks.py run --host URL --name NAME --package pipeline.yaml --expect succeeded
    checks.py run ... --expect failed-at:validate   # failed there, and nothing after it ran
    checks.py registry --uri s3://mlpipeline/cfpb/models --model cfpb-disputes --version 1
    checks.py upload complaints.csv s3://mlpipeline/cfpb/e2e/complaints.csv
    checks.py predict --url http://127.0.0.1:18080/v1/models/cfpb-disputes:predict --host-header H

`run` reads KFP's REST API (v2beta1) and the compiled package (which tasks follow which);
`registry` and `upload` use the project's storage module (S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY from the environment): run this with .venv's python from the repository
root. Each check prints one line and exits 0 when it holds, 1 when it does not.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
import urllib.request

FINAL_STATES = {"SUCCEEDED", "FAILED", "CANCELED", "SKIPPED"}
# One instance in the dataset's feature names (components/common/configs/cfpb.yaml).
INSTANCE = {
    "product": "Mortgage",
    "sub_product": "Conventional fixed mortgage",
    "issue": "Loan servicing, payments, escrow account",
    "company_response": "Closed with explanation",
    "state": "CA",
    "zip_code": "945XX",
    "narrative": "My escrow payment changed twice and nobody answered my letters.",
}


def _field(obj: dict, snake: str):
    """KFP's REST API answers in snake_case; grpc-gateway defaults would be camelCase."""
    parts = snake.split("_")
    return obj.get(snake, obj.get(parts[0] + "".join(p.title() for p in parts[1:])))


# --- KFP runs ------------------------------------------------------------------------------------

def api_get(host: str, path: str, timeout: float = 30) -> dict:
    with urllib.request.urlopen(host.rstrip("/") + path, timeout=timeout) as response:
        return json.load(response)


def find_run(host: str, name: str, pages: int = 10) -> dict | None:
    """The newest run with this display name, with its details; None if there is none."""
    token = ""
    for _ in range(pages):
        query = {"page_size": "100", "sort_by": "created_at desc"}
        if token:
            query["page_token"] = token
        page = api_get(host, "/apis/v2beta1/runs?" + urllib.parse.urlencode(query))
        for run in page.get("runs") or []:
            if _field(run, "display_name") == name:
                return api_get(host, f"/apis/v2beta1/runs/{_field(run, 'run_id')}")
        token = _field(page, "next_page_token") or ""
        if not token:
            return None
    return None


def wait_final(host: str, name: str, timeout_seconds: float, poll_seconds: float = 15) -> dict:
    deadline = time.monotonic() + timeout_seconds
    while True:
        run = find_run(host, name)
        if run is not None and _field(run, "state") in FINAL_STATES:
            return run
        if time.monotonic() >= deadline:
            state = _field(run, "state") if run else "not found"
            raise SystemExit(f"check run: {name}: no final state within {timeout_seconds:g}s "
                             f"(last: {state})")
        time.sleep(poll_seconds)


def pipeline_tasks(package: dict) -> dict[str, dict]:
    """Every task of a compiled package, conditions unfolded (the steps after ingest sit in the
    `new-data` condition's sub-DAG): key -> {"name": display name, "after": set}. A task inside
    a condition comes after the condition task and what that waits for."""
    found: dict[str, dict] = {}
    components = package.get("components") or {}

    def walk(tasks: dict, inherited: set[str]) -> None:
        for key, task in tasks.items():
            after = set(task.get("dependentTasks") or []) | inherited
            found[key] = {"name": (task.get("taskInfo") or {}).get("name", key), "after": after}
            component = components.get((task.get("componentRef") or {}).get("name", ""), {})
            if "dag" in component:
                walk(component["dag"]["tasks"], after | {key})

    walk(package["root"]["dag"]["tasks"], set())
    return found


def downstream(tasks: dict[str, dict], key: str) -> set[str]:
    """Every task that (transitively) waits for `key`."""
    found: set[str] = set()
    frontier = {key}
    while frontier:
        frontier = {k for k, t in tasks.items() if t["after"] & frontier} - found
        found |= frontier
    return found


def task_states(run: dict) -> list[tuple[str, str]]:
    details = _field(run, "run_details") or {}
    return [(_field(t, "display_name") or "", _field(t, "state") or "")
            for t in _field(details, "task_details") or []]


def verdict(run: dict, expect: str, tasks: dict[str, dict]) -> list[str]:
    """What is wrong with a finished run given the expectation (empty: it holds).

    `succeeded`: the run SUCCEEDED. `failed-at:<task key>`: the run FAILED, that task (by key or
    display name) FAILED, and no task after it in the DAG SUCCEEDED."""
    state = _field(run, "state")
    states = task_states(run)
    if expect == "succeeded":
        return [] if state == "SUCCEEDED" else [f"run state {state}, expected SUCCEEDED"]
    if not expect.startswith("failed-at:"):
        raise ValueError(f"unknown expectation {expect!r}")
    key = expect.split(":", 1)[1]
    if key not in tasks:
        raise ValueError(f"no task {key!r} in the package (tasks: {', '.join(sorted(tasks))})")

    def names(k: str) -> set[str]:
        return {k, tasks[k]["name"]}

    problems = []
    if state != "FAILED":
        problems.append(f"run state {state}, expected FAILED")
    if not any(s == "FAILED" for n, s in states if n in names(key)):
        problems.append(f"task {key} ({tasks[key]['name']}) did not fail")
    for later in sorted(downstream(tasks, key)):
        ran = [n for n, s in states if n in names(later) and s == "SUCCEEDED"]
        if ran:
            problems.append(f"task {later} ({tasks[later]['name']}) ran after {key} failed")
    return problems


def load_package(path: str) -> dict:
    import yaml

    with open(path, encoding="utf-8") as handle:
        for doc in yaml.safe_load_all(handle):
            if isinstance(doc, dict) and "root" in doc:
                return doc
    raise SystemExit(f"check run: {path}: no pipeline spec (no 'root') in the package")


def check_run(args) -> int:
    tasks = pipeline_tasks(load_package(args.package))
    run = wait_final(args.host, args.name, args.timeout)
    problems = verdict(run, args.expect, tasks)
    summary = ", ".join(f"{n}={s}" for n, s in task_states(run)) or "no task details"
    if problems:
        print(f"check run: {args.name}: FAILED: {'; '.join(problems)} [{summary}]")
        return 1
    print(f"check run: {args.name}: {args.expect} as expected [{summary}]")
    return 0


# --- object store ---------------------------------------------------------------------------------

def check_registry(args) -> int:
    from components.common import storage
    from components.common.errors import StepError

    uri = storage.join(args.uri, args.model, "index.json")
    try:
        index = json.loads(storage.read_bytes(uri))
    except StepError as exc:
        print(f"check registry: FAILED: {exc}")
        return 1
    versions = sorted(int(v["version"]) for v in index.get("versions") or [])
    if args.version not in versions:
        print(f"check registry: {uri}: FAILED: versions {versions}, expected {args.version}")
        return 1
    if args.only and versions != [args.version]:
        print(f"check registry: {uri}: FAILED: versions {versions}, expected only {args.version}")
        return 1
    print(f"check registry: {uri}: versions {versions}, current {index.get('current')}")
    return 0


def upload(args) -> int:
    from components.common import storage

    storage.put_file(args.source, args.uri)
    print(f"uploaded {args.source} to {args.uri}")
    return 0


# --- serving -------------------------------------------------------------------------------------

def check_predict(args) -> int:
    body = json.dumps({"instances": [INSTANCE]}).encode()
    request = urllib.request.Request(args.url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    if args.host_header:
        request.add_header("Host", args.host_header)
    deadline = time.monotonic() + args.timeout
    while True:
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                answer = json.load(response)
            break
        except OSError as exc:  # URLError/HTTPError: the route may still be programming
            if time.monotonic() >= deadline:
                print(f"check predict: {args.url}: FAILED: {exc}")
                return 1
            time.sleep(10)
    predictions = answer.get("predictions")
    if not isinstance(predictions, list) or len(predictions) != 1:
        print(f"check predict: {args.url}: FAILED: expected one prediction, got {answer}")
        return 1
    print(f"check predict: {args.url}: {json.dumps(predictions[0])[:200]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="a KFP run ended as expected")
    run.add_argument("--host", required=True)
    run.add_argument("--name", required=True, help="the run's display name")
    run.add_argument("--package", required=True, help="the compiled pipeline the run ran")
    run.add_argument("--expect", required=True, help="succeeded | failed-at:<task key>")
    run.add_argument("--timeout", type=float, default=3600)
    run.set_defaults(check=check_run)
    registry = commands.add_parser("registry", help="the registry's index.json lists a version")
    registry.add_argument("--uri", required=True)
    registry.add_argument("--model", required=True)
    registry.add_argument("--version", type=int, required=True)
    registry.add_argument("--only", action="store_true", help="and no other version")
    registry.set_defaults(check=check_registry)
    put = commands.add_parser("upload", help="put a local file into the object store")
    put.add_argument("source")
    put.add_argument("uri")
    put.set_defaults(check=upload)
    predict = commands.add_parser("predict", help="one REST prediction answers")
    predict.add_argument("--url", required=True)
    predict.add_argument("--host-header", default="")
    predict.add_argument("--timeout", type=float, default=300)
    predict.set_defaults(check=check_predict)
    args = parser.parse_args(argv)
    return args.check(args)


if __name__ == "__main__":
    sys.exit(main())
