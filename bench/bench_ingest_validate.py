"""Benchmark the ingest and validate steps on synthetic complaints; prints figures, judges nothing.

    .venv/bin/python bench/bench_ingest_validate.py [--rows 1000000] [--seed 42]
        [--workdir bench/out] [--workers 1] [--repeat 3] [--keep]

What it measures, each step in its own child process (as the pipeline runs them):
  * csv baseline: Python's own `csv` module reading the same file, nothing else;
  * ingest: the real CLI (`python -m components.ingest`), wall time and peak memory;
    csv baseline and ingest run --repeat times, in turns, and the fastest of each counts;
  * tf import: `python -c "import tensorflow"`, the start-up any step importing TF pays;
  * validate: the real CLI, with BEAM_DIRECT_NUM_WORKERS=1 and, with `--workers N`, N too.
The generated CSV is kept under the workdir and reused when rows and seed match; step outputs
are deleted at the end unless `--keep`. The table goes to stdout and, as JSON, to
`<workdir>/bench_ingest_validate.json`. Linux only (it reads /proc and wait4's rusage).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable
MB = 1e6  # throughput and file sizes in decimal MB
MIB = 1 << 20  # memory in MiB
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


@dataclass
class Run:
    """One measured child process."""

    label: str
    seconds: float  # wall time, from spawn to exit
    peak_rss: int  # bytes: the largest single process in the child's tree (kernel-accounted)
    peak_tree: int  # bytes: largest sampled sum of PSS over the child and its descendants
    returncode: int
    log: str


def _descendants(root: int) -> list[int]:
    """Pids of `root` and everything below it, from the parent pids in /proc/<pid>/stat."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", encoding="ascii", errors="replace") as handle:
                stat = handle.read()
        except OSError:  # the process ended while we looked
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])  # field 4; the name may hold spaces
        children.setdefault(parent, []).append(int(name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def _memory(pid: int) -> int:
    """Current memory of one process in bytes: PSS, else RSS (0 if the process is gone).

    PSS (proportional set size) splits shared pages between the processes sharing them, so a
    sum over forked workers counts the pages they share once, as the container's limit does.
    """
    for path, key in ((f"/proc/{pid}/smaps_rollup", "Pss:"), (f"/proc/{pid}/status", "VmRSS:")):
        try:
            with open(path, encoding="ascii") as handle:
                for line in handle:
                    if line.startswith(key):
                        return int(line.split()[1]) * 1024
        except OSError:
            continue
    return 0


def measure(label: str, command: list[str], log_path: str, env: dict | None = None) -> Run:
    """Run `command` as a child and return its wall time and peak memory.

    Peak memory, the robust way: we reap the child ourselves with `os.wait4`, whose rusage is
    the kernel's own high-water mark (ru_maxrss) for that one child and any descendants it
    waited for. Unlike RUSAGE_CHILDREN it is per child, so several runs in one benchmark do not
    mix, and unlike polling VmHWM it cannot miss a short spike or the value lost at exit. It
    needs no `/usr/bin/time`. It is the peak of the largest single process, though, so for
    steps that fork workers (ingest's writer, Beam's multi_processing) we also sample the
    summed PSS of the whole process tree every 0.2 s: what the pod's memory limit sees.
    A sample scans /proc and costs about 3 ms, some 1.5% of one CPU.
    """
    with open(log_path, "w", encoding="utf-8") as log:
        started = time.perf_counter()
        child = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                 env={**os.environ, **(env or {})})
        tree_peak = 0
        done = threading.Event()

        def sample() -> None:
            nonlocal tree_peak
            while not done.wait(0.2):
                tree_peak = max(tree_peak, sum(_memory(p) for p in _descendants(child.pid)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(child.pid, 0)
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen.wait
    peak = usage.ru_maxrss * 1024  # kilobytes on Linux
    return Run(label, seconds, peak, max(tree_peak, peak), child.returncode, log_path)


def _check(run: Run) -> Run:
    """Stop with the child's last log lines when it failed: later figures would be meaningless."""
    if run.returncode != 0:
        with open(run.log, encoding="utf-8", errors="replace") as handle:
            tail = handle.readlines()[-15:]
        sys.exit(f"{run.label} failed (exit {run.returncode}); end of {run.log}:\n"
                 + "".join(tail))
    return run


def ensure_data(workdir: str, rows: int, seed: int) -> tuple[str, float | None]:
    """The CSV for (rows, seed), generated once; returns its path and generation seconds."""
    path = os.path.join(workdir, f"complaints-{rows}-seed{seed}.csv")
    if os.path.exists(path):
        return path, None
    partial = path + ".partial"  # renamed when complete, so an interrupted run is not reused
    run = _check(measure("datagen", [PYTHON, "-m", "datagen", "--rows", str(rows),
                                     "--seed", str(seed), "--out", partial],
                         os.path.join(workdir, "datagen.log")))
    os.replace(partial, path)
    return path, run.seconds


def warm_cache(path: str) -> float:
    """Read the file once so every timed run finds it in the page cache; returns MB/s."""
    started = time.perf_counter()
    with open(path, "rb") as handle:
        while handle.read(1 << 24):
            pass
    return os.path.getsize(path) / MB / max(time.perf_counter() - started, 1e-9)


def csv_baseline(path: str, logs: str, attempt: int) -> tuple[Run, float]:
    """Python's csv module alone over the file; returns the run and its in-process read time."""
    run = _check(measure("csv baseline", [PYTHON, "-c", CSV_BASELINE, path],
                         os.path.join(logs, f"csv_baseline-{attempt}.log")))
    with open(run.log, encoding="utf-8") as handle:
        _rows, seconds = handle.read().split()
    return run, float(seconds)


def tf_import(logs: str) -> Run:
    """Start-up cost of a step that imports TensorFlow (validate does, through TFDV)."""
    return _check(measure("tf import", [PYTHON, "-c", "import tensorflow"],
                          os.path.join(logs, "tf_import.log"),
                          env={"TF_CPP_MIN_LOG_LEVEL": "2"}))


def ingest(path: str, output: str, logs: str, attempt: int) -> tuple[Run, dict]:
    """The ingest CLI; returns the run and the metadata.json it wrote."""
    run = _check(measure("ingest", [PYTHON, "-m", "components.ingest", "--source", path,
                                    "--output", output],
                         os.path.join(logs, f"ingest-{attempt}.log")))
    with open(os.path.join(output, "metadata.json"), encoding="utf-8") as handle:
        return run, json.load(handle)


def validate(examples: str, output: str, logs: str, workers: int) -> tuple[Run, dict]:
    """The validate CLI with `workers` Beam DirectRunner workers; returns run and summary."""
    run = _check(measure(f"validate (workers={workers})",
                         [PYTHON, "-m", "components.validate", "--examples", examples,
                          "--output", output],
                         os.path.join(logs, f"validate-w{workers}.log"),
                         env={"BEAM_DIRECT_NUM_WORKERS": str(workers)}))
    with open(os.path.join(output, "summary.json"), encoding="utf-8") as handle:
        return run, json.load(handle)


def code_version() -> str:
    """The commit the steps ran from, `+dirty` when components/ has uncommitted changes."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "components")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def machine(load_before: tuple[float, ...]) -> dict:
    """What the figures were measured on; load averages show whether others used the CPUs."""
    with open("/proc/meminfo", encoding="ascii") as handle:
        total_kb = int(handle.readline().split()[1])
    return {"cpus": os.cpu_count(), "memory_gb": round(total_kb / (1 << 20), 1),
            "python": platform.python_version(), "platform": platform.platform(),
            "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "load_average_1_5_15_before": [round(x, 2) for x in load_before],
            "load_average_1_5_15_after": [round(x, 2) for x in os.getloadavg()]}


def figure(name: str, value: float, unit: str, goal: str = "", digits: int = 1) -> dict:
    """One row of the table; digits=0 gives an int."""
    return {"figure": name, "value": round(value, digits) if digits else round(value),
            "unit": unit, "goal": goal}


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


def build_table(source_bytes: int, csv_run: Run, csv_seconds: float, tf_run: Run,
                ingest_run: Run, metadata: dict, validate_runs: list[tuple[Run, dict]]) -> list:
    """The figures, in the order they are printed."""
    rows = metadata["rows"]["read"]
    table = [
        figure("csv baseline: read time (in process)", csv_seconds, "s"),
        figure("csv baseline: rows/s", rows / csv_seconds, "rows/s", digits=0),
        figure("csv baseline: peak RSS", csv_run.peak_rss / MIB, "MiB"),
        figure("tf import alone (start-up of any step importing TensorFlow)", tf_run.seconds,
               "s"),
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


def markdown(table: list[dict]) -> str:
    """The table as Markdown: figure, value with unit, goal."""
    lines = ["| figure | value | goal |", "|---|---:|---|"]
    for f in table:
        value = f"{f['value']:,}" if isinstance(f["value"], int) else f"{f['value']}"
        lines.append(f"| {f['figure']} | {value} {f['unit']} | {f['goal']} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows to generate")
    parser.add_argument("--seed", type=int, default=42, help="datagen seed")
    parser.add_argument("--workdir", default=os.path.join(REPO, "bench", "out"),
                        help="data, step outputs, logs and the JSON result (default bench/out)")
    parser.add_argument("--workers", type=int, default=1,
                        help="when above 1, also run validate with this many Beam workers")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of the csv baseline and of ingest; the fastest counts "
                             "(default 3)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the ingest and validate outputs (the CSV is always kept)")
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
    tf_run = tf_import(logs)
    print(f"tf import: {tf_run.seconds:.1f} s", flush=True)
    validate_runs = []
    for workers in sorted({1, args.workers}):
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
        "code": code_before, "machine": machine(load_before), "figures": table,
    }
    if code_version() != code_before:
        result["code"] = f"changed during the run: {code_before} -> {code_version()}"
    host = result["machine"]
    print()
    print(f"{args.rows:,} rows, {source_bytes / MB:.0f} MB, {host['cpus']} CPUs, "
          f"{host['memory_gb']} GB, {host['date']}, code {result['code']}, load average (1 min) "
          f"{host['load_average_1_5_15_before'][0]} before, {host['load_average_1_5_15_after'][0]} "
          "after (other work on the machine slows every figure)")
    print()
    print(markdown(table))
    json_path = os.path.join(workdir, "bench_ingest_validate.json")
    with open(json_path, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
    print(f"\nJSON: {json_path}; logs: {logs}")
    if not args.keep:
        for name in os.listdir(run_dir):
            if name != "logs":
                shutil.rmtree(os.path.join(run_dir, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
