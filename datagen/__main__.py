"""CLI: `python -m datagen --rows N --seed S --out file.csv`.

A plain command so the demo, tests and benchmarks can make the same data anywhere.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence

from components.common.cli import StepArgumentParser, end_process, positive_int, run_step
from components.common.errors import StepError

log = logging.getLogger("datagen")



def _open_unit_rate(text: str) -> float:
    value = _float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {value}")
    return value


def _blank_rate(text: str) -> float:
    value = _float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = StepArgumentParser(
        "datagen", prog="python -m datagen",
        description="Write deterministic synthetic CFPB complaints in the official CSV export "
                    "format (multi-line narratives, masked ZIPs, blank labels, a noisy but "
                    "learnable 'Consumer disputed?' label).",
    )
    parser.add_argument("--rows", type=positive_int, required=True,
                        help="number of complaints to write (at least 1)")
    parser.add_argument("--seed", type=int, required=True,
                        help="random seed; the same rows, seed and rates give identical bytes")
    parser.add_argument("--out", required=True,
                        help="output CSV path (parent folders are created), or - for stdout")
    parser.add_argument("--disputed-rate", type=_open_unit_rate, default=0.25,
                        help="share of 'Yes' among labelled rows, in (0, 1) (default 0.25)")
    parser.add_argument("--blank-label-rate", type=_blank_rate, default=0.03,
                        help="share of rows with a blank (unknown) label, in [0, 1) "
                             "(default 0.03)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from datagen.vocabulary import VocabularyError

    try:
        from datagen.generator import write_complaints  # after argument checks
    except VocabularyError as exc:  # an edited vocabulary file: one line naming file and key
        raise StepError(str(exc)) from None

    started = time.perf_counter()

    def report(rows_done: int) -> None:
        elapsed = time.perf_counter() - started
        log.info("%d rows written, %.0f rows/s", rows_done, rows_done / max(elapsed, 1e-9))

    out = sys.stdout if args.out == "-" else args.out
    try:
        written = write_complaints(out, args.rows, args.seed,
                                   disputed_rate=args.disputed_rate,
                                   blank_label_rate=args.blank_label_rate,
                                   on_progress=report)
    except OSError as exc:
        raise StepError(f"cannot write {args.out}: {exc.strerror or exc}") from exc
    if out is sys.stdout:
        sys.stdout.flush()
    elapsed = time.perf_counter() - started
    log.info("wrote %s: %d rows in %.1f s (%.0f rows/s)", args.out, written, elapsed,
             written / max(elapsed, 1e-9))
    return 0


if __name__ == "__main__":
    end_process(run_step("datagen", main))
