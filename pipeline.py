"""The Kubeflow pipeline: every step is a container from its `components/<step>/component.yaml`.

    .venv-sdk/bin/python pipeline.py --compile [--output pipeline.yaml]

produces the package to upload in the Kubeflow UI or submit with the kfp client. S3/MinIO
credentials reach the steps from a Kubernetes Secret (never from pipeline parameters).
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
COMPONENTS = ROOT / "components"
PIPELINE_NAME = "cfpb-continuous-training"
STEPS = ("ingest", "validate", "transform", "train", "evaluate", "push", "deploy")

# Where the steps find MinIO on a cluster: KFP's own MinIO and its credentials Secret by default.
S3_ENDPOINT_URL = "http://minio-service.kubeflow:9000"
S3_SECRET = "mlpipeline-minio-artifact"
S3_SECRET_KEYS = {"accesskey": "AWS_ACCESS_KEY_ID", "secretkey": "AWS_SECRET_ACCESS_KEY"}


PROJECT = "cfpb-pipeline"
DEFAULT_REGISTRY = "local"


def default_image_tag() -> str:
    """`<version in pyproject>-<git short sha>`, the tag `make build-images` gives by default."""
    import subprocess
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                             capture_output=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = "dev"
    return f"{version}-{sha}"


def image_name(step: str, registry: str, tag: str) -> str:
    return f"{registry.rstrip('/')}/{PROJECT}-{step}:{tag}"


def load_components(registry: str = DEFAULT_REGISTRY, tag: str | None = None) -> dict:
    """Every step's component.yaml, with its image set to the one `make build-images` builds."""
    import yaml
    from kfp import components

    tag = tag or default_image_tag()
    loaded = {}
    for step in STEPS:
        spec = yaml.safe_load((COMPONENTS / step / "component.yaml").read_text())
        spec["implementation"]["container"]["image"] = image_name(step, registry, tag)
        loaded[step] = components.load_component_from_text(yaml.safe_dump(spec, sort_keys=False))
    return loaded


def build_pipeline(s3_endpoint_url: str | None = S3_ENDPOINT_URL,
                   s3_secret: str | None = S3_SECRET, image_registry: str = DEFAULT_REGISTRY,
                   image_tag: str | None = None):
    """The pipeline function; cluster wiring (images, S3 endpoint, Secret) is fixed at compile
    time, never a run parameter."""
    from kfp import dsl

    steps = load_components(image_registry, image_tag)

    def with_storage_access(task):
        if s3_endpoint_url:
            task.set_env_variable("S3_ENDPOINT_URL", s3_endpoint_url)
        if s3_secret:
            from kfp import kubernetes

            kubernetes.use_secret_as_env(task, secret_name=s3_secret,
                                         secret_key_to_env=S3_SECRET_KEYS)
        return task

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="New data in: ingest and version it, validate it (TFDV), fit the "
                    "preprocessing, train, analyse and bless the model against the current one, "
                    "publish it as a new registry version and deploy it as a canary.",
    )
    def training_pipeline(
        source: str,
        dataset_config: str = "",
        eval_fraction: float = 0.1,
        data_store: str = "s3://mlpipeline/cfpb/datasets",
        schema: str = "",
        fail_on_anomalies: bool = True,
        hparams: str = "{}",
        thresholds: str = "",
        registry: str = "s3://mlpipeline/cfpb/models",
        model_name: str = "cfpb-disputes",
        deploy_target: str = "kserve",
        canary_percent: int = 10,
        serving_namespace: str = "",
        serving_account: str = "",
    ):
        ingest = with_storage_access(steps["ingest"](
            source=source, dataset_config=dataset_config, eval_fraction=eval_fraction,
            store=data_store,
        ))
        ingest.set_display_name("Ingest and version data")
        validate = with_storage_access(steps["validate"](
            examples=ingest.outputs["examples"], baseline_store=data_store, schema=schema,
            dataset_config=dataset_config, fail_on_anomalies=fail_on_anomalies,
        ))
        validate.set_display_name("Validate data (TFDV)")
        transform = with_storage_access(steps["transform"](
            examples=ingest.outputs["examples"], dataset_config=dataset_config))
        transform.set_display_name("Fit preprocessing")
        transform.after(validate)  # anomalous data stops the run before any model work
        train = with_storage_access(steps["train"](
            examples=ingest.outputs["examples"], transform=transform.outputs["transform"],
            hparams=hparams, dataset_config=dataset_config))
        train.set_display_name("Train model")
        evaluate = with_storage_access(steps["evaluate"](
            model=train.outputs["model"], examples=ingest.outputs["examples"],
            baseline_model=f"{registry}/{model_name}", thresholds=thresholds,
            dataset_config=dataset_config))
        evaluate.set_display_name("Analyse and bless model")
        push = with_storage_access(steps["push"](
            model=train.outputs["model"], evaluation=evaluate.outputs["evaluation"],
            registry=registry, model_name=model_name))
        push.set_display_name("Publish to model registry (if blessed)")
        deploy = with_storage_access(steps["deploy"](
            registry=registry, model_name=model_name, version=push.outputs["model_version"],
            pushed=push.outputs["pushed"], strategy="canary", canary_percent=canary_percent,
            target=deploy_target, namespace=serving_namespace,
            service_account=serving_account))
        deploy.set_display_name("Deploy as canary (if pushed)")

    return training_pipeline


def compile_pipeline(output: str, **options) -> str:
    from kfp import compiler

    compiler.Compiler().compile(build_pipeline(**options), package_path=output)
    return output


def main(argv=None) -> int:
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
    parser.add_argument("--workdir", default=str(ROOT / "local_runs"),
                        help="--run local: pipeline root, data store and model registry")
    parser.add_argument("--image-registry", default=DEFAULT_REGISTRY,
                        help=f"registry part of the step images ({DEFAULT_REGISTRY})")
    parser.add_argument("--image-tag", default=None,
                        help="tag of the step images (default: <version>-<git short sha>)")
    parser.add_argument("--s3-endpoint-url", default=S3_ENDPOINT_URL,
                        help=f"MinIO/S3 endpoint the steps use on the cluster ({S3_ENDPOINT_URL})")
    parser.add_argument("--s3-secret", default=S3_SECRET,
                        help=f"Secret with accesskey/secretkey for it ({S3_SECRET}); '' for none")
    args = parser.parse_args(argv)
    if not args.compile and not args.run:
        parser.error("nothing to do: pass --compile or --run local")
    if args.compile:
        path = compile_pipeline(args.output, s3_endpoint_url=args.s3_endpoint_url,
                                s3_secret=args.s3_secret or None,
                                image_registry=args.image_registry, image_tag=args.image_tag)
        print(f"compiled {PIPELINE_NAME} to {path}")
    if args.run == "local":
        from local_run import run_local

        return run_local(args.source, args.workdir, args.fail_on_anomalies, args.hparams,
                         args.image_registry, args.image_tag or default_image_tag())
    return 0


if __name__ == "__main__":
    sys.exit(main())
