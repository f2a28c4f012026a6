"""Benchmark the model half (transform, train, evaluate) and compare its AUC with a baseline.

    .venv/bin/python bench/bench_model.py [--rows 100000] [--seed 42] [--workdir bench/out]
        [--real-sample tests/data/cfpb_2013_sample.csv] [--hparams JSON]
        [--real-hparams JSON] [--try-hparams JSON ...] [--no-real] [--keep]

Prints figures, judges nothing. Each step runs as its own child process (its real CLI, as the
pipeline runs it), measured with benchlib's `measure` (wall time; peak RSS of the
largest process, kernel-accounted; peak PSS of the process tree, sampled):

  1. synthetic data (`--rows`, seed `--seed`, generated once and reused): ingest, transform,
     train (default hyperparameters unless `--hparams`), evaluate; train examples/s, train peak
     memory, epochs run, validation AUC per epoch, and the chain's wall time, per step and summed;
  2. model quality on the same split: our model's eval AUC (evaluate's metrics.json) beside a
     scikit-learn baseline, LogisticRegression(class_weight="balanced", max_iter=1000) on one-hot
     product, sub_product, issue, company_response, state and ZIP 3-digit prefix plus TF-IDF of
     the narrative (max_features 20000, ngrams (1, 2), min_df 2). The baseline reads the train
     and eval splits from the ingest output's TFRecords (`raw_dataset`), so both models see
     identical rows; it runs as a child process too (this script with `--baseline`);
  3. the same comparison on the real 1,000-row CFPB sample shipped in tests (no narratives; an
     eval split of ~100 rows, so its AUCs are noisy: approximate 95% intervals are given, and
     a paired bootstrap of the AUC difference; if train fails with the built-in config, the
     failure is reported and the sample re-run with the config minus its text feature);
  4. each `--try-hparams` JSON: one more train + evaluate on the synthetic split, for tuning.

The table goes to stdout and, as JSON, to `<workdir>/bench_model.json`. Step outputs live in
`<workdir>/model-run-<rows>-seed<seed>/` and are deleted at the end (logs kept) unless `--keep`.
Note that train's early stopping monitors the eval split, the split both AUCs are computed on:
our model's figure is slightly optimistic, the baseline's is not (it selects nothing on eval).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
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
from components.common import documents
from components.common.artifacts import evaluation
from components.common.artifacts import examples as examples_artifact
from components.common.artifacts import model as model_artifact

CATEGORICAL = ("product", "sub_product", "issue", "company_response", "state")
ZIP_FEATURE = "zip_code"
TEXT_FEATURE = "narrative"
TFIDF = {"max_features": 20000, "ngram_range": (1, 2), "min_df": 2}
STEPS = ("ingest", "transform", "train", "evaluate")  # the chain measured, in pipeline order
EPOCH_LINE = re.compile(r"epoch (\d+): (\d+) examples in ([\d.]+) s \(\d+ examples/s\) (.*)$")
QUIET = {"TF_CPP_MIN_LOG_LEVEL": "2"}


# ---------------------------------------------------------------- the scikit-learn baseline
def zip_prefix(code: str, digits: int = 3) -> str:
    """As transform's ZipPrefix: the first digits, or "" when they are not all digits."""
    prefix = code.strip()[:digits]
    return prefix if len(prefix) == digits and prefix.isdigit() else ""


def read_split(examples: str, split: str, config_ref: str | None = None
               ) -> tuple[list[list[str]], list[str], list[int]]:
    """Categorical columns (ZIP as its prefix), narratives ("" if none) and labels of a split."""
    from components.common.artifacts.examples import raw_dataset
    from components.common.dataset_config import load_dataset_config

    config = load_dataset_config(config_ref)
    digits = config.preprocessing.zip_prefix_digits
    categorical, texts, labels = [], [], []
    for features, label in raw_dataset(examples, split, config, 4096).as_numpy_iterator():
        columns = [[v.decode("utf-8") for v in features[name]] for name in CATEGORICAL]
        columns.append([zip_prefix(v.decode("utf-8"), digits) for v in features[ZIP_FEATURE]])
        categorical.extend(map(list, zip(*columns, strict=True)))
        if TEXT_FEATURE in features:
            texts.extend(v.decode("utf-8") for v in features[TEXT_FEATURE])
        else:  # a config without the text feature
            texts.extend("" for _ in range(len(label)))
        labels.extend(int(v) for v in label)
    return categorical, texts, labels


def our_predictions(examples: str, model_dir: str):
    """Our SavedModel's probabilities on the eval split, in raw_dataset's (file) order."""
    import numpy as np
    import tensorflow as tf

    from components.common.artifacts.examples import split_files

    predict = tf.saved_model.load(model_artifact.saved_model_dir(model_dir)).signatures[
        model_artifact.EXAMPLE_SIGNATURE]
    records = tf.data.TFRecordDataset(split_files(examples, "eval"), compression_type="GZIP")
    return np.concatenate([predict(examples=batch)[model_artifact.OUTPUT].numpy()
                           for batch in records.batch(1024)])


def paired_bootstrap(labels, ours, base, resamples: int = 1000, seed: int = 0) -> dict:
    """AUC(ours) - AUC(baseline) with a 95% percentile interval over paired resamples of the
    eval rows: both models are scored on the same resampled rows, so their shared noise
    cancels (much tighter than two separate intervals)."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    labels, ours, base = map(np.asarray, (labels, ours, base))
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(resamples):
        pick = rng.integers(0, labels.size, labels.size)
        if labels[pick].min() != labels[pick].max():
            diffs.append(roc_auc_score(labels[pick], ours[pick])
                         - roc_auc_score(labels[pick], base[pick]))
    low, high = np.percentile(diffs, [2.5, 97.5])
    return {"difference": float(roc_auc_score(labels, ours) - roc_auc_score(labels, base)),
            "ci95": [float(low), float(high)], "resamples": len(diffs),
            "share_ours_better": float(np.mean(np.asarray(diffs) > 0))}


def baseline(examples: str, out: str, config_ref: str | None = None,
             model_dir: str | None = None) -> int:
    """Fit the logistic regression on the train split, score the eval split, write JSON.

    With `model_dir` (a train output), also score our model on the same eval rows and
    bootstrap the AUC difference."""
    import time

    import numpy as np
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import OneHotEncoder

    started = time.perf_counter()
    train_cat, train_text, y_train = read_split(examples, "train", config_ref)
    eval_cat, eval_text, y_eval = read_split(examples, "eval", config_ref)
    read_seconds = time.perf_counter() - started

    started = time.perf_counter()
    onehot = OneHotEncoder(handle_unknown="ignore")
    parts_train = [onehot.fit_transform(np.array(train_cat, dtype=object))]
    parts_eval = [onehot.transform(np.array(eval_cat, dtype=object))]
    with_text = sum(1 for t in train_text if t.strip())
    tfidf_terms = 0
    if with_text:  # the real 2013 sample has no narratives: TF-IDF would have no vocabulary
        tfidf = TfidfVectorizer(**TFIDF)
        parts_train.append(tfidf.fit_transform(train_text))
        parts_eval.append(tfidf.transform(eval_text))
        tfidf_terms = len(tfidf.vocabulary_)
    x_train, x_eval = sp.hstack(parts_train).tocsr(), sp.hstack(parts_eval).tocsr()
    model = LogisticRegression(class_weight="balanced", max_iter=1000)
    model.fit(x_train, y_train)
    fit_seconds = time.perf_counter() - started
    scores = model.predict_proba(x_eval)[:, 1]
    result = {
        "auc": float(roc_auc_score(y_eval, scores)),
        "rows": {"train": len(y_train), "eval": len(y_eval)},
        "positives": {"train": int(sum(y_train)), "eval": int(sum(y_eval))},
        "train_rows_with_narrative": with_text,
        "features": {"one_hot": int(parts_train[0].shape[1]), "tfidf": tfidf_terms},
        "iterations": int(np.max(model.n_iter_)),
        "read_seconds": round(read_seconds, 2),
        "fit_seconds": round(fit_seconds, 2),
    }
    if model_dir:
        ours = our_predictions(examples, model_dir)
        if ours.size != len(y_eval):
            raise SystemExit(f"our model scored {ours.size} eval rows, the baseline {len(y_eval)}")
        result["our_auc_recomputed"] = float(roc_auc_score(y_eval, ours))
        result["paired"] = paired_bootstrap(y_eval, ours, scores)
    write_json(out, result)
    print(json.dumps(result))
    return 0


# ---------------------------------------------------------------- the steps, measured
def step(label: str, module: str, args: list[str], logs: str, config: str | None,
         check: bool = True) -> Run:
    """One step's CLI, measured; stops the benchmark on failure unless `check` is False."""
    name = re.sub(r"[^\w.-]+", "_", label)
    if config:
        args = [*args, "--dataset-config", config]
    run = measure(label, [PYTHON, "-m", module, *args], os.path.join(logs, f"{name}.log"),
                  env=QUIET)
    return checked(run) if check else run


def last_error(run: Run) -> str:
    """The failed step's last meaningful log line (the exception), for the table."""
    with open(run.log, encoding="utf-8", errors="replace") as handle:
        lines = [line.strip() for line in handle if line.strip()]
    errors = [i for i, line in enumerate(lines) if re.match(r"^(\w+Error|error:)", line)]
    if not errors:
        return (lines or ["(empty log)"])[-1][:300]
    text = " ".join(lines[errors[-1]:errors[-1] + 2])  # the message may span two lines
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*|\[Op:\w+\]( name:)?", "", text)
    return text.replace("|", "/")[:300]  # a Markdown table cell


def no_text_config(path: str) -> str:
    """The built-in dataset config without text features, written to `path`."""
    import yaml

    from components.common.dataset_config import resolve_config_path

    with open(resolve_config_path(None), encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)
    text = set(raw["features"].get("text") or ())
    raw["features"]["text"] = []
    raw["columns"] = {k: v for k, v in raw["columns"].items() if k not in text}
    checks = raw.get("validation", {}).get("no_distribution_checks") or []
    raw.setdefault("validation", {})["no_distribution_checks"] = [
        c for c in checks if c not in text]
    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump(raw, handle, sort_keys=False)
    return path


def epochs_from_log(log_path: str) -> list[dict]:
    """Train's per-epoch log lines: seconds, examples/s and the Keras metrics (val_auc...)."""
    epochs = []
    with open(log_path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            match = EPOCH_LINE.search(line.rstrip())
            if match:
                metrics = dict(kv.split("=", 1) for kv in match[4].split())
                epochs.append({"epoch": int(match[1]), "seconds": float(match[3]),
                               "examples_per_second": int(match[2]) / max(float(match[3]), 1e-9),
                               **{k: float(v) for k, v in metrics.items()}})
    return epochs


def train_and_evaluate(tag: str, examples: str, transform: str, run_dir: str, logs: str,
                       hparams: str | None, config: str | None = None,
                       check: bool = True) -> dict:
    """One train + evaluate on an existing ingest/transform output; runs and their outputs.

    With `check` False a failed train is returned as {"failed": <error line>, "train": run}.
    """
    model_dir = os.path.join(run_dir, f"model-{tag}")
    args = ["--examples", examples, "--transform", transform, "--output", model_dir]
    if hparams:
        args += ["--hparams", hparams]
    train = step(f"{tag} train", "components.train", args, logs, config, check)
    if train.returncode != 0:
        print(f"  {tag} train FAILED (exit {train.returncode}): {last_error(train)}", flush=True)
        return {"failed": last_error(train), "train": train}
    print(f"  {tag} train: {train.seconds:.1f} s", flush=True)
    evaluation_dir = os.path.join(run_dir, f"evaluation-{tag}")
    evaluate = step(f"{tag} evaluate", "components.evaluate",
                    ["--model", model_dir, "--examples", examples, "--output", evaluation_dir],
                    logs, config)
    print(f"  {tag} evaluate: {evaluate.seconds:.1f} s", flush=True)
    info = model_artifact.read_training(model_dir)
    metrics = evaluation.read_metrics(evaluation_dir)
    return {"train": train, "evaluate": evaluate, "training": info, "metrics": metrics,
            "epochs": epochs_from_log(train.log), "hparams": hparams, "config": config}


def chain(tag: str, source: str, run_dir: str, logs: str, hparams: str | None,
          config: str | None = None, check: bool = True) -> dict:
    """ingest -> transform -> train -> evaluate on `source`, then the baseline on the split."""
    examples = os.path.join(run_dir, f"examples-{tag}")
    transform = os.path.join(run_dir, f"transform-{tag}")
    ingest = step(f"{tag} ingest", "components.ingest",
                  ["--source", source, "--output", examples], logs, config)
    print(f"  {tag} ingest: {ingest.seconds:.1f} s", flush=True)
    transform_run = step(f"{tag} transform", "components.transform",
                         ["--examples", examples, "--output", transform], logs, config)
    print(f"  {tag} transform: {transform_run.seconds:.1f} s", flush=True)
    result = train_and_evaluate(tag, examples, transform, run_dir, logs, hparams, config, check)
    if "failed" in result:
        return result
    result.update(ingest=ingest, transform=transform_run, examples=examples,
                  transform_dir=transform, split=examples_artifact.read_metadata(examples))
    out = os.path.join(run_dir, f"baseline-{tag}.json")
    command = [PYTHON, os.path.abspath(__file__), "--baseline", examples, out,
               "--baseline-model", os.path.join(run_dir, f"model-{tag}")]
    if config:
        command += ["--baseline-config", config]
    result["baseline_run"] = checked(measure(
        f"{tag} baseline", command, os.path.join(logs, f"{tag}_baseline.log"), env=QUIET))
    result["baseline"] = documents.read_json(out, "baseline result")
    print(f"  {tag} baseline: {result['baseline_run'].seconds:.1f} s", flush=True)
    return result


# ---------------------------------------------------------------- figures
def auc_interval(auc: float, positives: int, negatives: int) -> tuple[float, float]:
    """Approximate 95% interval of an AUC (Hanley & McNeil 1982 standard error)."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    variance = (auc * (1 - auc) + (positives - 1) * (q1 - auc * auc)
                + (negatives - 1) * (q2 - auc * auc)) / max(positives * negatives, 1)
    half = 1.96 * math.sqrt(max(variance, 0.0))
    return max(auc - half, 0.0), min(auc + half, 1.0)


def row(name: str, value, unit: str = "", note: str = "", digits: int = 4) -> dict:
    """A table row: benchlib's `figure` (None: "n/a"), its `goal` column used as our note."""
    return figure(name, value, unit, note, digits)


def epoch_summary(epochs: list[dict]) -> str:
    return ", ".join(f"{e['epoch']}: {e.get('val_auc', float('nan')):.4f}"
                     f" (train {e.get('auc', float('nan')):.4f})" for e in epochs)


def quality_rows(tag: str, result: dict, noisy: bool) -> list[dict]:
    ours, base = result["metrics"]["overall"]["auc"], result["baseline"]["auc"]
    n_eval = result["metrics"]["eval_examples"]
    same = n_eval == result["baseline"]["rows"]["eval"] \
        and result["training"]["rows"]["train"] == result["baseline"]["rows"]["train"]
    rows_note = (f"train {result['baseline']['rows']['train']:,} / eval {n_eval:,} rows"
                 + ("" if same else " — ROW COUNTS DIFFER between the two models!"))
    note_ours, note_base = rows_note, "LogisticRegression balanced, one-hot + TF-IDF"
    if not result["baseline"]["features"]["tfidf"]:
        note_base = "LogisticRegression balanced, one-hot only (no narratives in this data)"
    if noisy:
        positives = result["baseline"]["positives"]["eval"]
        negatives = n_eval - positives
        for auc, which in ((ours, "ours"), (base, "base")):
            if auc is None:
                continue
            low, high = auc_interval(auc, positives, negatives)
            text = (f"NOISY: {n_eval} eval rows ({positives} disputed), "
                    f"95% CI ~[{low:.3f}, {high:.3f}]")
            if which == "ours":
                note_ours = text
            else:
                note_base = f"{note_base}; {text}"
    delta = None if ours is None else ours - base
    note_delta = "positive: ours is better"
    paired = result["baseline"].get("paired")
    if paired:
        low, high = paired["ci95"]
        verdict = ("ours better" if low > 0 else "baseline better" if high < 0
                   else "no significant difference")
        note_delta += (f"; paired bootstrap 95% CI [{low:+.4f}, {high:+.4f}] over "
                       f"{paired['resamples']} resamples of the eval rows: {verdict}")
        recomputed = result["baseline"]["our_auc_recomputed"]
        if ours is not None and abs(recomputed - ours) > 1e-4:
            note_delta += f" (WARNING: our AUC recomputed on the rows = {recomputed:.4f})"
    return [
        row(f"{tag}: our model eval AUC (evaluate)", ours, "", note_ours),
        row(f"{tag}: baseline eval AUC (scikit-learn)", base, "", note_base),
        row(f"{tag}: our AUC - baseline AUC", delta, "", note_delta),
    ]


def build_table(synthetic: dict | None, real: dict | None, tries: list[dict],
                real_failure: str | None = None) -> list[dict]:
    table = []
    if synthetic:
        s = synthetic
        train_rows = s["training"]["rows"]["train"]
        epochs = s["training"]["epochs_run"]
        steady = [e["examples_per_second"] for e in s["epochs"][1:]]
        chain_seconds = sum(s[k].seconds for k in STEPS)
        table += [
            row("synthetic: rows read / train / eval", s["split"]["rows"]["read"], "rows",
                f"kept {s['split']['rows']['kept']:,}, train {train_rows:,}, "
                f"eval {s['split']['rows']['eval']:,}", digits=0),
            row("train: examples/s (train rows x epochs / step wall time)",
                train_rows * epochs / s["train"].seconds, "ex/s",
                "includes process start-up, TF import, first-epoch caching, export", digits=0),
            row("train: examples/s (training.json)", s["training"]["examples_per_second"],
                "ex/s", "same ratio, in-process seconds (no interpreter start-up)", digits=0),
            row("train: steady examples/s (median of epochs 2+)",
                statistics.median(steady) if steady else None, "ex/s",
                "epoch 1 also fills the preprocessing cache", digits=0),
            row("train: epochs run", epochs, "",
                f"max {s['training']['hparams']['epochs']}, early stopping on val AUC "
                f"(patience {s['training']['hparams']['early_stopping_patience']})", digits=0),
            row("train: peak RSS, largest process", s["train"].peak_rss / MIB, "MiB", "",
                digits=0),
            row("train: peak memory, all processes (sampled PSS)", s["train"].peak_tree / MIB,
                "MiB", "", digits=0),
        ]
        for name in STEPS:
            run = s[name]
            table.append(row(f"{name}: wall time", run.seconds, "s",
                             f"peak RSS {run.peak_rss / MIB:,.0f} MiB", digits=1))
        table.append(row("chain: wall time, sum of the four steps", chain_seconds, "s",
                         " + ".join(f"{name} {s[name].seconds:.0f}" for name in STEPS),
                         digits=1))
        table.append(row("baseline (scikit-learn): wall time", s["baseline_run"].seconds, "s",
                         f"read TFRecords {s['baseline']['read_seconds']} s, fit "
                         f"{s['baseline']['fit_seconds']} s, peak RSS "
                         f"{s['baseline_run'].peak_rss / MIB:,.0f} MiB", digits=1))
        table += quality_rows("synthetic", s, noisy=False)
        table.append(row("synthetic: val AUC per epoch (train AUC)", None, "",
                         epoch_summary(s["epochs"])))
    for t in tries:
        ours = t["metrics"]["overall"]["auc"]
        base = synthetic["baseline"]["auc"] if synthetic else None
        table.append(row(f"synthetic, hparams {t['hparams']}: eval AUC", ours, "",
                         f"{t['training']['epochs_run']} epochs, train "
                         f"{t['train'].seconds:.0f} s"
                         + (f", vs baseline {ours - base:+.4f}" if base is not None else "")
                         + "; val AUC per epoch " + epoch_summary(t["epochs"])))
    if real_failure:
        table.append(row("real 2013 sample, built-in config: train FAILED", None, "",
                         f"{real_failure} — so the rows below use the config without the "
                         "narrative feature (the sample has no narratives)"))
    if real:
        table += quality_rows("real 2013 sample", real, noisy=True)
        table.append(row("real 2013 sample: epochs run", real["training"]["epochs_run"], "",
                         "val AUC per epoch " + epoch_summary(real["epochs"]), digits=0))
    return table


def run_json(run: Run) -> dict:
    return {"seconds": round(run.seconds, 2), "peak_rss_mib": round(run.peak_rss / MIB, 1),
            "peak_tree_mib": round(run.peak_tree / MIB, 1), "log": run.log}


def result_json(result: dict | None) -> dict | None:
    if not result:
        return None
    steps = {k: run_json(result[k]) for k in (*STEPS, "baseline_run") if k in result}
    overall = result["metrics"]["overall"]
    return {
        "hparams": result["training"]["hparams"],
        "steps": steps,
        "split": result.get("split", {}).get("rows"),
        "epochs_run": result["training"]["epochs_run"],
        "epochs": result["epochs"],
        "training_metrics": result["training"]["metrics"],
        "training_examples_per_second": result["training"]["examples_per_second"],
        "eval": {k: overall.get(k) for k in ("auc", "pr_auc", "accuracy", "precision", "recall",
                                             "f1", "log_loss")},
        "eval_examples": result["metrics"]["eval_examples"],
        "baseline": result.get("baseline"),
    }


# ---------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000, help="synthetic rows (0: skip)")
    parser.add_argument("--seed", type=int, default=42, help="datagen seed")
    parser.add_argument("--workdir", default=str(OUT),
                        help="data, step outputs, logs and the JSON result (default bench/out)")
    parser.add_argument("--real-sample",
                        default=os.path.join(REPO, "tests", "data", "cfpb_2013_sample.csv"),
                        help="the real CFPB sample CSV")
    parser.add_argument("--no-real", action="store_true", help="skip the real-sample comparison")
    parser.add_argument("--hparams", default=None,
                        help="train --hparams JSON for the synthetic run (default: defaults)")
    parser.add_argument("--real-hparams", default=None,
                        help="train --hparams JSON for the real sample (default: defaults)")
    parser.add_argument("--try-hparams", action="append", default=[], metavar="JSON",
                        help="also train + evaluate with these hparams on the synthetic split "
                             "(repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep step outputs (logs are kept)")
    parser.add_argument("--baseline", nargs=2, metavar=("EXAMPLES", "OUT"),
                        help=argparse.SUPPRESS)  # internal: the baseline's child process
    parser.add_argument("--baseline-config", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--baseline-model", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.baseline:
        return baseline(*args.baseline, args.baseline_config, args.baseline_model)
    workdir = os.path.abspath(args.workdir)
    run_dir = os.path.join(workdir, f"model-run-{args.rows}-seed{args.seed}")
    shutil.rmtree(run_dir, ignore_errors=True)  # the steps refuse non-empty output directories
    logs = os.path.join(run_dir, "logs")
    os.makedirs(logs)
    load_before, code_before = os.getloadavg(), code_version()

    synthetic, real, tries, generated, real_failure = None, None, [], None, None
    if args.rows:
        path, generated = ensure_data(workdir, args.rows, args.seed)
        print(f"synthetic data: {path} "
              + (f"(generated in {generated:.1f} s)" if generated else "(reused)"), flush=True)
        synthetic = chain("synthetic", path, run_dir, logs, args.hparams)
        for i, hparams in enumerate(args.try_hparams):
            tries.append(train_and_evaluate(f"try{i + 1}", synthetic["examples"],
                                            synthetic["transform_dir"], run_dir, logs, hparams))
    if not args.no_real:
        print(f"real sample: {args.real_sample}", flush=True)
        source = os.path.abspath(args.real_sample)
        real = chain("real", source, run_dir, logs, args.real_hparams, check=False)
        if "failed" in real:
            # The sample has no narratives: with the built-in config the text feature's
            # vocabulary is empty, which train may fail to load. Retry without that feature.
            real_failure = real["failed"]
            print("  retrying the real sample with the config minus its text feature", flush=True)
            real = chain("real-no-text", source, run_dir, logs, args.real_hparams,
                         no_text_config(os.path.join(run_dir, "cfpb-no-text.yaml")))

    table = build_table(synthetic, real, tries, real_failure)
    result = {
        "rows": args.rows, "seed": args.seed, "real_sample": args.real_sample,
        "datagen_seconds": generated, "real_default_config_failure": real_failure,
        "synthetic": result_json(synthetic), "real": result_json(real),
        "tries": [result_json(t) for t in tries],
        "code": code_since(code_before), "machine": machine(load_before),
        "figures": [{"note" if k == "goal" else k: v for k, v in f.items()} for f in table],
    }
    host = result["machine"]
    print()
    print(f"{args.rows:,} synthetic rows (seed {args.seed}) + real sample; {host['cpus']} CPUs, "
          f"{host['memory_gb']} GB, {host['date']}, code {result['code']}, load average (1 min) "
          f"{host['load_average_1_5_15_before'][0]} before, "
          f"{host['load_average_1_5_15_after'][0]} after (other work slows every time figure)")
    print()
    print(markdown(table, third="note"))
    if real:
        print(f"\nNote: the real sample's eval split has {real['metrics']['eval_examples']} rows; "
              "its AUCs are noisy (see the intervals), compare them only roughly.")
    json_path = write_json(os.path.join(workdir, "bench_model.json"), result)
    print(f"\nJSON: {json_path}; logs: {logs}")
    if not args.keep:
        for name in os.listdir(run_dir):
            if name != "logs":
                path = os.path.join(run_dir, name)
                if os.path.isdir(path):
                    shutil.rmtree(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
