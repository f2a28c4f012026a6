"""The KFP v2 executor protocol, read and written in one place for every step.

A step's CLI takes plain paths; inside Kubeflow (or kfp.local) it also gets the executor input
JSON (`{{$}}`) and must write the executor output file it names: that file is how output
artifacts reach the next step under kfp.local, and how artifact metadata (dataset version,
row counts, hashes) and output parameters (`anomalies_found`, `blessed`) reach ML Metadata.
"""

from __future__ import annotations

import json
import os
from typing import Any

from components.common.errors import StepError

# How the KFP launcher mounts remote artifact URIs inside the container.
URI_PREFIX_TO_PATH = {"gs://": "/gcs/", "minio://": "/minio/", "s3://": "/s3/"}


def local_path_for_uri(uri: str) -> str:
    for prefix, mount in URI_PREFIX_TO_PATH.items():
        if uri.startswith(prefix):
            return mount + uri[len(prefix):]
    return uri


class ExecutorIO:
    """Collects output artifacts' metadata and output parameters, then writes executor output."""

    def __init__(self, executor_input: str | None):
        self._input: dict = {}
        if executor_input:
            try:
                self._input = json.loads(executor_input)
            except json.JSONDecodeError as exc:
                raise StepError(f"--executor-input is not valid JSON: {exc}") from exc
        self._artifacts: dict[str, dict[str, Any]] = {}
        self._parameters: dict[str, Any] = {}

    @property
    def active(self) -> bool:
        return bool(self._input)

    def _output_artifact(self, name: str) -> dict | None:
        entries = self._input.get("outputs", {}).get("artifacts", {}).get(name, {})
        artifacts = entries.get("artifacts") or []
        return artifacts[0] if artifacts else None

    def output_path(self, name: str) -> str | None:
        """Where the artifact's content goes inside this container, if KFP declared it."""
        artifact = self._output_artifact(name)
        if artifact is None:
            return None
        return artifact.get("customPath") or local_path_for_uri(artifact.get("uri", ""))

    def input_uri(self, name: str) -> str | None:
        """The URI of an input artifact (e.g. minio://mlpipeline/v2/artifacts/...), for a
        process outside this container that reads it from the object store (Katib trials)."""
        entries = self._input.get("inputs", {}).get("artifacts", {}).get(name, {})
        artifacts = entries.get("artifacts") or []
        return artifacts[0].get("uri") or None if artifacts else None

    def declared_outputs(self) -> tuple[list[str], list[str]]:
        """(output artifact names, output parameter names) the executor input declares."""
        outputs = self._input.get("outputs", {})
        return sorted(outputs.get("artifacts") or {}), sorted(outputs.get("parameters") or {})

    def output_uri(self, name: str) -> str | None:
        artifact = self._output_artifact(name)
        return artifact.get("uri") if artifact else None

    def artifact(self, name: str, metadata: dict[str, Any] | None = None) -> None:
        self._artifacts[name] = dict(metadata or {})

    def parameter(self, name: str, value: Any) -> None:
        self._parameters[name] = value

    def write(self) -> None:
        """Write the executor output; a no-op when the step runs outside KFP."""
        if not self.active:
            return
        output_file = self._input.get("outputs", {}).get("outputFile")
        if not output_file:
            raise StepError("executor input has no outputs.outputFile; cannot report outputs")
        artifacts = {}
        for name, metadata in self._artifacts.items():
            declared = self._output_artifact(name)
            if declared is None:
                raise StepError(f"output artifact {name!r} is not declared in the component spec")
            artifacts[name] = {"artifacts": [{
                "name": declared.get("name", name),
                "uri": declared.get("uri", ""),
                "metadata": _json_safe(metadata),
            }]}
        payload = {"artifacts": artifacts, "parameterValues": _json_safe(self._parameters)}
        os.makedirs(os.path.dirname(output_file) or ".", exist_ok=True)
        tmp = output_file + ".tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(payload, handle)
        os.replace(tmp, output_file)


def _json_safe(value):
    """Struct values: JSON types only (numbers become floats in ML Metadata anyway)."""
    return json.loads(json.dumps(value, default=str))
