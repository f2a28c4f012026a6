"""`python -m components.train`: train and export the model (see README.md)."""

from __future__ import annotations

import sys

from components.common.cli import (
    StepArgumentParser,
    add_dataset_config,
    add_executor_input,
    optional_str,
    run_step,
)


def build_parser() -> StepArgumentParser:
    parser = StepArgumentParser(
        "train",
        description="Train the wide-and-deep model on transformed features, calibrate its "
                    "probabilities and choose its decision threshold on a held-out part of "
                    "the train split, and export a SavedModel that takes raw features "
                    "(preprocessing and calibration inside).",
    )
    parser.add_argument("--examples", required=True,
                        help="output directory of the ingest step (or its s3:// URI)")
    parser.add_argument("--transform", required=True,
                        help="output directory of the transform step (or its s3:// URI)")
    parser.add_argument("--output", required=True,
                        help="directory for model/ (the SavedModel), training.json, metrics.json "
                             "and logs/ (TensorBoard)")
    parser.add_argument("--hparams", type=optional_str, default="{}",
                        help="hyperparameters as one JSON object, e.g. "
                             "'{\"learning_rate\": 0.01}'; missing keys take the defaults in "
                             "components/common/hparams.py")
    add_dataset_config(parser)
    add_executor_input(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from components.common.dataset_config import load_dataset_config
    from components.common.hparams import metric_lines, parse_hparams
    from components.common.kfp_executor import ExecutorIO
    from components.train.train import train

    hparams = parse_hparams(args.hparams)  # before any heavy import: bad JSON fails fast
    executor = ExecutorIO(args.executor_input)
    info = train(args.examples, args.transform, args.output,
                 load_dataset_config(args.dataset_config), hparams)
    # The format Katib's StdOut metrics collector reads: one `name=value` per line.
    print(metric_lines(info["metrics"]), end="", flush=True)
    executor.artifact("model", {
        "model_id": info["model_id"],
        "dataset_version": info["dataset_version"],
        "preprocessing_hash": info["preprocessing_hash"],
        "signature_hash": info["signature_hash"],
        "hparams": info["hparams"],
        "epochs_run": info["epochs_run"],
        "calibration": info["calibration"]["method"],
        "decision_threshold": info["decision_threshold"]["value"],
        "threshold_policy": info["decision_threshold"]["policy"],
    })
    executor.artifact("metrics", {name: round(v, 6) for name, v in info["metrics"].items()})
    executor.parameter("model_id", info["model_id"])
    executor.write()
    return 0


if __name__ == "__main__":
    sys.exit(run_step("train", main))
