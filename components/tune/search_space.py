"""The search space: one YAML file in Katib's own parameter vocabulary, for both backends.

    parameters:
    - name: learning_rate            # a key `train --hparams` accepts
      parameterType: double          # double | int | categorical | discrete
      feasibleSpace: {min: "0.0003", max: "0.01", distribution: logUniform}
    - name: hidden_units
      parameterType: categorical
      feasibleSpace: {list: ["64,32", "128,64", "32"]}

Everything is checked before anything starts: unknown keys, empty or reversed ranges, types
that do not fit the hyperparameter, values `train` would refuse (each bound and list value goes
through `parse_hparams`). Numbers may be written as YAML numbers or strings (Katib's form).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from components.common.errors import StepError
from components.common.hparams import DEFAULTS, kind_of, parse_hparams

TYPES = ("double", "int", "categorical", "discrete")
DISTRIBUTIONS = ("uniform", "logUniform")
SPACE_KEYS = ("min", "max", "step", "list", "distribution")
# Which parameter types fit each hyperparameter (by the type of its default).
FITTING = {float: ("double", "discrete"), int: ("int", "discrete"), list: ("categorical",),
           str: ("categorical",)}


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str
    min: float | None = None
    max: float | None = None
    step: float | None = None
    values: tuple | None = None  # categorical / discrete
    distribution: str = "uniform"

    def to_katib(self) -> dict:
        """The ParameterSpec of a Katib Experiment (feasibleSpace values are strings)."""
        space: dict = {}
        if self.values is not None:
            space["list"] = [str(v) for v in self.values]
        else:
            space["min"], space["max"] = _text(self.min), _text(self.max)
            if self.step is not None:
                space["step"] = _text(self.step)
            if self.distribution != "uniform":
                space["distribution"] = self.distribution
        return {"name": self.name, "parameterType": self.type, "feasibleSpace": space}

    def value(self, raw):
        """A trial's value for this parameter as `train --hparams` takes it."""
        if self.type == "int" or (self.type == "discrete" and kind_of(self.name) is int):
            return int(float(raw))
        if self.type in ("double", "discrete"):
            return float(raw)
        return str(raw)


def _text(number: float | None) -> str:
    if number is None:
        return ""
    return str(int(number)) if float(number).is_integer() else repr(float(number))


def _number(value, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise StepError(f"{where}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise StepError(f"{where}: expected a finite number, got {value!r}")
    return number


def parse(raw, source: str) -> list[Parameter]:
    """The parameters of a search space document; StepError naming the file and the key."""
    if isinstance(raw, dict):
        unknown = sorted(set(raw) - {"parameters"})
        if unknown:
            raise StepError(f"{source}: unknown key(s) {unknown}; expected 'parameters'")
        raw = raw.get("parameters")
    if not isinstance(raw, list) or not raw:
        raise StepError(f"{source}: expected a non-empty list of parameters (under "
                        "'parameters:')")
    parameters, seen = [], set()
    for index, item in enumerate(raw):
        where = f"{source}: parameters[{index}]"
        if not isinstance(item, dict):
            raise StepError(f"{where}: expected a mapping with name, parameterType, "
                            "feasibleSpace")
        unknown = sorted(set(item) - {"name", "parameterType", "feasibleSpace"})
        if unknown:
            raise StepError(f"{where}: unknown key(s) {unknown}")
        name = item.get("name")
        if name not in DEFAULTS:
            raise StepError(f"{where}: {name!r} is not a hyperparameter train accepts "
                            f"(known: {', '.join(sorted(DEFAULTS))})")
        where = f"{source}: {name}"
        if name in seen:
            raise StepError(f"{where}: listed twice")
        seen.add(name)
        parameters.append(_parameter(name, item.get("parameterType"),
                                     item.get("feasibleSpace"), where))
    return parameters


def _parameter(name: str, kind, space, where: str) -> Parameter:
    if kind not in TYPES:
        raise StepError(f"{where}: parameterType {kind!r}; expected one of {', '.join(TYPES)}")
    fitting = FITTING[kind_of(name)]
    if kind not in fitting:
        raise StepError(f"{where}: parameterType {kind} does not fit this hyperparameter "
                        f"(use {' or '.join(fitting)})")
    if not isinstance(space, dict) or not space:
        raise StepError(f"{where}: feasibleSpace must be a mapping")
    unknown = sorted(set(space) - set(SPACE_KEYS))
    if unknown:
        raise StepError(f"{where}: feasibleSpace: unknown key(s) {unknown}")
    if kind in ("categorical", "discrete"):
        if set(space) != {"list"}:
            raise StepError(f"{where}: a {kind} parameter takes feasibleSpace.list only")
        values = space["list"]
        if not isinstance(values, list) or not values:
            raise StepError(f"{where}: feasibleSpace.list must be a non-empty list")
        if len({str(v) for v in values}) != len(values):
            raise StepError(f"{where}: feasibleSpace.list has duplicates")
        if kind == "discrete":
            values = [_number(v, f"{where}: feasibleSpace.list") for v in values]
        parameter = Parameter(name, kind, values=tuple(values))
        for value in values:
            _check_value(parameter, value, where)
        return parameter
    if "list" in space:
        raise StepError(f"{where}: a {kind} parameter takes min/max (and step), not a list")
    if "min" not in space or "max" not in space:
        raise StepError(f"{where}: feasibleSpace needs min and max")
    low = _number(space["min"], f"{where}: feasibleSpace.min")
    high = _number(space["max"], f"{where}: feasibleSpace.max")
    if low >= high:
        raise StepError(f"{where}: empty range: min {low:g} is not below max {high:g}")
    step = None
    if space.get("step") not in (None, ""):
        step = _number(space["step"], f"{where}: feasibleSpace.step")
        if step <= 0 or step > high - low:
            raise StepError(f"{where}: feasibleSpace.step {step:g} must be > 0 and at most "
                            f"max - min ({high - low:g})")
    if kind == "int":
        for label, number in (("min", low), ("max", high), ("step", step)):
            if number is not None and not float(number).is_integer():
                raise StepError(f"{where}: feasibleSpace.{label} {number:g} is not an integer")
    distribution = space.get("distribution") or "uniform"
    if distribution not in DISTRIBUTIONS:
        raise StepError(f"{where}: distribution {distribution!r}; expected one of "
                        f"{', '.join(DISTRIBUTIONS)}")
    if distribution == "logUniform" and low <= 0:
        raise StepError(f"{where}: a logUniform range must be above 0, got min {low:g}")
    parameter = Parameter(name, kind, min=low, max=high, step=step, distribution=distribution)
    for value in (low, high):
        _check_value(parameter, value, where)
    return parameter


def _check_value(parameter: Parameter, raw, where: str) -> None:
    """The value must be one `train --hparams` accepts."""
    import json

    value = parameter.value(raw)
    try:
        parse_hparams(json.dumps({parameter.name: value}))
    except StepError as exc:
        raise StepError(f"{where}: {raw!r} is not a value train accepts "
                        f"({str(exc).removeprefix('--hparams: ')})") from None


def load(uri: str) -> list[Parameter]:
    from components.common import documents

    return parse(documents.read_yaml(uri, "search space"), uri)


def assignment_hparams(parameters: list[Parameter], assignment: dict, base: dict) -> dict:
    """The full hyperparameters of a trial: `base` with the trial's values."""
    by_name = {p.name: p for p in parameters}
    return {**base, **{name: by_name[name].value(raw) for name, raw in assignment.items()}}
