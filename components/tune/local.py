"""The `local` backend of tune: the search a Katib Experiment runs, here with optuna.

Each trial is a real `python -m components.train` run in its own process (so a trial's memory
goes with its process; this one holds only the records), started from the repository root with
this environment, its stdout and stderr in `<workdir>/trial-NNN.log`, its model in
`<workdir>/trial-NNN/model`. Metrics are the `name=value` lines train prints on stdout
(`parse_metric_lines`, the expression Katib's StdOut collector uses). A trial succeeds when the
process exits 0 and printed a finite objective.

Algorithms by their Katib names: random (RandomSampler), tpe (TPESampler), grid (GridSampler;
every parameter needs finite values: a step for doubles) and bayesianoptimization (our
Gaussian-process sampler, `gp_sampler.py`: optuna's GPSampler needs torch, which the images do
not have). All seeded with `seed`: the same trial results give the same suggestions.

Up to `parallel` trials run at once: this thread asks optuna for a trial, a thread of a pool
runs its process, this thread tells optuna the result. Stops with StepError when more than
`max_failed` trials failed (after the running ones finished), when none succeeded, or when
`timeout_seconds` passed (the running processes terminated). No child process outlives `run`,
whatever ends it (each trial runs in its own process group, killed as a whole).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

from components.common.errors import StepError
from components.common.hparams import METRICS, parse_metric_lines
from components.tune.search_space import Parameter, assignment_hparams

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
ALGORITHMS = ("random", "tpe", "grid", "bayesianoptimization")
GOALS = ("maximize", "minimize")
TERMINATE_GRACE_SECONDS = 5.0  # SIGTERM, then SIGKILL for what still runs
MESSAGE_CHARS = 500  # of a failed trial's last line in its record
ERROR_LINE_CHARS = 120  # of each failed trial's last line in a StepError
GP_STARTUP_TRIALS = 5


def distributions(parameters: list[Parameter]) -> dict:
    """optuna distributions of the parameters (optuna has no log with a step: the step wins)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    space = {}
    for p in parameters:
        log_scale = p.distribution == "logUniform"
        if p.values is not None:
            space[p.name] = CategoricalDistribution(list(p.values))
        elif p.type == "int":
            step = int(p.step or 1)
            space[p.name] = IntDistribution(int(p.min), int(p.max), step=step,
                                            log=log_scale and step == 1)
        elif p.step is not None:
            space[p.name] = FloatDistribution(p.min, _stepped_high(p), step=p.step)
        else:
            space[p.name] = FloatDistribution(p.min, p.max, log=log_scale)
    return space


def _stepped_high(p: Parameter) -> float:
    """The last value min + k * step that is not above max (what optuna would adjust it to)."""
    count = math.floor((p.max - p.min) / p.step + 1e-9)
    return _clean(p.min + count * p.step)


def _clean(value: float) -> float:
    return float(f"{value:.12g}")  # 0.30000000000000004 -> 0.3


def grid_values(parameters: list[Parameter]) -> dict[str, list]:
    """Every value of each parameter; StepError for a double without a step."""
    grid = {}
    for p in parameters:
        if p.values is not None:
            grid[p.name] = list(p.values)
        elif p.type == "int":
            grid[p.name] = list(range(int(p.min), int(p.max) + 1, int(p.step or 1)))
        elif p.step is not None:
            count = math.floor((p.max - p.min) / p.step + 1e-9)
            grid[p.name] = [_clean(p.min + k * p.step) for k in range(count + 1)]
        else:
            raise StepError(f"grid search needs finite values: double parameter {p.name} has "
                            "no feasibleSpace.step (give one, or use algorithm random, tpe or "
                            "bayesianoptimization)")
    return grid


def make_sampler(algorithm: str, parameters: list[Parameter], seed: int):
    import optuna

    if algorithm == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if algorithm == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if algorithm == "grid":
        class GridSampler(optuna.samplers.GridSampler):
            """optuna's, without its stop at the end of the grid: `study.stop()` works only
            inside `optimize`, and `run` never asks for more trials than the grid has."""

            def after_trial(self, study, trial, state, values) -> None:
                pass

        return GridSampler(grid_values(parameters), seed=seed)
    if algorithm == "bayesianoptimization":
        from components.tune.gp_sampler import GPSampler

        return GPSampler(seed=seed, n_startup_trials=GP_STARTUP_TRIALS)
    raise StepError(f"algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}")


@dataclass
class _Running:
    """The processes of the trials in flight, and whether new ones may still start."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    processes: dict = field(default_factory=dict)  # trial name -> Popen
    stopping: bool = False

    def signal_all(self, sig: int) -> None:
        with self.lock:
            for process in self.processes.values():
                if process.returncode is None:
                    _signal_group(process, sig)


def _run_trial(name: str, command: list[str], log_path: Path, running: _Running) -> dict:
    """One trial process: stdout to the log (and parsed), stderr to the log; metrics, rc."""
    started = time.monotonic()
    metrics: dict[str, float] = {}
    with open(log_path, "ab", buffering=0) as log_file:
        with running.lock:
            if running.stopping:
                return {"returncode": None, "metrics": {}, "seconds": 0.0, "cancelled": True}
            try:
                process = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.DEVNULL,
                                           stdout=subprocess.PIPE, stderr=log_file,
                                           start_new_session=True)
            except OSError as exc:
                log_file.write(f"cannot start {command[0]}: {exc}\n".encode())
                return {"returncode": 127, "metrics": {}, "seconds": 0.0, "cancelled": False}
            running.processes[name] = process
        try:
            pending = b""
            while chunk := process.stdout.read1(65536):
                log_file.write(chunk)
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()[-65536:]  # a line without its end yet (bounded)
                for line in lines:
                    metrics.update(parse_metric_lines(line.decode("utf-8", "replace")))
            metrics.update(parse_metric_lines(pending.decode("utf-8", "replace")))
            process.wait()
        finally:
            process.stdout.close()
            if process.returncode is None:  # this thread failed: never leave the process
                _kill_group(process)
            with running.lock:
                running.processes.pop(name, None)
    return {"returncode": process.returncode, "metrics": metrics,
            "seconds": time.monotonic() - started, "cancelled": False}


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    """The trial's whole process group (its own session): its children too."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def _kill_group(process: subprocess.Popen) -> None:
    _signal_group(process, signal.SIGKILL)
    process.wait()


def _last_line(path: Path) -> str:
    """The last non-empty line of a log (of its last 64 KiB; progress bars split at CR)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    for line in reversed(tail.replace("\r", "\n").splitlines()):
        if line.strip():
            return line.strip()[:MESSAGE_CHARS]
    return ""


def _short(text: str, limit: int = ERROR_LINE_CHARS) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def run(parameters: list[Parameter], *, examples: str, transform: str, base_hparams: dict,
        objective: str, goal: str, algorithm: str, max_trials: int, parallel: int,
        max_failed: int, timeout_seconds: float, dataset_config: str | None, seed: int,
        workdir: str, trial_command: list[str] | None = None) -> list[dict]:
    """Run the search; one record per trial in trial order (the Katib backend's shape).

    `timeout_seconds` None or <= 0: no limit. `trial_command` replaces
    `python -m components.train` (tests run a fake trainer); the train flags are appended.
    """
    import optuna

    if goal not in GOALS:
        raise StepError(f"goal {goal!r}; expected one of {', '.join(GOALS)}")
    if objective not in METRICS:
        raise StepError(f"objective {objective!r} is not a metric train prints "
                        f"({', '.join(METRICS)})")
    if algorithm not in ALGORITHMS:
        raise StepError(f"algorithm {algorithm!r}; expected one of {', '.join(ALGORITHMS)}")
    if max_trials < 1 or parallel < 1 or max_failed < 0:
        raise StepError(f"max_trials ({max_trials}) and parallel ({parallel}) must be at least "
                        f"1, max_failed ({max_failed}) at least 0")
    if not parameters:
        raise StepError("no parameters to search")
    space = distributions(parameters)
    sampler = make_sampler(algorithm, parameters, seed)  # grid: StepError before any trial
    if algorithm == "grid":
        size = math.prod(len(v) for v in grid_values(parameters).values())
        if max_trials > size:
            log.info("grid has %d points: running %d trials, not %d", size, size, max_trials)
            max_trials = size
    by_name = {p.name: p for p in parameters}
    command = list(trial_command or [sys.executable, "-m", "components.train"])
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per trial instead
    study = optuna.create_study(direction=goal, sampler=sampler)
    deadline = (time.monotonic() + timeout_seconds
                if timeout_seconds is not None and timeout_seconds > 0 else None)
    running = _Running()
    records: dict[int, dict] = {}
    in_flight: dict = {}  # future -> (optuna trial, record without the outcome)
    failed: list[dict] = []
    best: dict | None = None
    started = 0
    pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="trial")
    try:
        while True:
            while (not running.stopping and started < max_trials
                   and len(in_flight) < parallel and len(failed) <= max_failed):
                trial = study.ask(space)
                started += 1
                name = f"trial-{started:03d}"
                params = {n: by_name[n].value(_tidy(space[n], v))
                          for n, v in trial.params.items()}
                hparams = assignment_hparams(parameters, params, base_hparams)
                argv = [*command, "--examples", examples, "--transform", transform,
                        "--output", str(work / name / "model"), "--hparams", json.dumps(hparams)]
                if dataset_config:
                    argv += ["--dataset-config", dataset_config]
                (work / name).mkdir(exist_ok=True)
                log_path = work / f"{name}.log"
                log_path.unlink(missing_ok=True)
                record = {"name": name, "parameters": params, "hparams": hparams}
                future = pool.submit(_run_trial, name, argv, log_path, running)
                in_flight[future] = (trial, record, log_path)
            if not in_flight:
                break
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                done = len(records)
                _stop(running, in_flight)
                raise StepError(f"timed out after {timeout_seconds:g} s with {done} of "
                                f"{max_trials} trials done")
            finished, _ = wait(in_flight, timeout=remaining, return_when=FIRST_COMPLETED)
            for future in sorted(finished, key=lambda f: in_flight[f][0].number):
                trial, record, log_path = in_flight.pop(future)
                outcome = future.result()
                record.update(_outcome(outcome, objective, log_path))
                if record["status"] == "Succeeded":
                    study.tell(trial, record["objective"])
                    if best is None or _better(record["objective"], best["objective"], goal):
                        best = record
                else:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    failed.append(record)
                records[trial.number] = record
                _log_trial(record, len(records), max_trials, objective, best)
    finally:
        _stop(running, in_flight)
        pool.shutdown(wait=True, cancel_futures=True)
        optuna.logging.set_verbosity(verbosity)
    if len(failed) > max_failed:
        raise StepError(f"{len(failed)} of {len(records)} trials failed (more than max_failed "
                        f"{max_failed}): " + "; ".join(
                            f"{r['name']}: {_short(r['message'])}" for r in failed))
    if best is None:
        raise StepError(f"no trial succeeded ({len(failed)} failed): " + "; ".join(
            f"{r['name']}: {_short(r['message'])}" for r in failed))
    return [records[n] for n in sorted(records)]


def _log_trial(record: dict, count: int, total: int, objective: str, best: dict | None):
    if record["status"] == "Succeeded":
        outcome = f"{objective}={record['objective']:.6g}"
    else:
        outcome = f"({_short(record['message'], 80)})"
    leader = f"{objective}={best['objective']:.6g} ({best['name']})" if best else "none yet"
    log.info("trial %d/%d %s %s %s in %.1f s; best %s", count, total, record["name"],
             record["status"], outcome, record["seconds"], leader)


def _tidy(distribution, value):
    """A stepped float as written (0.3, not 0.30000000000000004)."""
    if getattr(distribution, "step", None) is not None and isinstance(value, float):
        return _clean(value)
    return value


def _better(value: float, than: float, goal: str) -> bool:
    return value > than if goal == "maximize" else value < than


def _outcome(outcome: dict, objective: str, log_path: Path) -> dict:
    metrics, rc = outcome["metrics"], outcome["returncode"]
    value = metrics.get(objective)
    result = {"status": "Succeeded", "objective": value, "metrics": metrics,
              "seconds": round(outcome["seconds"], 3), "message": ""}
    if rc == 0 and value is not None and math.isfinite(value):
        return result
    last = _last_line(log_path)
    if rc != 0:
        message = last or f"exit code {rc} and no output"
    elif value is None:
        message = f"no {objective}= line in the output (last line: {last or 'none'})"
    else:
        message = f"{objective}={value} is not finite"
    return {**result, "status": "Failed", "objective": None, "message": message}


def _stop(running: _Running, in_flight: dict) -> None:
    """No new process starts; running ones get SIGTERM, then SIGKILL after a grace period."""
    with running.lock:
        running.stopping = True
        any_running = bool(running.processes)
    if not any_running:
        return
    running.signal_all(signal.SIGTERM)
    wait(in_flight, timeout=TERMINATE_GRACE_SECONDS)
    running.signal_all(signal.SIGKILL)
    wait(in_flight)
