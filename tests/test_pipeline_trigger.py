"""The trigger on a cluster: one kfp.Client run of the compiled package per new object.

The real kfp.Client against the fake KFP API server of tests/test_submit.py (it records every
request): the run is created without an experiment lookup (the trigger's account may create
runs and nothing else), with `source` set to the object, `data_store` to the store, the other
parameters typed as the package declares them, and never twice for the same data.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("kfp")  # the pipeline-SDK environment (.venv-sdk) only

pytestmark = pytest.mark.sdk

import pipeline  # noqa: E402
from components.common.errors import StepError  # noqa: E402
from components.trigger.runners import KfpRunner  # noqa: E402
from components.trigger.trigger import Trigger, status  # noqa: E402
from tests.test_submit import fake_kfp  # noqa: E402, F401 (the fixture)


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    path = tmp_path_factory.mktemp("package") / "pipeline.yaml"
    assert pipeline.main(["--compile", "--output", str(path)]) == 0
    return path


def test_one_run_per_new_object_with_its_parameters(fake_kfp, package, tmp_path):  # noqa: F811
    source = tmp_path / "incoming"
    source.mkdir()
    (source / "a.csv").write_text("id,label\n1,Yes\n")
    (source / "b.csv").write_text("id,label\n2,No\n")
    store = tmp_path / "store"
    runner = KfpRunner(fake_kfp.url, str(package), str(store),
                       ["canary_percent=20", "fail_on_anomalies=false"], experiment_id="exp-7")
    trigger = Trigger([str(source)], str(store), runner)
    started = trigger.poll()
    assert [s["state"] for s in started] == ["started", "started"]
    bodies = [body for _m, _p, _q, body in fake_kfp.calls("POST", "/runs")]
    assert len(bodies) == 2
    assert not fake_kfp.calls("POST", "/experiments") and not fake_kfp.calls("GET",
                                                                             "/experiments")
    first = bodies[0]
    assert first["experiment_id"] == "exp-7"
    assert first["display_name"] == f"cfpb-continuous-training {started[0]['dataset_version']}"
    assert first["runtime_config"]["parameters"] == {
        "source": str(source / "a.csv"), "data_store": str(store), "canary_percent": 20,
        "fail_on_anomalies": False}
    claims = {c["uri"]: c for c in status(str(store))}
    assert claims[str(source / "a.csv")]["run_id"] == started[0]["run_id"]
    assert claims[str(source / "a.csv")]["url"].endswith(f"/#/runs/details/{started[0]['run_id']}")
    # polled again (or by a second trigger): no second run
    assert Trigger([str(source)], str(store), runner).poll() == []
    assert len(fake_kfp.calls("POST", "/runs")) == 2
    # all the trigger ever asks of KFP (manifests/components/trigger grants exactly this)
    assert {(method, path) for method, path, _q, _b in fake_kfp.requests} == {
        ("GET", "/apis/v2beta1/healthz"), ("POST", "/apis/v2beta1/runs")}


def test_parameters_are_checked_before_any_poll(package, tmp_path):
    for params, message in ((["nope=1"], "expected key=value with a parameter"),
                            (["canary_percent=ten"], "canary_percent=ten: not a number_integer"),
                            (["source=x"], "the trigger sets it")):
        with pytest.raises(StepError, match=message):
            KfpRunner("http://127.0.0.1:9", str(package), str(tmp_path), params)
    with pytest.raises(StepError, match="expected an http"):
        KfpRunner("ml-pipeline:8888", str(package), str(tmp_path), [])


def test_the_cli_starts_a_kfp_run(fake_kfp, package, tmp_path, capsys):  # noqa: F811
    from components.trigger.__main__ import main

    source = tmp_path / "incoming"
    source.mkdir()
    (source / "new.csv").write_text("id,label\n3,Yes\n")
    code = main(["--source", str(source), "--store", str(tmp_path / "store"), "--run", "kfp",
                 "--host", fake_kfp.url, "--package", str(package), "--once"])
    assert code == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert json.loads(line)["state"] == "started"
    assert len(fake_kfp.calls("POST", "/runs")) == 1
