"""Each step's two interfaces agree: its `component.yaml` (what Kubeflow passes) and its CLI.

Every input and output of a spec is passed as the flag of the same name in kebab-case, every
CLI flag is reachable from the spec, and a spec's default means what the CLI does when the flag
is absent (an empty default is "not given: use the dataset config", never a second default).
"""

from __future__ import annotations

import importlib

import pytest
import yaml

from components.common import build_facts
from tests.conftest import ROOT

STEPS = build_facts.pipeline_steps()
PLACEHOLDERS = ("inputValue", "inputPath", "outputPath")
# Flags for a person at a terminal, which a pipeline run has no use for.
CLI_ONLY = {
    "deploy": {"--dry-run", "--record"},  # review a rollout before it happens
    "tune": {"--dry-run"},  # review the Katib Experiment before it runs
}


def spec_of(step: str) -> dict:
    return yaml.safe_load((ROOT / "components" / step / "component.yaml").read_text())


def parser_of(step: str):
    return importlib.import_module(f"components.{step}.__main__").build_parser()


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def passed_flags(spec: dict) -> dict[str, tuple[str, str]]:
    """flag -> (placeholder kind, input/output name) as the spec's args pass them."""
    args = []
    for arg in spec["implementation"]["container"]["args"]:
        if isinstance(arg, dict) and "if" in arg:
            args += arg["if"]["then"]
        else:
            args.append(arg)
    passed = {}
    for flag, value in zip(args, args[1:], strict=False):
        if isinstance(flag, str) and flag.startswith("--") and isinstance(value, dict):
            ((kind, name),) = value.items()
            passed[flag] = (kind, name)
    return passed


def required_cli_args(parser) -> list[str]:
    """Values for the CLI's required flags, so a parse reaches the defaults."""
    out = []
    for action in parser._actions:
        if action.required:
            out += [action.option_strings[0], "1" if action.type is int else "x"]
    return out


@pytest.mark.parametrize("step", STEPS)
def test_every_input_and_output_is_the_flag_of_its_name(step):
    spec = spec_of(step)
    passed = passed_flags(spec)
    names = {flag_of(i["name"]): i["name"] for i in spec.get("inputs", [])}
    assert passed.pop("--executor-input") == ("executorInput", None)
    for flag, (kind, name) in passed.items():
        assert kind in PLACEHOLDERS, f"{step}: {flag}: {kind}"
        if flag != flag_of(name):
            # The step's main output directory is --output, whatever the artifact's name.
            assert flag == "--output" and kind == "outputPath", f"{step}: {flag} passes {name}"
    inputs_passed = {name for kind, name in passed.values() if kind != "outputPath"}
    assert inputs_passed == set(names.values()), f"{step}: inputs never passed"
    parameters = {o["name"] for o in spec.get("outputs", [])
                  if o["type"] in ("String", "Integer", "Float", "Boolean")}
    artifacts = {o["name"]: o["type"] for o in spec.get("outputs", [])
                 if o["name"] not in parameters}
    passed_paths = {name for kind, name in passed.values() if kind == "outputPath"}
    # Parameters go through the executor output, never a path flag; artifacts get a path,
    # except Metrics, which are metadata only (also through the executor output).
    assert not passed_paths & parameters
    assert {n for n, t in artifacts.items() if n not in passed_paths} <= {
        n for n, t in artifacts.items() if t == "Metrics"}


@pytest.mark.parametrize("step", STEPS)
def test_every_cli_flag_is_in_the_spec_and_back(step):
    spec = spec_of(step)
    parser = parser_of(step)
    cli_flags = {opt for action in parser._actions for opt in action.option_strings
                 if opt.startswith("--") and opt != "--help"}
    in_spec = set(passed_flags(spec)) | CLI_ONLY.get(step, set())
    assert cli_flags == in_spec, (f"{step}: CLI only {sorted(cli_flags - in_spec)}, "
                                  f"spec only {sorted(in_spec - cli_flags)}")
    assert spec["implementation"]["container"]["command"] == ["python", "-m",
                                                               f"components.{step}"]
    assert spec["name"] == step


@pytest.mark.parametrize("step", STEPS)
def test_spec_defaults_mean_what_the_cli_does_without_the_flag(step):
    spec = spec_of(step)
    parser = parser_of(step)
    base = required_cli_args(parser)
    without = vars(parser.parse_args(base))
    inputs = {i["name"]: i for i in spec.get("inputs", [])}
    passed = passed_flags(spec)
    for flag, (kind, name) in passed.items():
        if kind != "inputValue" or "default" not in inputs[name]:
            continue
        if flag in base:
            continue
        with_default = vars(parser.parse_args([*base, flag, str(inputs[name]["default"])]))
        dest = flag[2:].replace("-", "_")
        assert with_default[dest] == without[dest], (
            f"{step}: the spec's default {inputs[name]['default']!r} for {name} gives "
            f"{with_default[dest]!r}, the CLI without {flag} gives {without[dest]!r}")


def test_eval_fraction_not_given_is_the_dataset_configs(tmp_path):
    """A pipeline run that does not set eval_fraction uses split.eval_fraction of the config."""
    from components.common.dataset_config import load_dataset_config
    from components.ingest.ingest import IngestOptions, ingest

    spec_default = next(i for i in spec_of("ingest")["inputs"]
                        if i["name"] == "eval_fraction")["default"]
    args = parser_of("ingest").parse_args(["--source", "s", "--output", "o", "--eval-fraction",
                                           spec_default])
    config = load_dataset_config()
    custom = tmp_path / "config.yaml"
    custom.write_text((build_facts.COMPONENTS / "common" / "configs" / "cfpb.yaml").read_text()
                      .replace("eval_fraction: 0.1", "eval_fraction: 0.3"))
    config = load_dataset_config(str(custom))
    assert config.eval_fraction == 0.3
    metadata = ingest(str(ROOT / "tests" / "data" / "cfpb_2013_sample.csv"), str(tmp_path / "ex"),
                      config, IngestOptions(eval_fraction=args.eval_fraction))
    assert metadata["split"]["eval_fraction"] == 0.3
    assert 0.2 < metadata["rows"]["eval"] / metadata["rows"]["kept"] < 0.4
