"""Tuning figures: the tune step's local backend, 8 trials on 20,000 generated rows.

    .venv/bin/python bench/bench_tune.py [--rows 20000] [--trials 8] [--workdir bench/out]

Generates the data (datagen), ingests and transforms it once, trains once with the default
hyperparameters (the baseline), then runs `python -m components.tune --backend local` with 1
and with 2 parallel trials (same seed, TPE, the built-in search space). Prints, and writes to
`<workdir>/bench_tune.json`: wall time of each search, best vs default eval AUC, and the
overhead per trial: a trial's process time beyond its training (process start, TensorFlow
import, loading, export) and the tuner's time beyond its trials. Judges nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil

from benchlib import (
    OUT,
    PYTHON,
    checked,
    code_version,
    ensure_data,
    figure,
    machine,
    markdown,
    measure,
    write_json,
)

TRAINED = re.compile(r"trained \S+ on \S+ in (\d+) epochs, ([\d.]+) s: eval auc=([\d.]+)")


def step(label: str, module: str, args: list[str], logs: str):
    return checked(measure(label, [PYTHON, "-m", module, *args],
                           os.path.join(logs, f"{label}.log")))


def training_seconds(log_path: str) -> float | None:
    """The training itself, as train logs it (`trained ... in N epochs, S s`)."""
    with open(log_path, encoding="utf-8", errors="replace") as handle:
        match = TRAINED.search(handle.read())
    return float(match.group(2)) if match else None


def search(label: str, examples: str, transform: str, run_dir: str, logs: str, trials: int,
           parallel: int, seed: int, hparams: str) -> dict:
    out = os.path.join(run_dir, label)
    shutil.rmtree(out, ignore_errors=True)
    run = step(label, "components.tune",
               ["--examples", examples, "--transform", transform, "--output", out,
                "--backend", "local", "--algorithm", "tpe", "--max-trials", str(trials),
                "--parallel-trials", str(parallel), "--max-failed-trials", str(trials),
                "--seed", str(seed), "--hparams", hparams], logs)
    with open(os.path.join(out, "trials.json"), encoding="utf-8") as handle:
        records = json.load(handle)
    with open(os.path.join(out, "tuning.json"), encoding="utf-8") as handle:
        summary = json.load(handle)
    per_trial = []
    for record in records:
        trained = training_seconds(os.path.join(out, "logs", f"{record['name']}.log"))
        per_trial.append({"name": record["name"], "status": record["status"],
                          "auc": record["objective"], "seconds": record["seconds"],
                          "training_seconds": trained})
    walls = [t["seconds"] for t in per_trial if t["seconds"] is not None]
    overheads = [t["seconds"] - t["training_seconds"] for t in per_trial
                 if t["seconds"] is not None and t["training_seconds"] is not None]
    return {
        "wall_seconds": round(run.seconds, 1),
        "peak_memory_mib": round(run.peak_tree / (1 << 20)),
        "trials": per_trial,
        "best": summary["best"],
        "mean_trial_seconds": round(sum(walls) / len(walls), 1) if walls else None,
        "mean_trial_overhead_seconds": round(sum(overheads) / len(overheads), 1)
        if overheads else None,
        # the tuner's own time: the search's wall time beyond its trials' (at `parallel`)
        "tuner_overhead_seconds": round(run.seconds - sum(walls) / parallel, 1),
    }


def build_table(result: dict) -> list[dict]:
    one, two = result["parallel_1"], result["parallel_2"]
    default_auc = result["default"]["auc"]
    best = max((one["best"]["objective"], two["best"]["objective"]))
    return [
        figure(f"search of {result['trials']} trials, 1 at a time: wall time",
               one["wall_seconds"], "s"),
        figure(f"search of {result['trials']} trials, 2 at a time: wall time",
               two["wall_seconds"], "s", f"{one['wall_seconds'] / two['wall_seconds']:.2f}x "
                                          "faster"),
        figure("default hyperparameters: eval AUC", default_auc, "", digits=4),
        figure("best trial (1 at a time): eval AUC", one["best"]["objective"], "",
               f"{one['best']['parameters']}", digits=4),
        figure("best trial (2 at a time): eval AUC", two["best"]["objective"], "",
               f"{two['best']['parameters']}", digits=4),
        figure("best vs default: AUC gain", best - default_auc, "", digits=4),
        figure("trial: process time (1 at a time, mean)", one["mean_trial_seconds"], "s"),
        figure("trial: overhead beyond training (mean)", one["mean_trial_overhead_seconds"],
               "s", "process start, TensorFlow import, data, export"),
        figure("tuner: time beyond its trials (1 at a time)", one["tuner_overhead_seconds"], "s",
               "sampler, bookkeeping, report"),
        figure("tune step: peak memory (2 at a time)", two["peak_memory_mib"], "MiB",
               "the tuner and its trials"),
    ]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--hparams", default='{"epochs": 3}',
                        help="base hyperparameters of the default run and every trial")
    parser.add_argument("--workdir", default=str(OUT))
    args = parser.parse_args(argv)
    load_before, code = os.getloadavg(), code_version()
    run_dir = os.path.join(args.workdir, "tune")
    logs = os.path.join(run_dir, "logs")
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(logs)
    data, _ = ensure_data(args.workdir, args.rows, args.seed)
    examples, transform = os.path.join(run_dir, "examples"), os.path.join(run_dir, "transform")
    step("ingest", "components.ingest", ["--source", data, "--output", examples], logs)
    step("transform", "components.transform", ["--examples", examples, "--output", transform],
         logs)
    default = step("train-default", "components.train",
                   ["--examples", examples, "--transform", transform, "--output",
                    os.path.join(run_dir, "default-model"), "--hparams", args.hparams], logs)
    with open(default.log, encoding="utf-8", errors="replace") as handle:
        default_auc = float(TRAINED.search(handle.read()).group(3))
    result = {
        "rows": args.rows, "trials": args.trials, "seed": args.seed, "hparams": args.hparams,
        "default": {"auc": default_auc, "seconds": round(default.seconds, 1)},
        "parallel_1": search("tune-parallel-1", examples, transform, run_dir, logs,
                             args.trials, 1, args.seed, args.hparams),
        "parallel_2": search("tune-parallel-2", examples, transform, run_dir, logs,
                             args.trials, 2, args.seed, args.hparams),
        "machine": machine(load_before),
        "code_version": code,
    }
    result["table"] = build_table(result)
    print(markdown(result["table"], third="note"))
    print(f"\nwritten: {write_json(os.path.join(args.workdir, 'bench_tune.json'), result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
