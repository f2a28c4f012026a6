"""`python -m components.tune`: hyperparameter search, Katib or local (see README.md)."""

from __future__ import annotations

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


def build_parser() -> StepArgumentParser:
    from components.tune.tune import ALGORITHMS, BACKENDS, GOALS

    parser = StepArgumentParser(
        "tune",
        description="Search hyperparameters for train: a Katib Experiment on the cluster "
                    "(--backend katib) or the same search with optuna here (--backend local); "
                    "writes best_hparams.json, which train --hparams takes unchanged.",
    )
    parser.add_argument("--examples", required=True,
                        help="output of the ingest step (directory or s3:// URI)")
    parser.add_argument("--transform", required=True,
                        help="output of the transform step (directory or s3:// URI)")
    parser.add_argument("--output", required=True,
                        help="directory for best_hparams.json, trials.json, report.html, "
                             "tuning.json (must be empty)")
    parser.add_argument("--search-space", type=optional_str, default=None, metavar="YAML",
                        help="search space in Katib's vocabulary (path or s3:// URI; default: "
                             "components/tune/search_space.yaml)")
    parser.add_argument("--hparams", type=optional_str, default="{}",
                        help="base hyperparameters (JSON); trials change the searched keys")
    parser.add_argument("--enabled", type=parse_bool, default=True, metavar="true|false",
                        help="false: no search, pass --hparams through (default true)")
    parser.add_argument("--objective", default="auc", help="metric train prints (default auc)")
    parser.add_argument("--goal", choices=GOALS, default="maximize")
    parser.add_argument("--algorithm", choices=ALGORITHMS, default="tpe")
    parser.add_argument("--max-trials", type=int, default=12)
    parser.add_argument("--parallel-trials", type=int, default=2)
    parser.add_argument("--max-failed-trials", type=int, default=3)
    parser.add_argument("--backend", choices=BACKENDS, default="local")
    parser.add_argument("--timeout-minutes", type=float, default=60.0)
    parser.add_argument("--early-stopping", type=parse_bool, default=False, metavar="true|false",
                        help="katib: stop poor trials early (median stop)")
    parser.add_argument("--cleanup", type=parse_bool, default=False, metavar="true|false",
                        help="katib: delete the Experiment when done")
    parser.add_argument("--seed", type=int, default=42, help="local: seed of the sampler")
    parser.add_argument("--namespace", type=optional_str, default=None,
                        help="katib: namespace of the Experiment (default: the pod's)")
    parser.add_argument("--trial-image", type=optional_str, default=None,
                        help="katib: the train image the trials run")
    parser.add_argument("--s3-secret", type=optional_str, default=None,
                        help="katib: Secret with accesskey/secretkey the trial pods read S3 "
                             "with (S3_ENDPOINT_URL is passed on from this step)")
    add_dataset_config(parser)
    add_metrics_output(parser, "the best objective and trial counts")
    add_report_copy(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="katib: print the Experiment as YAML and create nothing")
    add_executor_input(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    import json
    import os

    from components.common import documents
    from components.common.kfp_executor import ExecutorIO
    from components.tune.tune import REPORT_FILE, TuneOptions, dry_run, tune

    executor = ExecutorIO(args.executor_input)
    options = TuneOptions(
        search_space=args.search_space, hparams=args.hparams, objective=args.objective,
        goal=args.goal, algorithm=args.algorithm, max_trials=args.max_trials,
        parallel_trials=args.parallel_trials, max_failed_trials=args.max_failed_trials,
        backend=args.backend, timeout_minutes=args.timeout_minutes, enabled=args.enabled,
        early_stopping=args.early_stopping, cleanup=args.cleanup, seed=args.seed,
        dataset_config=args.dataset_config, namespace=args.namespace,
        trial_image=args.trial_image, s3_secret=args.s3_secret)
    # Trial pods read the inputs from the object store: the artifacts' URIs in a pipeline run.
    examples_uri = executor.input_uri("examples") or args.examples
    transform_uri = executor.input_uri("transform") or args.transform
    run_key = executor.output_uri("tuning") or os.path.abspath(args.output)
    if args.dry_run:
        import yaml

        print(yaml.safe_dump(dry_run(options, examples_uri, transform_uri, run_key),
                             sort_keys=False), end="")
        return 0
    result = tune(args.examples, args.transform, args.output, options,
                  examples_uri=examples_uri, transform_uri=transform_uri, run_key=run_key)
    best = result["best"]
    scalars = {"trials": len(result["trials"]), "trials_succeeded": result["succeeded"]}
    if best:
        scalars[f"best_{args.objective}"] = best["objective"]
    if args.metrics:
        documents.write_json(args.metrics, scalars)
    copy_to_output(os.path.join(args.output, REPORT_FILE), args.report)
    executor.artifact("tuning", {"backend": args.backend, "enabled": args.enabled,
                                 "best_trial": best["name"] if best else "",
                                 "best_hparams": result["best_hparams"], **scalars})
    executor.artifact("metrics", scalars)
    executor.artifact("report", {"enabled": args.enabled})
    executor.parameter("best_hparams", json.dumps(result["best_hparams"], sort_keys=True))
    executor.write()
    return 0


if __name__ == "__main__":
    end_process(run_step("tune", main))
