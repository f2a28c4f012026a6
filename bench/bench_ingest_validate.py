"""Benchmark the ingest and validate steps on synthetic complaints; prints figures, judges nothing.

    .venv/bin/python bench/bench_ingest_validate.py [--rows 1000000] [--seed 42]
        [--workdir bench/out] [--workers 1] [--repeat 3] [--keep] [--no-validate]

What it measures, each step in its own child process (as the pipeline runs them):
  * csv baseline: Python's own `csv` module reading the same file, nothing else;
  * ingest: the real CLI (`python -m components.ingest`), wall time and peak memory;
    csv baseline and ingest run --repeat times, in turns, and the fastest of each counts;
  * tf import: `python -c "import tensorflow"`, the start-up any step importing TF pays;
  * validate: the real CLI in one process and, with `--workers N`, with N Beam worker
    processes too (`--beam-pipeline-args`).
The generated CSV is kept under the workdir and reused when rows and seed match; step outputs
are deleted at the end unless `--keep`. The table goes to stdout and, as JSON, to
`<workdir>/bench_ingest_validate.json`. Linux only (it reads /proc and wait4's rusage).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import re
import shutil
import sys
import time

from benchlib import (
    MB,
    MIB,
    OUT,
    PYTHON,
    Run,
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

# importable once benchlib has put the repository on sys.path
from components.common import documents
from components.common.artifacts import examples as examples_artifact
from components.validate.validation import SUMMARY_FILE

INGEST_RATIO_GOAL = 3.0
INGEST_MEMORY_GOAL = 1024 * MIB
PROGRESS_LINE = re.compile(r"^(\S+ \S+) INFO components\.ingest\.ingest: read (\d+) rows ")

CSV_BASELINE = """
import csv, sys, time
csv.field_size_limit(1 << 20)  # as ingest does; long narratives exceed the 128 KiB default
started = time.perf_counter()
rows = 0
for row in csv.reader(open(sys.argv[1], newline='', encoding='utf-8')):
    rows += 1
print(rows - 1, time.perf_counter() - started)
"""


def warm_cache(path: str) -> float:
    """Read the file once so every timed run finds it in the page cache; returns MB/s."""
    started = time.perf_counter()
    with open(path, "rb") as handle:
        while handle.read(1 << 24):
            pass
    return os.path.getsize(path) / MB / max(time.perf_counter() - started, 1e-9)


def csv_baseline(path: str, logs: str, attempt: int) -> tuple[Run, float]:
    """Python's csv module alone over the file; returns the run and its in-process read time."""
    run = checked(measure("csv baseline", [PYTHON, "-c", CSV_BASELINE, path],
                          os.path.join(logs, f"csv_baseline-{attempt}.log")))
    with open(run.log, encoding="utf-8") as handle:
        _rows, seconds = handle.read().split()
    return run, float(seconds)


def tf_import(logs: str) -> Run:
    """Start-up cost of a step that imports TensorFlow (validate does, through TFDV)."""
    return checked(measure("tf import", [PYTHON, "-c", "import tensorflow"],
                           os.path.join(logs, "tf_import.log"),
                           env={"TF_CPP_MIN_LOG_LEVEL": "2"}))


def ingest(path: str, output: str, logs: str, attempt: int) -> tuple[Run, dict]:
    """The ingest CLI; returns the run and the metadata.json it wrote."""
    run = checked(measure("ingest", [PYTHON, "-m", "components.ingest", "--source", path,
                                     "--output", output],
                          os.path.join(logs, f"ingest-{attempt}.log")))
    return run, examples_artifact.read_metadata(output)


def validate(examples: str, output: str, logs: str, workers: int) -> tuple[Run, dict]:
    """The validate CLI with `workers` Beam worker processes (one: in process); returns run
    and summary."""
    beam = [] if workers == 1 else [
        "--beam-pipeline-args",
        f"--direct_num_workers={workers} --direct_running_mode=multi_processing"]
    run = checked(measure(f"validate (workers={workers})",
                          [PYTHON, "-m", "components.validate", "--examples", examples,
                           "--output", output, *beam],
                          os.path.join(logs, f"validate-w{workers}.log")))
    return run, documents.read_json(os.path.join(output, SUMMARY_FILE), SUMMARY_FILE, "validate")


def steady_rows_per_second(log_path: str) -> float | None:
    """Ingest's pace once running, from its `read N rows` progress lines (every 100,000 rows).

    Start-up (interpreter, imports, the writer process getting ready) is excluded: the rate
    is measured between the first and the last progress line. None with fewer than two.
    """
    points = []
    with open(log_path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            match = PROGRESS_LINE.match(line)
            if match:
                stamp = dt.datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f")
                points.append((stamp, int(match[2])))
    if len(points) < 2:
        return None
    (t0, r0), (t1, r1) = points[0], points[-1]
    return (r1 - r0) / max((t1 - t0).total_seconds(), 1e-9)


def build_table(source_bytes: int, csv_run: Run, csv_seconds: float, tf_run: Run | None,
                ingest_run: Run, metadata: dict, validate_runs: list[tuple[Run, dict]]) -> list:
    """The figures, in the order they are printed."""
    rows = metadata["rows"]["read"]
    table = [
        figure("csv baseline: read time (in process)", csv_seconds, "s"),
        figure("csv baseline: rows/s", rows / csv_seconds, "rows/s", digits=0),
        figure("csv baseline: peak RSS", csv_run.peak_rss / MIB, "MiB"),
    ]
    if tf_run:
        table.append(figure("tf import alone (start-up of any step importing TensorFlow)",
                            tf_run.seconds, "s"))
    table += [
        figure("ingest: wall time", ingest_run.seconds, "s"),
        figure("ingest: rows/s (rows read / wall time)", rows / ingest_run.seconds, "rows/s",
               digits=0),
        figure("ingest: MB/s (source bytes / wall time)", source_bytes / MB / ingest_run.seconds,
               "MB/s"),
        figure("ingest: wall time / csv read time", ingest_run.seconds / csv_seconds, "x",
               f"< {INGEST_RATIO_GOAL:g}x", digits=2),
    ]
    steady = steady_rows_per_second(ingest_run.log)
    if steady:
        table += [
            figure("ingest: steady rows/s (between progress lines, no start-up)", steady,
                   "rows/s", digits=0),
            figure("ingest: steady time for all rows / csv read time",
                   rows / steady / csv_seconds, "x", "(reference)", digits=2),
        ]
    table += [
        figure("ingest: peak RSS, largest process", ingest_run.peak_rss / MIB, "MiB"),
        figure("ingest: peak memory, all processes (sampled PSS)", ingest_run.peak_tree / MIB,
               "MiB", f"< {INGEST_MEMORY_GOAL / MIB:g} MiB"),
    ]
    for run, summary in validate_runs:
        table += [
            figure(f"{run.label}: wall time", run.seconds, "s"),
            figure(f"{run.label}: rows/s", summary["rows"]["kept"] / run.seconds, "rows/s",
                   digits=0),
            figure(f"{run.label}: peak RSS, largest process", run.peak_rss / MIB, "MiB"),
            figure(f"{run.label}: peak memory, all processes (sampled PSS)",
                   run.peak_tree / MIB, "MiB"),
        ]
    return table




def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows to generate")
    parser.add_argument("--seed", type=int, default=42, help="datagen seed")
    parser.add_argument("--workdir", default=str(OUT),
                        help="data, step outputs, logs and the JSON result (default bench/out)")
    parser.add_argument("--workers", type=int, default=1,
                        help="when above 1, also run validate with this many Beam workers")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of the csv baseline and of ingest; the fastest counts "
                             "(default 3)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the ingest and validate outputs (the CSV is always kept)")
    parser.add_argument("--no-validate", action="store_true",
                        help="csv baseline and ingest only (no tf import, no validate): the "
                             "ingest figures in a minute")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.repeat < 1 or args.workers < 1:
        parser.error("--rows, --repeat and --workers must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    workdir = os.path.abspath(args.workdir)
    run_dir = os.path.join(workdir, f"run-{args.rows}-seed{args.seed}")
    shutil.rmtree(run_dir, ignore_errors=True)  # the steps refuse non-empty output directories
    logs = os.path.join(run_dir, "logs")
    os.makedirs(logs)

    load_before, code_before = os.getloadavg(), code_version()
    path, generated = ensure_data(workdir, args.rows, args.seed)
    source_bytes = os.path.getsize(path)
    print(f"data: {path} ({source_bytes / MB:.0f} MB, "
          + (f"generated in {generated:.1f} s)" if generated else "reused)"), flush=True)
    print(f"page cache warm-up read: {warm_cache(path):.0f} MB/s", flush=True)

    # Best of --repeat for the two figures the ratio is made of, taken in turns so that both
    # see the same conditions: other work on the machine only ever makes a run slower.
    csv_runs, ingest_runs = [], []
    for attempt in range(args.repeat):
        csv_runs.append(csv_baseline(path, logs, attempt))
        output = os.path.join(run_dir, f"examples-{attempt}")
        ingest_runs.append((*ingest(path, output, logs, attempt), output))
        print(f"attempt {attempt + 1}/{args.repeat}: csv baseline {csv_runs[-1][1]:.1f} s, "
              f"ingest {ingest_runs[-1][0].seconds:.1f} s", flush=True)
    csv_run, csv_seconds = min(csv_runs, key=lambda r: r[1])
    ingest_run, metadata, examples = min(ingest_runs, key=lambda r: r[0].seconds)
    ingest_run = dataclasses.replace(  # memory: the worst attempt, not the fastest one's
        ingest_run, peak_rss=max(r[0].peak_rss for r in ingest_runs),
        peak_tree=max(r[0].peak_tree for r in ingest_runs))
    for _, _, output in ingest_runs:
        if output != examples:
            shutil.rmtree(output)
    tf_run = None if args.no_validate else tf_import(logs)
    if tf_run:
        print(f"tf import: {tf_run.seconds:.1f} s", flush=True)
    validate_runs = []
    for workers in [] if args.no_validate else sorted({1, args.workers}):
        validate_runs.append(validate(examples, os.path.join(run_dir, f"validation-w{workers}"),
                                      logs, workers))
        print(f"{validate_runs[-1][0].label}: {validate_runs[-1][0].seconds:.1f} s", flush=True)

    table = build_table(source_bytes, csv_run, csv_seconds, tf_run, ingest_run, metadata,
                        validate_runs)
    result = {
        "rows": metadata["rows"], "source_bytes": source_bytes, "source": path,
        "attempts_seconds": {"csv baseline": [round(s, 2) for _, s in csv_runs],
                             "ingest": [round(r.seconds, 2) for r, _, _ in ingest_runs]},
        "ingest_seconds_reported_by_step": metadata.get("seconds"),
        "validate_seconds_reported_by_step": {
            run.label: summary.get("seconds") for run, summary in validate_runs
        },
        "code": code_since(code_before), "machine": machine(load_before), "figures": table,
    }
    host = result["machine"]
    print()
    print(f"{args.rows:,} rows, {source_bytes / MB:.0f} MB, {host['cpus']} CPUs, "
          f"{host['memory_gb']} GB, {host['date']}, code {result['code']}, load average (1 min) "
          f"{host['load_average_1_5_15_before'][0]} before, {host['load_average_1_5_15_after'][0]} "
          "after (other work on the machine slows every figure)")
    print()
    print(markdown(table))
    json_path = write_json(os.path.join(workdir, "bench_ingest_validate.json"), result)
    print(f"\nJSON: {json_path}; logs: {logs}")
    if not args.keep:
        for name in os.listdir(run_dir):
            if name != "logs":
                shutil.rmtree(os.path.join(run_dir, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
