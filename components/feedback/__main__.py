"""`python -m components.feedback`: predictions meet their late labels (see README.md)."""

from __future__ import annotations

import os
import sys

from components.common.cli import (
    StepArgumentParser,
    add_dataset_config,
    add_executor_input,
    add_metrics_output,
    add_report_copy,
    copy_to_output,
    end_process,
    optional_str,
    parse_bool,
    run_step,
)


def _switch(parser, flag: str, help_text: str) -> None:
    """A boolean flag: alone it means true; `true`/`false` as KFP passes it."""
    parser.add_argument(flag, type=parse_bool, nargs="?", const=True, default=False,
                        help=help_text)


def build_parser() -> StepArgumentParser:
    parser = StepArgumentParser(
        "feedback",
        description="Join the model server's prediction log with labels that arrived later; "
                    "live metrics per version, the A/B verdict, skew and drift of the serving "
                    "data (TFDV), the newly labelled rows as the next dataset version, and a "
                    "retrain decision with its reasons.",
    )
    parser.add_argument("--predictions", required=True,
                        help="prediction log: <log-store>/<model>/predictions (a directory or "
                             "s3:// prefix); every *.jsonl under it is read")
    parser.add_argument("--labels", required=True,
                        help="labels CSV (path or s3:// URI) with the id and label columns of "
                             "the dataset config")
    parser.add_argument("--registry", required=True,
                        help="model registry: a directory or s3://bucket/prefix")
    parser.add_argument("--model-name", required=True, help="the model's name in the registry")
    parser.add_argument("--store", required=True,
                        help="data store (directory or s3:// prefix): the training data of "
                             "the deployed version, and where the next dataset version goes")
    parser.add_argument("--output", required=True,
                        help="directory for feedback.json, report.html and the statistics "
                             "(must be empty)")
    parser.add_argument("--since", type=optional_str, default=None,
                        help="ISO time: predictions before it are an earlier window (a label "
                             "for one of them is late); default: every prediction")
    add_dataset_config(parser)
    parser.add_argument("--min-new-rows", type=int, default=1000,
                        help="this many newly labelled rows make a retrain (default 1000)")
    parser.add_argument("--min-labelled", type=int, default=200,
                        help="scored predictions of the stable version needed before its live "
                             "metrics are checked against the config's thresholds (default 200)")
    parser.add_argument("--alpha", type=float, default=0.05,
                        help="significance level of the A/B test (default 0.05)")
    parser.add_argument("--power", type=float, default=0.8,
                        help="power for the labelled predictions still needed (default 0.8)")
    parser.add_argument("--min-effect", type=float, default=0.02,
                        help="smallest AUC difference worth detecting (default 0.02)")
    parser.add_argument("--drift-sample", type=int, default=50_000,
                        help="logged inputs sampled for the serving statistics (default 50000; "
                             "0: no drift check)")
    parser.add_argument("--combine-with-training-data", type=parse_bool, default=True,
                        help="the new dataset version is the stable version's training data "
                             "plus the new rows (default true; false: the new rows alone)")
    _switch(parser, "--auto-promote", "when the canary is significantly better, promote it "
                                      "(local deployment record; default off)")
    _switch(parser, "--auto-rollback", "when the canary is significantly worse, roll it back "
                                       "(local deployment record; default off)")
    parser.add_argument("--deploy-target", default="local",
                        help="where the deployment record lives: local (the registry's "
                             "deployment.json) or kserve (no automatic changes)")
    add_metrics_output(parser, "the scalar live metrics and the decision")
    add_report_copy(parser)
    add_executor_input(parser)
    return parser


def kfp_scalars(result: dict) -> dict:
    """Flat numbers for the KFP Metrics artifact."""
    from components.feedback.live_metrics import scalar

    out = {"scored": result["join"]["matched"], "predictions": result["join"]["in_window"],
           "late_labels": result["labels"]["late"], "unknown_labels": result["labels"]["unknown"],
           "duplicate_labels": result["labels"]["duplicates"] + result["labels"]["conflicting"],
           "new_rows": result["dataset"].get("rows_new") or 0,
           "retrain": int(result["decision"]["retrain"]),
           "drifted_features": len(result["drift"].get("drifted", []))}
    for version, metrics in result["versions"].items():
        for name in ("auc", "precision", "recall", "ece"):
            value = scalar(metrics, name)
            if value is not None:
                out[f"v{version}_{name}"] = value
    ab = result["ab"]
    if ab and ab["p_value"] is not None:
        out["ab_auc_difference"] = ab["difference"]
        out["ab_p_value"] = ab["p_value"]
    return out


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from components.common import documents
    from components.common.artifacts import feedback as feedback_artifact
    from components.common.dataset_config import load_dataset_config
    from components.common.kfp_executor import ExecutorIO
    from components.feedback.feedback import FeedbackOptions, parse_since, run_feedback

    executor = ExecutorIO(args.executor_input)
    options = FeedbackOptions(
        since=parse_since(args.since), min_new_rows=args.min_new_rows,
        min_labelled=args.min_labelled, alpha=args.alpha, power=args.power,
        min_effect=args.min_effect, drift_sample=args.drift_sample,
        combine=args.combine_with_training_data, auto_promote=args.auto_promote,
        auto_rollback=args.auto_rollback, deploy_target=args.deploy_target)
    config = load_dataset_config(args.dataset_config)
    result = run_feedback(args.predictions, args.labels, args.registry, args.model_name,
                          args.store, args.output, config, options)
    scalars = kfp_scalars(result)
    if args.metrics:
        documents.write_json(args.metrics, scalars)
    copy_to_output(os.path.join(args.output, feedback_artifact.REPORT_FILE), args.report)
    decision = result["decision"]
    executor.artifact("feedback", {
        "retrain": decision["retrain"], "scored": result["join"]["matched"],
        "new_dataset_version": result["dataset"].get("dataset_version") or "",
        "verdict": (result["ab"] or {}).get("verdict", "no canary"),
    })
    executor.artifact("metrics", scalars)
    executor.artifact("report", {"retrain": decision["retrain"]})
    executor.parameter("retrain", decision["retrain"])
    executor.parameter("new_dataset_version", result["dataset"].get("dataset_version") or "")
    executor.write()
    print(f"retrain: {str(decision['retrain']).lower()}"
          + (f" ({'; '.join(decision['reasons'])})" if decision["reasons"] else ""),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    end_process(run_step("feedback", main))
