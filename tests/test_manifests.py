"""The cluster manifests in manifests/, checked without a cluster.

Layout: a base every install needs, one overlay per install flavour (standalone KFP, Kubeflow
profile namespace), optional kustomize Components (MinIO, the model server). Checked here:

- `kubectl kustomize` builds the base, every overlay and every overlay with each component, and
  every object it emits validates against the Kubernetes OpenAPI schemas offline
  (kubernetes-validate, strict: unknown fields are errors);
- each overlay's RoleBindings bind exactly the account its README row names, and the Roles grant
  exactly the calls the steps make (recorded by running the deploy step against the fake API
  server of tests/test_deploy.py, not listed by hand);
- the InferenceServices the deploy step creates and merge-patches (canary, promote, rollback)
  validate against KServe v0.20.0's CRD schema with unknown fields rejected;
- Deployments are hardened, no credentials are applied, images are pinned, and the S3 endpoint
  is the one pipeline.py gives the steps.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from orchestration import definition as PIPELINE  # the S3 wiring it compiles in

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
BASE = MANIFESTS / "base"
OVERLAYS = {name: MANIFESTS / "overlays" / name for name in ("standalone", "profile")}
COMPONENTS = {name: MANIFESTS / "components" / name
              for name in ("minio", "model-server", "log-receiver", "trigger")}
KUSTOMIZATION = "kustomization.yaml"
EXAMPLE_SUFFIX = ".example.yaml"
VERSIONS_ENV = ROOT / "e2e" / "versions.env"

# The account KFP runs use in each install flavour (manifests/README.md says the same):
# standalone KFP runs as `pipeline-runner` in `kubeflow`; a Kubeflow profile namespace runs as
# `default-editor`, in whatever namespace the profile is (no namespace: the binding's own).
OVERLAY_ACCOUNTS = {
    "standalone": {"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"},
    "profile": {"kind": "ServiceAccount", "name": "default-editor"},
}
OVERLAY_NAMESPACES = {"standalone": "kubeflow", "profile": None}
BINDS_LABEL = ("cfpb-pipeline/binds", "run-account")
PLACEHOLDER_ACCOUNT = "run-account-set-by-overlay"

MODELS = {
    ("apps/v1", "Deployment"): "V1Deployment",
    ("v1", "Service"): "V1Service",
    ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("v1", "Secret"): "V1Secret",
    ("rbac.authorization.k8s.io/v1", "Role"): "V1Role",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "V1RoleBinding",
    ("batch/v1", "CronJob"): "V1CronJob",
}
OWN_IMAGE = re.compile(r"^local/cfpb-pipeline-[a-z]+:latest$")
SECRET_ENV = re.compile(r"(KEY|SECRET|PASSWORD|TOKEN|USER|CREDENTIAL)", re.IGNORECASE)
PLACEHOLDER = "CHANGE_ME"
KSERVE_S3 = "serving.kserve.io/s3-"

needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None,
                                   reason="no kubectl (kustomize builds need `kubectl kustomize`)")


# --- the Kubernetes versions the objects are validated against -----------------------------------
# kubernetes-validate ships the OpenAPI schemas of many Kubernetes releases. Two are checked:
# - 1.33, the floor: Knative Serving 1.21 (what KServe v0.20.0 is built against, needed for the
#   deploy step's canaryTrafficPercent) refuses older clusters (knative.dev/pkg minimum v1.33.0),
#   so nothing here may need a field newer than 1.33;
# - the minor of the kind node image the end-to-end run pins (e2e/versions.env), so what CI
#   would apply is checked against the same release it would run.
KUBERNETES_FLOOR = "1.33"


def _pinned(key: str) -> str:
    for line in VERSIONS_ENV.read_text().splitlines():
        if line.startswith(f"{key}="):
            return line.split("=", 1)[1].strip()
    raise KeyError(f"{VERSIONS_ENV}: no {key}")


def kubernetes_versions() -> list[str]:
    node = re.search(r":v(\d+\.\d+)\.\d+", _pinned("KIND_NODE_IMAGE"))
    return sorted({KUBERNETES_FLOOR, node[1]}, key=lambda v: tuple(map(int, v.split("."))))


# --- source files --------------------------------------------------------------------------------

def _kustomization_dirs() -> list[Path]:
    return sorted(p.parent for p in MANIFESTS.rglob(KUSTOMIZATION))


def _source_files() -> list[Path]:
    return sorted(p for p in MANIFESTS.rglob("*.yaml") if p.name != KUSTOMIZATION)


def _applied_files() -> list[Path]:
    return [p for p in _source_files() if not p.name.endswith(EXAMPLE_SUFFIX)]


def _example_files() -> list[Path]:
    return [p for p in _source_files() if p.name.endswith(EXAMPLE_SUFFIX)]


def _docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _all(files: list[Path] | None = None) -> list[tuple[Path, dict]]:
    return [(path, doc) for path in (files or _source_files()) for doc in _docs(path)]


def _of_kind(kind: str, docs) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def _one(kind: str, name: str, docs=None) -> dict:
    docs = docs if docs is not None else [doc for _p, doc in _all()]
    found = [doc for doc in _of_kind(kind, docs) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _pod_spec(workload: dict) -> dict:
    """The pod spec of a Deployment or a CronJob."""
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return workload["spec"]["template"]["spec"]


def _containers(deployment: dict) -> list[dict]:
    spec = _pod_spec(deployment)
    return [*spec.get("initContainers", []), *spec["containers"]]


WORKLOADS = ("Deployment", "CronJob")


def _endpoint_host() -> str:
    return urlsplit(PIPELINE.S3_ENDPOINT_URL).netloc


def _rel(path: Path) -> str:
    return str(path.relative_to(MANIFESTS))


# --- kustomize builds ----------------------------------------------------------------------------

@cache
def _build(directory: str) -> tuple[dict, ...]:
    result = subprocess.run(["kubectl", "kustomize", directory], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, f"kubectl kustomize {directory}: {result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def build(directory: Path) -> list[dict]:
    return copy.deepcopy(list(_build(str(directory))))


def build_own_overlay(tmp_path: Path, overlay: str, components=(), **fields) -> list[dict]:
    """What a user writes: their overlay over ours, with components and their own fields."""
    own = tmp_path / f"own-{overlay}-{'-'.join(components) or 'plain'}"
    own.mkdir()
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [os.path.relpath(OVERLAYS[overlay], own)],
        **({"components": [os.path.relpath(COMPONENTS[c], own) for c in components]}
           if components else {}),
        **fields,
    }
    (own / KUSTOMIZATION).write_text(yaml.safe_dump(kustomization))
    return build(own)


BUILDS = [("base", ()), *((o, ()) for o in OVERLAYS), *((o, (c,)) for o in OVERLAYS
                                                         for c in COMPONENTS),
          *((o, tuple(COMPONENTS)) for o in OVERLAYS)]


def _build_of(tmp_path: Path, name: str, components: tuple[str, ...]) -> list[dict]:
    if name == "base":
        return build(BASE)
    if not components:
        return build(OVERLAYS[name])
    return build_own_overlay(tmp_path, name, components)


# --- layout --------------------------------------------------------------------------------------

def test_the_layout():
    expected = {
        "README.md", "base/kustomization.yaml", "base/role-deployer.yaml",
        "base/kserve-storage.yaml", "base/kserve-s3-secret.example.yaml",
        "overlays/standalone/kustomization.yaml", "overlays/profile/kustomization.yaml",
        "components/minio/kustomization.yaml", "components/minio/minio.yaml",
        "components/minio/minio-secret.example.yaml",
        "components/model-server/kustomization.yaml", "components/model-server/model-server.yaml",
        "components/trigger/kustomization.yaml", "components/trigger/trigger.yaml",
    }
    present = {_rel(p) for p in MANIFESTS.rglob("*") if p.is_file()}
    assert expected <= present
    # nothing left at the top but the README: every install goes through an overlay
    assert {p.name for p in MANIFESTS.iterdir() if p.is_file()} == {"README.md"}
    assert set(_kustomization_dirs()) == {BASE, *OVERLAYS.values(), *COMPONENTS.values()}


@pytest.mark.parametrize("path", _source_files() + [d / KUSTOMIZATION for d in
                                                    _kustomization_dirs()], ids=_rel)
def test_every_document_parses_and_names_its_object(path):
    docs = _docs(path)
    assert docs, f"{_rel(path)}: no YAML document"
    for doc in docs:
        assert isinstance(doc, dict)
        assert doc.get("apiVersion") and doc.get("kind")
        if path.name != KUSTOMIZATION:
            assert doc["metadata"]["name"]
            # the namespace is the overlay's (standalone) or the user's choice (profile)
            assert "namespace" not in doc["metadata"], f"{_rel(path)}: hard-coded namespace"


def test_every_object_round_trips_through_the_kubernetes_models():
    """Deserializing into the client's models and serializing back gives the same document:
    no misspelled or unknown field (those are dropped) and no wrong type (those raise)."""
    from kubernetes.client import ApiClient

    api = ApiClient()
    seen = set()
    for path, doc in _all():
        model = MODELS.get((doc["apiVersion"], doc["kind"]))
        assert model, f"{_rel(path)}: no model for {doc['apiVersion']} {doc['kind']}"
        obj = api._ApiClient__deserialize(doc, model)
        assert type(obj).__name__ == model
        back = api.sanitize_for_serialization(obj)
        assert back == doc, f"{_rel(path)}: {doc['kind']} {doc['metadata']['name']} lost fields"
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


# --- kustomizations ------------------------------------------------------------------------------

def _kustomization(directory: Path) -> dict:
    return yaml.safe_load((directory / KUSTOMIZATION).read_text())


def test_base_and_components_list_every_applied_file_and_no_example():
    for directory in (BASE, *COMPONENTS.values()):
        kustomization = _kustomization(directory)
        resources = kustomization["resources"]
        assert len(resources) == len(set(resources)), _rel(directory)
        files = {p.name for p in directory.glob("*.yaml") if p.name != KUSTOMIZATION}
        assert set(resources) == {f for f in files if not f.endswith(EXAMPLE_SUFFIX)}
        assert "namespace" not in kustomization, _rel(directory)
    assert _kustomization(BASE)["kind"] == "Kustomization"
    for directory in COMPONENTS.values():
        kustomization = _kustomization(directory)
        assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1alpha1"
        assert kustomization["kind"] == "Component"


def test_no_kustomization_reaches_an_example_file():
    """The example Secrets (placeholders) stay out of every kustomization, whatever the field."""
    for directory in _kustomization_dirs():
        listed = yaml.safe_dump(_kustomization(directory))
        assert EXAMPLE_SUFFIX not in listed, _rel(directory)


def test_overlays_are_the_base_plus_their_binding_only():
    for name, directory in OVERLAYS.items():
        kustomization = _kustomization(directory)
        assert kustomization["kind"] == "Kustomization"
        assert kustomization["resources"] == ["../../base"], name
        assert "components" not in kustomization, f"{name}: components are the user's choice"
        assert kustomization.get("namespace") == OVERLAY_NAMESPACES[name], name
        (patch,) = kustomization["patches"]
        assert patch["target"] == {"group": "rbac.authorization.k8s.io", "kind": "RoleBinding",
                                   "labelSelector": "=".join(BINDS_LABEL)}


@needs_kubectl
@pytest.mark.parametrize("name, components", BUILDS,
                         ids=[f"{n}+{'+'.join(c)}" if c else n for n, c in BUILDS])
def test_kustomize_builds_and_every_object_validates_strictly(tmp_path, name, components):
    """Every object of every build against the Kubernetes OpenAPI schema of each version,
    strict: an unknown or misspelled field fails, as would a wrong type."""
    import kubernetes_validate

    docs = _build_of(tmp_path, name, components)
    assert docs
    for doc in docs:
        for version in kubernetes_versions():
            kubernetes_validate.validate(doc, version, strict=True)
    kinds = {doc["kind"] for doc in docs}
    assert {"Role", "RoleBinding", "ServiceAccount"} <= kinds
    if "minio" in components:
        assert {"Deployment", "Service", "PersistentVolumeClaim"} <= kinds
    if "model-server" in components:
        assert _one("Deployment", "cfpb-model-server", docs)


def test_strict_validation_rejects_an_unknown_field():
    """What makes the test above strict: a misspelled field is an error, not dropped."""
    import kubernetes_validate

    doc = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
           "metadata": {"name": "x"},
           "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "x"},
           "subjects": [{"kind": "ServiceAccount", "name": "x", "namespce": "kubeflow"}]}
    kubernetes_validate.validate({**doc, "subjects": [{"kind": "ServiceAccount", "name": "x"}]},
                                 KUBERNETES_FLOOR, strict=True)
    with pytest.raises(kubernetes_validate.ValidationError, match="namespce"):
        kubernetes_validate.validate(doc, KUBERNETES_FLOOR, strict=True)


@needs_kubectl
def test_overlay_namespaces(tmp_path):
    """Standalone lands in `kubeflow`; the profile overlay follows the namespace the user sets."""
    assert {doc["metadata"]["namespace"] for doc in build(OVERLAYS["standalone"])} == {"kubeflow"}
    assert all("namespace" not in doc["metadata"] for doc in build(OVERLAYS["profile"]))
    docs = build_own_overlay(tmp_path, "profile", tuple(COMPONENTS), namespace="team-a")
    assert {doc["metadata"]["namespace"] for doc in docs} == {"team-a"}
    for binding in _of_kind("RoleBinding", docs):
        if binding["metadata"]["labels"].get(BINDS_LABEL[0]) == BINDS_LABEL[1]:
            assert binding["subjects"] == [OVERLAY_ACCOUNTS["profile"]]  # the binding's ns
        else:  # the trigger binds its own account (components/trigger), in that namespace
            assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "cfpb-trigger",
                                            "namespace": "team-a"}]


@needs_kubectl
def test_model_server_image_is_set_through_kustomize_images(tmp_path):
    default = _one("Deployment", "cfpb-model-server",
                   build_own_overlay(tmp_path, "profile", ("model-server",)))
    assert [c["image"] for c in _containers(default)] == ["local/cfpb-pipeline-serve:latest"]
    pushed = "registry.example.com/ml/cfpb-pipeline-serve:0.1.0-abc1234"
    own = build_own_overlay(tmp_path, "standalone", ("model-server",), images=[{
        "name": "local/cfpb-pipeline-serve", "newName": pushed.split(":")[0],
        "newTag": pushed.split(":")[1]}])
    assert [c["image"] for c in _containers(_one("Deployment", "cfpb-model-server", own))] == [
        pushed]
    readme = (MANIFESTS / "README.md").read_text()
    assert "kustomize edit set image local/cfpb-pipeline-serve=" in readme


# --- RBAC: who is bound, and to exactly what -----------------------------------------------------

ENTRIES = {n: {"version": n, "tensorflow_version": "2.16.2"} for n in (1, 2, 3)}
# canary (create), canary (patch), promote, canary, rollback, rollback: the last is the
# two-phase rollback (stable changes while a canary stays)
DEPLOY_SEQUENCE = (("canary", 1), ("canary", 2), ("promote", 2), ("canary", 3),
                   ("rollback", None), ("rollback", None))
API_PATH = re.compile(r"^/apis/([^/]+)/[^/]+/namespaces/[^/]+/([^/?]+)(/[^/?]+)?")


def _rule_of(method: str, path: str) -> tuple[str, str, str]:
    """The (apiGroup, resource, RBAC verb) of a request to a namespaced custom resource."""
    match = API_PATH.match(path)
    assert match, path
    group, resource, named = match[1], match[2], match[3] is not None
    if method == "GET":
        verb = "watch" if "watch=" in path else ("get" if named else "list")
    else:
        verb = {"POST": "create", "PATCH": "patch", "PUT": "update",
                "DELETE": "delete" if named else "deletecollection"}[method]
    return group, resource, verb


def _deployer_calls() -> set[tuple[str, str, str]]:
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
        for strategy, version in DEPLOY_SEQUENCE:
            kserve.deploy(api, target, "cfpb-disputes", strategy, version, 10,
                          entries=ENTRIES, timeout_seconds=5, poll_seconds=0.01)
        requests = [(method, path) for method, path, _ct, _body in fake.requests]
    finally:
        fake.close()
    assert requests
    return {_rule_of(method, path) for method, path in requests}


# Role name -> the calls its step makes, recorded from the step's code. A new Role (e.g.
# cfpb-pipeline-tuner for Katib's experiments and trials) needs an entry here that records what
# that step calls; its verbs are never listed by hand.
def _tuner_calls() -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) of every call the tune step's katib backend makes, recorded
    against tests/test_tune_katib.py's fake API server over a succeeded and a failed search."""
    from tests.test_tune_katib import verbs_the_tune_step_uses

    groups = {"experiments": "kubeflow.org", "trials": "kubeflow.org", "pods": "",
              "pods/log": ""}
    return {(groups[resource], resource, verb)
            for resource, verb in verbs_the_tune_step_uses()}


ROLE_CALLS = {"cfpb-pipeline-deployer": _deployer_calls, "cfpb-pipeline-tuner": _tuner_calls}


def _base_docs() -> list[dict]:
    return [doc for path, doc in _all() if path.parent == BASE]


def _granted(role: dict) -> set[tuple[str, str, str]]:
    granted = set()
    for rule in role["rules"]:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        assert len(rule["verbs"]) == len(set(rule["verbs"]))
        granted |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"]
                    for v in rule["verbs"]}
    return granted


def test_every_role_has_a_recording_of_its_steps_calls():
    roles = {doc["metadata"]["name"] for doc in _of_kind("Role", _base_docs())}
    missing = roles - set(ROLE_CALLS)
    assert not missing, (f"Roles {sorted(missing)} have no recording of the calls their step "
                         "makes: add one to ROLE_CALLS in tests/test_manifests.py")
    assert set(ROLE_CALLS) <= roles


@pytest.mark.parametrize("role_name", sorted(ROLE_CALLS))
def test_role_grants_exactly_the_calls_its_step_makes(role_name):
    called = ROLE_CALLS[role_name]()
    assert _granted(_one("Role", role_name, _base_docs())) == called


def test_the_deployer_records_get_create_patch_on_inferenceservices():
    """The recording itself: what components/deploy/kserve.py does today."""
    assert _deployer_calls() == {("serving.kserve.io", "inferenceservices", verb)
                                 for verb in ("get", "create", "patch")}


def test_deploy_step_talks_to_kubernetes_only_through_kserve_api():
    """The recorded verbs cover the step: no other Kubernetes API use in components/deploy."""
    calls = set()
    for path in (ROOT / "components" / "deploy").glob("*.py"):
        calls |= set(re.findall(r"client\.(\w+Api)\(", path.read_text()))
    assert calls == {"CustomObjectsApi"}


def test_every_base_role_has_a_binding_the_overlays_rewrite():
    docs = _base_docs()
    for role in _of_kind("Role", docs):
        name = role["metadata"]["name"]
        bindings = [b for b in _of_kind("RoleBinding", docs) if b["roleRef"]["name"] == name]
        assert len(bindings) == 1, f"Role {name}: expected one RoleBinding in base/"
    for binding in _of_kind("RoleBinding", docs):
        assert binding["metadata"]["labels"][BINDS_LABEL[0]] == BINDS_LABEL[1]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": PLACEHOLDER_ACCOUNT}]
        assert binding["roleRef"]["kind"] == "Role"


@needs_kubectl
@pytest.mark.parametrize("overlay", sorted(OVERLAYS))
def test_overlay_binds_every_role_to_its_documented_account(overlay):
    docs = build(OVERLAYS[overlay])
    roles = {doc["metadata"]["name"] for doc in _of_kind("Role", docs)}
    assert roles == set(ROLE_CALLS)
    bindings = _of_kind("RoleBinding", docs)
    for binding in bindings:
        assert binding["subjects"] == [OVERLAY_ACCOUNTS[overlay]], binding["metadata"]["name"]
        assert binding["roleRef"]["apiGroup"] == "rbac.authorization.k8s.io"
    assert sorted(b["roleRef"]["name"] for b in bindings) == sorted(roles)
    assert PLACEHOLDER_ACCOUNT not in yaml.safe_dump_all(docs)
    # runs use KFP's account; the only account the project creates is KServe's storage reader
    accounts = {doc["metadata"]["name"] for doc in _of_kind("ServiceAccount", docs)}
    assert accounts == {"cfpb-model-reader"}


def test_readme_names_the_account_of_each_overlay():
    readme = (MANIFESTS / "README.md").read_text()
    for overlay, account in OVERLAY_ACCOUNTS.items():
        rows = [line for line in readme.splitlines()
                if line.startswith("|") and f"overlays/{overlay}" in line]
        assert rows and any(f"`{account['name']}`" in row for row in rows), overlay


# --- Deployments ---------------------------------------------------------------------------------

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
        assert doc["kind"] != "Secret", f"{_rel(path)}: a Secret belongs in an example file"
        assert PLACEHOLDER not in path.read_text()
        if doc["kind"] not in WORKLOADS:
            continue
        for container in _containers(doc):
            for env in container.get("env", []):
                if SECRET_ENV.search(env["name"]) and env["name"] != "KF_PIPELINES_SA_TOKEN_PATH":
                    assert "value" not in env, f"{_rel(path)}: literal {env['name']}"
                    assert set(env["valueFrom"]) == {"secretKeyRef"}, env["name"]
            for source in container.get("envFrom", []):
                assert set(source) <= {"secretRef", "configMapRef", "prefix"}
    for path in _applied_files():
        text = path.read_text().lower()
        for known_default in ("minioadmin", "minio123"):  # MinIO's and KFP's stock credentials
            assert known_default not in text, f"{_rel(path)}: {known_default}"


@needs_kubectl
def test_no_secret_in_any_build(tmp_path):
    for name, components in BUILDS:
        docs = _build_of(tmp_path, name, components)
        assert not _of_kind("Secret", docs), (name, components)


def test_example_secrets_hold_placeholders_only_and_say_so():
    examples = _example_files()
    assert {_rel(p) for p in examples} == {"components/minio/minio-secret.example.yaml",
                                           "base/kserve-s3-secret.example.yaml"}
    for path in examples:
        text = path.read_text()
        assert "EXAMPLE ONLY" in text and "CHANGE THEM" in text
        assert f"cp manifests/{_rel(path)} " in text  # the copy command names the real path
        for doc in _docs(path):
            assert doc["kind"] == "Secret"
            assert "data" not in doc  # base64 would hide what the values are
            assert doc["stringData"]
            for key, value in doc["stringData"].items():
                assert value.startswith(PLACEHOLDER), f"{_rel(path)}: {key} is not a placeholder"


def test_images_are_pinned():
    readme = (MANIFESTS / "README.md").read_text()
    for path, doc in _all():
        if doc["kind"] not in WORKLOADS:
            continue
        for container in _containers(doc):
            image = container["image"]
            if OWN_IMAGE.match(image):
                # our own image, built locally: its component sets it through kustomize
                # `images:` and the README says how to name the pushed one
                assert "REGISTRY" in readme and "TAG" in readme and "images:" in readme
                repository = image.rsplit(":", 1)[0]
                images = _kustomization(path.parent).get("images") or []
                assert repository in {entry["name"] for entry in images}, _rel(path)
                continue
            assert "@sha256:" in image or re.search(r":[^/:]+$", image), image
            assert not image.endswith(":latest"), f"{_rel(path)}: {image} is not pinned"


def test_minio_deployment():
    deployment = _one("Deployment", "cfpb-minio")
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert re.fullmatch(r"minio/minio:RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ",
                        container["image"])
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    example = _docs(COMPONENTS["minio"] / "minio-secret.example.yaml")[0]
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


# --- S3 endpoint ---------------------------------------------------------------------------------

def test_s3_endpoint_is_the_pipelines_where_it_means_kfps_minio():
    host = _endpoint_host()
    kfp_service = host.split(".")[0]
    assert host == "seaweedfs.kubeflow:9000"  # KFP >= 2.16's object store
    checked = 0
    for path, doc in _all():
        if doc["kind"] in WORKLOADS:
            for container in _containers(doc):
                for env in container.get("env", []):
                    if env["name"] == "S3_ENDPOINT_URL" and kfp_service in env["value"]:
                        assert env["value"] == PIPELINE.S3_ENDPOINT_URL, _rel(path)
                        checked += 1
        for key, value in (doc["metadata"].get("annotations") or {}).items():
            if key == f"{KSERVE_S3}endpoint" and kfp_service in value:
                assert value == host, _rel(path)  # KServe wants host:port, no scheme
                checked += 1
    assert checked >= 3  # the model server, the trigger and the KServe Secret


# --- KServe storage ------------------------------------------------------------------------------

def test_kserve_storage_account_references_an_annotated_secret():
    account = _one("ServiceAccount", "cfpb-model-reader")
    (reference,) = account["secrets"]
    assert set(reference) == {"name"}  # by name only: the Secret is the user's, never applied
    secret = _one("Secret", reference["name"])
    annotations = secret["metadata"]["annotations"]
    assert annotations[f"{KSERVE_S3}usehttps"] == "0"
    assert annotations[f"{KSERVE_S3}region"]
    assert annotations[f"{KSERVE_S3}endpoint"] == _endpoint_host()
    assert PIPELINE.S3_ENDPOINT_URL.startswith("http://")  # hence usehttps "0"
    assert set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


# --- the InferenceServices the deploy step sends, against KServe's CRD schema --------------------

KSERVE_CRD = "kserve-v0.20.0-serving.kserve.io_inferenceservices.yaml"
CRD_SCHEMAS_DIR = Path(os.environ.get("CFPB_CRD_SCHEMAS_DIR")
                       or ROOT.parent / "shared" / "schemas")


def closed(schema):
    """A CRD's openAPIV3Schema as JSON Schema with unknown fields rejected: every object schema
    that has `properties` and no `x-kubernetes-preserve-unknown-fields` gets
    `additionalProperties: false` (unless it says otherwise); `nullable` allows null."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: closed(value) for key, value in schema.items()}
    if ("properties" in out and not schema.get("x-kubernetes-preserve-unknown-fields")
            and "additionalProperties" not in out):
        out["additionalProperties"] = False
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


@cache
def _inference_service_validator():
    import jsonschema

    path = CRD_SCHEMAS_DIR / KSERVE_CRD
    if not path.is_file():
        pytest.skip(f"KServe's CRD schema {path} is not here (set CFPB_CRD_SCHEMAS_DIR to the "
                    "folder with the published v0.20.0 CRD YAML)")
    (crd,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert crd["spec"]["names"]["kind"] == "InferenceService"
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    schema = closed(version["schema"]["openAPIV3Schema"])
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch, as the API server applies it (null removes a field)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _deployed_objects() -> list[tuple[str, dict]]:
    """What the InferenceService is after each request the deploy step sends over
    DEPLOY_SEQUENCE: the created object, then each merge patch applied to the object before."""
    from components.deploy import kserve

    target = kserve.Target(namespace="team", name="cfpb-disputes",
                           storage_uri_prefix="s3://mlpipeline/cfpb/models",
                           service_account="cfpb-model-reader",
                           payload_log_url="http://cfpb-log-receiver.team:8080/v1/log")
    current, out = None, []
    for step, (strategy, version) in enumerate(DEPLOY_SEQUENCE, 1):
        rollout = kserve.plan(current, target, "cfpb-disputes", strategy, version, 10, ENTRIES)
        if rollout.create is not None:
            current = copy.deepcopy(rollout.create)
            out.append((f"{step}. {strategy} {version}: create", current))
        for n, patch in enumerate(rollout.patches, 1):
            current = merge_patch(current, patch)
            out.append((f"{step}. {strategy} {version}: patch {n}/{len(rollout.patches)}",
                        current))
    return out


def _schema_errors(obj: dict) -> list[str]:
    validator = _inference_service_validator()
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(obj)]


def test_the_deploy_sequence_covers_create_canary_promote_and_two_phase_rollback():
    objects = _deployed_objects()
    whats = [what for what, _obj in objects]
    assert whats[0].endswith("create") and sum("create" in w for w in whats) == 1
    assert any(w.endswith("patch 1/2") for w in whats) and any(w.endswith("patch 2/2")
                                                                for w in whats)
    percents = [obj["spec"]["predictor"].get("canaryTrafficPercent") for _w, obj in objects]
    assert 10 in percents and None in percents  # a canary split, and 100% (field removed)


def test_inference_services_the_deploy_step_sends_validate_against_kserve_v0_20():
    import kubernetes_validate

    for what, obj in _deployed_objects():
        assert obj["apiVersion"] == "serving.kserve.io/v1beta1" and obj["kind"] == (
            "InferenceService")
        assert not _schema_errors(obj), (what, _schema_errors(obj))
        # the CRD leaves metadata to the API server: check it as Kubernetes' ObjectMeta
        for version in kubernetes_versions():
            kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap",
                                          "metadata": obj["metadata"]}, version, strict=True)


def test_the_crd_check_rejects_unknown_fields_and_wrong_types():
    _what, obj = _deployed_objects()[1]
    predictor = obj["spec"]["predictor"]
    assert not _schema_errors(obj)
    typo = merge_patch(obj, {"spec": {"predictor": {"canaryTraficPercent": 10}}})
    assert any("canaryTraficPercent" in e for e in _schema_errors(typo))
    nested = merge_patch(obj, {"spec": {"predictor": {"model": {"runtimeVersions": "2.16.1"}}}})
    assert any("runtimeVersions" in e for e in _schema_errors(nested))
    wrong_type = merge_patch(obj, {"spec": {"predictor": {"canaryTrafficPercent": "10"}}})
    assert _schema_errors(wrong_type)
    assert predictor["canaryTrafficPercent"] == 10


def test_merge_patch_follows_rfc_7386():
    assert merge_patch({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": None, "e": [1]}, "d": 4}) == {
        "a": {"c": 2, "e": [1]}, "d": 4}
    assert merge_patch({"a": [1, 2]}, {"a": [3]}) == {"a": [3]}  # lists are replaced whole


# --- README --------------------------------------------------------------------------------------

def test_readme_covers_every_file_and_how_to_apply():
    readme = (MANIFESTS / "README.md").read_text()
    for overlay in OVERLAYS:
        assert f"kubectl apply -k manifests/overlays/{overlay}" in readme
    for component in COMPONENTS:
        assert f"components/{component}" in readme
    for path in _source_files():
        assert f"`{path.name}`" in readme, _rel(path)
    assert PLACEHOLDER in readme
    assert "kind: Component" in readme


# --- the trigger (components/trigger) --------------------------------------------------------

def test_trigger_cronjob_polls_once_with_an_account_that_may_only_create_runs():
    """The CronJob runs `components.trigger --run kfp --once` (its arguments parse with the
    trigger's own CLI), hardened like the Deployments; its account is granted `create` on KFP
    runs and nothing else (the requests the trigger makes are recorded in
    tests/test_pipeline_trigger.py: healthz, then POST runs), gets no Kubernetes API token, and
    the KFP API token is projected with KFP's audience where kfp.Client reads it."""
    from components.trigger.__main__ import build_parser

    cronjob = _one("CronJob", "cfpb-trigger")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    job = cronjob["spec"]["jobTemplate"]["spec"]
    pod = _pod_spec(cronjob)
    assert pod["serviceAccountName"] == "cfpb-trigger"
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"
    assert job["backoffLimit"] == 0
    (container,) = pod["containers"]
    assert container["command"][:3] == ["python", "-m", "components.trigger"]
    args = build_parser().parse_args(container["command"][3:])
    assert args.run == "kfp" and args.once
    assert args.store == "s3://mlpipeline/cfpb/datasets"  # the pipeline's data_store default
    source = (ROOT / "orchestration" / "definition.py").read_text()
    assert f'data_store: str = "{args.store}"' in source
    assert args.host == "http://ml-pipeline.kubeflow:8888"
    assert args.package.startswith("s3://") and args.package.endswith(".yaml")
    security = {**pod["securityContext"], **container["securityContext"]}
    assert security["runAsNonRoot"] is True and security["runAsUser"] != 0
    assert security["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    env = {e["name"]: e for e in container["env"]}
    for key, variable in PIPELINE.S3_SECRET_KEYS.items():
        assert env[variable]["valueFrom"]["secretKeyRef"] == {"name": PIPELINE.S3_SECRET,
                                                               "key": key}
    token_dir = env["KF_PIPELINES_SA_TOKEN_PATH"]["value"].rsplit("/", 1)[0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    (projected,) = volumes["kfp-token"]["projected"]["sources"]
    assert mounts["kfp-token"] == token_dir
    assert projected["serviceAccountToken"]["audience"] == "pipelines.kubeflow.org"
    assert env["KF_PIPELINES_SA_TOKEN_PATH"]["value"].endswith(
        "/" + projected["serviceAccountToken"]["path"])
    account = _one("ServiceAccount", "cfpb-trigger")
    assert account["automountServiceAccountToken"] is False
    role = _one("Role", "cfpb-trigger")
    assert _granted(role) == {("pipelines.kubeflow.org", "runs", "create")}
    binding = _one("RoleBinding", "cfpb-trigger")
    assert binding["roleRef"]["name"] == "cfpb-trigger"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "cfpb-trigger"}]
    assert BINDS_LABEL[0] not in binding["metadata"]["labels"]  # overlays leave it alone


@needs_kubectl
def test_trigger_keeps_its_own_account_in_every_overlay(tmp_path):
    for overlay in OVERLAYS:
        docs = build_own_overlay(tmp_path, overlay, ("trigger",))
        binding = _one("RoleBinding", "cfpb-trigger", docs)
        assert [s["name"] for s in binding["subjects"]] == ["cfpb-trigger"]
        assert _one("CronJob", "cfpb-trigger", docs)
