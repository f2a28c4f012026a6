"""How the trigger starts a run: the local runner (a process) or a Kubeflow Pipelines run.

`local`: `pipeline.py --run local --source <object> --workdir <dir>` in the pipeline-SDK
environment, waited for (kfp.local runs every step in its container here); its output goes to
`<workdir>/trigger-logs/<dataset version>.log`. The local runner keeps its data store at
`<workdir>/store`, so the trigger's `--store` must be that folder.

`kfp`: one run of the compiled package through `kfp.Client` (not waited for), with the
package's `source` parameter set to the object and `data_store` to the trigger's store. In a
pod kfp sends the projected service-account token ($KF_PIPELINES_SA_TOKEN_PATH, default
/var/run/secrets/kubeflow/pipelines/token); the account needs `create` on
`pipelines.kubeflow.org` runs and nothing else (manifests/components/trigger).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

from components.common import storage
from components.common.errors import StepError

log = logging.getLogger(__name__)
SOURCE_PARAMETER = "source"
STORE_PARAMETER = "data_store"


class LocalRunner:
    def __init__(self, store: str, command: str | None = None):
        if storage.is_s3(store):
            raise StepError(f"--run local: the local runner keeps its data store at "
                            f"<workdir>/store, not {store}; use --run kfp for an S3 store")
        store = os.path.abspath(store)
        if os.path.basename(store) != "store":
            raise StepError(f"--run local: the local runner keeps its data store at "
                            f"<workdir>/store; pass --store <workdir>/store (got {store})")
        self.workdir = os.path.dirname(store)
        self.command = shlex.split(command) if command else default_local_command()

    def __call__(self, uri: str, version: str) -> dict:
        logs = os.path.join(self.workdir, "trigger-logs")
        os.makedirs(logs, exist_ok=True)
        log_path = os.path.join(logs, f"{version}.log")
        command = [*self.command, "--source", uri, "--workdir", self.workdir]
        started = time.monotonic()
        log.info("local run: %s (output: %s)", shlex.join(command), log_path)
        with open(log_path, "wb") as out:
            done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)
        seconds = round(time.monotonic() - started, 1)
        summary = _last_error(log_path) if done.returncode else "succeeded"
        return {"state": "finished" if done.returncode == 0 else "failed", "runner": "local",
                "exit_code": done.returncode, "seconds": seconds, "log": log_path,
                "summary": summary}


def default_local_command() -> list[str]:
    """The repository's pipeline.py in the pipeline-SDK environment (.venv-sdk) when there is
    one, else this interpreter."""
    from components.common import build_facts

    root = build_facts.ROOT
    python = root / ".venv-sdk" / "bin" / "python"
    pipeline = root / "pipeline.py"
    if not pipeline.exists():
        raise StepError("--run local needs the repository (pipeline.py), which this image does "
                        "not have; use --run kfp")
    return [str(python) if python.exists() else sys.executable, str(pipeline), "--run", "local"]


def _last_error(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as handle:
        lines = [line.strip() for line in handle if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    return (errors or lines or ["no output"])[-1][:500]


# ---------------------------------------------------------------------------------------------
# Kubeflow Pipelines.

def _typed(kind: str, text: str):
    if kind == "NUMBER_INTEGER":
        return int(text)
    if kind == "NUMBER_DOUBLE":
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(text)
        return value
    if kind == "BOOLEAN":
        lowered = text.strip().lower()
        if lowered not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(text)
        return lowered in ("true", "1", "yes")
    if kind in ("LIST", "STRUCT"):
        return json.loads(text)
    return text


def package_parameters(package_path: str) -> dict[str, dict]:
    import yaml

    try:
        with open(package_path, encoding="utf-8") as handle:
            spec = next(yaml.safe_load_all(handle), None)
    except (OSError, yaml.YAMLError) as exc:
        raise StepError(f"{package_path}: cannot read the pipeline package: {exc}") from exc
    if not isinstance(spec, dict) or "root" not in spec:
        raise StepError(f"{package_path}: not a compiled pipeline package (no root)")
    return dict(spec["root"].get("inputDefinitions", {}).get("parameters", {}))


def run_parameters(declared: dict[str, dict], pairs: list[str], source: str,
                   store: str) -> dict:
    """--param key=value pairs typed as the package declares them, plus source and data_store."""
    params = {}
    for pair in pairs:
        key, equals, text = pair.partition("=")
        key = key.strip()
        if not equals or key not in declared:
            raise StepError(f"--param {pair!r}: expected key=value with a parameter of the "
                            f"package ({', '.join(sorted(declared))})")
        try:
            params[key] = _typed(declared[key].get("parameterType", "STRING"), text)
        except (ValueError, json.JSONDecodeError):
            raise StepError(f"--param {key}={text}: not a "
                            f"{declared[key].get('parameterType', 'STRING').lower()}") from None
    for name in (SOURCE_PARAMETER, STORE_PARAMETER):
        if name not in declared:
            raise StepError(f"the package has no {name!r} parameter; is it this project's "
                            "training pipeline?")
        if name in params:
            raise StepError(f"--param {name}: the trigger sets it (the object / --store)")
    return {**params, SOURCE_PARAMETER: source, STORE_PARAMETER: store}


class KfpRunner:
    def __init__(self, host: str, package: str, store: str, params: list[str],
                 namespace: str | None = None, experiment_id: str | None = None,
                 run_name_prefix: str = "cfpb-continuous-training", client=None):
        if not re.match(r"https?://[^/\s]+", host or ""):
            raise StepError(f"--host {host!r}: expected an http:// or https:// URL of the KFP "
                            "API (in a cluster: http://ml-pipeline.kubeflow:8888)")
        self.host = host.rstrip("/")
        self._package_dir = tempfile.mkdtemp(prefix="trigger-package-")
        self.package = _local_package(package, self._package_dir)
        self.declared = package_parameters(self.package)
        run_parameters(self.declared, params, "x", store)  # checked now, before any poll
        self.params, self.store = params, store
        self.namespace, self.experiment_id = namespace, experiment_id
        self.prefix = run_name_prefix
        self._client = client

    @property
    def client(self):
        if self._client is None:
            self._client = connect(self.host, self.namespace)
        return self._client

    def __call__(self, uri: str, version: str) -> dict:
        import kfp_server_api

        params = run_parameters(self.declared, self.params, uri, self.store)
        name = f"{self.prefix} {version}"
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # kfp prints its own link
                run = self.client.run_pipeline(experiment_id=self.experiment_id, job_name=name,
                                               pipeline_package_path=self.package,
                                               params=params)
        except kfp_server_api.ApiException as exc:
            raise StepError(f"KFP API at {self.host}: HTTP {exc.status} {exc.reason}: "
                            f"{' '.join(str(exc.body or '').split())[:300]}") from None
        return {"state": "started", "runner": "kfp", "run_id": run.run_id, "run_name": name,
                "url": f"{self.host}/#/runs/details/{run.run_id}"}


def _local_package(package: str, directory: str) -> str:
    if not package.endswith((".yaml", ".yml")):
        raise StepError(f"--package {package}: expected the compiled .yaml package "
                        "(pipeline.py --compile)")
    if not storage.is_s3(package):
        if not os.path.isfile(package):
            raise StepError(f"--package {package}: no such file")
        return package
    path = os.path.join(directory, os.path.basename(package))
    with storage.open_read(package) as stream, open(path, "wb") as out:
        out.write(stream.read())
    return path


def connect(host: str, namespace: str | None = None):
    """kfp.Client for `host`; in a pod with a projected pipelines token, it sends that token."""
    import warnings

    import kfp
    from kfp import client as kfp_client
    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    path = os.environ.get(kfp_client.KF_PIPELINES_SA_TOKEN_ENV) or \
        kfp_client.KF_PIPELINES_SA_TOKEN_PATH
    credentials = ServiceAccountTokenVolumeCredentials(path) if os.path.isfile(path) else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return kfp.Client(host=host, namespace=namespace or "kubeflow", credentials=credentials)
