"""The pipeline's command line: compile the package, run it here in containers, or submit it.

    .venv-sdk/bin/python pipeline.py --compile [--output pipeline.yaml]
    .venv-sdk/bin/python pipeline.py --run local [--source data.csv]
    .venv-sdk/bin/python pipeline.py --submit --host URL [--param key=value ...] [--wait]
    .venv-sdk/bin/python pipeline.py --schedule "0 0 2 * * *" --host URL [--param ...]

The package is what a user uploads in the Kubeflow UI or submits with the kfp client. The
pipeline itself is `orchestration/definition.py`; the local run `orchestration/local_runner.py`;
submitting `orchestration/submit.py`.
"""

import argparse
import sys

from components.common import build_facts
from orchestration.definition import (
    GATES,
    PIPELINE_NAME,
    S3_ENDPOINT_URL,
    S3_SECRET,
    compile_pipeline,
)


def memory_size(value: str) -> str:
    """A Docker memory size: a whole number with an optional unit b, k, m or g (`1g`, `512m`)."""
    import re

    if not re.fullmatch(r"[1-9][0-9]*[bkmg]?", value.strip().lower()):
        raise argparse.ArgumentTypeError(
            f"not a memory size: {value!r} (a whole number with b, k, m or g, e.g. 1g)")
    return value.strip().lower()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="--submit/--schedule compile the package first (the --compile options apply), "
               "check the\n--param values against its parameters, then call the KFP API "
               "(kfp.Client). Exit codes:\n0 done, 1 the run failed (--wait), 2 rejected "
               "before or by the API, 3 --wait timed out.")
    parser.add_argument("--compile", action="store_true", help="compile the pipeline package")
    parser.add_argument("--output", default="pipeline.yaml", help="package path (pipeline.yaml)")
    parser.add_argument("--submit", action="store_true",
                        help="compile, then create a run on a Kubeflow Pipelines backend (--host)")
    parser.add_argument("--schedule", metavar="CRON",
                        help="compile, then create a recurring run instead: KFP's 6-field cron, "
                             "seconds first, in UTC (second minute hour day-of-month month "
                             "day-of-week), e.g. '0 0 2 * * *' daily at 02:00; one run at a "
                             "time, missed runs not backfilled")
    parser.add_argument("--host", help="--submit/--schedule: KFP URL, e.g. http://localhost:8080 "
                                       "(kubectl port-forward svc/ml-pipeline-ui 8080:80); in "
                                       "a pod kfp sends the projected token at "
                                       "$KF_PIPELINES_SA_TOKEN_PATH")
    parser.add_argument("--namespace", help="--submit/--schedule: the profile namespace of a "
                                            "multi-user Kubeflow")
    parser.add_argument("--experiment", help="--submit/--schedule: experiment, created if "
                                             "missing (Default)")
    parser.add_argument("--run-name", help="--submit/--schedule: run name (default: pipeline "
                                           "name and UTC time)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="--submit/--schedule: pipeline parameter, typed as the pipeline "
                             "declares it (int, float, bool, str); repeat for more; "
                             "source is required")
    parser.add_argument("--wait", action="store_true",
                        help="--submit: wait for the run to finish; non-zero if it fails")
    parser.add_argument("--timeout-minutes", type=float, default=120.0,
                        help="--wait: give up waiting after this long (120); the run goes on")
    parser.add_argument("--run", choices=["local"],
                        help="run the pipeline here, every step in its container (kfp.local)")
    parser.add_argument("--source", help="--run local: CSV path or s3:// URI (default: a "
                                         "generated sample of 20,000 complaints)")
    parser.add_argument("--fail-on-anomalies", action="store_true",
                        help="--run local: stop the run when validation finds anomalies")
    parser.add_argument("--hparams", default="{}", help="--run local: training hyperparameters")
    parser.add_argument("--tune", action="store_true",
                        help="--run local: tune the hyperparameters first (the tune step's local "
                             "backend: optuna, trials as train processes in its container)")
    parser.add_argument("--memory-limit", metavar="SIZE", type=memory_size,
                        help="--run local: each step's container limited to SIZE of memory "
                             "(e.g. 1g, 512m; no swap), as a pod's limit would: a step that "
                             "needs more is killed and the run fails there")
    parser.add_argument("--workdir", default=str(build_facts.ROOT / "local_runs"),
                        help="--run local: pipeline root, data store and model registry")
    parser.add_argument("--image-registry", default=build_facts.DEFAULT_REGISTRY,
                        help=f"registry part of the step images ({build_facts.DEFAULT_REGISTRY})")
    parser.add_argument("--image-tag", default=None,
                        help="tag of the step images (default: <version>-<git short sha>)")
    parser.add_argument("--s3-endpoint-url", default=S3_ENDPOINT_URL,
                        help=f"MinIO/S3 endpoint the steps use on the cluster ({S3_ENDPOINT_URL})")
    parser.add_argument("--s3-secret", default=S3_SECRET,
                        help=f"Secret with accesskey/secretkey for it ({S3_SECRET}); '' for none")
    parser.add_argument("--resources", metavar="YAML",
                        help="--compile: CPU/memory per step replacing the defaults, e.g. "
                             "{train: {memory_limit: 8Gi, cpu_limit: '4'}} (keys cpu_request, "
                             "cpu_limit, memory_request, memory_limit)")
    parser.add_argument("--image-digests", action="store_true",
                        help="--compile: record each step image's digest, read from the local "
                             "Docker engine (the registry digest once pushed, else the image "
                             "id), for the model card's provenance")
    parser.add_argument("--gates", choices=GATES, default="conditions",
                        help="--compile: skip push/deploy by dsl.If on blessed/pushed, shown as "
                             "skipped in the UI (conditions, default), or only inside the steps "
                             "(in-step, what kfp.local runs)")
    return parser


def _resources(path: str | None) -> dict | None:
    if not path:
        return None
    import yaml

    with open(path, encoding="utf-8") as handle:
        return yaml.safe_load(handle) or {}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    remote = args.submit or args.schedule is not None
    if not (args.compile or args.run or remote):
        parser.error("nothing to do: pass --compile, --run local, --submit or --schedule")
    if remote and args.run:
        parser.error("--run local and --submit/--schedule: pick one")
    if remote and not args.host:
        parser.error("--submit/--schedule need --host URL")
    given = [flag for flag, value in (("--host", args.host), ("--namespace", args.namespace),
                                      ("--experiment", args.experiment),
                                      ("--run-name", args.run_name), ("--param", args.param),
                                      ("--wait", args.wait)) if value]
    if given and not remote:
        parser.error(f"{', '.join(given)}: only with --submit or --schedule")
    if args.wait and args.schedule is not None:
        parser.error("--wait: only for a single run (--submit), not with --schedule")
    if args.timeout_minutes <= 0:
        parser.error("--timeout-minutes: must be positive")
    if remote:
        from orchestration import submit

        try:  # what needs no package is checked before compiling
            submit.check_host(args.host)
            if args.schedule is not None:
                submit.check_cron(args.schedule)
        except submit.SubmitError as exc:
            print(f"error: pipeline: {exc}", file=sys.stderr)
            return exc.exit_code
    if args.compile or remote:
        from orchestration.images import ImageError, digests

        try:
            resources = _resources(args.resources)
            image_digests = (digests(args.image_registry, args.image_tag)
                             if args.image_digests else None)
            path = compile_pipeline(args.output, s3_endpoint_url=args.s3_endpoint_url,
                                    s3_secret=args.s3_secret or None,
                                    image_registry=args.image_registry,
                                    image_tag=args.image_tag, resources=resources,
                                    gates=args.gates, image_digests=image_digests)
        except (OSError, ValueError, ImageError) as exc:  # a bad --resources file, no image
            print(f"error: pipeline: {exc}", file=sys.stderr)
            return 2
        print(f"compiled {PIPELINE_NAME} to {path}")
    if remote:
        try:
            return submit.submit_package(
                path, args.host, params=args.param, experiment=args.experiment,
                run_name=args.run_name, namespace=args.namespace, cron=args.schedule,
                wait=args.wait, timeout_minutes=args.timeout_minutes)
        except submit.SubmitError as exc:
            print(f"error: pipeline: {exc}", file=sys.stderr)
            return exc.exit_code
    if args.run == "local":
        from orchestration.local_runner import run_local

        return run_local(args.source, args.workdir, args.fail_on_anomalies, args.hparams,
                         args.image_registry, args.image_tag or build_facts.image_tag(),
                         tune=args.tune, memory_limit=args.memory_limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
