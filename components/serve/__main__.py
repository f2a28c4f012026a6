"""`python -m components.serve`: serve a registry model over REST and gRPC (see README.md)."""

from __future__ import annotations

import argparse
import signal
import threading

from components.common.cli import (
    StepArgumentParser,
    add_dataset_config,
    end_process,
    optional_str,
    run_step,
)
from components.serve.service import MAX_REQUEST_BYTES


def _number(kind, minimum, what: str):
    """An argparse type whose bad value reads `not a positive number: 'x'`."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value < minimum or value != value:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}")
        return value

    return parse


def _positive(kind):
    return _number(kind, 1 if kind is int else 1e-9,
                   "a positive integer" if kind is int else "a positive number")


def build_parser() -> StepArgumentParser:
    parser = StepArgumentParser(
        "serve",
        description="Serve every deployed version of <model-name> from the registry with "
                    "TensorFlow Serving's REST and gRPC APIs, a traffic split between them, and "
                    "hot reload when the deployment record changes.",
    )
    parser.add_argument("--registry", required=True,
                        help="model registry: a directory or s3://bucket/prefix")
    parser.add_argument("--model-name", required=True, help="the model's name in the registry")
    parser.add_argument("--rest-port", type=int, default=8501, help="REST port (default 8501)")
    parser.add_argument("--grpc-port", type=int, default=8500,
                        help="gRPC port (default 8500; 0 picks a free one, -1 disables gRPC)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; 0.0.0.0 in a container)")
    parser.add_argument("--poll-seconds", type=_positive(float), default=0.5,
                        help="how often to re-read deployment.json/index.json (default 0.5)")
    parser.add_argument("--log-store", type=optional_str, default=None,
                        help="write every prediction as JSON lines under "
                             "<log-store>/<model-name>/predictions/ (a directory or s3://...)")
    parser.add_argument("--max-request-bytes", type=_positive(int), default=MAX_REQUEST_BYTES,
                        help="the largest request, REST body or gRPC message (default "
                             f"{MAX_REQUEST_BYTES}: 10,000 rows of about 1.6 KB); larger REST "
                             "bodies get 413, larger gRPC messages RESOURCE_EXHAUSTED")
    parser.add_argument("--keep-previous-seconds", type=_number(float, 0, "a number >= 0"),
                        default=600.0,
                        help="a version the deployment no longer lists stays loaded this long, "
                             "so a rollback to it needs no reload (default 600; 0: unload at "
                             "once)")
    parser.add_argument("--request-timeout-seconds", type=_positive(float), default=30.0,
                        help="a REST request must arrive in full within this time, else 408 "
                             "(default 30)")
    parser.add_argument("--idle-timeout-seconds", type=_positive(float), default=60.0,
                        help="an idle keep-alive REST connection is closed after it "
                             "(default 60)")
    parser.add_argument("--max-connections", type=_positive(int), default=512,
                        help="REST connections open at once, stalled ones included; more are "
                             "answered 503 (default 512)")
    parser.add_argument("--workers", type=_positive(int), default=16,
                        help="threads answering REST requests, and gRPC calls (default 16)")
    add_dataset_config(parser)  # its privacy section: what the prediction log keeps
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from components.common.dataset_config import load_dataset_config
    from components.serve.prediction_log import Redaction
    from components.serve.server import ModelServer, RestLimits

    redaction = Redaction.from_config(load_dataset_config(args.dataset_config))

    server = ModelServer(
        args.registry, args.model_name, host=args.host, rest_port=args.rest_port,
        grpc_port=None if args.grpc_port < 0 else args.grpc_port,
        poll_seconds=args.poll_seconds, log_store=args.log_store, log_redaction=redaction,
        keep_previous_seconds=args.keep_previous_seconds,
        limits=RestLimits(max_request_bytes=args.max_request_bytes,
                          request_timeout=args.request_timeout_seconds,
                          idle_timeout=args.idle_timeout_seconds,
                          max_connections=args.max_connections, workers=args.workers),
    ).start(wait=False)  # /healthz answers at once, /readyz once the versions are loaded
    print(f"REST http://{args.host}:{server.rest_port} gRPC {args.host}:{server.grpc_port}",
          flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    end_process(run_step("serve", main))
