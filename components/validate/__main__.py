"""`python -m components.validate`: TFDV statistics, schema and anomalies (see README.md)."""

from __future__ import annotations

import os
import sys

from components.common.cli import (
    StepArgumentParser,
    add_dataset_config,
    add_executor_input,
    add_report_copy,
    copy_to_output,
    end_process,
    non_negative_int,
    optional_str,
    parse_bool,
    run_step,
)
from components.validate.validation import IN_MEMORY_MAX_ROWS


def build_parser() -> StepArgumentParser:
    parser = StepArgumentParser(
        "validate",
        description="Compute TFDV statistics of an ingested dataset, infer or apply a schema, and "
                    "report anomalies, train/eval skew and drift against a previous data version.",
    )
    parser.add_argument("--examples", required=True, help="output directory of the ingest step")
    parser.add_argument("--output", required=True,
                        help="directory for statistics, schema.pbtxt, anomalies, summary.json and "
                             "report.html (must be empty)")
    parser.add_argument("--schema", type=optional_str, default=None,
                        help="curated TFDV schema (text format); inferred when not given")
    parser.add_argument("--baseline-examples", type=optional_str, default=None,
                        help="ingest output of the previous data version, to measure drift")
    parser.add_argument("--baseline-store", type=optional_str, default=None,
                        help="data store (directory or s3://bucket/prefix) to take the previous "
                             "data version from, when --baseline-examples is not given")
    add_dataset_config(parser)
    parser.add_argument("--beam-pipeline-args", type=optional_str, default=None,
                        help="Beam flags for the statistics, as one string (as TFX takes them): "
                             "'--direct_num_workers=2 --direct_running_mode=multi_processing', or "
                             "a cluster's '--runner=FlinkRunner --flink_master=host:8081 ...'; "
                             "default: one process (Beam's FnApiRunner in memory)")
    parser.add_argument("--in-memory-max-rows", type=non_negative_int,
                        default=IN_MEMORY_MAX_ROWS, metavar="N",
                        help="without --beam-pipeline-args, up to N rows in all (train, eval, "
                             "baseline train) are described in this process without a Beam "
                             "pipeline (faster for small data; holds those rows in memory); 0: "
                             "always Beam (default: %(default)s)")
    parser.add_argument("--fail-on-anomalies", nargs="?", const=True, default=False,
                        type=parse_bool, metavar="BOOL",
                        help="exit non-zero when anomalies are found (outputs are still written)")
    add_report_copy(parser)
    add_executor_input(parser)
    return parser


def joined_beam_args(argv: list[str]) -> list[str]:
    """`--beam-pipeline-args VALUE` as `--beam-pipeline-args=VALUE`: a value that is one Beam
    flag (`--direct_num_workers=2`, no space) would otherwise look like an option to argparse.
    Kubeflow passes the flag and its value as two items."""
    out = list(argv)
    for i in range(len(out) - 1):
        if out[i] == "--beam-pipeline-args":
            out[i:i + 2] = [f"--beam-pipeline-args={out[i + 1]}"]
            break
    return out


def main(argv=None) -> int:
    args = build_parser().parse_args(joined_beam_args(sys.argv[1:] if argv is None else argv))
    from components.common.dataset_config import load_dataset_config
    from components.common.errors import StepError
    from components.common.kfp_executor import ExecutorIO
    from components.validate.validation import REPORT_FILE, one_line_summary, validate

    executor = ExecutorIO(args.executor_input)
    config = load_dataset_config(args.dataset_config)
    summary = validate(args.examples, args.output, config, args.schema, args.baseline_examples,
                       args.baseline_store, args.beam_pipeline_args, args.in_memory_max_rows)
    report = os.path.join(args.output, REPORT_FILE)
    copy_to_output(report, args.report)
    executor.artifact("statistics", {
        "dataset_version": summary["dataset_version"],
        "baseline_dataset_version": summary["baseline_dataset_version"] or "",
        "anomaly_count": summary["anomaly_count"],
        "schema_source": summary["schema_source"],
    })
    executor.artifact("report", {"anomaly_count": summary["anomaly_count"]})
    executor.parameter("anomalies_found", summary["anomalies_found"])
    executor.write()
    if summary["anomalies_found"]:
        message = f"{one_line_summary(summary)} (report: {args.report or report})"
        if args.fail_on_anomalies:
            raise StepError(message)
        print(f"warning: {message}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    end_process(run_step("validate", main))
