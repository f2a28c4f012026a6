"""Feedback over 1,000,000 logged predictions and 300,000 labels: seconds and peak memory.

    .venv/bin/python bench/bench_feedback.py [--predictions 1000000] [--labels 300000]
                                             [--workdir bench/out] [--drift-sample 50000]

Builds a world like the one feedback meets in production, then runs the real CLI
(`python -m components.feedback`) as a measured child process:

- the stable version's training data: 20,000 generated complaints ingested into a data store
  (the drift baseline and the base of the next dataset version);
- a registry index with versions 1 (stable, 90%) and 2 (canary, 10%) and their deployment record;
- the prediction log: N generated complaints (with their narratives), one JSON line each in
  the server's layout, 500 lines per part file as the server flushes them, keyed by complaint
  id, version 2 scoring the classes apart better than version 1;
- labels: a CSV of M of those ids (plus 1% unknown ids and 1% duplicate rows).

Figures: wall time and peak memory (the largest process and the summed PSS of the tree) of the
full step, and of the step without the drift statistics (`--drift-sample 0`: the join, metrics
and the new dataset version alone), plus the throughput of the join. JSON result:
`<workdir>/bench_feedback.json`.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import os
import random
import shutil
import time

from benchlib import (
    MIB,
    PYTHON,
    build_facts,  # noqa: F401 (sys.path for components)
    checked,
    code_since,
    code_version,
    ensure_data,
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
PART = 500
T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def build_world(work: str, predictions: int, labels: int, seed: int) -> dict:
    from components.common import documents
    from components.common.artifacts import deployment
    from components.common.dataset_config import load_dataset_config
    from components.ingest.ingest import IngestOptions, ingest
    from datagen.generator import iter_complaints

    if os.path.exists(work):
        shutil.rmtree(work)
    os.makedirs(work)
    training, _ = ensure_data(os.path.dirname(work), 20_000, 42)
    store = os.path.join(work, "store")
    metadata = ingest(training, os.path.join(work, "examples"), load_dataset_config(),
                      IngestOptions(store=store))
    registry = os.path.join(work, "registry")
    documents.write_json(os.path.join(registry, MODEL, "index.json"), {
        "model_name": MODEL, "current": 2,
        "versions": [{"version": v, "dataset_version": metadata["dataset_version"]}
                     for v in (1, 2)]})
    record = deployment.canary(deployment.canary(deployment.empty_record(MODEL), 1), 2, 10)
    deployment.save(registry, MODEL, record)

    started = time.monotonic()
    rnd = random.Random(seed)
    log_dir = os.path.join(work, "logs", MODEL, "predictions")
    labelled = set(rnd.sample(range(predictions), labels))
    label_rows, lines, part = [], [], 0
    for i, row in enumerate(iter_complaints(predictions, seed)):
        key = str(10_000_000 + i)
        version = 2 if rnd.random() < 0.1 else 1
        positive = row["Consumer disputed?"] == "Yes"
        score = rnd.gauss((1.2 if version == 2 else 0.8) if positive else 0.0, 1.0)
        when = T0 + dt.timedelta(seconds=i * 0.5)
        lines.append(json.dumps({
            "request_id": f"req-{i}", "time": when.isoformat(), "model_version": version,
            "inputs": {f: row[h] for f, h in FEATURES.items()},
            "outputs": {"probability": 1 / (1 + math.exp(1.2 - score))}, "key": key},
            ensure_ascii=False, separators=(",", ":")))
        if i in labelled:
            label_rows.append((key, row["Consumer disputed?"]))
        if len(lines) == PART:
            part += 1
            _write_part(log_dir, when, part, lines)
            lines = []
    if lines:
        _write_part(log_dir, T0 + dt.timedelta(seconds=predictions), part + 1, lines)
    extra = [(str(90_000_000 + i), "No") for i in range(labels // 100)]  # unknown ids
    duplicates = label_rows[: labels // 100]
    labels_path = os.path.join(work, "labels.csv")
    with open(labels_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Complaint ID", "Consumer disputed?"])
        writer.writerows(label_rows + extra + duplicates)
    return {"store": store, "registry": registry, "log": log_dir, "labels": labels_path,
            "log_bytes": sum(os.path.getsize(os.path.join(r, f))
                             for r, _d, files in os.walk(log_dir) for f in files),
            "label_rows": len(label_rows) + len(extra) + len(duplicates),
            "generation_seconds": round(time.monotonic() - started, 1)}


def _write_part(log_dir: str, when: dt.datetime, part: int, lines: list[str]) -> None:
    folder = os.path.join(log_dir, f"{when:%Y-%m-%d}")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{when:%H%M%S}-{part:06d}-bench000.jsonl"), "w",
              encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predictions", type=int, default=1_000_000)
    parser.add_argument("--labels", type=int, default=300_000)
    parser.add_argument("--drift-sample", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", default=os.path.join(os.path.dirname(__file__), "out"))
    args = parser.parse_args()
    load_before = os.getloadavg()
    version = code_version()
    work = os.path.join(args.workdir, "feedback")
    world = build_world(work, args.predictions, args.labels, args.seed)
    common = ["--predictions", world["log"], "--labels", world["labels"],
              "--registry", world["registry"], "--model-name", MODEL, "--store", world["store"],
              "--min-new-rows", "1000"]
    join_only = checked(measure(
        "feedback without drift", [PYTHON, "-m", "components.feedback", *common,
                                   "--drift-sample", "0", "--combine-with-training-data",
                                   "false", "--output", os.path.join(work, "out-join")],
        os.path.join(work, "feedback-join.log")))
    full = checked(measure(
        "feedback", [PYTHON, "-m", "components.feedback", *common, "--drift-sample",
                     str(args.drift_sample), "--output", os.path.join(work, "out")],
        os.path.join(work, "feedback.log")))
    with open(os.path.join(work, "out", "feedback.json"), encoding="utf-8") as handle:
        result = json.load(handle)
    join = result["join"]
    table = [
        figure("logged predictions", join["records"], "", digits=0),
        figure("label rows", world["label_rows"], "", digits=0),
        figure("prediction log size", world["log_bytes"] / 1e6, "MB"),
        figure("scored (prediction + label)", join["matched"], "", digits=0),
        figure("feedback, full (join, metrics, TFDV drift, new dataset version)",
               full.seconds, "s"),
        figure("feedback, full: peak memory (process tree, PSS)", full.peak_tree / MIB, "MiB",
               "under 1,024 MiB"),
        figure("feedback, full: largest process", full.peak_rss / MIB, "MiB"),
        figure("drift statistics inside it (TFDV, sample of "
               f"{result['drift'].get('serving_examples', 0):,} + training data)",
               result["drift"].get("seconds"), "s"),
        figure("feedback without drift (join, metrics, new rows)", join_only.seconds, "s"),
        figure("feedback without drift: peak memory (process tree, PSS)",
               join_only.peak_tree / MIB, "MiB", "under 1,024 MiB"),
        figure("join throughput without drift", join["records"] / join_only.seconds,
               "predictions/s", digits=0),
        figure("A/B verdict", result["ab"]["verdict"][:60] if result["ab"] else "none"),
        figure("retrain", str(result["decision"]["retrain"]).lower()),
    ]
    print(markdown(table))
    path = write_json(os.path.join(args.workdir, "bench_feedback.json"), {
        "figures": table, "world": world, "runs": [vars(join_only), vars(full)],
        "machine": machine(load_before), "code": code_since(version)})
    print(f"\nresult: {path}")


if __name__ == "__main__":
    main()
