"""The loop demo, end to end and timed: new data -> run -> serve -> traffic -> labels ->
feedback -> trigger -> second run (`make demo-loop`).

    .venv/bin/python bench/bench_loop.py [--workdir local_runs/demo-loop] [--rows 20000]
        [--replay 5000] [--image-registry local] [--image-tag TAG] [--hparams '{}']

Everything happens in `--workdir` (removed and made again: it is the demo's own folder), with
the real pieces, each step of the pipeline in its container (kfp.local), as a user would:

1. `python -m datagen` writes N complaints into `<workdir>/incoming/` (the trigger's source);
2. `python -m components.trigger --once --run local`: the new file starts run 1
   (`pipeline.py --run local`: ingest ... deploy; version 1 becomes stable);
3. no new data: the trigger again starts nothing, and a run on the same file skips every step
   after ingest and says "no new data";
4. `python -m components.serve --log-store <workdir>/logs` serves the registry;
5. replay: M other generated complaints, one REST request each, keyed by complaint id
   (`X-Request-Key`), their label column held back and written to `labels.csv` (as if the
   disputes became known later);
6. `python -m components.feedback`: joins the log with the labels, live metrics, drift, the
   newly labelled rows as the next dataset version in `<store>/incoming/`, `retrain: true`;
7. `python -m components.trigger --once --run local`: that file starts run 2, which trains on
   the old and the new rows and deploys version 2 as a canary (when blessed);
8. round 2: M more requests (split between stable and canary), then feedback with `--since`
   the start of round 2 and every label so far: round 1's labels are late, and the A/B verdict
   between version 1 and 2 says who wins or how many labelled predictions are still needed.

Figures: each phase's seconds (and peak memory where it is one process), the runs' outcomes,
the feedback decision. JSON: `<workdir>/bench_loop.json`.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import http.client
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time

from benchlib import (
    MIB,
    PYTHON,
    REPO,
    build_facts,
    checked,
    code_since,
    code_version,
    figure,
    machine,
    markdown,
    measure,
    write_json,
)

MODEL = "cfpb-disputes"
FEATURES = {"product": "Product", "sub_product": "Sub-product", "issue": "Issue",
            "company_response": "Company response to consumer", "state": "State",
            "zip_code": "ZIP code", "narrative": "Consumer complaint narrative"}
SDK_PYTHON = REPO / ".venv-sdk" / "bin" / "python"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_json(path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def latest_summary(work: str) -> dict:
    return read_json(os.path.join(work, "latest", "summary.json"))


def replay(port: int, rows: int, seed: int, labels_path: str) -> dict:
    """M generated complaints, one request each, labels held back."""
    from datagen.generator import iter_complaints

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    started, errors, labels = time.monotonic(), 0, []
    for row in iter_complaints(rows, seed):
        key = str(int(row["Complaint ID"]) + 10_000_000)  # not the training data's ids
        body = json.dumps({"instances": [{f: row[h] for f, h in FEATURES.items()}]})
        conn.request("POST", f"/v1/models/{MODEL}:predict", body,
                     {"Content-Type": "application/json", "X-Request-Key": key})
        answer = conn.getresponse()
        answer.read()
        errors += answer.status != 200
        labels.append((key, row["Consumer disputed?"]))
    conn.close()
    seconds = time.monotonic() - started
    with open(labels_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Complaint ID", "Consumer disputed?"])
        writer.writerows(labels)
    return {"requests": rows, "errors": errors, "seconds": round(seconds, 1),
            "requests_per_second": round(rows / seconds, 1)}


def serve(work: str, port: int, log_path: str) -> subprocess.Popen:
    log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 (closed with the process)
    server = subprocess.Popen(
        [PYTHON, "-m", "components.serve", "--registry", os.path.join(work, "registry"),
         "--model-name", MODEL, "--rest-port", str(port), "--grpc-port", "-1",
         "--log-store", os.path.join(work, "logs")], cwd=REPO, stdout=log,
        stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return server
        except OSError:
            pass
        if server.poll() is not None:
            sys.exit(f"the model server stopped; see {log_path}")
        time.sleep(0.5)
    server.kill()
    sys.exit(f"the model server was not ready after 300 s; see {log_path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=str(REPO / "local_runs" / "demo-loop"))
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--replay", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--image-registry", default=build_facts.DEFAULT_REGISTRY)
    parser.add_argument("--image-tag", default=None)
    parser.add_argument("--hparams", default="{}")
    args = parser.parse_args()
    load_before = os.getloadavg()
    version = code_version()
    work = os.path.abspath(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    logs = os.path.join(work, "bench-logs")
    os.makedirs(logs)
    incoming, store = os.path.join(work, "incoming"), os.path.join(work, "store")
    run_local = shlex.join([str(SDK_PYTHON if SDK_PYTHON.exists() else PYTHON),
                            str(REPO / "pipeline.py"), "--run", "local",
                            "--image-registry", args.image_registry, "--image-tag",
                            args.image_tag or build_facts.image_tag(), "--hparams",
                            args.hparams])
    trigger = [PYTHON, "-m", "components.trigger", "--source", incoming, "--store", store,
               "--run", "local", "--once", "--local-command", run_local]
    table, notes = [], {}

    data = checked(measure("datagen", [PYTHON, "-m", "datagen", "--rows", str(args.rows),
                                       "--seed", str(args.seed), "--out",
                                       os.path.join(incoming, "complaints-1.csv")],
                           os.path.join(logs, "datagen.log")))
    first = checked(measure("trigger: run 1", trigger, os.path.join(logs, "trigger-1.log")))
    run1 = latest_summary(work)
    table += [figure(f"data: {args.rows:,} complaints (datagen)", data.seconds, "s"),
              figure("trigger + run 1 (ingest ... deploy, each step in its container)",
                     first.seconds, "s"),
              figure("run 1: blessed / model version / deployed",
                     f"{run1['blessed']} / {run1['model_version']} / {run1['deployed']}")]

    idle = checked(measure("trigger: nothing new", trigger,
                           os.path.join(logs, "trigger-idle.log")))
    with open(idle.log, encoding="utf-8") as handle:
        idle_started = sum(1 for line in handle if line.startswith("{"))
    again = checked(measure("run on the same data", shlex.split(run_local) + [
        "--source", os.path.join(incoming, "complaints-1.csv"), "--workdir", work],
        os.path.join(logs, "run-same-data.log")))
    same = latest_summary(work)
    skipped = sum(1 for s in same["steps"] if s["status"] == "skipped: no new data")
    table += [figure("trigger with nothing new (runs started)", idle.seconds, "s",
                     f"{idle_started} runs started"),
              figure("run on the same data: no new data", again.seconds, "s",
                     f"new_data={same['new_data']}, {skipped} steps skipped")]

    port = free_port()
    server = serve(work, port, os.path.join(logs, "serve.log"))
    try:
        traffic = replay(port, args.replay, args.seed + 1000, os.path.join(work, "labels.csv"))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    table.append(figure(f"replay: {args.replay:,} requests, one example each (REST)",
                        traffic["seconds"], "s", f"{traffic['requests_per_second']} req/s, "
                                                 f"{traffic['errors']} errors"))

    feedback = checked(measure("feedback", [
        PYTHON, "-m", "components.feedback", "--predictions",
        os.path.join(work, "logs", MODEL, "predictions"), "--labels",
        os.path.join(work, "labels.csv"), "--registry", os.path.join(work, "registry"),
        "--model-name", MODEL, "--store", store, "--output", os.path.join(work, "feedback")],
        os.path.join(logs, "feedback.log")))
    result = read_json(os.path.join(work, "feedback", "feedback.json"))
    table += [figure("feedback (join, live metrics, TFDV drift, next dataset version)",
                     feedback.seconds, "s", f"peak {feedback.peak_tree / MIB:,.0f} MiB"),
              figure("feedback: scored / retrain",
                     f"{result['join']['matched']} / {result['decision']['retrain']}",
                     "", "; ".join(result["decision"]["reasons"])[:120])]
    notes["feedback"] = {k: result[k] for k in ("join", "labels", "decision", "dataset")}
    notes["live_auc"] = {v: m.get("auc") for v, m in result["versions"].items()}

    second = checked(measure("trigger: run 2", trigger, os.path.join(logs, "trigger-2.log")))
    run2 = latest_summary(work)
    index = read_json(os.path.join(work, "registry", MODEL, "index.json"))
    deployment = read_json(os.path.join(work, "registry", MODEL, "deployment.json"))
    table += [figure("trigger + run 2 (on the newly labelled data)", second.seconds, "s"),
              figure("run 2: dataset version / blessed / model version",
                     f"{run2['dataset_version']} / {run2['blessed']} / "
                     f"{run2['model_version']}", "",
                     f"= feedback's {result['dataset']['dataset_version']}"),
              figure("deployment after run 2 (traffic per version)",
                     json.dumps(deployment["traffic"]))]

    # Round 2: version 2 serves as the canary; more traffic, and labels that include round 1's
    # again (for those the window starts after their predictions: late labels).
    since = dt.datetime.now(dt.UTC).isoformat()
    server = serve(work, port, os.path.join(logs, "serve-2.log"))
    try:
        traffic2 = replay(port, args.replay, args.seed + 2000,
                          os.path.join(work, "labels-2.csv"))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
    with open(os.path.join(work, "labels-all.csv"), "w", encoding="utf-8") as out:
        for number, name in enumerate(("labels.csv", "labels-2.csv")):
            with open(os.path.join(work, name), encoding="utf-8") as handle:
                out.writelines(handle.readlines()[1 if number else 0:])
    ab_run = checked(measure("feedback round 2", [
        PYTHON, "-m", "components.feedback", "--predictions",
        os.path.join(work, "logs", MODEL, "predictions"), "--labels",
        os.path.join(work, "labels-all.csv"), "--registry", os.path.join(work, "registry"),
        "--model-name", MODEL, "--store", store, "--output", os.path.join(work, "feedback-2"),
        "--since", since], os.path.join(logs, "feedback-2.log")))
    round2 = read_json(os.path.join(work, "feedback-2", "feedback.json"))
    ab = round2["ab"] or {}
    table += [figure(f"round 2: {args.replay:,} requests (stable 1 / canary 2)",
                     traffic2["seconds"], "s",
                     json.dumps({v: m["predictions"] for v, m in round2["versions"].items()})),
              figure("feedback round 2 (--since: round 1's labels are late)", ab_run.seconds,
                     "s", f"late labels {round2['labels']['late']:,}, scored "
                          f"{round2['join']['matched']:,}"),
              figure("A/B verdict", ab.get("verdict", "no canary")[:150]),
              figure("labelled predictions still needed", ab.get("labelled_still_needed"), "",
                     digits=0)]
    notes["round2"] = {k: round2[k] for k in ("join", "labels", "ab", "decision", "dataset")}
    notes["round2"]["live_auc"] = {v: m.get("auc") for v, m in round2["versions"].items()}
    total = sum(r.seconds for r in (data, first, idle, again, feedback, second, ab_run)) + \
        traffic["seconds"] + traffic2["seconds"]
    table.append(figure("the whole loop", total, "s"))
    print(markdown(table))
    notes.update(run1=run1, run_same_data=same, run2=run2,
                 registry_versions=[v["version"] for v in index["versions"]],
                 deployment=deployment, replay=traffic)
    path = write_json(os.path.join(work, "bench_loop.json"), {
        "figures": table, "notes": notes, "machine": machine(load_before),
        "code": code_since(version)})
    print(f"\nresult: {path}")


if __name__ == "__main__":
    main()
