"""All-or-nothing step outputs: build in a staging directory, move into place when complete.

A crash or an error leaves no half-written output a later step could mistake for a result,
and an output that already holds files is never overwritten.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator

from components.common.errors import StepError


def check_empty_output(output: str) -> None:
    if os.path.isfile(output):
        raise StepError(f"{output}: output exists and is a file, expected a directory")
    if os.path.isdir(output) and os.listdir(output):
        raise StepError(
            f"{output}: output directory is not empty; refusing to overwrite, choose a new one"
        )


@contextlib.contextmanager
def staged_output(output: str, last: str | None = None) -> Iterator[str]:
    """Yield a staging dir beside `output`; publish it on success, remove it on failure.

    `output` may not exist (renamed into place atomically) or be empty (as KFP creates it:
    entries are moved in, `last` at the end so its presence marks completeness).
    """
    check_empty_output(output)
    parent = os.path.dirname(os.path.abspath(output))
    try:
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.partial-", dir=parent)
    except OSError as exc:
        raise StepError(f"{output}: cannot create the output next to it: {exc.strerror}") from exc
    os.chmod(staging, 0o755)
    try:
        yield staging
        if os.path.isdir(output):
            for name in sorted(os.listdir(staging), key=lambda n: n == last):
                os.rename(os.path.join(staging, name), os.path.join(output, name))
            os.rmdir(staging)
        else:
            os.rename(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
