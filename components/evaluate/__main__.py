"""`python -m components.evaluate`: model analysis and blessing (see README.md)."""

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
    run_step,
)


def build_parser() -> StepArgumentParser:
    parser = StepArgumentParser(
        "evaluate",
        description="Evaluate a trained model on the eval split: metrics, per-slice metrics and "
                    "fairness gaps, feature dependence, comparison with a baseline model, and "
                    "the blessing decision.",
    )
    parser.add_argument("--model", required=True,
                        help="train output (model/ + training.json) or a SavedModel directory")
    parser.add_argument("--examples", required=True, help="output directory of the ingest step")
    parser.add_argument("--output", required=True,
                        help="directory for metrics.json, blessing.json and report.html "
                             "(must be empty)")
    parser.add_argument("--baseline-model", type=optional_str, default=None,
                        help="model to compare with: a registry reference (<registry>/<name> "
                             "for its current version, <registry>/<name>/<N>), a train output or "
                             "a SavedModel directory; none: only absolute thresholds apply")
    parser.add_argument("--thresholds", type=optional_str, default=None,
                        help="YAML with thresholds and/or baseline_tolerance replacing the "
                             "dataset config's evaluation section ones")
    add_dataset_config(parser)
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the counterfactual sample (default 0)")
    add_metrics_output(parser, "the scalar metrics")
    parser.add_argument("--classification-metrics", type=optional_str, default=None,
                        help="also write ROC points and the confusion matrix as JSON here "
                             "(the KFP ClassificationMetrics file)")
    add_report_copy(parser)
    add_executor_input(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from components.common import documents
    from components.common.artifacts import evaluation
    from components.common.dataset_config import load_dataset_config
    from components.common.kfp_executor import ExecutorIO
    from components.evaluate.blessing import one_line
    from components.evaluate.evaluate import evaluate, kfp_scalars

    executor = ExecutorIO(args.executor_input)
    config = load_dataset_config(args.dataset_config)
    result = evaluate(args.model, args.examples, args.output, config,
                      baseline_ref=args.baseline_model, thresholds_path=args.thresholds,
                      seed=args.seed)
    metrics, blessing = result["metrics"], result["blessing"]
    scalars = kfp_scalars(metrics)
    if args.metrics:
        documents.write_json(args.metrics, scalars)
    if args.classification_metrics:
        documents.write_json(args.classification_metrics, result["classification_metrics"])
    copy_to_output(os.path.join(args.output, evaluation.REPORT_FILE), args.report)

    baseline = blessing["baseline"]
    executor.artifact("evaluation", {
        "blessed": blessing["blessed"],
        "auc": metrics["overall"]["auc"] if metrics["overall"]["auc"] is not None else "",
        "model_id": blessing["model_id"],
        "dataset_version": blessing["dataset_version"] or "",
        "baseline_version": baseline["version"] if baseline["version"] is not None else "",
        "baseline_model_id": baseline["model_id"] or "",
    })
    executor.artifact("metrics", scalars)
    executor.artifact("classification_metrics", result["classification_metrics"])
    executor.artifact("report", {"blessed": blessing["blessed"]})
    executor.parameter("blessed", blessing["blessed"])
    executor.write()
    decision = {"blessed": blessing["blessed"], "reasons": blessing["reasons"]}
    print(one_line(decision), file=sys.stderr)
    return 0


if __name__ == "__main__":
    end_process(run_step("evaluate", main))
