"""How every step's `__main__` runs: logging set up once, user errors as one line, exit codes."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence

from components.common.errors import StepError

EXIT_USER_ERROR = 2


def setup_logging() -> None:
    """Log to stderr with timestamps; LOG_LEVEL overrides the default INFO."""
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run_step(name: str, main: Callable[[Sequence[str] | None], int | None],
             argv: Sequence[str] | None = None) -> int:
    """Run a step's main and turn a StepError into `error: <one line>` and exit code 2."""
    setup_logging()
    try:
        return int(main(argv) or 0)
    except StepError as exc:
        message = " ".join(str(exc).split())
        print(f"error: {name}: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
