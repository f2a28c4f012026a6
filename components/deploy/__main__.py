"""`python -m components.deploy`: deploy a registry version (see README.md)."""

from __future__ import annotations

from components.common.cli import (
    StepArgumentParser,
    add_executor_input,
    end_process,
    optional_int,
    optional_str,
    parse_bool,
    run_step,
)

STRATEGIES = ("canary", "promote", "rollback")
TARGETS = ("local", "kserve")



def build_parser() -> StepArgumentParser:
    parser = StepArgumentParser(
        "deploy",
        description="Serve version N of <model-name> from the model registry by a strategy: "
                    "canary (N gets --canary-percent of the traffic), promote (N gets 100%%) "
                    "or rollback (the previous deployment). Target local updates the registry's "
                    "deployment.json (watched by components.serve) and writes TF Serving's "
                    "model_config; target kserve creates or patches an InferenceService and "
                    "waits until it is Ready (the step fails if it is not). A model that was "
                    "not pushed (--pushed false or --version 0) is skipped (exit 0).",
    )
    parser.add_argument("--registry", required=True,
                        help="model registry: a directory or s3://bucket/prefix")
    parser.add_argument("--model-name", required=True, help="the model's name in the registry")
    parser.add_argument("--version", type=optional_int, default=None, metavar="N",
                        help="registry version to deploy (required for canary and promote; "
                             "0 means not pushed: skip)")
    parser.add_argument("--strategy", choices=STRATEGIES, default="canary")
    parser.add_argument("--canary-percent", type=int, default=10, metavar="P",
                        help="percent of the traffic for a canary (0..100, default 10)")
    parser.add_argument("--target", choices=TARGETS, default="local")
    parser.add_argument("--pushed", type=parse_bool, default=True, metavar="true|false",
                        help="push's `pushed` output; false skips the step (default true)")
    parser.add_argument("--namespace", type=optional_str, default=None,
                        help="kserve: namespace of the InferenceService (default: the pod's "
                             "namespace, else 'default')")
    parser.add_argument("--service-name", type=optional_str, default=None,
                        help="kserve: InferenceService name (default: the model name)")
    parser.add_argument("--storage-uri-prefix", type=optional_str, default=None,
                        metavar="URI",
                        help="kserve: where the per-version serving views live "
                             "(<prefix>/<model>/serving/<N>/<N>/); default: the registry")
    parser.add_argument("--service-account", type=optional_str, default=None,
                        help="kserve: ServiceAccount whose Secret holds the storage credentials")
    parser.add_argument("--payload-log-url", type=optional_str, default=None, metavar="URL",
                        help="kserve: KServe's payload logger sends every request and answer "
                             "here (the serve image's log receiver, e.g. "
                             "http://cfpb-log-receiver:8080/v1/log), for the feedback step")
    parser.add_argument("--timeout-seconds", type=float, default=300.0,
                        help="kserve: how long to wait for Ready (default 300)")
    parser.add_argument("--output", type=optional_str, default=None, metavar="DIR",
                        help="write deploy.json (and model_config.pbtxt, deployment.json or "
                             "inferenceservice.json) here (the KFP `deployment` artifact)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print, as YAML, the next deployment record and what would be "
                             "created or patched (kserve), and change nothing")
    parser.add_argument("--record", type=optional_str, default=None, metavar="FILE",
                        help="--dry-run: start from this deployment record (a deployment.json) "
                             "instead of reading the current state; kserve then needs no cluster")
    add_executor_input(parser)
    return parser



def _print_dry_run(args, target) -> int:
    """The plan as YAML documents on stdout: the next record, then each request in order."""
    import yaml

    from components.common import documents
    from components.deploy.deploy import dry_run

    if not args.pushed or args.version == 0:
        print("# not pushed: nothing would be deployed")
        return 0
    record = documents.read_json(args.record, "deployment record") if args.record else None
    plan = dry_run(args.registry, args.model_name, args.version, args.strategy,
                   canary_percent=args.canary_percent, target=args.target,
                   kserve_target=target, record=record)
    docs = [{"deployment_record": plan["record"], "status": plan["status"]}]
    for action, body in plan["requests"]:
        docs.append({"action": action, "body": body})
    if plan.get("model_config"):
        docs.append({"tf_serving_model_config": plan["model_config"]})
    print(f"# dry run: {args.strategy} on target {args.target}; nothing was changed")
    print(yaml.safe_dump_all(docs, sort_keys=False), end="")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from components.common.errors import StepError
    from components.common.kfp_executor import ExecutorIO
    from components.deploy.deploy import deploy

    executor = ExecutorIO(args.executor_input)
    output = args.output or executor.output_path("deployment")
    target = None
    if args.target == "kserve":
        from components.common import kube
        from components.deploy.kserve import Target

        target = Target(namespace=args.namespace or kube.pod_namespace(),
                        name=args.service_name or args.model_name,
                        storage_uri_prefix=args.storage_uri_prefix or args.registry,
                        service_account=args.service_account,
                        payload_log_url=args.payload_log_url)
    if args.dry_run:
        return _print_dry_run(args, target)
    if args.record:
        raise StepError("--record is only for --dry-run (a deployment reads the current state)")
    result = deploy(args.registry, args.model_name, args.version, args.strategy,
                    canary_percent=args.canary_percent, target=args.target,
                    pushed=args.pushed, output=output, kserve_target=target,
                    timeout_seconds=args.timeout_seconds)
    executor.artifact("deployment", {
        key: result.get(key)
        for key in ("deployed", "status", "revision", "version", "strategy", "target",
                    "model_name", "traffic", "storage_uri", "inference_service")
        if result.get(key) is not None
    })
    executor.parameter("deployed", result["deployed"])
    executor.parameter("revision", result["revision"])
    executor.write()
    return 0


if __name__ == "__main__":
    end_process(run_step("deploy", main))
