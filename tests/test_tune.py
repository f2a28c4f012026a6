"""The tune step's search space and command line: errors before anything starts, one line each;
tuning off passes the hyperparameters through; the outputs train takes unchanged."""

from __future__ import annotations

import json

import pytest
import yaml

from components.common.errors import StepError
from components.common.hparams import DEFAULTS, parse_hparams
from components.tune import search_space
from components.tune.tune import DEFAULT_SEARCH_SPACE


def parse(parameters):
    return search_space.parse({"parameters": parameters}, "space.yaml")


def test_the_built_in_search_space_is_valid():
    names = {p.name for p in search_space.load(DEFAULT_SEARCH_SPACE)}
    assert names and names <= set(DEFAULTS)


def test_katib_vocabulary_and_types():
    (rate, units, dim, drop) = parse([
        {"name": "learning_rate", "parameterType": "double",
         "feasibleSpace": {"min": 0.0001, "max": "0.01", "distribution": "logUniform"}},
        {"name": "hidden_units", "parameterType": "categorical",
         "feasibleSpace": {"list": ["64,32", "16"]}},
        {"name": "embedding_dim", "parameterType": "int",
         "feasibleSpace": {"min": "4", "max": 32, "step": 4}},
        {"name": "dropout", "parameterType": "discrete", "feasibleSpace": {"list": ["0.1", 0.3]}},
    ])
    assert (rate.min, rate.max, rate.distribution) == (0.0001, 0.01, "logUniform")
    assert units.values == ("64,32", "16") and dim.step == 4 and drop.values == (0.1, 0.3)
    # Katib's form: every feasibleSpace value a string
    assert dim.to_katib() == {"name": "embedding_dim", "parameterType": "int",
                              "feasibleSpace": {"min": "4", "max": "32", "step": "4"}}
    hparams = search_space.assignment_hparams(
        [rate, units, dim, drop],
        {"learning_rate": "0.002", "hidden_units": "64,32", "embedding_dim": "8",
         "dropout": "0.3"}, DEFAULTS)
    assert parse_hparams(json.dumps(hparams))["hidden_units"] == [64, 32]
    assert hparams["embedding_dim"] == 8 and isinstance(hparams["embedding_dim"], int)


@pytest.mark.parametrize(("parameter", "message"), [
    ({"name": "learnin_rate", "parameterType": "double", "feasibleSpace": {"min": 0, "max": 1}},
     "'learnin_rate' is not a hyperparameter train accepts"),
    ({"name": "learning_rate", "parameterType": "double",
      "feasibleSpace": {"min": "0.01", "max": "0.001"}},
     "learning_rate: empty range: min 0.01 is not below max 0.001"),
    ({"name": "epochs", "parameterType": "double", "feasibleSpace": {"min": 1, "max": 5}},
     "epochs: parameterType double does not fit this hyperparameter (use int or discrete)"),
    ({"name": "embedding_dim", "parameterType": "int",
      "feasibleSpace": {"min": "4", "max": "8.5"}}, "feasibleSpace.max 8.5 is not an integer"),
    ({"name": "dropout", "parameterType": "double", "feasibleSpace": {"min": 0, "max": 1}},
     "dropout: 1.0 is not a value train accepts"),
    ({"name": "hidden_units", "parameterType": "categorical",
      "feasibleSpace": {"list": ["64,x"]}}, "hidden_units: '64,x' is not a value train accepts"),
    ({"name": "dropout", "parameterType": "double",
      "feasibleSpace": {"min": 0, "max": 0.5, "list": [0.1]}},
     "takes min/max (and step), not a list"),
    ({"name": "batch_size", "parameterType": "int", "feasibleSpace": {"min": 16}},
     "batch_size: feasibleSpace needs min and max"),
    ({"name": "learning_rate", "parameterType": "double",
      "feasibleSpace": {"min": 0, "max": 0.1, "distribution": "logUniform"}},
     "a logUniform range must be above 0"),
    ({"name": "learning_rate", "parameterType": "double",
      "feasibleSpace": {"min": 0.1, "max": 0.2, "stepp": 0.1}}, "unknown key(s) ['stepp']"),
])
def test_bad_search_spaces_are_one_line_errors(parameter, message):
    with pytest.raises(StepError) as info:
        parse([parameter])
    assert message in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith("space.yaml: ")


def test_a_parameter_listed_twice_is_refused():
    twice = {"name": "dropout", "parameterType": "discrete", "feasibleSpace": {"list": [0.1]}}
    with pytest.raises(StepError, match="dropout: listed twice"):
        parse([twice, twice])


def test_cli_refuses_bad_settings_before_anything(tmp_path, cli):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"parameters": [
        {"name": "seed", "parameterType": "categorical", "feasibleSpace": {"list": ["1"]}}]}))
    for args, message in (
        (["--search-space", str(space)], "seed: parameterType categorical does not fit"),
        (["--objective", "f1"], "--objective 'f1': expected one of auc, accuracy"),
        (["--max-trials", "2", "--parallel-trials", "3"], "--parallel-trials must be between"),
        (["--backend", "katib"], "backend katib needs --trial-image"),
        (["--backend", "katib", "--trial-image", "t"], "Katib's trial pods read it from S3"),
    ):
        result = cli("components.tune", "--examples", str(tmp_path / "ex"), "--transform",
                     str(tmp_path / "tr"), "--output", str(tmp_path / "out"), *args)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2 and len(errors) == 1, result.stderr
        assert errors[0].startswith("error: tune: ") and message in errors[0]
        assert not (tmp_path / "out").exists()


def test_tuning_off_passes_the_hyperparameters_through(tmp_path, cli):
    """The pipeline always takes train's hyperparameters from tune: off, it hands them on."""
    out = tmp_path / "out"
    executor_output = tmp_path / "kfp" / "executor_output.json"
    executor_input = {
        "inputs": {"artifacts": {}, "parameterValues": {}},
        "outputs": {"artifacts": {
            name: {"artifacts": [{"name": name, "uri": str(tmp_path / "kfp" / name)}]}
            for name in ("tuning", "metrics", "report")},
            "parameters": {"best_hparams": {"outputFile": str(tmp_path / "kfp" / "b")}},
            "outputFile": str(executor_output)},
    }
    given = {"learning_rate": 0.005, "epochs": 3}
    result = cli("components.tune", "--examples", str(tmp_path / "ex"), "--transform",
                 str(tmp_path / "tr"), "--output", str(out), "--enabled", "false",
                 "--hparams", json.dumps(given), "--report", str(tmp_path / "kfp" / "report"),
                 "--executor-input", json.dumps(executor_input))
    assert result.returncode == 0, result.stderr
    expected = parse_hparams(json.dumps(given))
    assert json.loads((out / "best_hparams.json").read_text()) == expected
    assert json.loads((out / "trials.json").read_text()) == []
    written = json.loads(executor_output.read_text())
    assert json.loads(written["parameterValues"]["best_hparams"]) == expected
    assert "Tuning was off" in (tmp_path / "kfp" / "report").read_text()
