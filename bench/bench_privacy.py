"""Benchmark differentially private training: AUC with and without DP-SGD, epsilon, time.

    .venv/bin/python bench/bench_privacy.py [--rows 100000] [--seed 42] [--workdir bench/out]
        [--noise 0.7 1.0 2.0] [--dp-hparams JSON] [--keep]

Prints figures, judges nothing. On `--rows` generated rows (generated once and reused) it runs
ingest and transform once, then train and evaluate (their real CLIs, measured with benchlib):

  1. without DP, the built-in hyperparameters (the model the pipeline ships);
  2. without DP, the DP runs' hyperparameters (`--dp-hparams`, default a learning rate of 0.01
     and at most 5 epochs: noisy gradients want larger steps), so the DP runs are compared with
     the same settings minus the privacy;
  3. with DP-SGD (`train --privacy dp-sgd --l2-clip 1 --noise-multiplier Z`) for each `--noise`
     level: Poisson sampling, per-example clipping, delta 1/n.

For each: eval AUC (evaluate's metrics.json, the eval split), epochs run, epsilon at delta
(training.json, dp-accounting's RDP accountant), train wall time and seconds per epoch (the
median of the epochs after the first, from train's epoch log lines: the step's own work,
without start-up, caching and export). The time overhead is DP's seconds per epoch over run
2's. The table goes to stdout and, as JSON, to `<workdir>/bench_privacy.json`; step outputs
live in `<workdir>/privacy-run-<rows>-seed<seed>/` and are deleted at the end (logs kept)
unless `--keep`. Early stopping watches the eval split, the split the AUCs are computed on:
every figure is slightly optimistic, alike.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys

from benchlib import (
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
from components.common.artifacts import evaluation
from components.common.artifacts import model as model_artifact

NOISE = (0.7, 1.0, 2.0)
DP_HPARAMS = {"learning_rate": 0.01, "epochs": 5}
QUIET = {"TF_CPP_MIN_LOG_LEVEL": "2"}
EPOCH_LINE = re.compile(r"epoch (\d+): (\d+) examples in ([\d.]+) s ")


def step(label: str, module: str, args: list[str], logs: str) -> Run:
    name = re.sub(r"[^\w.-]+", "_", label)
    run = checked(measure(label, [PYTHON, "-m", module, *args],
                          os.path.join(logs, f"{name}.log"), env=QUIET))
    print(f"  {label}: {run.seconds:.1f} s, peak RSS {run.peak_rss / MIB:,.0f} MiB", flush=True)
    return run


def epoch_seconds(log_path: str) -> list[float]:
    with open(log_path, encoding="utf-8", errors="replace") as handle:
        return [float(m.group(3)) for line in handle if (m := EPOCH_LINE.search(line))]


def train_and_evaluate(label: str, examples: str, transform: str, run_dir: str, logs: str,
                       hparams: dict, privacy: list[str]) -> dict:
    name = re.sub(r"[^\w.-]+", "_", label)
    model = os.path.join(run_dir, f"model-{name}")
    out = os.path.join(run_dir, f"evaluation-{name}")
    train = step(f"train {label}", "components.train",
                 ["--examples", examples, "--transform", transform, "--output", model,
                  "--hparams", json.dumps(hparams), *privacy], logs)
    evaluate = step(f"evaluate {label}", "components.evaluate",
                    ["--model", model, "--examples", examples, "--output", out], logs)
    seconds = epoch_seconds(train.log)
    training = model_artifact.read_training(model)
    return {"label": label, "train": train, "evaluate": evaluate, "training": training,
            "privacy": model_artifact.privacy_of(training),
            "auc": evaluation.read_metrics(out)["overall"]["auc"],
            "epoch_seconds": seconds,
            "steady_epoch_seconds": statistics.median(seconds[1:] or seconds)}


def table_of(runs: list[dict], reference: dict) -> list[dict]:
    table = []
    for run in runs:
        privacy, training = run["privacy"], run["training"]
        if privacy:
            name = f"DP-SGD, noise {privacy['noise_multiplier']:g}"
            epsilon = (f"epsilon {privacy['epsilon']:.2f} at delta {privacy['target_delta']:.1e} "
                       f"({privacy['steps']:,} steps, q {privacy['sampling_rate']:.2e}); ")
        else:
            name = run["label"]
            epsilon = "no DP (epsilon unbounded); "
        overhead = run["steady_epoch_seconds"] / reference["steady_epoch_seconds"]
        table.append(figure(
            f"{name}: eval AUC", run["auc"], "", digits=4,
            goal=(f"{epsilon}{training['epochs_run']} epochs; {run['steady_epoch_seconds']:.1f}"
                  f" s/epoch ({overhead:.1f}x); train step {run['train'].seconds:.0f} s, peak "
                  f"RSS {run['train'].peak_rss / MIB:,.0f} MiB")))
    return table


def run_json(run: dict) -> dict:
    return {"auc": run["auc"], "epochs_run": run["training"]["epochs_run"],
            "hparams": run["training"]["hparams"], "privacy": run["privacy"],
            "train_seconds": round(run["train"].seconds, 2),
            "train_peak_rss_mib": round(run["train"].peak_rss / MIB, 1),
            "evaluate_seconds": round(run["evaluate"].seconds, 2),
            "epoch_seconds": run["epoch_seconds"],
            "steady_epoch_seconds": run["steady_epoch_seconds"],
            "train_log": run["train"].log}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="generated rows")
    parser.add_argument("--seed", type=int, default=42, help="datagen seed")
    parser.add_argument("--workdir", default=str(OUT),
                        help="data, step outputs, logs and the JSON result (default bench/out)")
    parser.add_argument("--noise", type=float, nargs="+", default=list(NOISE),
                        help=f"noise multipliers of the DP runs (default {NOISE})")
    parser.add_argument("--dp-hparams", default=json.dumps(DP_HPARAMS),
                        help=f"train --hparams of the DP runs and their control (default "
                             f"{json.dumps(DP_HPARAMS)})")
    parser.add_argument("--keep", action="store_true", help="keep step outputs (logs are kept)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    dp_hparams = json.loads(args.dp_hparams)
    workdir = os.path.abspath(args.workdir)
    run_dir = os.path.join(workdir, f"privacy-run-{args.rows}-seed{args.seed}")
    shutil.rmtree(run_dir, ignore_errors=True)  # the steps refuse non-empty output directories
    logs = os.path.join(run_dir, "logs")
    os.makedirs(logs)
    load_before, code_before = os.getloadavg(), code_version()
    path, generated = ensure_data(workdir, args.rows, args.seed)
    print(f"generated data: {path} "
          + (f"(generated in {generated:.1f} s)" if generated else "(reused)"), flush=True)
    examples, transform = os.path.join(run_dir, "examples"), os.path.join(run_dir, "transform")
    step("ingest", "components.ingest", ["--source", path, "--output", examples], logs)
    step("transform", "components.transform", ["--examples", examples, "--output", transform],
         logs)
    runs = [train_and_evaluate("no DP, default hparams", examples, transform, run_dir, logs,
                               {}, []),
            train_and_evaluate(f"no DP, hparams {json.dumps(dp_hparams)}", examples, transform,
                               run_dir, logs, dp_hparams, [])]
    for noise in args.noise:
        runs.append(train_and_evaluate(
            f"dp-sgd noise {noise:g}", examples, transform, run_dir, logs, dp_hparams,
            ["--privacy", "dp-sgd", "--noise-multiplier", str(noise), "--l2-clip", "1"]))
    table = table_of(runs, reference=runs[1])
    rows = runs[0]["training"]["rows"]
    table.insert(0, figure("rows: fit / calibration holdout / eval",
                           f"{rows['fit']:,} / {rows['calibration']:,} / {rows['eval']:,}", "",
                           "DP covers the fit rows; delta 1/fit rows"))
    result = {"rows": args.rows, "seed": args.seed, "noise": args.noise,
              "dp_hparams": dp_hparams, "runs": [run_json(r) for r in runs],
              "code": code_since(code_before), "machine": machine(load_before),
              "figures": [{"note" if k == "goal" else k: v for k, v in f.items()}
                          for f in table]}
    host = result["machine"]
    print()
    print(f"{args.rows:,} generated rows (seed {args.seed}); {host['cpus']} CPUs, "
          f"{host['date']}, load {host['load_average_1_5_15_before'][0]} before and "
          f"{host['load_average_1_5_15_after'][0]} after; code {result['code']}")
    print()
    print(markdown(table, third="note", compact=True))
    json_path = write_json(os.path.join(workdir, "bench_privacy.json"), result)
    print(f"\nJSON: {json_path}; logs: {logs}")
    if not args.keep:
        for name in os.listdir(run_dir):
            if name != "logs":
                target = os.path.join(run_dir, name)
                shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
