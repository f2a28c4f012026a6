"""The Kubeflow pipeline: every step is a container from its `components/<step>/component.yaml`.

Cluster wiring (images, the S3 endpoint, the credentials Secret) is fixed at compile time, never
a run parameter. `pipeline.py --compile` writes the package; `orchestration.local_runner` runs
the same function with kfp.local.
"""

# No `from __future__ import annotations`: kfp reads the pipeline function's annotations as types.
from components.common import build_facts

PIPELINE_NAME = "cfpb-continuous-training"

# Where the steps find MinIO on a cluster: KFP's own MinIO and its credentials Secret by default.
S3_ENDPOINT_URL = "http://minio-service.kubeflow:9000"
S3_SECRET = "mlpipeline-minio-artifact"
S3_SECRET_KEYS = {"accesskey": "AWS_ACCESS_KEY_ID", "secretkey": "AWS_SECRET_ACCESS_KEY"}


def load_components(registry: str = build_facts.DEFAULT_REGISTRY,
                    tag: str | None = None) -> dict:
    """Every step's component.yaml, with its image set to the one `make build-images` builds."""
    import yaml
    from kfp import components

    loaded = {}
    for step in build_facts.pipeline_steps():
        spec = yaml.safe_load((build_facts.COMPONENTS / step / "component.yaml").read_text())
        spec["implementation"]["container"]["image"] = build_facts.image_name(step, registry,
                                                                               tag)
        loaded[step] = components.load_component_from_text(yaml.safe_dump(spec, sort_keys=False))
    return loaded
def build_pipeline(s3_endpoint_url: str | None = S3_ENDPOINT_URL,
                   s3_secret: str | None = S3_SECRET,
                   image_registry: str = build_facts.DEFAULT_REGISTRY,
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
        eval_fraction: str = "",
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
