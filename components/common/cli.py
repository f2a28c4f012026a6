"""How every step's `__main__` runs: logging set up once, user errors as one line, exit codes."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from components.common.errors import StepError

EXIT_USER_ERROR = 2


class StepArgumentParser(argparse.ArgumentParser):
    """Bad arguments are one line a person can act on (`error: <step>: ...`), not a usage dump."""

    def __init__(self, step: str, prog: str | None = None, **kwargs):
        super().__init__(prog=prog or f"python -m components.{step}", **kwargs)
        self.step = step

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USER_ERROR, f"error: {self.step}: {message}\n")


def setup_logging() -> None:
    """Log to stderr with timestamps; LOG_LEVEL overrides the default INFO."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    import warnings

    warnings.filterwarnings("ignore", message=".*Google will stop supporting.*",
                            category=FutureWarning)
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


EXIT_UNEXPECTED = 1
MAX_MESSAGE = 500


def _one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= MAX_MESSAGE else line[:MAX_MESSAGE] + " ..."


class Terminated(BaseException):
    """SIGTERM (Kubernetes stopping the pod, kill): unwinds like Ctrl-C, so staged outputs are
    removed by their `finally` blocks instead of left half-written."""


def _terminate(signum, _frame):
    raise Terminated(signum)


def run_step(name: str, main: Callable[[Sequence[str] | None], int | None],
             argv: Sequence[str] | None = None) -> int:
    """Run a step's main; whatever happens the step ends with at most one line on stderr.

    StepError (a problem a person must fix): `error: <step>: <what and where>`, exit 2.
    Anything unexpected: `error: <step>: <type>: <message>`, exit 1, the traceback in the log
    at debug level (LOG_LEVEL=DEBUG). SIGTERM/SIGINT: outputs cleaned up, exit 143/130.
    """
    import logging
    import signal

    setup_logging()
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(main(argv) or 0)
    except StepError as exc:
        print(f"error: {name}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (KeyboardInterrupt, Terminated) as exc:
        signum = exc.args[0] if isinstance(exc, Terminated) else signal.SIGINT
        print(f"error: {name}: stopped by {signal.Signals(signum).name}; nothing was "
              "published", file=sys.stderr)
        return 128 + signum
    except Exception as exc:
        logging.getLogger(f"components.{name}").debug("unexpected failure", exc_info=True)
        print(f"error: {name}: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return EXIT_UNEXPECTED


def end_process(code: int) -> NoReturn:
    """Exit with `code` without Python's interpreter teardown: after TensorFlow is imported,
    unloading its thousands of modules takes ~0.8 s of every step's run (measured in the step
    images), work that a process about to end does not need. What a normal exit guarantees is
    kept: atexit handlers run (logging flushed, weakref finalizers such as temporary directory
    removal) and stdout/stderr are flushed. Every output is written and closed by the step
    before this (staged outputs are published in their `with` blocks). Under a profiler or a
    debugger the exit is a normal one, so that it can write what it collected."""
    if sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(code)
    import atexit
    import contextlib

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed or broken: nothing left to say
            stream.flush()
    os._exit(code)


def parse_bool(value: str | bool) -> bool:
    """KFP passes Boolean inputs as `true`/`false` strings; people type yes/no/1/0 too.
    An argparse type: a bad value is the one-line usage error `not a boolean: 'x'`."""
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in ("true", "1", "yes", "y", "on"):
        return True
    if lowered in ("false", "0", "no", "n", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"not a boolean: {value!r}")


def optional_str(value: str) -> str | None:
    """Empty strings from KFP default parameters mean 'not given'."""
    return value or None


def optional_float(value: str) -> float | None:
    """A number, or "" (a KFP default) for 'not given: use the configuration'."""
    if not value.strip():
        return None
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None


def _whole_number(value: str, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {number}")
    return number


def positive_int(value: str) -> int:
    """A whole number of at least 1 (counts, sizes)."""
    return _whole_number(value, 1)


def non_negative_int(value: str) -> int:
    """A whole number of at least 0 (limits where 0 turns a behaviour off)."""
    return _whole_number(value, 0)


def optional_int(value: str) -> int | None:
    """A whole number, or "" (a KFP default) for 'not given'."""
    if not value.strip():
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None


def add_executor_input(parser) -> None:
    parser.add_argument(
        "--executor-input", default=None, metavar="JSON",
        help="KFP executor input ({{$}}); when given, outputs are also reported through the "
             "executor output file it names (set by the component spec, not by hand)",
    )


def add_report_copy(parser) -> None:
    parser.add_argument("--report", type=optional_str, default=None,
                        help="also copy report.html to this file (the KFP HTML artifact)")


def copy_to_output(source: str, destination: str | None) -> None:
    """Copy a file to a KFP output path (its directory may not exist yet); None: nothing."""
    if destination:
        import shutil

        os.makedirs(os.path.dirname(os.path.abspath(destination)), exist_ok=True)
        shutil.copyfile(source, destination)


def add_metrics_output(parser, what: str) -> None:
    parser.add_argument("--metrics", type=optional_str, default=None,
                        help=f"also write {what} as JSON here (the KFP Metrics file)")


def add_dataset_config(parser) -> None:
    parser.add_argument(
        "--dataset-config", type=optional_str, default=None,
        help="dataset config YAML: a path, an s3:// URI or a built-in name (default: cfpb)",
    )
