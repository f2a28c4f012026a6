"""The cluster manifests in manifests/, checked without a cluster.

Every document parses and deserializes into the `kubernetes` client's models with nothing lost
(a full round trip), Deployments are hardened (limits, probes, non-root, credentials only through
Secret references), the deploy Role grants exactly the verbs the deploy step really uses (recorded
by running the step against the fake Kubernetes API server of tests/test_deploy.py), the
kustomization lists every applied file, images are pinned, and the S3 endpoint is the one
pipeline.py gives the steps.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
KUSTOMIZATION = MANIFESTS / "kustomization.yaml"
EXAMPLE_SUFFIX = ".example.yaml"

MODELS = {
    ("apps/v1", "Deployment"): "V1Deployment",
    ("v1", "Service"): "V1Service",
    ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("v1", "Secret"): "V1Secret",
    ("rbac.authorization.k8s.io/v1", "Role"): "V1Role",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "V1RoleBinding",
}
OWN_IMAGE = re.compile(r"^local/cfpb-pipeline-[a-z]+:latest$")
SECRET_ENV = re.compile(r"(KEY|SECRET|PASSWORD|TOKEN|USER|CREDENTIAL)", re.IGNORECASE)
PLACEHOLDER = "CHANGE_ME"
KSERVE_S3 = "serving.kserve.io/s3-"


from orchestration import definition as PIPELINE  # noqa: E402  (the S3 wiring it compiles in)


def _yaml_files() -> list[Path]:
    return sorted(p for p in MANIFESTS.glob("*.yaml") if p != KUSTOMIZATION)


def _applied_files() -> list[Path]:
    return [p for p in _yaml_files() if not p.name.endswith(EXAMPLE_SUFFIX)]


def _example_files() -> list[Path]:
    return [p for p in _yaml_files() if p.name.endswith(EXAMPLE_SUFFIX)]


def _docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _all(files: list[Path] | None = None) -> list[tuple[Path, dict]]:
    return [(path, doc) for path in (files or _yaml_files()) for doc in _docs(path)]


def _of_kind(kind: str, files: list[Path] | None = None) -> list[dict]:
    return [doc for _p, doc in _all(files) if doc["kind"] == kind]


def _one(kind: str, name: str) -> dict:
    found = [doc for doc in _of_kind(kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _containers(deployment: dict) -> list[dict]:
    spec = deployment["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def _endpoint_host() -> str:
    return urlsplit(PIPELINE.S3_ENDPOINT_URL).netloc


# --- parsing and schemas ---------------------------------------------------------------------

def test_the_expected_files_exist():
    names = {p.name for p in MANIFESTS.iterdir()}
    assert {"kustomization.yaml", "minio.yaml", "minio-secret.example.yaml", "serving-rbac.yaml",
            "kserve-storage.yaml", "kserve-s3-secret.example.yaml", "model-server.yaml",
            "README.md"} <= names


@pytest.mark.parametrize("path", _yaml_files() + [KUSTOMIZATION], ids=lambda p: p.name)
def test_every_document_parses_and_names_its_object(path):
    docs = _docs(path)
    assert docs, f"{path.name}: no YAML document"
    for doc in docs:
        assert isinstance(doc, dict)
        assert doc.get("apiVersion") and doc.get("kind")
        if path != KUSTOMIZATION:
            assert doc["metadata"]["name"]
            # the namespace is the user's choice (kubectl -n, kustomize namespace:)
            assert "namespace" not in doc["metadata"], f"{path.name}: hard-coded namespace"


def test_every_object_round_trips_through_the_kubernetes_models():
    """Deserializing into the client's models and serializing back gives the same document:
    no misspelled or unknown field (those are dropped) and no wrong type (those raise)."""
    from kubernetes.client import ApiClient

    api = ApiClient()
    seen = set()
    for path, doc in _all():
        model = MODELS.get((doc["apiVersion"], doc["kind"]))
        assert model, f"{path.name}: no model for {doc['apiVersion']} {doc['kind']}"
        obj = api._ApiClient__deserialize(doc, model)
        assert type(obj).__name__ == model
        back = api.sanitize_for_serialization(obj)
        assert back == doc, f"{path.name}: {doc['kind']} {doc['metadata']['name']} lost fields"
        seen.add(doc["kind"])
    assert {"Deployment", "Service", "PersistentVolumeClaim", "ServiceAccount", "Role",
            "RoleBinding", "Secret"} <= seen


def test_a_dropped_field_is_noticed_by_the_round_trip():
    """The round trip above would catch a typo: a misspelled field does not survive it."""
    from kubernetes.client import ApiClient

    api = ApiClient()
    doc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
           "spec": {"selectr": {"a": "b"}, "ports": [{"port": 80}]}}
    back = api.sanitize_for_serialization(api._ApiClient__deserialize(doc, "V1Service"))
    assert back != doc and "selectr" not in back["spec"]


# --- kustomization ---------------------------------------------------------------------------

def test_kustomization_lists_every_applied_file_and_no_example():
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources))
    assert set(resources) == {p.name for p in _applied_files()}
    assert not set(resources) & {p.name for p in _example_files()}
    assert "namespace" not in kustomization  # left to the user (commented example in the file)
    assert "# namespace:" in KUSTOMIZATION.read_text()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="no kubectl")
def test_kustomize_builds_with_a_namespace(tmp_path):
    """`kubectl kustomize` (no cluster needed) builds every object into the chosen namespace."""
    copy = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, copy)
    text = (copy / "kustomization.yaml").read_text()
    text = text.replace("# namespace: kubeflow-user-example-com", "namespace: team-a")
    (copy / "kustomization.yaml").write_text(text)
    built = subprocess.run(["kubectl", "kustomize", str(copy)], capture_output=True, text=True,
                           timeout=60, check=True).stdout
    docs = [doc for doc in yaml.safe_load_all(built) if doc]
    expected = sum(len(_docs(p)) for p in _applied_files())
    assert len(docs) == expected
    assert {doc["metadata"]["namespace"] for doc in docs} == {"team-a"}


# --- Deployments -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["cfpb-minio", "cfpb-model-server"])
def test_deployment_is_hardened(name):
    deployment = _one("Deployment", name)
    template = deployment["spec"]["template"]
    pod = template["spec"]
    labels = deployment["spec"]["selector"]["matchLabels"]
    assert labels.items() <= template["metadata"]["labels"].items()
    pod_security = pod.get("securityContext", {})
    assert pod.get("automountServiceAccountToken") is False
    for container in _containers(deployment):
        security = {**pod_security, **container.get("securityContext", {})}
        assert security.get("runAsNonRoot") is True, container["name"]
        assert security.get("runAsUser", 0) != 0, container["name"]
        assert security.get("allowPrivilegeEscalation") is False, container["name"]
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        resources = container["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[kind]), (container["name"], kind)
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"]["path"].startswith("/"), container["name"]
        port_names = {p["name"] for p in container["ports"]}
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            if probe in container:
                assert container[probe]["httpGet"]["port"] in port_names


def test_no_literal_credentials_anywhere_applied():
    """Credentials only through secretKeyRef / secretRef; no Secret with values is applied."""
    for path, doc in _all(_applied_files()):
        assert doc["kind"] != "Secret", f"{path.name}: a Secret belongs in an example file"
        assert PLACEHOLDER not in path.read_text()
        if doc["kind"] != "Deployment":
            continue
        for container in _containers(doc):
            for env in container.get("env", []):
                if SECRET_ENV.search(env["name"]):
                    assert "value" not in env, f"{path.name}: literal {env['name']}"
                    assert set(env["valueFrom"]) == {"secretKeyRef"}, env["name"]
            for source in container.get("envFrom", []):
                assert set(source) <= {"secretRef", "configMapRef", "prefix"}
    for path in _applied_files():
        text = path.read_text().lower()
        for known_default in ("minioadmin", "minio123"):  # MinIO's and KFP's stock credentials
            assert known_default not in text, f"{path.name}: {known_default}"


def test_example_secrets_hold_placeholders_only_and_say_so():
    examples = _example_files()
    assert {p.name for p in examples} == {"minio-secret.example.yaml",
                                          "kserve-s3-secret.example.yaml"}
    for path in examples:
        text = path.read_text()
        assert "EXAMPLE ONLY" in text and "CHANGE THEM" in text
        for doc in _docs(path):
            assert doc["kind"] == "Secret"
            assert "data" not in doc  # base64 would hide what the values are
            assert doc["stringData"]
            for key, value in doc["stringData"].items():
                assert value.startswith(PLACEHOLDER), f"{path.name}: {key} is not a placeholder"


def test_images_are_pinned():
    readme = (MANIFESTS / "README.md").read_text()
    for path, doc in _all():
        if doc["kind"] != "Deployment":
            continue
        for container in _containers(doc):
            image = container["image"]
            if OWN_IMAGE.match(image):
                # our own image, built locally: the README says how to name the pushed one
                assert "REGISTRY" in readme and "TAG" in readme and "images:" in readme
                repository = image.rsplit(":", 1)[0]
                assert f"name: {repository}" in KUSTOMIZATION.read_text()
                continue
            assert "@sha256:" in image or re.search(r":[^/:]+$", image), image
            assert not image.endswith(":latest"), f"{path.name}: {image} is not pinned"


def test_minio_deployment():
    deployment = _one("Deployment", "cfpb-minio")
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert re.fullmatch(r"minio/minio:RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ",
                        container["image"])
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    example = _docs(MANIFESTS / "minio-secret.example.yaml")[0]
    for variable in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
        assert env[variable]["name"] == example["metadata"]["name"]
        assert env[variable]["key"] in example["stringData"]
    # the same keys as KFP's Secret, so pipeline.py --s3-secret can name this one
    assert set(example["stringData"]) == set(PIPELINE.S3_SECRET_KEYS)
    claims = {v["persistentVolumeClaim"]["claimName"]
              for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert claims == {_one("PersistentVolumeClaim", "cfpb-minio-data")["metadata"]["name"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert container["args"][:2] == ["server", mounts["data"]]


@pytest.mark.parametrize("name", ["cfpb-minio", "cfpb-model-server"])
def test_service_selects_its_deployment_and_named_ports(name):
    service = _one("Service", name)
    deployment = _one("Deployment", name)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    ports = {p["name"]: p["containerPort"] for c in _containers(deployment)
             for p in c["ports"]}
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in ports
        assert port["port"] == ports[port["targetPort"]]


def test_model_server():
    deployment = _one("Deployment", "cfpb-model-server")
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "local/cfpb-pipeline-serve:latest"
    assert container["command"] == [
        "python", "-m", "components.serve", "--host", "0.0.0.0",
        "--registry", "s3://mlpipeline/cfpb/models", "--model-name", "cfpb-disputes"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8501, "grpc": 8500}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    security = pod["spec"]["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 1000
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(ports["http"])
    assert annotations["prometheus.io/path"] == "/metrics"
    env = {e["name"]: e for e in container["env"]}
    assert {"S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(env)
    # the same Secret and key mapping pipeline.py gives the steps
    for key, variable in PIPELINE.S3_SECRET_KEYS.items():
        assert env[variable]["valueFrom"]["secretKeyRef"] == {"name": PIPELINE.S3_SECRET,
                                                               "key": key}
    # the pipeline's defaults: the registry and model name the server reads
    source = (ROOT / "orchestration" / "definition.py").read_text()
    assert 'registry: str = "s3://mlpipeline/cfpb/models"' in source
    assert 'model_name: str = "cfpb-disputes"' in source
    # a read-only root filesystem needs a writable /tmp for S3 downloads
    if container["securityContext"].get("readOnlyRootFilesystem"):
        assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}


# --- S3 endpoint -----------------------------------------------------------------------------

def test_s3_endpoint_is_the_pipelines_where_it_means_kfps_minio():
    host = _endpoint_host()
    kfp_service = host.split(".")[0]
    assert host == "minio-service.kubeflow:9000"
    checked = 0
    for path, doc in _all():
        if doc["kind"] == "Deployment":
            for container in _containers(doc):
                for env in container.get("env", []):
                    if env["name"] == "S3_ENDPOINT_URL" and kfp_service in env["value"]:
                        assert env["value"] == PIPELINE.S3_ENDPOINT_URL, path.name
                        checked += 1
        for key, value in (doc["metadata"].get("annotations") or {}).items():
            if key == f"{KSERVE_S3}endpoint" and kfp_service in value:
                assert value == host, path.name  # KServe wants host:port, no scheme
                checked += 1
    assert checked >= 2  # the model server and the KServe Secret


# --- KServe storage --------------------------------------------------------------------------

def test_kserve_storage_account_references_an_annotated_secret():
    account = _one("ServiceAccount", "cfpb-model-reader")
    (reference,) = account["secrets"]
    secret = _one("Secret", reference["name"])
    annotations = secret["metadata"]["annotations"]
    assert annotations[f"{KSERVE_S3}usehttps"] == "0"
    assert annotations[f"{KSERVE_S3}region"]
    assert annotations[f"{KSERVE_S3}endpoint"] == _endpoint_host()
    assert PIPELINE.S3_ENDPOINT_URL.startswith("http://")  # hence usehttps "0"
    assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


# --- RBAC for the deploy step ----------------------------------------------------------------

def _verb(method: str, path: str) -> str:
    """The RBAC verb of a request to the inferenceservices API."""
    named = re.search(r"/inferenceservices/[^/?]+", path) is not None
    if method == "GET":
        if "watch=" in path:
            return "watch"
        return "get" if named else "list"
    return {"POST": "create", "PATCH": "patch", "PUT": "update",
            "DELETE": "delete" if named else "deletecollection"}[method]


ENTRIES = {n: {"version": n, "tensorflow_version": "2.16.2"} for n in (1, 2, 3)}


def _verbs_the_deploy_step_uses() -> set[str]:
    """Run every strategy of the KServe target against tests/test_deploy.py's fake API server
    and record the requests."""
    from kubernetes import client

    from components.deploy import kserve
    from tests.test_deploy import FakeKube

    fake = FakeKube("now")
    try:
        api = kserve.KServeApi(client.ApiClient(client.Configuration(host=fake.host)))
        target = kserve.Target(namespace="team", name="cfpb-disputes",
                               storage_uri_prefix="s3://mlpipeline/cfpb/models",
                               service_account="cfpb-model-reader")
        for strategy, version in (("canary", 1), ("canary", 2), ("promote", 2),
                                  ("canary", 3), ("rollback", None), ("rollback", None)):
            kserve.deploy(api, target, "cfpb-disputes", strategy, version, 10,
                          entries=ENTRIES, timeout_seconds=5, poll_seconds=0.01)
        requests = [(method, path) for method, path, _ct, _body in fake.requests]
    finally:
        fake.close()
    assert requests and all("/inferenceservices" in path for _m, path in requests)
    return {_verb(method, path) for method, path in requests}


def test_role_grants_exactly_the_verbs_the_deploy_step_uses():
    used = _verbs_the_deploy_step_uses()
    assert used == {"get", "create", "patch"}
    role = _one("Role", "cfpb-pipeline-deployer")
    (rule,) = role["rules"]
    assert rule["apiGroups"] == ["serving.kserve.io"]
    assert rule["resources"] == ["inferenceservices"]
    assert "resourceNames" not in rule
    assert len(rule["verbs"]) == len(set(rule["verbs"]))
    assert set(rule["verbs"]) == used


def test_deploy_step_talks_to_kubernetes_only_through_kserve_api():
    """The recorded verbs cover the step: no other Kubernetes API use in components/deploy."""
    calls = set()
    for path in (ROOT / "components" / "deploy").glob("*.py"):
        calls |= set(re.findall(r"client\.(\w+Api)\(", path.read_text()))
    assert calls == {"CustomObjectsApi"}


def test_role_binding_binds_the_pipeline_runner():
    binding = _one("RoleBinding", "cfpb-pipeline-deployer")
    role = _one("Role", "cfpb-pipeline-deployer")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    (subject,) = binding["subjects"]
    assert subject["kind"] == "ServiceAccount"
    assert subject["name"] == _one("ServiceAccount", "cfpb-pipeline-runner")["metadata"]["name"]
    assert "namespace" not in subject  # defaults to the binding's namespace


# --- README ----------------------------------------------------------------------------------

def test_readme_covers_every_file_and_how_to_apply():
    readme = (MANIFESTS / "README.md").read_text()
    assert "kubectl apply -k manifests/" in readme
    for path in [*_yaml_files(), KUSTOMIZATION]:
        assert f"`{path.name}`" in readme, path.name
    assert PLACEHOLDER in readme
