"""Scale figures: every data step as a plain process at several row counts, and image sizes.

    .venv/bin/python bench/bench_scale.py [--rows 31000 310000 3100000] [--seed 42]
        [--steps ingest validate transform train evaluate] [--hparams JSON]
        [--beam-pipeline-args FLAGS] [--workdir bench/out] [--keep] [--no-images]

`make bench-scale ROWS="31000 310000 3100000"` runs it (default: 31,000 and 310,000 rows).
For each row count: generate the complaints once (`benchlib.ensure_data`, reused while rows and
seed match), then run ingest, validate, transform, train and evaluate through their real CLIs,
each in its own child process measured by `benchlib.measure` (wall time, the largest process's
peak RSS, and the peak of the summed PSS of the process tree every 0.2 s: what a pod's memory
limit sees). Rows/s per step:

- ingest: rows read / wall time;
- validate: rows kept (train + eval) / wall time;
- transform: train rows / wall time; also the seconds of its one counting pass (its log);
- train: train rows x epochs run / wall time (examples/s, start-up and export included);
- evaluate: eval rows / wall time.

Every wall time includes the interpreter start and the imports (about 7-11 s for the
TensorFlow steps here; one unmeasured warm-up process imports them first, so the first row
count does not also pay for reading the libraries from disk). The goal for memory is under
1 GiB per step, all processes counted. Then the size of each step image
(`bench_images.measure`, no container run) against its goal. Prints Markdown tables and
writes everything as JSON to `<workdir>/bench_scale.json`. Step outputs of a row count are
deleted after it unless `--keep`; logs stay under `<workdir>/scale-<rows>-seed<seed>/logs/`.
Judges nothing: exit 0 unless a step fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import time

from benchlib import (
    MIB,
    OUT,
    PYTHON,
    Run,
    build_facts,
    checked,
    code_since,
    code_version,
    ensure_data,
    machine,
    measure,
    write_json,
)

# importable once benchlib has put the repository on sys.path
from components.common import documents
from components.common.artifacts import examples as examples_artifact
from components.common.artifacts import model as model_artifact
from components.common.artifacts import transform as transform_artifact

STEPS = ("ingest", "validate", "transform", "train", "evaluate")
DEFAULT_ROWS = (31_000, 310_000)
MEMORY_GOAL = 1024 * MIB
QUIET = {"TF_CPP_MIN_LOG_LEVEL": "2"}
COUNTED = re.compile(r"counted the values of \d+ features in one pass over (\d+) train rows "
                     r"in ([\d.]+) s")


def run_step(step: str, args: list[str], logs: str) -> Run:
    return checked(measure(step, [PYTHON, "-m", f"components.{step}", *args],
                           os.path.join(logs, f"{step}.log"), env=QUIET))


WARM_UP = ("import tensorflow_data_validation, apache_beam, keras, sklearn.metrics, "
           "matplotlib.figure")


def warm_up(workdir: str) -> float:
    """Import what the steps import once, unmeasured: the first step to import TensorFlow
    would otherwise also pay for reading the libraries from disk into the page cache."""
    return checked(measure("warm-up", [PYTHON, "-c", WARM_UP],
                           os.path.join(workdir, "bench_scale-warm-up.log"), env=QUIET)).seconds


def counting_seconds(log_path: str) -> float | None:
    """Transform's one counting pass over the train split, from its log line."""
    with open(log_path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            match = COUNTED.search(line)
            if match:
                return float(match[2])
    return None


def scale(rows: int, args, workdir: str) -> dict:
    """All steps at one row count; returns their runs and what each processed."""
    source, generated = ensure_data(workdir, rows, args.seed)
    run_dir = os.path.join(workdir, f"scale-{rows}-seed{args.seed}")
    shutil.rmtree(run_dir, ignore_errors=True)  # the steps refuse non-empty output directories
    logs = os.path.join(run_dir, "logs")
    os.makedirs(logs)
    out = {name: os.path.join(run_dir, name)
           for name in ("examples", "validation", "transform", "model", "evaluation")}
    result = {"rows": rows, "source": source, "source_bytes": os.path.getsize(source),
              "datagen_seconds": generated, "steps": {}}
    steps = result["steps"]

    def record(step: str, run: Run, processed: float, unit: str, **extra) -> None:
        steps[step] = {"seconds": round(run.seconds, 2), "processed": processed, "unit": unit,
                       "per_second": round(processed / max(run.seconds, 1e-9), 1),
                       "peak_rss_mib": round(run.peak_rss / MIB, 1),
                       "peak_tree_mib": round(run.peak_tree / MIB, 1),
                       "within_memory_goal": run.peak_tree < MEMORY_GOAL,
                       "log": run.log, **extra}
        print(f"  {rows:>9,} rows  {step:<9} {run.seconds:7.1f} s  "
              f"{steps[step]['per_second']:>9,.0f} {unit}/s  "
              f"peak {run.peak_tree / MIB:6.0f} MiB", flush=True)

    if "ingest" in args.steps or not os.path.exists(out["examples"]):
        run = run_step("ingest", ["--source", source, "--output", out["examples"]], logs)
        record("ingest", run, examples_artifact.read_metadata(out["examples"])["rows"]["read"],
               "rows")
    metadata = examples_artifact.read_metadata(out["examples"])
    result["split_rows"] = metadata["rows"]
    kept = metadata["rows"]["train"] + metadata["rows"].get("eval", 0)
    if "validate" in args.steps:
        beam = ["--beam-pipeline-args", args.beam_pipeline_args] if args.beam_pipeline_args \
            else []
        run = run_step("validate", ["--examples", out["examples"], "--output",
                                    out["validation"], *beam], logs)
        record("validate", run, kept, "rows")
    if {"transform", "train", "evaluate"} & set(args.steps):
        run = run_step("transform", ["--examples", out["examples"], "--output",
                                     out["transform"]], logs)
        info = transform_artifact.read_info(out["transform"])
        record("transform", run, info["rows_fitted"], "rows",
               counting_seconds=counting_seconds(run.log), in_process_seconds=info["seconds"])
    if {"train", "evaluate"} & set(args.steps):
        run = run_step("train", ["--examples", out["examples"], "--transform", out["transform"],
                                 "--output", out["model"], "--hparams", args.hparams], logs)
        training = documents.read_json(os.path.join(out["model"], model_artifact.TRAINING_FILE),
                                       model_artifact.TRAINING_FILE, "train")
        epochs = training.get("epochs_run") or json.loads(args.hparams).get("epochs") or 1
        record("train", run, metadata["rows"]["train"] * epochs, "examples", epochs=epochs,
               in_process_seconds=training.get("seconds"))
    if "evaluate" in args.steps:
        run = run_step("evaluate", ["--model", out["model"], "--examples", out["examples"],
                                    "--output", out["evaluation"]], logs)
        record("evaluate", run, metadata["rows"].get("eval", 0), "rows")
    if not args.keep:
        for path in out.values():
            shutil.rmtree(path, ignore_errors=True)
    return result


def image_sizes() -> list[dict]:
    """Each step image's size against its goal (bench_images, no container started)."""
    import bench_images

    images = {i.name: build_facts.image_name(i.name) for i in build_facts.IMAGES}
    return bench_images.measure(images, run=False)


def steps_table(results: list[dict]) -> str:
    counts = [r["rows"] for r in results]
    lines = ["| step | rows | wall time | rate | peak memory (all processes) | largest process |",
             "|---|---:|---:|---:|---:|---:|"]
    for step in STEPS:
        for rows, result in zip(counts, results, strict=True):
            s = result["steps"].get(step)
            if not s:
                continue
            note = ""
            if step == "transform" and s.get("counting_seconds") is not None:
                note = f" (counting pass {s['counting_seconds']:.1f} s)"
            if step == "train":
                note = f" ({s['epochs']} epochs)"
            lines.append(f"| {step} | {rows:,} | {s['seconds']:.1f} s{note} | "
                         f"{s['per_second']:,.0f} {s['unit']}/s | "
                         f"{s['peak_tree_mib']:,.0f} MiB | {s['peak_rss_mib']:,.0f} MiB |")
    return "\n".join(lines)


def images_table(rows: list[dict]) -> str:
    lines = ["| image | TensorFlow | size | goal |", "|---|---|---:|---:|"]
    for row in rows:
        if row.get("missing"):
            lines.append(f"| {row['step']} | | missing ({row['image']}) | |")
            continue
        lines.append(f"| {row['step']} | {'yes' if row['tensorflow'] else 'no'} | "
                     f"{row['size_mb']:,.0f} MB | <= {row['goal_mb']:,} MB |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=list(DEFAULT_ROWS),
                        help="row counts to generate and run (default 31000 310000)")
    parser.add_argument("--seed", type=int, default=42, help="datagen seed")
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS),
                        help="steps to measure (ingest always runs when its output is missing; "
                             "train needs transform, evaluate both)")
    parser.add_argument("--hparams", default="{}", help="train's --hparams (default: its own)")
    parser.add_argument("--beam-pipeline-args", default="",
                        help="validate's --beam-pipeline-args (default: one process)")
    parser.add_argument("--workdir", default=str(OUT),
                        help="data, step outputs, logs and the JSON result (default bench/out)")
    parser.add_argument("--keep", action="store_true", help="keep the step outputs")
    parser.add_argument("--no-images", action="store_true", help="skip the image sizes")
    args = parser.parse_args(argv)
    if min(args.rows) < 1000:
        parser.error("--rows: at least 1000 each (train needs an eval split)")
    json.loads(args.hparams)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    workdir = os.path.abspath(args.workdir)
    load_before, code_before = os.getloadavg(), code_version()
    started = time.monotonic()
    os.makedirs(workdir, exist_ok=True)
    warm_up_seconds = warm_up(workdir)
    results = [scale(rows, args, workdir) for rows in args.rows]
    images = [] if args.no_images else image_sizes()
    report = {
        "figures": results, "images": images, "hparams": args.hparams,
        "warm_up_seconds": round(warm_up_seconds, 1),
        "beam_pipeline_args": args.beam_pipeline_args,
        "memory_goal_mib": MEMORY_GOAL // MIB,
        "seconds": round(time.monotonic() - started, 1),
        "machine": machine(load_before), "code_version": code_since(code_before),
    }
    print("\n" + steps_table(results))
    if images:
        print("\n" + images_table(images))
    over = [f"{step} at {r['rows']:,} rows" for r in results
            for step, s in r["steps"].items() if not s["within_memory_goal"]]
    print(f"\nmemory over {MEMORY_GOAL // MIB} MiB: {', '.join(over) or 'none'}")
    print(f"JSON: {write_json(os.path.join(workdir, 'bench_scale.json'), report)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
