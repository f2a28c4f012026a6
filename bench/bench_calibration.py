"""Benchmark calibration and the decision threshold on generated and on real complaints.

    .venv/bin/python bench/bench_calibration.py [--rows 100000] [--seed 42]
        [--workdir bench/out] [--real-sample tests/data/cfpb_2013_sample.csv] [--no-real]
        [--hparams JSON] [--keep]

Prints figures, judges nothing. For each data set (`--rows` generated rows, generated once and
reused; the real 1,000-row 2013 sample shipped in tests) it runs ingest and transform once,
then train and evaluate (their real CLIs, measured with benchlib) once per calibration method
(`platt`, `isotonic`; the built-in config otherwise, so the threshold policy is max_f1), and
reports from evaluate's metrics.json, on the eval split (rows neither training nor
calibration saw):

  - ECE, Brier score and AUC before calibration (the SavedModel's `raw_probability`) and
    after (`probability`): a monotonic calibration must not move the AUC beyond rounding
    (Platt), or only by the ties of its flat steps (isotonic);
  - the mean probability and the predicted positive rate (raw scores at 0.5, the old fixed
    threshold; calibrated at the chosen threshold) against the actual positive rate;
  - the decision threshold per policy: fixed 0.5, max_f1, min_cost 1:1 (errors counted
    alike) and min_cost 1:3 (a missed dispute costs three false alarms), each chosen on the
    Platt model's calibration holdout exactly as train chooses
    (`components.train.calibration.choose_threshold` on the holdout rows read by train's own
    `train_split_part`, scored by the exported SavedModel), then applied to the eval split:
    precision, recall, F1, predicted positive rate, cost per row (at 1:3). The max_f1 value is
    checked against the one train recorded.

The table goes to stdout and, as JSON, to `<workdir>/bench_calibration.json`. Step outputs
live in `<workdir>/calibration-run-<rows>-seed<seed>/` and are deleted at the end (logs kept)
unless `--keep`. The real sample's splits are small (~90 holdout, ~100 eval rows): its
figures are noisy.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from benchlib import (
    MIB,
    OUT,
    PYTHON,
    REPO,
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

METHODS = ("platt", "isotonic")
COSTS = {"cost_false_positive": 1.0, "cost_false_negative": 3.0}


def _policies() -> dict:
    from components.common.dataset_config import ThresholdPolicy

    return {"fixed 0.5": ThresholdPolicy("fixed", 0.5), "max_f1": ThresholdPolicy("max_f1"),
            "min_cost 1:1": ThresholdPolicy("min_cost", cost_false_positive=1.0,
                                            cost_false_negative=1.0),
            "min_cost 1:3": ThresholdPolicy("min_cost", **COSTS)}


POLICIES = _policies()
QUIET = {"TF_CPP_MIN_LOG_LEVEL": "2"}


# ---------------------------------------------------------------- the steps, measured
def step(label: str, module: str, args: list[str], logs: str) -> Run:
    name = label.replace(" ", "_")
    run = checked(measure(label, [PYTHON, "-m", module, *args],
                          os.path.join(logs, f"{name}.log"), env=QUIET))
    print(f"  {label}: {run.seconds:.1f} s, peak RSS {run.peak_rss / MIB:,.0f} MiB", flush=True)
    return run


def config_with(method: str, path: str) -> str:
    """The built-in dataset config with `calibration.method: <method>`, written to `path`."""
    import yaml

    from components.common.dataset_config import resolve_config_path

    with open(resolve_config_path(None), encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)
    raw.setdefault("calibration", {})["method"] = method
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(raw, handle, sort_keys=False)
    return path


def run_data_set(tag: str, source: str, run_dir: str, logs: str, hparams: str | None) -> dict:
    """ingest, transform, then train + evaluate per calibration method."""
    examples = os.path.join(run_dir, f"examples-{tag}")
    transform = os.path.join(run_dir, f"transform-{tag}")
    runs = {"ingest": step(f"{tag} ingest", "components.ingest",
                           ["--source", source, "--output", examples], logs),
            "transform": step(f"{tag} transform", "components.transform",
                              ["--examples", examples, "--output", transform], logs)}
    methods = {}
    for method in METHODS:
        config = config_with(method, os.path.join(run_dir, f"config-{method}.yaml"))
        model = os.path.join(run_dir, f"model-{tag}-{method}")
        out = os.path.join(run_dir, f"evaluation-{tag}-{method}")
        args = ["--examples", examples, "--transform", transform, "--output", model,
                "--dataset-config", config]
        if hparams:
            args += ["--hparams", hparams]
        train = step(f"{tag} train {method}", "components.train", args, logs)
        evaluate = step(f"{tag} evaluate {method}", "components.evaluate",
                        ["--model", model, "--examples", examples, "--output", out,
                         "--dataset-config", config], logs)
        methods[method] = {"train": train, "evaluate": evaluate, "model": model,
                           "training": model_artifact.read_training(model),
                           "metrics": evaluation.read_metrics(out)}
    return {"examples": examples, "runs": runs, "methods": methods}


# ---------------------------------------------------------------- threshold policies
def policies(examples: str, model_dir: str) -> dict:
    """Each policy's threshold on the model's calibration holdout (as train chooses it), and
    what it gives on the eval split."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # as the steps' children run
    import numpy as np
    import tensorflow as tf

    from components.common.artifacts.examples import split_files
    from components.common.dataset_config import load_dataset_config
    from components.train.calibration import choose_threshold, threshold_stats
    from components.train.train import train_split_part

    config = load_dataset_config()
    signatures = tf.saved_model.load(model_artifact.saved_model_dir(model_dir)).signatures
    serve_raw = signatures[model_artifact.RAW_SIGNATURE]
    serve_examples = signatures[model_artifact.EXAMPLE_SIGNATURE]
    holdout_y, holdout_p = [], []
    for features, labels in train_split_part(examples, config, "holdout", 4096):
        holdout_y.append(labels.numpy())
        holdout_p.append(serve_raw(**features)[model_artifact.OUTPUT].numpy())
    label = config.label.feature
    eval_y, eval_p = [], []
    records = tf.data.TFRecordDataset(split_files(examples, "eval"), compression_type="GZIP")
    for batch in records.batch(4096):
        eval_y.append(tf.io.parse_example(
            batch, {label: tf.io.FixedLenFeature([], tf.int64)})[label].numpy())
        eval_p.append(serve_examples(examples=batch)[model_artifact.OUTPUT].numpy())
    holdout_y, holdout_p = np.concatenate(holdout_y), np.concatenate(holdout_p)
    eval_y, eval_p = np.concatenate(eval_y), np.concatenate(eval_p)
    out = {}
    for name, policy in POLICIES.items():
        chosen = choose_threshold(policy, holdout_y, holdout_p)
        on_eval = threshold_stats(eval_y, eval_p, chosen["value"])
        on_eval["cost_per_row"] = (COSTS["cost_false_positive"] * on_eval["false_positives"]
                                   + COSTS["cost_false_negative"] * on_eval["false_negatives"]
                                   ) / eval_y.size
        out[name] = {"holdout": chosen, "eval": on_eval}
    return out


# ---------------------------------------------------------------- figures
def pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def num(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def table_of(tag: str, result: dict) -> list[dict]:
    platt = result["methods"]["platt"]
    rows_info = platt["training"]["rows"]
    eval_overall = platt["metrics"]["overall"]
    table = [figure(f"{tag}: rows fit / calibration holdout / eval",
                    f"{rows_info['fit']:,} / {rows_info['calibration']:,} / "
                    f"{rows_info['eval']:,}", "", "holdout: a hash of the id, 10% of train"),
             figure(f"{tag}: actual positive rate (eval)", pct(eval_overall["positive_rate"]),
                    "", f"{eval_overall['positives']:,} of {eval_overall['count']:,} disputed")]
    for method, run in result["methods"].items():
        before, after = run["metrics"]["calibration"]["before"], \
            run["metrics"]["calibration"]["after"]
        threshold = run["training"]["decision_threshold"]
        label = f"{tag}, {method}"
        table += [
            figure(f"{label}: ECE before -> after", f"{num(before['ece'])} -> "
                   f"{num(after['ece'])}", "", f"Brier {num(before['brier'])} -> "
                   f"{num(after['brier'])}; log loss {num(before['log_loss'])} -> "
                   f"{num(after['log_loss'])}"),
            figure(f"{label}: AUC before -> after", f"{num(before['auc'], 5)} -> "
                   f"{num(after['auc'], 5)}", "",
                   f"change {after['auc'] - before['auc']:+.2e}"),
            figure(f"{label}: mean probability before -> after",
                   f"{pct(before['mean_probability'])} -> {pct(after['mean_probability'])}", "",
                   f"actual {pct(after['positive_rate'])}"),
            figure(f"{label}: predicted positive rate, raw at 0.5 -> calibrated at the "
                   "threshold", f"{pct(before['predicted_positive_rate'])} -> "
                   f"{pct(after['predicted_positive_rate'])}", "",
                   f"actual {pct(after['positive_rate'])}; threshold "
                   f"{num(threshold['value'])} ({threshold['policy']}, on "
                   f"{threshold['rows']:,} holdout rows)"),
        ]
    recorded = platt["training"]["decision_threshold"]["value"]
    for name, entry in result["policies"].items():
        chosen, on_eval = entry["holdout"], entry["eval"]
        note = (f"eval: precision {num(on_eval['precision'], 3)}, recall "
                f"{num(on_eval['recall'], 3)}, F1 {num(on_eval['f1'], 3)}, predicted positive "
                f"{pct(on_eval['predicted_positive_rate'])}, cost/row (FP 1, FN 3) "
                f"{on_eval['cost_per_row']:.3f}")
        if name == "max_f1":
            note += ("; = train's recorded threshold" if abs(chosen["value"] - recorded) < 1e-6
                     else f"; WARNING: train recorded {recorded:.4f}")
        if name.startswith("min_cost"):
            note += f"; Bayes threshold {chosen['bayes_threshold']:.2f}"
        table.append(figure(f"{tag}, platt: threshold {name}", num(chosen["value"]), "", note))
    return table


def run_json(run: Run) -> dict:
    return {"seconds": round(run.seconds, 2), "peak_rss_mib": round(run.peak_rss / MIB, 1),
            "log": run.log}


def result_json(result: dict) -> dict:
    return {
        "steps": {k: run_json(v) for k, v in result["runs"].items()},
        "methods": {method: {"train": run_json(run["train"]),
                             "evaluate": run_json(run["evaluate"]),
                             "rows": run["training"]["rows"],
                             "calibration": run["training"]["calibration"],
                             "decision_threshold": run["training"]["decision_threshold"],
                             "eval_calibration": run["metrics"]["calibration"],
                             "eval_overall": {k: run["metrics"]["overall"].get(k) for k in (
                                 "auc", "ece", "brier", "precision", "recall", "f1",
                                 "positive_rate", "predicted_positive_rate",
                                 "mean_probability")}}
                    for method, run in result["methods"].items()},
        "policies": result["policies"],
    }


# ---------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="generated rows (0: skip)")
    parser.add_argument("--seed", type=int, default=42, help="datagen seed")
    parser.add_argument("--workdir", default=str(OUT),
                        help="data, step outputs, logs and the JSON result (default bench/out)")
    parser.add_argument("--real-sample",
                        default=os.path.join(REPO, "tests", "data", "cfpb_2013_sample.csv"),
                        help="the real CFPB sample CSV")
    parser.add_argument("--no-real", action="store_true", help="skip the real sample")
    parser.add_argument("--hparams", default=None, help="train --hparams JSON (default: defaults)")
    parser.add_argument("--keep", action="store_true", help="keep step outputs (logs are kept)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    workdir = os.path.abspath(args.workdir)
    run_dir = os.path.join(workdir, f"calibration-run-{args.rows}-seed{args.seed}")
    shutil.rmtree(run_dir, ignore_errors=True)  # the steps refuse non-empty output directories
    logs = os.path.join(run_dir, "logs")
    os.makedirs(logs)
    load_before, code_before = os.getloadavg(), code_version()
    results, table = {}, []
    if args.rows:
        path, generated = ensure_data(workdir, args.rows, args.seed)
        print(f"generated data: {path} "
              + (f"(generated in {generated:.1f} s)" if generated else "(reused)"), flush=True)
        results["synthetic"] = run_data_set("synthetic", path, run_dir, logs, args.hparams)
    if not args.no_real:
        print(f"real sample: {args.real_sample}", flush=True)
        results["real"] = run_data_set("real", os.path.abspath(args.real_sample), run_dir, logs,
                                       args.hparams)
    # After every step: TensorFlow in this process would inflate the children's peak RSS
    # (a forked child starts with its parent's pages).
    for tag, result in results.items():
        result["policies"] = policies(result["examples"], result["methods"]["platt"]["model"])
        table += table_of(f"generated {args.rows:,}" if tag == "synthetic"
                          else "real 2013 sample", result)

    result = {"rows": args.rows, "seed": args.seed, "real_sample": args.real_sample,
              "hparams": args.hparams, "costs": COSTS,
              **{tag: result_json(r) for tag, r in results.items()},
              "code": code_since(code_before), "machine": machine(load_before),
              "figures": [{"note" if k == "goal" else k: v for k, v in f.items()}
                          for f in table]}
    host = result["machine"]
    print()
    print(f"{args.rows:,} generated rows (seed {args.seed}) + real sample; {host['cpus']} CPUs, "
          f"{host['date']}, code {result['code']}")
    print()
    print(markdown(table, third="note", compact=True))
    json_path = write_json(os.path.join(workdir, "bench_calibration.json"), result)
    print(f"\nJSON: {json_path}; logs: {logs}")
    if not args.keep:
        for name in os.listdir(run_dir):
            if name != "logs":
                path = os.path.join(run_dir, name)
                if os.path.isdir(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
