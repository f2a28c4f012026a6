"""The no-new-data gate of a pipeline step: run the step, or skip it and say so.

    python -m components.common.gate --new-data true|false --skip-outputs '{"blessed": false}' \
        -- python -m components.<step> <the step's own arguments>

The pipeline definition wraps every task after ingest in this (orchestration/definition.py), so
the rule "a run whose data the store already has does nothing" holds where conditions cannot
run (kfp.local: a `dsl.If` on a task output is silently skipped there) and, redundantly, inside
the cluster package's `dsl.If`. With new data the gate replaces itself with the step's process
(`os.execv`: the same arguments, exit code and signals, nothing imported). Without, the step does
not start: the gate writes the step's executor output (the file its `--executor-input` names)
with every output artifact's metadata `{"skipped": "no new data"}` and every output parameter at
its skip value from `--skip-outputs` (false, 0, ""), and prints `skipped: no new data`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Sequence

from components.common.cli import StepArgumentParser, end_process, parse_bool, run_step
from components.common.errors import StepError

SKIPPED = "no new data"
SKIPPED_KEY = "skipped"


def build_parser() -> StepArgumentParser:
    parser = StepArgumentParser(
        "gate", prog="python -m components.common.gate",
        description="Run the step after `--` when --new-data is true; otherwise skip it, "
                    "reporting its outputs as skipped.")
    parser.add_argument("--new-data", type=parse_bool, required=True,
                        help="ingest's new_data output")
    parser.add_argument("--skip-outputs", default="{}", metavar="JSON",
                        help="the value of each output parameter when the step is skipped")
    return parser


def split_command(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the gate's own arguments, the step's command) around the first `--`."""
    argv = list(argv)
    if "--" not in argv:
        raise StepError("no step command: put it after `--`")
    cut = argv.index("--")
    command = argv[cut + 1:]
    if not command:
        raise StepError("the step command after `--` is empty")
    return argv[:cut], command


def _executor_input(command: Sequence[str]) -> str | None:
    for flag, value in zip(command, command[1:], strict=False):
        if flag == "--executor-input":
            return value
    return None


def skip(command: Sequence[str], skip_outputs: dict) -> dict:
    """Report the step's outputs as skipped through its executor output; returns what was
    reported (artifact metadata by name, parameters)."""
    from components.common.kfp_executor import ExecutorIO

    executor = ExecutorIO(_executor_input(command))
    artifacts, parameters = executor.declared_outputs()
    missing = [name for name in parameters if name not in skip_outputs]
    if missing:
        raise StepError(f"no skip value for output parameter(s) {', '.join(missing)} "
                        "(--skip-outputs)")
    for name in artifacts:
        executor.artifact(name, {SKIPPED_KEY: SKIPPED})
    for name in parameters:
        executor.parameter(name, skip_outputs[name])
    executor.write()
    return {"artifacts": artifacts, "parameters": {n: skip_outputs[n] for n in parameters}}


def main(argv: Sequence[str] | None = None) -> int:
    own, command = split_command(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(own)
    try:
        skip_outputs = json.loads(args.skip_outputs)
    except json.JSONDecodeError as exc:
        raise StepError(f"--skip-outputs is not valid JSON: {exc}") from exc
    if not isinstance(skip_outputs, dict):
        raise StepError("--skip-outputs must be a JSON object")
    if args.new_data:
        program = shutil.which(command[0]) or command[0]
        if command[0] in ("python", "python3"):
            program = sys.executable  # the interpreter of this image's environment
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(program, [program, *command[1:]])
    skip(command, skip_outputs)
    step = next((part.rsplit(".", 1)[-1] for part in command if part.startswith("components.")),
                command[0])
    print(f"{step}: skipped: {SKIPPED} (the store already holds this dataset version)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    end_process(run_step("gate", main))
