"""`python -m components.transform`: fit the preprocessing on the train split (see README.md)."""

from __future__ import annotations

from components.common.cli import (
    StepArgumentParser,
    add_dataset_config,
    add_executor_input,
    end_process,
    run_step,
)


def build_parser() -> StepArgumentParser:
    parser = StepArgumentParser(
        "transform",
        description="Fit the preprocessing (vocabularies with OOV buckets, ZIP prefix buckets, "
                    "narrative tokens) on the train split and save it to travel with the model.",
    )
    parser.add_argument("--examples", required=True, help="output directory of the ingest step")
    parser.add_argument("--output", required=True,
                        help="directory for preprocessing.keras, vocabularies/ and transform.json")
    add_dataset_config(parser)
    add_executor_input(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from components.common.dataset_config import load_dataset_config
    from components.common.kfp_executor import ExecutorIO
    from components.transform.transform import transform

    executor = ExecutorIO(args.executor_input)
    info = transform(args.examples, args.output, load_dataset_config(args.dataset_config))
    executor.artifact("transform", {
        "preprocessing_hash": info["preprocessing_hash"],
        "dataset_version": info["dataset_version"],
        **{f"vocabulary_size_{k}": v for k, v in info["vocabulary_sizes"].items()},
    })
    executor.parameter("preprocessing_hash", info["preprocessing_hash"])
    executor.write()
    return 0


if __name__ == "__main__":
    end_process(run_step("transform", main))
