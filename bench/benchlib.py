"""What the bench scripts share: measured child processes, the generated data set, the machine
and the code the figures come from, and the result as JSON and as a Markdown table.

Each script does `from benchlib import ...`: run as `python bench/<script>.py`, the script's
folder is first on sys.path, so no script touches sys.path for bench modules. Importing
benchlib puts the repository root on sys.path (here, once, only when it is not there yet), so
the scripts can import `components...`; the child processes run with the repository as their
working directory, so `python -m components.<step>` and `python -m datagen` find it too.

Build facts (image names and tag, pipeline steps, code version) come from
`components/common/build_facts.py`, re-exported here as `build_facts`; artifact file names from
`components/common/artifacts/`. Standard library only at import (bench_images.py runs on the
system python3); `measure` and `ensure_data` need Linux (/proc and os.wait4).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(REPO) not in sys.path:  # the one place bench/ makes `components` importable
    sys.path.insert(0, str(REPO))

from components.common import build_facts  # noqa: E402  (needs the sys.path entry above)

__all__ = ["BENCH", "MB", "MIB", "OUT", "PYTHON", "REPO", "Run", "build_facts", "checked",
           "code_since", "code_version", "ensure_data", "figure", "machine", "markdown",
           "measure", "write_json"]

OUT = BENCH / "out"  # default work directory of every script; git ignores it
PYTHON = sys.executable  # the steps run with the interpreter the script runs with
MB = 1e6  # throughput and file sizes in decimal MB
MIB = 1 << 20  # memory in MiB


# ---------------------------------------------------------------------------------------------
# Measured child processes.

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
    """Run `command` as a child (in the repository, stdout and stderr to `log_path`, `env` on
    top of ours) and return its wall time and peak memory.

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
    return Run(label, seconds, peak, max(tree_peak, peak), child.returncode, str(log_path))


def checked(run: Run) -> Run:
    """The run, if it succeeded; else stop with the child's last log lines (later figures
    would be meaningless)."""
    if run.returncode != 0:
        with open(run.log, encoding="utf-8", errors="replace") as handle:
            tail = handle.readlines()[-15:]
        sys.exit(f"{run.label} failed (exit {run.returncode}); end of {run.log}:\n"
                 + "".join(tail))
    return run


# ---------------------------------------------------------------------------------------------
# The data set.

def ensure_data(workdir: str | os.PathLike, rows: int, seed: int) -> tuple[str, float | None]:
    """`<workdir>/complaints-<rows>-seed<seed>.csv` from `python -m datagen`, generated once and
    reused while the name matches; returns its path and the generation seconds (None: reused).
    The generation's log is `<workdir>/datagen.log`."""
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, f"complaints-{rows}-seed{seed}.csv")
    if os.path.exists(path):
        return path, None
    partial = path + ".partial"  # renamed when complete, so an interrupted run is not reused
    run = checked(measure("datagen", [PYTHON, "-m", "datagen", "--rows", str(rows),
                                      "--seed", str(seed), "--out", partial],
                          os.path.join(workdir, "datagen.log")))
    os.replace(partial, path)
    return path, run.seconds


# ---------------------------------------------------------------------------------------------
# Where and from what the figures come.

def machine(load_before: tuple[float, ...]) -> dict:
    """What the figures were measured on; load averages show whether others used the CPUs.
    Take `os.getloadavg()` before the run and call this after it."""
    with open("/proc/meminfo", encoding="ascii") as handle:
        total_kb = int(handle.readline().split()[1])
    return {"cpus": os.cpu_count(), "memory_gb": round(total_kb / (1 << 20), 1),
            "python": platform.python_version(), "platform": platform.platform(),
            "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "load_average_1_5_15_before": [round(x, 2) for x in load_before],
            "load_average_1_5_15_after": [round(x, 2) for x in os.getloadavg()]}


def code_version() -> str:
    """build_facts.code_version() (`<version>+<git short sha>`, what every lineage records),
    with `.dirty` appended when components/ has uncommitted changes. Read afresh on each call
    (build_facts caches it per process), so a commit landing during a run shows."""
    build_facts.git_sha.cache_clear()
    build_facts.code_version.cache_clear()
    try:
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "components"], cwd=REPO,
                               capture_output=True, text=True, timeout=30,
                               check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        dirty = ""
    return build_facts.code_version() + (".dirty" if dirty else "")


def code_since(before: str) -> str:
    """`before` (a code_version() taken at the start) if the code is still the same, else
    "changed during the run: <before> -> <now>"."""
    now = code_version()
    return before if now == before else f"changed during the run: {before} -> {now}"


# ---------------------------------------------------------------------------------------------
# Results.

def figure(name: str, value, unit: str = "", goal: str = "", digits: int = 1) -> dict:
    """One row of a result table. A number is rounded to `digits` (0 gives an int); None
    becomes "n/a"; text is kept as it is. `goal` is the third column (a goal or a note)."""
    if value is None:
        value = "n/a"
    elif not isinstance(value, str):
        value = round(float(value), digits) if digits else round(float(value))
    return {"figure": name, "value": value, "unit": unit, "goal": goal}


def markdown(table: list[dict], third: str = "goal", compact: bool = False) -> str:
    """The table as Markdown: figure, value with its unit, and the `goal` entries under the
    heading `third`. Ints get thousands separators. `compact` drops the extra space an empty
    unit or goal leaves before a `|`."""
    lines = [f"| figure | value | {third} |", "|---|---:|---|"]
    for f in table:
        value = f"{f['value']:,}" if isinstance(f["value"], int) else f"{f['value']}"
        line = f"| {f['figure']} | {value} {f['unit']} | {f['goal']} |"
        lines.append(line.replace("  |", " |") if compact else line)
    return "\n".join(lines)


def write_json(path: str | os.PathLike, data) -> str:
    """`data` as indented JSON at `path` (its folder created if needed); returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2)
        handle.write("\n")
    return str(path)
