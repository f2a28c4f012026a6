"""The step images: names agree everywhere (always run), and the built images work (`docker`).

The `docker` tests need a Docker daemon and the images `make build-images` built for the
current tag (`<version>-<git short sha>`, or IMAGE_REGISTRY / IMAGE_TAG from the environment);
they are skipped otherwise.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.common import build_facts  # noqa: E402
from tests.conftest import REAL_SAMPLE, ROOT, run_cli

IMAGES = ROOT / "images"
STEPS = build_facts.pipeline_steps()
BUILT = tuple(i.name for i in build_facts.IMAGES)
TENSORFLOW_STEPS = ("validate", "transform", "tune", "train", "evaluate")
PROJECT = build_facts.PROJECT
DOCKERFILE = IMAGES / "step.Dockerfile"


def specs() -> dict[str, dict]:
    return {path.parent.name: yaml.safe_load(path.read_text())
            for path in sorted((ROOT / "components").glob("*/component.yaml"))}


def make_dry_run(target: str, *args: str) -> str:
    if shutil.which("make") is None:
        pytest.skip("no make")
    return subprocess.run(["make", "-n", target, *args], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout


# --- names: specs, build facts, Makefile, pipeline ------------------------------------------

def test_every_spec_names_an_image_make_builds():
    found = specs()
    assert tuple(sorted(found)) == tuple(sorted(STEPS))
    for step, spec in found.items():
        container = spec["implementation"]["container"]
        # <registry>/<project>-<step>:<tag>; pipeline.py sets registry and tag at compile time
        match = re.fullmatch(r"(?:(?P<registry>[^:]+(?::\d+)?(?:/[^:]+)*)/)?"
                             r"(?P<name>[a-z0-9-]+)(?::(?P<tag>[\w][\w.-]*))?",
                             container["image"])
        assert match, f"{step}: bad image reference {container['image']!r}"
        assert match["name"] == f"{PROJECT}-{step}", f"{step}: image {container['image']!r}"
        assert container["command"] == ["python", "-m", f"components.{step}"]


def test_every_image_is_a_step_folder_and_make_builds_them_all():
    for name in BUILT:
        assert (ROOT / "components" / name / "__main__.py").is_file(), name
    steps_and_services = {p.parent.name for p in (ROOT / "components").glob("*/__main__.py")}
    assert steps_and_services == set(BUILT)
    assert sorted(IMAGES.glob("*.Dockerfile")) == [IMAGES / "base.Dockerfile", DOCKERFILE]
    line = next(x for x in make_dry_run("build-images").splitlines() if "build_images.sh" in x)
    assert line.split("build_images.sh", 1)[1].split() == list(BUILT)


def test_dockerfile_conventions():
    text = DOCKERFILE.read_text()
    instructions = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert not any(line.startswith("ENTRYPOINT") for line in instructions)
    assert 'CMD ["sh", "-c", "exec python -m components.\\"$STEP\\" --help"]' in text
    # the code is copied last (after the dependency layers) and the step runs as non-root
    copies = [line for line in instructions if line.startswith("COPY")]
    assert copies[-1] == "COPY components/ /app/components/"
    assert instructions[-2:][0] == "USER 1000:1000"
    assert "--mount=type=cache,target=/root/.cache/uv" in text
    assert "--frozen" in text and "--require-hashes" in text
    # the dependency stage sees only pyproject.toml and uv.lock, the pruning stage only the
    # prune script and lists, and neither STEP (layers shared between steps)
    deps, rest = text.split("FROM deps AS pruned")
    pruned = rest.split("FROM ${BASE_IMAGE}")[0]
    assert [line for line in deps.splitlines() if line.startswith("COPY")] == [
        "COPY pyproject.toml uv.lock ./"]
    assert [line for line in pruned.splitlines() if line.startswith("COPY")] == [
        "COPY images/prune_venv.sh images/prune/ /tmp/prune/"]
    assert not any("STEP" in line for line in (deps + pruned).splitlines()
                   if not line.startswith("#"))
    assert "COPY --from=pruned /opt/venv /opt/venv" in text
    for dockerfile in (DOCKERFILE, IMAGES / "base.Dockerfile"):
        ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
        common = (IMAGES / "common.dockerignore").read_text()
        assert ignore.exists() and ignore.read_text() == common


def test_prune_lists_are_for_extras_and_in_the_build_context():
    """images/prune/<extra>.txt: one per extra at most, each line a site-packages path."""
    extras = {spec.extra for spec in build_facts.IMAGES}
    lists = sorted((IMAGES / "prune").glob("*"))
    assert lists and all(p.suffix == ".txt" and p.stem in extras for p in lists), lists
    for path in lists:
        for line in path.read_text().splitlines():
            pattern = line.split("#", 1)[0].strip()
            assert not pattern or not pattern.startswith(("/", "..")), (path.name, line)
    ignore = (IMAGES / "common.dockerignore").read_text().splitlines()
    assert "!images/prune_venv.sh" in ignore and "!images/prune/" in ignore


def test_extras_per_image_are_in_the_lock():
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    project = next(p for p in lock["package"] if p["name"] == pyproject["project"]["name"])
    locked = {p["name"] for p in lock["package"]}
    used = {i.extra for i in build_facts.IMAGES}
    assert used == {"ingest", "validate", "model", "tune", "push", "deploy", "feedback", "serve",
                    "trigger"}
    for spec in build_facts.IMAGES:
        assert spec.extra in extras and spec.extra in project["optional-dependencies"]
        assert set(spec.prune) <= locked, f"{spec.name}: prunes packages not in uv.lock"
    # no TensorFlow where a step does not need it
    assert not any(d.startswith("tensorflow") for d in extras["push"])
    # the TensorFlow-family extras cannot share an environment with the SDK (protobuf 4 vs 6)
    conflicts = [{item["extra"] for item in group}
                 for group in pyproject["tool"]["uv"]["conflicts"]]
    for extra in ("runtime", "ingest", "validate", "model", "feedback"):
        assert {extra, "sdk"} in conflicts
        assert {extra, "trigger"} in conflicts  # kfp.Client: protobuf 6


def test_tensorflow_is_the_cpu_wheel_on_linux_x86_64():
    """Every extra with TensorFlow gets tensorflow-cpu on Linux x86-64 (the images); the
    `tensorflow` that TFDV, tfx-bsl and tensorflow-serving-api declare is overridden away there,
    so one lock holds both and no environment installs both."""
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    linux = "sys_platform == 'linux' and platform_machine == 'x86_64'"
    for extra, requirements in pyproject["project"]["optional-dependencies"].items():
        if "tensorflow==2.16.2" in requirements:
            assert f"tensorflow-cpu==2.16.2; {linux}" in requirements, extra
    assert pyproject["tool"]["uv"]["override-dependencies"] == [
        "tensorflow==2.16.2; sys_platform != 'linux' or platform_machine != 'x86_64'"]
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    assert {"name": "tensorflow", "marker": "platform_machine != 'x86_64' or sys_platform != "
            "'linux'", "specifier": "==2.16.2"} in lock["manifest"]["overrides"]
    for name in ("tensorflow-data-validation", "tfx-bsl", "tensorflow-serving-api"):
        package = next(p for p in lock["package"] if p["name"] == name)
        (tf,) = [d for d in package["dependencies"] if d["name"] == "tensorflow"]
        assert tf["marker"] == "platform_machine != 'x86_64' or sys_platform != 'linux'"


def test_make_and_the_pipeline_use_the_same_names():
    dry_run = make_dry_run("build-images")
    tag = re.search(r"\bTAG=(\S+)", dry_run)[1]
    registry = re.search(r"\bREGISTRY=(\S+)", dry_run)[1]
    assert build_facts.image_tag() == tag
    assert registry == build_facts.DEFAULT_REGISTRY
    assert re.search(r"\bCODE_VERSION=(\S+)", dry_run)[1] == build_facts.code_version()
    for step in STEPS:
        assert build_facts.image_name(step, registry, tag) == f"{registry}/{PROJECT}-{step}:{tag}"


def test_build_facts_answer_make_and_scripts():
    def facts(*args):
        return subprocess.run([sys.executable, "-m", "components.common.build_facts", *args],
                              cwd=ROOT, capture_output=True, text=True)

    assert facts("images").stdout.split() == list(BUILT)
    assert facts("steps").stdout.split() == list(STEPS)
    assert facts("tag").stdout.strip() == build_facts.image_tag()
    assert facts("image-args", "train").stdout.split() == ["model", *build_facts.TF_UNUSED]
    missing = facts("image-args", "nope")
    assert missing.returncode == 2 and missing.stderr.startswith("error: build_facts: ")


# --- the built images ------------------------------------------------------------------------

def _docker_ready() -> str | None:
    if shutil.which("docker") is None:
        return "no docker client"
    try:
        subprocess.run(["docker", "info"], capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "no Docker daemon"
    return None


def _tag() -> str:
    if os.environ.get("IMAGE_TAG"):
        return os.environ["IMAGE_TAG"]
    return build_facts.image_tag()


def image(step: str) -> str:
    return f"{os.environ.get('IMAGE_REGISTRY', 'local')}/{PROJECT}-{step}:{_tag()}"


@pytest.fixture(scope="module")
def built():
    reason = _docker_ready()
    if reason:
        pytest.skip(reason)
    missing = [image(s) for s in BUILT
               if subprocess.run(["docker", "image", "inspect", image(s)],
                                 capture_output=True).returncode != 0]
    if missing:
        pytest.skip(f"images not built (make build-images): {', '.join(missing)}")
    return {s: image(s) for s in BUILT}


def docker_run(img: str, *command: str, user: str | None = None, volumes=(), timeout=600):
    args = ["docker", "run", "--rm"]
    if user:
        args += ["--user", user]
    for volume in volumes:
        args += ["-v", volume]
    return subprocess.run([*args, img, *command], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.docker
@pytest.mark.parametrize("step", BUILT)
def test_step_help_in_its_image(built, step):
    done = docker_run(built[step])  # the image's default command: the step's --help
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"usage: python -m components.{step}" in done.stdout


@pytest.mark.docker
@pytest.mark.parametrize("step", BUILT)
def test_image_config(built, step):
    info = json.loads(subprocess.run(["docker", "image", "inspect", built[step]],
                                     capture_output=True, text=True, check=True).stdout)[0]
    config = info["Config"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert config["User"] == "1000:1000"
    assert not config.get("Entrypoint")
    assert config["WorkingDir"] == "/app"
    assert env["STEP"] == step  # the default command: python -m components.$STEP --help
    assert config["Cmd"] == ["sh", "-c", 'exec python -m components."$STEP" --help']
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert env["PYTHONUNBUFFERED"] == "1" and env["TF_CPP_MIN_LOG_LEVEL"] == "2"
    assert env["CODE_VERSION"] not in ("", "unknown")
    assert env["CODE_VERSION"] == config["Labels"]["org.opencontainers.image.version"]
    secret = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|AWS_|CREDENTIAL", re.I)
    assert not [key for key in env if secret.search(key)]
    # nothing of the build stage (sources, uv's cache, pip settings) in the image
    done = docker_run(built[step], "sh", "-c",
                      "test ! -e /src && test ! -e /root/.cache/uv && test ! -e /etc/pip.conf "
                      "&& test ! -e /opt/uv && id -u", user="0")
    assert done.returncode == 0 and done.stdout.strip() == "0", done.stderr


PROBE = """
import importlib, importlib.util, json, sys
wanted = sys.argv[1].split(",")
absent = sys.argv[2].split(",") if len(sys.argv) > 2 and sys.argv[2] else []
for name in wanted:
    importlib.import_module(name)
def found(name):
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # its parent package is absent too
        return False
print(json.dumps({name: found(name) for name in absent}))
"""
NEEDS = {
    "ingest": ("tfx_bsl.coders.example_coder,pyarrow,pyarrow.compute,numpy,google_crc32c,yaml,"
               "minio,minio.crypto",
               # images/prune/ingest.txt
               "tensorflow,apache_beam,pandas,pyarrow.flight,pyarrow._parquet,pyarrow._dataset,"
               "pyarrow._csv,numpy.f2py,numpy.distutils,numpy.core._simd,tfx_bsl.tfxio,"
               "Crypto.PublicKey,Crypto.Signature"),
    "validate": ("tensorflow_data_validation,tensorflow_metadata.proto.v0.schema_pb2,tfx_bsl,"
                 "apache_beam.options.pipeline_options,dill,minio,yaml,tensorflow,"
                 "matplotlib.figure,pandas",
                 # apache-beam[gcp]'s Google Cloud IO, TensorBoard: pruned (build_facts.py)
                 "google.cloud.bigquery,google.cloud.aiplatform,google.cloud.storage,apitools,"
                 "tensorboard,tensorboard_data_server,tensorflow_io_gcs_filesystem,"
                 "pyarrow.flight"),
    "transform": ("tensorflow,keras,minio,yaml", "tensorflow_data_validation,apache_beam,"
                  "tensorboard_data_server,tensorflow_io_gcs_filesystem"),
    "train": ("tensorflow,keras,tensorboard.summary.v2,minio,yaml",
              "tensorflow_data_validation,apache_beam,tensorboard_data_server,"
              "tensorflow_io_gcs_filesystem"),
    "tune": ("optuna,kubeflow.katib,kubernetes.client,tensorflow,keras,sklearn.gaussian_process,"
             "matplotlib.figure,minio,yaml,components.tune.katib",
             "tensorflow_data_validation,apache_beam,torch"),
    "evaluate": ("tensorflow,keras,sklearn.metrics,matplotlib.figure,minio,yaml,"
                 "components.common.registry", "tensorflow_data_validation,apache_beam"),
    "push": ("minio,yaml,components.common.registry", "tensorflow,keras,numpy"),
    "deploy": ("kubernetes.client,minio,yaml,components.common.artifacts.deployment",
               "tensorflow,keras"),
    "serve": ("tensorflow,tensorflow_serving.apis.prediction_service_pb2_grpc,grpc,minio,yaml",
              "tensorflow_data_validation,apache_beam,sklearn,tensorboard,"
              "tensorflow_io_gcs_filesystem"),
    "feedback": ("tensorflow_data_validation,apache_beam.options.pipeline_options,pyarrow,numpy,"
                 "matplotlib.figure,minio,yaml,components.feedback.feedback", "sklearn,kfp"),
    "trigger": ("kfp,kfp_server_api,minio,yaml,components.trigger.runners",
                "tensorflow,tensorflow_data_validation,numpy"),
}


@pytest.mark.docker
@pytest.mark.parametrize("step", BUILT)
def test_image_has_what_its_step_imports_and_no_more(built, step):
    """Imports as an arbitrary uid (Kubernetes runAsUser, kfp.local as the host user)."""
    wanted, absent = NEEDS[step]
    done = docker_run(built[step], "python", "-c", PROBE, wanted, absent, user="4321:4321")
    assert done.returncode == 0, done.stderr[-3000:]
    present = json.loads(done.stdout.strip().splitlines()[-1])
    assert not [name for name, found in present.items() if found], present


def _examples(examples: Path) -> dict[str, list]:
    """Parsed tf.Examples per file, in order (the serialized bytes vary between runs: protobuf
    does not order map fields)."""
    from tensorflow.core.example import example_pb2

    parsed = {}
    for path in sorted(examples.glob("*/*.gz")):
        data, records = gzip.decompress(path.read_bytes()), []
        offset = 0
        while offset < len(data):  # TFRecord framing: length, crc, payload, crc
            (length,) = struct.unpack_from("<Q", data, offset)
            records.append(example_pb2.Example.FromString(data[offset + 12:offset + 12 + length]))
            offset += 16 + length
        parsed[str(path.relative_to(examples))] = records
    return parsed


@pytest.mark.docker
def test_ingest_then_validate_in_their_images(built, tmp_path):
    """The pruned installs (ingest without TensorFlow, validate without Vertex AI) do the work:
    ingest in its image writes the same examples as on the host, validate reads them."""
    work = tmp_path / "work"
    work.mkdir()
    os.chmod(work, 0o777)  # the steps run as an arbitrary uid
    user = "4321:4321"
    done = docker_run(built["ingest"], "python", "-m", "components.ingest",
                      "--source", "/data/sample.csv", "--output", f"{work}/examples",
                      "--store", f"{work}/store", user=user,
                      volumes=[f"{REAL_SAMPLE}:/data/sample.csv:ro", f"{work}:{work}"])
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.loads((work / "examples" / "metadata.json").read_text())

    host = tmp_path / "host"
    local = run_cli("components.ingest", "--source", str(REAL_SAMPLE),
                    "--output", str(host / "examples"))
    assert local.returncode == 0, local.stderr[-3000:]
    host_meta = json.loads((host / "examples" / "metadata.json").read_text())
    assert meta["dataset_version"] == host_meta["dataset_version"]
    assert _examples(work / "examples") == _examples(host / "examples")

    done = docker_run(built["validate"], "python", "-m", "components.validate",
                      "--examples", f"{work}/examples", "--output", f"{work}/validation",
                      "--fail-on-anomalies", "false", user=user, volumes=[f"{work}:{work}"])
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((work / "validation" / "summary.json").read_text())
    assert summary
    assert (work / "validation" / "report.html").is_file()


@pytest.mark.docker
def test_ingest_image_pruned_what_it_never_loads_and_still_works(built):
    """What images/prune/ingest.txt removed is gone, minio's encryption (the pycryptodome
    parts kept) still round-trips, and pyarrow's duplicate libraries are links."""
    probe = """
import io, json, os, pyarrow
from minio import crypto
class Response(io.BytesIO):
    def stream(self, size):
        while chunk := self.read(size):
            yield chunk
    def release_conn(self):
        pass
assert crypto.decrypt(Response(crypto.encrypt(b"payload", "key")), "key") == b"payload"
folder = os.path.dirname(pyarrow.__file__)
print(json.dumps(sorted(n for n in os.listdir(folder) if n.startswith("libarrow_python")
                        and os.path.islink(os.path.join(folder, n)))))
"""
    done = docker_run(built["ingest"], "python", "-c", probe, user="4321:4321")
    assert done.returncode == 0, done.stderr[-3000:]
    links = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(links) == 2, links  # three identical files in the wheel: one stays a file


@pytest.mark.docker
@pytest.mark.parametrize("step", TENSORFLOW_STEPS + ("serve",))
def test_tensorflow_images_carry_the_cpu_wheel_stripped(built, step):
    """tensorflow-cpu, not tensorflow, and its main library stripped (582 MB as the wheel
    installs it, 421 MB without debug information and local symbols)."""
    probe = ("import importlib.metadata as m, os, tensorflow as tf\n"
             "names = {d.metadata['Name'] for d in m.distributions()}\n"
             "lib = os.path.join(os.path.dirname(tf.__file__), 'libtensorflow_cc.so.2')\n"
             "print(tf.__version__, 'tensorflow-cpu' in names, 'tensorflow' in names,\n"
             "      round(os.path.getsize(lib) / 1e6))")
    done = docker_run(built[step], "python", "-c", probe)
    assert done.returncode == 0, done.stderr[-3000:]
    version, cpu, full, megabytes = done.stdout.split()[-4:]
    assert (version, cpu, full) == ("2.16.2", "True", "False")
    assert int(megabytes) < 450


@pytest.mark.docker
def test_model_steps_and_serving_in_their_images(built, tmp_path):
    """The slimmed TensorFlow images (CPU wheel, stripped, pruned) do the work: transform,
    train and evaluate run in their images, and the model they made, loaded in the serve
    image, gives the host's probabilities."""
    work = tmp_path / "work"
    work.mkdir()
    os.chmod(work, 0o777)  # the steps run as an arbitrary uid
    user, volumes = "4321:4321", [f"{work}:{work}"]
    local = run_cli("components.ingest", "--source", str(REAL_SAMPLE),
                    "--output", str(work / "examples"))
    assert local.returncode == 0, local.stderr[-3000:]
    hparams = json.dumps({"epochs": 1, "batch_size": 128, "hidden_units": [8],
                          "embedding_dim": 4})
    for step, args in (
        ("transform", ["--examples", f"{work}/examples", "--output", f"{work}/transform"]),
        ("train", ["--examples", f"{work}/examples", "--transform", f"{work}/transform",
                   "--output", f"{work}/model", "--hparams", hparams]),
        ("evaluate", ["--model", f"{work}/model", "--examples", f"{work}/examples",
                      "--output", f"{work}/evaluation"]),
    ):
        done = docker_run(built[step], "python", "-m", f"components.{step}", *args, user=user,
                          volumes=volumes)
        assert done.returncode == 0, f"{step}: {done.stderr[-3000:]}"
    assert (work / "evaluation" / "report.html").is_file()

    raw = {"product": ["Mortgage", "Debt collection", ""], "sub_product": ["", "Other", ""],
           "issue": ["Loan servicing, payments, escrow account", "", "x"],
           "company_response": ["Closed with explanation", "", ""],
           "state": ["CA", "TX", ""], "zip_code": ["945XX", "75001", ""],
           "narrative": ["They never answered.", "", ""]}
    predict = ("import json, sys, tensorflow as tf\n"
               "model = tf.saved_model.load(sys.argv[1])\n"
               "raw = {k: tf.constant(v) for k, v in json.loads(sys.argv[2]).items()}\n"
               "out = model.signatures['serving_default'](**raw)\n"
               "print(json.dumps({k: v.numpy().tolist() for k, v in out.items()}))")
    done = docker_run(built["serve"], "python", "-c", predict, f"{work}/model/model",
                      json.dumps(raw), user=user, volumes=volumes)
    assert done.returncode == 0, done.stderr[-3000:]
    served = json.loads(done.stdout.strip().splitlines()[-1])
    host = subprocess.run([sys.executable, "-c", predict, str(work / "model" / "model"),
                           json.dumps(raw)], capture_output=True, text=True, timeout=300)
    assert host.returncode == 0, host.stderr[-3000:]
    expected = json.loads(host.stdout.strip().splitlines()[-1])
    assert served.keys() == expected.keys() and "probability" in served
    for key, values in expected.items():
        assert served[key] == pytest.approx(values, rel=1e-5, abs=1e-6), key

