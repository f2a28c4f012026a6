"""`python -m components.train`: train and export the model (see README.md)."""

from __future__ import annotations

from components.common.cli import (
    StepArgumentParser,
    add_dataset_config,
    add_executor_input,
    end_process,
    optional_float,
    optional_str,
    run_step,
)

# Train's privacy flags: each sets the hyperparameter of its name, over --hparams.
PRIVACY_FLAGS = ("privacy", "noise_multiplier", "l2_clip", "target_delta", "max_epsilon")


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
    privacy = parser.add_argument_group(
        "differential privacy (the same keys in --hparams; a flag wins over the key)")
    privacy.add_argument("--privacy", type=optional_str, default=None,
                         help="none (default) or dp-sgd: per-example clipping, Gaussian noise, "
                              "Poisson sampling, epsilon from dp-accounting (see README.md)")
    privacy.add_argument("--noise-multiplier", type=optional_float, default=None, metavar="Z",
                         help="dp-sgd: noise std Z * C per batch (default 1.0)")
    privacy.add_argument("--l2-clip", type=optional_float, default=None, metavar="C",
                         help="dp-sgd: clip each example's gradient to L2 norm C (default 1.0)")
    privacy.add_argument("--target-delta", type=optional_float, default=None, metavar="D",
                         help="dp-sgd: the delta of (epsilon, delta) (default 1/n, n = the rows "
                              "trained on)")
    privacy.add_argument("--max-epsilon", type=optional_float, default=None, metavar="E",
                         help="dp-sgd: refuse, before training, settings whose epsilon for the "
                              "full number of epochs would exceed E")
    add_dataset_config(parser)
    add_executor_input(parser)
    return parser


def privacy_hparams(args) -> dict:
    """--hparams with the privacy flags on top, checked: a DP setting given as a flag while
    the run is not private is an error, not silently ignored."""
    from components.common.errors import StepError
    from components.common.hparams import parse_hparams

    given = {key: getattr(args, key) for key in PRIVACY_FLAGS if getattr(args, key) is not None}
    hparams = parse_hparams(args.hparams, given)
    unused = ["--" + key.replace("_", "-") for key in PRIVACY_FLAGS
              if key in given and key != "privacy"]
    if unused and hparams["privacy"] != "dp-sgd":
        raise StepError(f"{', '.join(unused)}: used only with --privacy dp-sgd (the run's "
                        f"privacy is {hparams['privacy']!r})")
    return hparams


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from components.common.artifacts.model import dp_scalars
    from components.common.dataset_config import load_dataset_config
    from components.common.hparams import metric_lines
    from components.common.kfp_executor import ExecutorIO
    from components.train.train import train

    hparams = privacy_hparams(args)  # before any heavy import: bad JSON fails fast
    executor = ExecutorIO(args.executor_input)
    info = train(args.examples, args.transform, args.output,
                 load_dataset_config(args.dataset_config), hparams)
    privacy = dp_scalars(info)  # {} unless trained with DP
    # The format Katib's StdOut metrics collector reads: one `name=value` per line.
    epsilon = {"dp_epsilon": privacy["dp_epsilon"]} if privacy else {}
    print(metric_lines({**info["metrics"], **epsilon}), end="", flush=True)
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
        "privacy": info["privacy"]["mechanism"],
        **({"dp_epsilon": privacy["dp_epsilon"], "dp_delta": privacy["dp_delta"]}
           if privacy else {}),
    })
    executor.artifact("metrics", {name: round(v, 6) if name != "dp_delta" else v
                                  for name, v in {**info["metrics"], **privacy}.items()})
    executor.parameter("model_id", info["model_id"])
    executor.write()
    return 0


if __name__ == "__main__":
    end_process(run_step("train", main))
