"""`python -m components.trigger`: new data starts a run (see README.md)."""

from __future__ import annotations

import json
import signal
import threading

from components.common.cli import StepArgumentParser, end_process, run_step


def build_parser() -> StepArgumentParser:
    parser = StepArgumentParser(
        "trigger",
        description="Watch source prefixes (and the store's incoming/) for objects the data "
                    "store has not ingested, and start exactly one pipeline run per new "
                    "object: the local runner or a Kubeflow Pipelines run.",
    )
    parser.add_argument("--source", action="append", default=[], metavar="PREFIX",
                        help="directory or s3:// prefix new CSV files arrive under (repeat for "
                             "several); the store's incoming/ is always watched")
    parser.add_argument("--store", required=True,
                        help="the data store (directory or s3:// prefix): what was ingested, "
                             "and the trigger's own state (trigger/)")
    parser.add_argument("--run", required=True, choices=["local", "kfp"],
                        help="local: pipeline.py --run local (waited for); kfp: a run of the "
                             "compiled package on a Kubeflow Pipelines backend")
    parser.add_argument("--interval", type=float, default=60.0,
                        help="seconds between polls (default 60)")
    parser.add_argument("--once", action="store_true", help="poll once and exit")
    parser.add_argument("--status", action="store_true",
                        help="print every claim in the store (JSON lines) and exit")
    parser.add_argument("--stale-minutes", type=float, default=60.0,
                        help="report a claim without a recorded run after this long (default 60)")
    parser.add_argument("--local-command", default=None, metavar="COMMAND",
                        help="--run local: the command a run is (default: .venv-sdk's python "
                             "pipeline.py --run local); --source and --workdir are appended")
    parser.add_argument("--host", default=None,
                        help="--run kfp: the KFP API URL (in a cluster: "
                             "http://ml-pipeline.kubeflow:8888)")
    parser.add_argument("--package", default=None,
                        help="--run kfp: the compiled package (pipeline.py --compile), a path "
                             "or an s3:// URI")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="--run kfp: another pipeline parameter (source and data_store are "
                             "set by the trigger)")
    parser.add_argument("--namespace", default=None,
                        help="--run kfp: the profile namespace of a multi-user Kubeflow")
    parser.add_argument("--experiment-id", default=None,
                        help="--run kfp: an existing experiment's id (default: KFP's default)")
    parser.add_argument("--run-name-prefix", default="cfpb-continuous-training",
                        help="--run kfp: runs are named '<prefix> <dataset version>'")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from components.common import storage
    from components.common.errors import StepError
    from components.trigger import runners
    from components.trigger.trigger import Trigger, status

    if args.status:
        for claim in status(args.store):
            print(json.dumps(claim, sort_keys=True))
        return 0
    if args.interval <= 0:
        raise StepError("--interval must be positive")
    if args.run == "kfp":
        if not (args.host and args.package):
            raise StepError("--run kfp needs --host and --package")
        start = runners.KfpRunner(args.host, args.package, args.store, args.param,
                                  namespace=args.namespace, experiment_id=args.experiment_id,
                                  run_name_prefix=args.run_name_prefix)
    else:
        given = [flag for flag, value in (("--host", args.host), ("--package", args.package),
                                          ("--param", args.param)) if value]
        if given:
            raise StepError(f"{', '.join(given)}: only with --run kfp")
        start = runners.LocalRunner(args.store, args.local_command)
    if storage.is_s3(args.store):
        storage.check_exclusive_create(storage.join(args.store, "trigger"))
    trigger = Trigger(args.source, args.store, start, stale_minutes=args.stale_minutes)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while True:
        started = trigger.poll()
        for run in started:
            print(json.dumps(run, sort_keys=True), flush=True)
        if args.once or stop.wait(args.interval):
            return 1 if any(r["state"] == "failed" for r in started) else 0


if __name__ == "__main__":
    end_process(run_step("trigger", main))
