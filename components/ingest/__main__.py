"""`python -m components.ingest`: CSV to versioned train/eval TFRecords (see README.md)."""

from __future__ import annotations

from components.common.cli import (
    StepArgumentParser,
    add_dataset_config,
    add_executor_input,
    end_process,
    optional_float,
    optional_str,
    parse_bool,
    positive_int,
    run_step,
)
from components.ingest.ingest import DUPLICATE_POLICIES


def build_parser() -> StepArgumentParser:
    parser = StepArgumentParser(
        "ingest",
        description="Read a CSV (local path or s3://bucket/key), split it deterministically into "
                    "train/eval gzip TFRecords of tf.Example, and version it by content.",
    )
    parser.add_argument("--source", required=True, help="CSV file: local path or s3://bucket/key")
    parser.add_argument("--output", required=True,
                        help="directory for train/, eval/ and metadata.json (must be empty)")
    add_dataset_config(parser)
    parser.add_argument("--eval-fraction", type=optional_float, default=None, metavar="FRACTION",
                        help="share of rows in the eval split (default or empty: the dataset "
                             "config's split.eval_fraction)")
    parser.add_argument("--store", type=optional_str, default=None,
                        help="keep an immutable snapshot of the source under its version in this "
                             "directory or s3://bucket/prefix")
    parser.add_argument("--rows-per-shard", type=positive_int, default=250_000, metavar="N",
                        help="rows per TFRecord shard (default 250000)")
    parser.add_argument("--on-duplicate-id", choices=DUPLICATE_POLICIES, default="keep-last",
                        help="rows that share an id: keep the last of each (default; the CFPB "
                             "export's updates), keep the first, or fail when their content "
                             "differs (error); counted in metadata.json either way")
    parser.add_argument("--rerun", type=parse_bool, default=False, metavar="true|false",
                        help="data the store already has counts as new: runs again what a "
                             "failed run left undone (default false: the run skips itself)")
    add_executor_input(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from components.common.dataset_config import load_dataset_config
    from components.common.kfp_executor import ExecutorIO
    from components.ingest.ingest import IngestOptions, ingest

    executor = ExecutorIO(args.executor_input)
    config = load_dataset_config(args.dataset_config)
    metadata = ingest(args.source, args.output, config, IngestOptions(
        eval_fraction=args.eval_fraction, store=args.store, rows_per_shard=args.rows_per_shard,
        rerun=args.rerun, on_duplicate_id=args.on_duplicate_id,
    ))
    executor.artifact("examples", {
        "dataset_version": metadata["dataset_version"],
        "source": metadata["source"],
        "source_sha256": metadata["source_sha256"],
        "snapshot": metadata["snapshot"] or "",
        "rows_train": metadata["rows"]["train"],
        "rows_eval": metadata["rows"]["eval"],
        "rows_dropped": sum(metadata["dropped"].values()),
        "dataset_config": metadata["dataset_config"]["fingerprint"],
        "new_data": metadata["new_data"],
    })
    executor.parameter("dataset_version", metadata["dataset_version"])
    executor.parameter("new_data", metadata["new_data"])
    executor.write()
    return 0


if __name__ == "__main__":
    end_process(run_step("ingest", main))
