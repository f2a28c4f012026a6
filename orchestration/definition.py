"""The Kubeflow pipeline: every step is a container from its `components/<step>/component.yaml`.

Cluster wiring (images, the S3 endpoint, the credentials Secret) is fixed at compile time, never
a run parameter. `pipeline.py --compile` writes the package; `orchestration.local_runner` runs
the same function with kfp.local.
"""

# No `from __future__ import annotations`: kfp reads the pipeline function's annotations as types.
import json

from components.common import build_facts

PIPELINE_NAME = "cfpb-continuous-training"

# Requests and limits per step (CPU cores, memory), from bench/ figures: peak memory at 310k rows
# was ingest 0.3 GB, validate 1.0, transform 0.9, train 1.1, evaluate 0.9 (as processes); the
# limits leave room for larger data. `pipeline.py --compile --resources FILE` overrides them.
RESOURCES = {
    "ingest": {"cpu_request": "1", "cpu_limit": "2", "memory_request": "512Mi",
               "memory_limit": "1Gi"},
    "validate": {"cpu_request": "1", "cpu_limit": "2", "memory_request": "2Gi",
                 "memory_limit": "4Gi"},
    "transform": {"cpu_request": "1", "cpu_limit": "2", "memory_request": "1536Mi",
                  "memory_limit": "3Gi"},
    # tune: the katib backend only waits; the local one trains in the pod (parallel_trials at once)
    "tune": {"cpu_request": "500m", "cpu_limit": "2", "memory_request": "1Gi",
             "memory_limit": "4Gi"},
    "train": {"cpu_request": "1", "cpu_limit": "2", "memory_request": "2Gi",
              "memory_limit": "4Gi"},
    "evaluate": {"cpu_request": "1", "cpu_limit": "2", "memory_request": "1536Mi",
                 "memory_limit": "3Gi"},
    "push": {"cpu_request": "250m", "cpu_limit": "1", "memory_request": "256Mi",
             "memory_limit": "512Mi"},
    "deploy": {"cpu_request": "250m", "cpu_limit": "1", "memory_request": "256Mi",
               "memory_limit": "512Mi"},
}
RESOURCE_KEYS = ("cpu_request", "cpu_limit", "memory_request", "memory_limit")
# Never cached: steps with side effects (tune creates a Katib Experiment, push, deploy) or whose
# input is outside the pipeline (ingest reads whatever is at the source URI now). The rest
# cache on their inputs, content-addressed from ingest on (new data: a new examples artifact).
NOT_CACHED = ("ingest", "tune", "push", "deploy")
# How steps are skipped when there is nothing to do: `conditions` (the cluster package: dsl.If
# on ingest's new_data, then on blessed / pushed, shown as skipped in the UI) or `in-step`
# (kfp.local cannot run conditions on task outputs: the steps gate themselves and record
# "skipped"). The steps gate themselves in both; the packages differ only in the conditions
# (tests/test_pipeline.py).
GATES = ("conditions", "in-step")
# Every task after ingest runs through the no-new-data gate (components/common/gate.py): it
# gets ingest's new_data and, without new data, reports its outputs as skipped instead of
# running. These are the values its output parameters take then, by type.
SKIP_VALUES = {"Boolean": False, "Integer": 0, "Float": 0.0, "String": ""}
NEW_DATA = "new_data"

# Where the steps find the object store on a cluster: KFP's own and its credentials Secret by
# default. KFP >= 2.16 serves SeaweedFS there (port 9000 kept for S3 clients); KFP <= 2.15 had
# MinIO at http://minio-service.kubeflow:9000 (`pipeline.py --s3-endpoint-url` for those).
S3_ENDPOINT_URL = "http://seaweedfs.kubeflow:9000"
S3_SECRET = "mlpipeline-minio-artifact"
S3_SECRET_KEYS = {"accesskey": "AWS_ACCESS_KEY_ID", "secretkey": "AWS_SECRET_ACCESS_KEY"}


def load_components(registry: str = build_facts.DEFAULT_REGISTRY,
                    tag: str | None = None) -> dict:
    """Every step's component.yaml, with its image set to the one `make build-images` builds."""
    import yaml
    from kfp import components

    loaded = {}
    for step in build_facts.training_steps():
        spec = yaml.safe_load((build_facts.COMPONENTS / step / "component.yaml").read_text())
        spec["implementation"]["container"]["image"] = build_facts.image_name(step, registry,
                                                                               tag)
        if step != "ingest":
            spec = gated(spec)
        loaded[step] = components.load_component_from_text(yaml.safe_dump(spec, sort_keys=False))
    return loaded


def gated(spec: dict) -> dict:
    """The step's spec behind the no-new-data gate: one more input, `new_data`, and its command
    run by `python -m components.common.gate` (the step's own command and arguments unchanged
    after `--`)."""
    import json

    container = spec["implementation"]["container"]
    skip = {o["name"]: SKIP_VALUES[o["type"]] for o in spec.get("outputs", [])
            if o["type"] in SKIP_VALUES}
    names = {i["name"] for i in spec.get("inputs", [])}
    if NEW_DATA in names:
        raise ValueError(f"{spec['name']}: already has an input named {NEW_DATA}")
    return {
        **spec,
        "inputs": [*spec.get("inputs", []),
                   {"name": NEW_DATA, "type": "Boolean",
                    "description": "ingest's new_data: false skips the step (no new data)"}],
        "implementation": {"container": {
            **container,
            "command": ["python", "-m", "components.common.gate"],
            "args": ["--new-data", {"inputValue": NEW_DATA},
                     "--skip-outputs", json.dumps(skip, sort_keys=True),
                     "--", *container["command"], *container["args"]],
        }},
    }


def resources_with(overrides: dict | None) -> dict[str, dict[str, str]]:
    """RESOURCES with a user's overrides (`{step: {cpu_limit: "4", ...}}`), checked."""
    merged = {step: dict(values) for step, values in RESOURCES.items()}
    for step, values in (overrides or {}).items():
        if step not in merged:
            raise ValueError(f"resources: unknown step {step!r} (steps: {', '.join(merged)})")
        if not isinstance(values, dict) or set(values) - set(RESOURCE_KEYS):
            raise ValueError(f"resources: {step}: expected a mapping with keys from "
                             f"{', '.join(RESOURCE_KEYS)}, got {values!r}")
        merged[step].update({key: str(value) for key, value in values.items()})
    return merged


def build_pipeline(s3_endpoint_url: str | None = S3_ENDPOINT_URL,
                   s3_secret: str | None = S3_SECRET,
                   image_registry: str = build_facts.DEFAULT_REGISTRY,
                   image_tag: str | None = None,
                   resources: dict | None = None,
                   gates: str = "conditions",
                   image_digests: dict[str, str] | None = None):
    """The pipeline function; cluster wiring (images, S3 endpoint, Secret, resources, gates)
    is fixed at compile time, never a run parameter. `image_digests` ({step: "sha256:..."},
    e.g. from `orchestration.images.digests`) go to push for the model card's provenance."""
    from kfp import dsl

    if gates not in GATES:
        raise ValueError(f"gates {gates!r}: expected one of {', '.join(GATES)}")
    steps = load_components(image_registry, image_tag)
    sizes = resources_with(resources)
    # For the model card's provenance: the images this package runs, as name@digest when the
    # digests were resolved at compile time (a step cannot see its own image's digest).
    pipeline_images = json.dumps({
        step: build_facts.image_name(step, image_registry, image_tag)
        + (f"@{image_digests[step]}" if step in (image_digests or {}) else "")
        for step in build_facts.training_steps()}, sort_keys=True)

    def configured(task, step: str):
        """Storage access, resources and caching: what every task gets."""
        size = sizes[step]
        task.set_cpu_request(size["cpu_request"]).set_cpu_limit(size["cpu_limit"])
        task.set_memory_request(size["memory_request"]).set_memory_limit(size["memory_limit"])
        task.set_caching_options(step not in NOT_CACHED)
        return with_storage_access(task)

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
                    "preprocessing, tune (optional, Katib), train, analyse and bless the model "
                    "against the current one, publish it as a new registry version and deploy "
                    "it as a canary. Data the store already has: every step after ingest is "
                    "skipped (no new data).",
    )
    def training_pipeline(
        source: str,
        dataset_config: str = "",
        eval_fraction: str = "",
        rerun: bool = False,
        data_store: str = "s3://mlpipeline/cfpb/datasets",
        schema: str = "",
        fail_on_anomalies: bool = True,
        hparams: str = "{}",
        tune: bool = False,
        tune_backend: str = "katib",
        search_space: str = "",
        tune_algorithm: str = "tpe",
        tune_max_trials: int = 12,
        tune_parallel_trials: int = 2,
        thresholds: str = "",
        registry: str = "s3://mlpipeline/cfpb/models",
        model_name: str = "cfpb-disputes",
        deploy_target: str = "kserve",
        canary_percent: int = 10,
        serving_namespace: str = "",
        serving_account: str = "",
        serving_log_url: str = "",
    ):
        ingest = configured(steps["ingest"](
            source=source, dataset_config=dataset_config, eval_fraction=eval_fraction,
            store=data_store, rerun=rerun,
        ), "ingest")
        ingest.set_display_name("Ingest and version data")
        new_data = ingest.outputs[NEW_DATA]

        def after_ingest():
            """Everything after ingest; each task also gets new_data (the in-step gate)."""
            validate = configured(steps["validate"](
                examples=ingest.outputs["examples"], baseline_store=data_store, schema=schema,
                dataset_config=dataset_config, fail_on_anomalies=fail_on_anomalies,
                new_data=new_data,
            ), "validate")
            validate.set_display_name("Validate data (TFDV)")
            transform = configured(steps["transform"](
                examples=ingest.outputs["examples"], dataset_config=dataset_config,
                new_data=new_data), "transform")
            transform.set_display_name("Fit preprocessing")
            transform.after(validate)  # anomalous data stops the run before any model work
            tuning = configured(steps["tune"](
                examples=ingest.outputs["examples"], transform=transform.outputs["transform"],
                search_space=search_space, hparams=hparams, enabled=tune, backend=tune_backend,
                algorithm=tune_algorithm, max_trials=tune_max_trials,
                parallel_trials=tune_parallel_trials, dataset_config=dataset_config,
                trial_image=build_facts.image_name("train", image_registry, image_tag),
                s3_secret=s3_secret or "", new_data=new_data), "tune")
            tuning.set_display_name("Tune hyperparameters (if tune)")
            train = configured(steps["train"](
                examples=ingest.outputs["examples"], transform=transform.outputs["transform"],
                hparams=tuning.outputs["best_hparams"], dataset_config=dataset_config,
                new_data=new_data), "train")
            train.set_display_name("Train model")
            evaluate = configured(steps["evaluate"](
                model=train.outputs["model"], examples=ingest.outputs["examples"],
                baseline_model=f"{registry}/{model_name}", thresholds=thresholds,
                dataset_config=dataset_config, new_data=new_data), "evaluate")
            evaluate.set_display_name("Analyse and bless model")

            def publish():
                push = configured(steps["push"](
                    model=train.outputs["model"], evaluation=evaluate.outputs["evaluation"],
                    registry=registry, model_name=model_name, dataset_config=dataset_config,
                    pipeline_images=pipeline_images, new_data=new_data), "push")
                push.set_display_name("Publish to model registry (if blessed)")
                return push

            def deploy(push):
                task = configured(steps["deploy"](
                    registry=registry, model_name=model_name,
                    version=push.outputs["model_version"], pushed=push.outputs["pushed"],
                    strategy="canary", canary_percent=canary_percent, target=deploy_target,
                    namespace=serving_namespace, service_account=serving_account,
                    payload_log_url=serving_log_url,
                    new_data=new_data), "deploy")
                task.set_display_name("Deploy as canary (if pushed)")

            if gates == "in-step":
                deploy(publish())
                return
            with dsl.If(evaluate.outputs["blessed"] == True, name="blessed"):  # noqa: E712
                push = publish()
                with dsl.If(push.outputs["pushed"] == True, name="pushed"):  # noqa: E712
                    deploy(push)

        if gates == "in-step":
            after_ingest()
            return
        with dsl.If(new_data == True, name="new-data"):  # noqa: E712
            after_ingest()

    return training_pipeline


def compile_pipeline(output: str, **options) -> str:
    from kfp import compiler

    compiler.Compiler().compile(build_pipeline(**options), package_path=output)
    return output
