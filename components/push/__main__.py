"""`python -m components.push`: publish a blessed model to the registry (see README.md)."""

from __future__ import annotations

import os

from components.common.cli import (
    StepArgumentParser,
    add_dataset_config,
    add_executor_input,
    end_process,
    optional_str,
    run_step,
)


def build_parser() -> StepArgumentParser:
    parser = StepArgumentParser(
        "push",
        description="Publish a blessed model as the next version <N> of <model-name> in the model "
                    "registry (a directory or s3://bucket/prefix), atomically, with its lineage "
                    "and a semantic version; an unblessed model is skipped (exit 0).",
    )
    parser.add_argument("--model", required=True,
                        help="output directory of the train step (model/ and training.json)")
    parser.add_argument("--evaluation", required=True,
                        help="output directory of the evaluate step (blessing.json, metrics.json)")
    parser.add_argument("--registry", required=True,
                        help="model registry: a directory or s3://bucket/prefix")
    parser.add_argument("--model-name", required=True,
                        help="the model's name in the registry (one path segment, e.g. "
                             "cfpb-dispute); TF Serving serves <registry>/<model-name>")
    parser.add_argument("--pushed-model", type=optional_str, default=None, metavar="FILE",
                        help="also write the result (push.json) to this file (the KFP "
                             "pushed_model artifact)")
    parser.add_argument("--model-card", type=optional_str, default=None, metavar="FILE",
                        help="also write the version's model card (HTML) to this file (the KFP "
                             "HTML artifact; a short page saying why when nothing was pushed)")
    parser.add_argument("--pipeline-images", type=optional_str, default=None, metavar="JSON",
                        help="the images the pipeline was compiled with, {step: image}, for "
                             "the model card's provenance")
    add_dataset_config(parser)
    add_executor_input(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from components.common.dataset_config import load_dataset_config
    from components.common.kfp_executor import ExecutorIO
    from components.push.push import card_page, parse_pipeline_images, push, write_result

    images = parse_pipeline_images(args.pipeline_images)  # before any work
    config = load_dataset_config(args.dataset_config)
    executor = ExecutorIO(args.executor_input)
    result = push(args.model, args.evaluation, args.registry, args.model_name, config, images)
    if args.pushed_model:
        write_result(args.pushed_model, result)
    if args.model_card:
        os.makedirs(os.path.dirname(os.path.abspath(args.model_card)), exist_ok=True)
        with open(args.model_card, "wb") as handle:
            handle.write(card_page(result))
    executor.artifact("pushed_model", {
        key: result[key]
        for key in ("pushed", "status", "version", "semver", "uri", "model_id", "model_name",
                    "model_card")
    })
    executor.artifact("model_card", {"pushed": result["pushed"], "version": result["version"],
                                     "model_card": result["model_card"]})
    executor.parameter("pushed", result["pushed"])
    executor.parameter("model_version", result["version"])
    executor.write()
    return 0


if __name__ == "__main__":
    end_process(run_step("push", main))
