"""`python -m components.serve`: serve a registry model over REST and gRPC (see README.md)."""

from __future__ import annotations

import signal
import sys
import threading

from components.common.cli import StepArgumentParser, optional_str, run_step


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise ValueError(text)
        return value

    parse.__name__ = kind.__name__
    return parse


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
    parser.add_argument("--poll-seconds", type=_positive(float), default=2.0,
                        help="how often to re-read deployment.json/index.json (default 2)")
    parser.add_argument("--log-store", type=optional_str, default=None,
                        help="write every prediction as JSON lines under "
                             "<log-store>/<model-name>/predictions/ (a directory or s3://...)")
    parser.add_argument("--max-request-bytes", type=_positive(int), default=1 << 20,
                        help="larger REST bodies get 413 (default 1048576)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from components.serve.server import ModelServer

    server = ModelServer(
        args.registry, args.model_name, host=args.host, rest_port=args.rest_port,
        grpc_port=None if args.grpc_port < 0 else args.grpc_port,
        poll_seconds=args.poll_seconds, log_store=args.log_store,
        max_request_bytes=args.max_request_bytes,
    ).start()
    print(f"REST http://{args.host}:{server.rest_port} gRPC {args.host}:{server.grpc_port}",
          flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(run_step("serve", main))
