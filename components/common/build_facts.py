"""What the build knows, defined once: project name, version, images, tags, code version.

pipeline.py, the Makefile, images/build_images.sh, the tests and bench/ all read these; make and
shell scripts through the command line:

    python3 -m components.common.build_facts tag            # 0.1.0-abc1234
    python3 -m components.common.build_facts code-version   # 0.1.0+abc1234
    python3 -m components.common.build_facts images         # ingest validate ... serve
    python3 -m components.common.build_facts steps          # the pipeline steps, in order
    python3 -m components.common.build_facts training-steps # the training pipeline's tasks
    python3 -m components.common.build_facts image-args train   # model libclang ...

Adding a step: its folder `components/<step>/` (with `component.yaml` when it is a pipeline
step) and one `Image(...)` line below. Standard library only: make runs this before any
environment exists.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = ROOT / "components"
PROJECT = "cfpb-pipeline"
DEFAULT_REGISTRY = "local"


@dataclass(frozen=True)
class Image:
    """One image per step: it runs `python -m components.<name>` with its pyproject extra
    installed from uv.lock, minus `prune` (packages declared by a dependency but never imported
    by the step, and whatever only they need; see images/README.md)."""

    name: str
    extra: str
    prune: tuple[str, ...] = ()
    # A step with a component.yaml that is not a task of the training pipeline: it runs on its
    # own (by hand, its own KFP run or schedule), like feedback.
    standalone: bool = False

    @property
    def is_pipeline_step(self) -> bool:
        return (COMPONENTS / self.name / "component.yaml").is_file()


# Declared by a dependency, imported by no step (images/README.md, "What is left out"; the
# import probes and the steps run in the images in tests/test_images.py prove it):
# TensorFlow's libclang (bindings for building ops), tensorflow-io-gcs-filesystem (gs:// only
# with TF_USE_MODULAR_FILESYSTEM) and tensorboard-data-server (the `tensorboard` server's binary;
# train writes its logs with tensorboard's Python package, which stays).
TF_UNUSED = ("libclang", "tensorflow-io-gcs-filesystem", "tensorboard-data-server")
# apache-beam[gcp] (TFDV and tfx-bsl require it): Beam's Google Cloud IO, SQL connectors and
# Vertex AI transforms (Beam imports them only if present), and tfx-bsl's remote inference
# client; with them go google-auth, google-api-core and the rest only they need.
BEAM_GCP = (
    "google-cloud-aiplatform", "google-cloud-bigquery", "google-cloud-bigquery-storage",
    "google-cloud-bigtable", "google-cloud-build", "google-cloud-datastore", "google-cloud-dlp",
    "google-cloud-kms", "google-cloud-language", "google-cloud-pubsub",
    "google-cloud-recommendations-ai", "google-cloud-secret-manager", "google-cloud-spanner",
    "google-cloud-storage", "google-cloud-videointelligence", "google-cloud-vision",
    "google-apitools", "google-auth-httplib2", "cloud-sql-python-connector",
    "keyrings-google-artifactregistry-auth", "pg8000", "pymysql", "python-tds",
    "google-api-python-client",
)

# In pipeline order; services (no component.yaml) after the steps.
IMAGES = (
    Image("ingest", "ingest", ("tensorflow", "tensorflow-serving-api", "apache-beam",
                               "google-api-python-client", "pandas")),
    Image("validate", "validate", (*BEAM_GCP, *TF_UNUSED, "tensorboard")),
    Image("transform", "model", TF_UNUSED),
    Image("tune", "tune", TF_UNUSED),
    Image("train", "model", TF_UNUSED),
    Image("evaluate", "model", TF_UNUSED),
    Image("push", "push"),
    Image("deploy", "deploy"),
    Image("feedback", "feedback", (*BEAM_GCP, *TF_UNUSED, "tensorboard"), standalone=True),
    Image("serve", "serve", (*TF_UNUSED, "tensorboard")),
    Image("trigger", "trigger"),
)


def image(name: str) -> Image:
    for spec in IMAGES:
        if spec.name == name:
            return spec
    raise KeyError(f"no image {name!r}; images: {' '.join(i.name for i in IMAGES)}")


def pipeline_steps() -> tuple[str, ...]:
    """The pipeline steps (images whose folder has a component.yaml), in pipeline order."""
    return tuple(i.name for i in IMAGES if i.is_pipeline_step)


def training_steps() -> tuple[str, ...]:
    """The tasks of the training pipeline, in order: the pipeline steps but the standalone ones."""
    return tuple(i.name for i in IMAGES if i.is_pipeline_step and not i.standalone)


def version() -> str:
    """The project version in pyproject.toml (absent inside an image: see code_version)."""
    import tomllib

    pyproject = ROOT / "pyproject.toml"
    if not pyproject.exists():
        return "0.0.0"
    return tomllib.loads(pyproject.read_text())["project"]["version"]


@functools.cache
def git_sha() -> str:
    """The short sha of HEAD, or "" outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def image_tag() -> str:
    """`<version>-<git short sha>`: the tag `make build-images` gives and pipeline.py uses."""
    return f"{version()}-{git_sha() or 'dev'}"


def image_name(step: str, registry: str = DEFAULT_REGISTRY, tag: str | None = None) -> str:
    return f"{registry.rstrip('/')}/{PROJECT}-{step}:{tag or image_tag()}"


@functools.cache
def code_version() -> str:
    """Which code produced an artifact (part of every lineage): CODE_VERSION, baked into the
    images at build time, else `<version>+<git short sha>`; the same value either way, so a
    lineage does not depend on where a step ran."""
    if os.environ.get("CODE_VERSION"):
        return os.environ["CODE_VERSION"]
    sha = git_sha()
    return f"{version()}+{sha}" if sha else version()


def main(argv: list[str]) -> int:
    commands = {
        "version": lambda: version(),
        "tag": lambda: image_tag(),
        "code-version": lambda: code_version(),
        "images": lambda: " ".join(i.name for i in IMAGES),
        "steps": lambda: " ".join(pipeline_steps()),
        "training-steps": lambda: " ".join(training_steps()),
        "project": lambda: PROJECT,
    }
    if len(argv) == 1 and argv[0] in commands:
        print(commands[argv[0]]())
        return 0
    if len(argv) == 2 and argv[0] == "image-args":
        try:
            spec = image(argv[1])
        except KeyError as exc:
            print(f"error: build_facts: {exc.args[0]}", file=sys.stderr)
            return 2
        print(spec.extra, *spec.prune)
        return 0
    print(f"usage: python3 -m components.common.build_facts "
          f"{{{'|'.join(commands)}}} | image-args IMAGE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
