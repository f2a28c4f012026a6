"""The pipeline's command line: compile the package, or run it here in containers.

    .venv-sdk/bin/python pipeline.py --compile [--output pipeline.yaml]
    .venv-sdk/bin/python pipeline.py --run local [--source data.csv]

The package is what a user uploads in the Kubeflow UI or submits with the kfp client. The
pipeline itself is `orchestration/definition.py`; the local run `orchestration/local_runner.py`.
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile", action="store_true", help="compile the pipeline package")
    parser.add_argument("--output", default="pipeline.yaml", help="package path (pipeline.yaml)")
    parser.add_argument("--run", choices=["local"],
                        help="run the pipeline here, every step in its container (kfp.local)")
    parser.add_argument("--source", help="--run local: CSV path or s3:// URI (default: a "
                                         "generated sample of 20,000 complaints)")
    parser.add_argument("--fail-on-anomalies", action="store_true",
                        help="--run local: stop the run when validation finds anomalies")
    parser.add_argument("--hparams", default="{}", help="--run local: training hyperparameters")
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
    if not args.compile and not args.run:
        parser.error("nothing to do: pass --compile or --run local")
    if args.compile:
        try:
            resources = _resources(args.resources)
            path = compile_pipeline(args.output, s3_endpoint_url=args.s3_endpoint_url,
                                    s3_secret=args.s3_secret or None,
                                    image_registry=args.image_registry,
                                    image_tag=args.image_tag, resources=resources,
                                    gates=args.gates)
        except (OSError, ValueError) as exc:  # a bad --resources file
            print(f"error: pipeline: {exc}", file=sys.stderr)
            return 2
        print(f"compiled {PIPELINE_NAME} to {path}")
    if args.run == "local":
        from orchestration.local_runner import run_local

        return run_local(args.source, args.workdir, args.fail_on_anomalies, args.hparams,
                         args.image_registry, args.image_tag or build_facts.image_tag())
    return 0


if __name__ == "__main__":
    sys.exit(main())
