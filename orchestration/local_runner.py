"""The pipeline without a cluster: every step in its own container image, through kfp.local.

`pipeline.py --run local` calls `run_local`. The work directory holds the pipeline root (one
folder per run), the data store and the model registry, so runs remember: each run validates
its data against the last clean data version in the store and evaluates its model against the
registry's current version. The run ends with a summary for a person, also written as JSON.
A run whose data the store already holds (ingest's `new_data` false) succeeds with every later
step "skipped: no new data" (each skipped by the gate in its own container) and says so.
"""

import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

from components.common import build_facts
from orchestration.definition import PIPELINE_NAME, build_pipeline

ANSI = re.compile(r"\x1b\[[0-9;]*m")
SAMPLE_ROWS, SAMPLE_SEED = 20_000, 42
S3_ENV = ("S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
          "AWS_REGION")


class RunWatcher:
    """Passes kfp.local's output through, noting each task's start, end and status (from its
    log lines) and the containers' `error: <step>: ...` lines.

    kfp.local replaces the root logger's handlers with one writing to sys.stdout, so its
    output is the one place where both its own events and the containers' logs pass.
    """

    START = re.compile(r"Executing task '([^']+)'")
    END = re.compile(r"Task '([^']+)' finished with status (\w+)")

    def __init__(self, stream):
        self._stream = stream
        self.started: dict[str, float] = {}
        self.finished: dict[str, tuple[float, str]] = {}
        self.errors: list[str] = []

    def write(self, text: str) -> int:
        for line in ANSI.sub("", text).splitlines():
            if match := self.START.search(line):
                self.started.setdefault(match.group(1), time.time())
            elif match := self.END.search(line):
                self.finished[match.group(1)] = (time.time(), match.group(2).lower())
            elif line.strip().startswith("error: "):
                self.errors.append(line.strip()[len("error: "):])
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name):
        return getattr(self._stream, name)


def sample_source(workdir: Path) -> Path:
    """The demo data, generated deterministically once (the same bytes on every machine)."""
    path = workdir / "data" / f"complaints-{SAMPLE_ROWS}-{SAMPLE_SEED}.csv"
    if not path.exists():
        subprocess.run([sys.executable, "-m", "datagen", "--rows", str(SAMPLE_ROWS),
                        "--seed", str(SAMPLE_SEED), "--out", str(path)],
                       cwd=build_facts.ROOT, check=True)
    return path


def missing_images(registry: str, tag: str) -> list[str]:
    import docker

    client = docker.from_env()
    tags = {t for image in client.images.list() for t in image.tags}
    return [name for step in build_facts.training_steps()
            if (name := build_facts.image_name(step, registry, tag)) not in tags]


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _outputs(task_dir: Path) -> tuple[dict, dict]:
    """(artifact metadata by name, output parameters) from a task's executor output."""
    output = _read_json(task_dir / "executor_output.json")
    artifacts = {name: (entry.get("artifacts") or [{}])[0]
                 for name, entry in (output.get("artifacts") or {}).items()}
    return artifacts, output.get("parameterValues") or {}


SKIPPED_NO_NEW_DATA = "skipped: no new data"


def _skipped(artifacts: dict) -> bool:
    """The step's outputs were reported by the no-new-data gate (components/common/gate.py)."""
    from components.common.gate import SKIPPED, SKIPPED_KEY

    return bool(artifacts) and all((a.get("metadata") or {}).get(SKIPPED_KEY) == SKIPPED
                                   for a in artifacts.values())


def build_summary(run_dir: Path | None, recorder: RunWatcher, failed: str | None,
                  reason: str | None, registry: Path, model_name: str) -> dict:
    names = build_facts.training_steps()
    outputs = {step: _outputs(run_dir / step) if run_dir else ({}, {}) for step in names}
    steps = []
    for step in names:
        start = recorder.started.get(step)
        end, status = recorder.finished.get(step, (None, None))
        if status is None:
            status = "failure" if step == failed else ("interrupted" if start else "not run")
        elif status == "success" and run_dir and not (run_dir / step / "executor_output.json"
                                                      ).exists():
            # kfp.local reports success when a fast-failing container is gone before it asks
            # for the exit code; a step that wrote no outputs did not succeed.
            status = "no outputs"
        elif status == "success" and _skipped(outputs[step][0]):
            status = SKIPPED_NO_NEW_DATA
        seconds = round(end - start, 1) if start and end else None
        steps.append({"name": step, "status": status, "seconds": seconds})
    artifacts = {step: outputs[step][0] for step in outputs}
    params = {step: outputs[step][1] for step in outputs}
    metrics = artifacts["evaluate"].get("metrics", {}).get("metadata", {})
    reports = {step: artifacts[step].get("report", {}).get("uri")
               for step in ("validate", "evaluate")
               if artifacts[step].get("report") and not _skipped(artifacts[step])}
    new_data = params["ingest"].get("new_data")
    return {
        "run": str(run_dir) if run_dir else None,
        "succeeded": failed is None and all(s["status"] in ("success", SKIPPED_NO_NEW_DATA)
                                            for s in steps),
        "failed_step": failed,
        "reason": reason,
        "steps": steps,
        "new_data": new_data,
        "dataset_version": params["ingest"].get("dataset_version"),
        "anomalies_found": params["validate"].get("anomalies_found"),
        "metrics": {k: v for k, v in metrics.items()
                    if k in ("auc", "pr_auc", "accuracy", "precision", "recall", "f1",
                             "log_loss")},
        "blessed": params["evaluate"].get("blessed"),
        "model_version": params["push"].get("model_version") or None,
        "deployed": params["deploy"].get("deployed"),
        "deployment_revision": params["deploy"].get("revision") or None,
        "registry": str(registry / model_name),
        "reports": reports,
    }


def print_summary(summary: dict) -> None:
    print("\n== local run summary ==")
    for step in summary["steps"]:
        seconds = f"{step['seconds']:.1f} s" if step["seconds"] is not None else ""
        print(f"  {step['name']:<10} {step['status']:<12} {seconds}")
    if summary["failed_step"]:
        print(f"  FAILED at {summary['failed_step']}: {summary['reason']}")
    if summary.get("new_data") is False:
        print(f"  no new data: {summary['dataset_version']} is already in the data store; "
              "every step after ingest skipped itself")
        return
    print(f"  dataset version:  {summary['dataset_version']}")
    print(f"  anomalies found:  {summary['anomalies_found']}")
    shown = ", ".join(f"{k}={v:.4f}" for k, v in summary["metrics"].items()
                      if isinstance(v, int | float))
    print(f"  metrics:          {shown or '-'}")
    print(f"  blessed:          {summary['blessed']}")
    print(f"  model version:    {summary['model_version'] or 'none pushed'}")
    print(f"  deployed:         {summary['deployed']} (canary, deployment revision "
          f"{summary['deployment_revision']})")
    print(f"  registry:         {summary['registry']}")
    for step, uri in summary["reports"].items():
        print(f"  {step} report: {uri}")


def run_local(source: str | None, workdir: str, fail_on_anomalies: bool, hparams: str,
              image_registry: str, image_tag: str, model_name: str = "cfpb-disputes",
              tune: bool = False, memory_limit: str | None = None) -> int:
    """`memory_limit` (Docker's size, e.g. "1g"): each step's container gets it as its memory
    limit, swap included (none), as a pod's limit: a step that needs more is killed."""
    import docker
    from kfp import local

    work = Path(workdir).resolve()
    root, store, registry = work / "pipeline_root", work / "store", work / "registry"
    for directory in (root, store, registry):
        directory.mkdir(parents=True, exist_ok=True)  # owned by this user, not by Docker
    missing = missing_images(image_registry, image_tag)
    if missing:
        print(f"error: local run: images not built: {', '.join(missing)}; run "
              f"`make build-images TAG={image_tag}`", file=sys.stderr)
        return 2
    if source is None:
        source = str(sample_source(work))
    mounts = [docker.types.Mount(str(work), str(work), type="bind")]
    if "://" not in source:
        source = str(Path(source).resolve())
        if not source.startswith(str(work) + os.sep):
            folder = str(Path(source).parent)
            mounts.append(docker.types.Mount(folder, folder, type="bind", read_only=True))
    environment = {key: os.environ[key] for key in S3_ENV if os.environ.get(key)}
    limits = {"mem_limit": memory_limit, "memswap_limit": memory_limit} if memory_limit else {}
    local.init(runner=local.DockerRunner(mounts=mounts, environment=environment,
                                         user=f"{os.getuid()}:{os.getgid()}", **limits),
               pipeline_root=str(root), raise_on_error=True)
    # Resources, display names, caching: cluster settings kfp.local ignores, with a warning each.
    warnings.filterwarnings("ignore", message=r"'\.\w+\(\)' is not used by the current local")
    # kfp.local runs no conditions (ARCHITECTURE.md): push and deploy gate themselves.
    from orchestration.images import digests

    training_pipeline = build_pipeline(s3_endpoint_url=None, s3_secret=None,
                                       image_registry=image_registry, image_tag=image_tag,
                                       gates="in-step",
                                       image_digests=digests(image_registry, image_tag))
    watcher = RunWatcher(sys.stdout)
    started = time.time()
    failed = reason = None
    sys.stdout = watcher
    try:
        training_pipeline(source=source, data_store=str(store), registry=str(registry),
                          model_name=model_name, fail_on_anomalies=fail_on_anomalies,
                          hparams=hparams, deploy_target="local", tune=tune,
                          tune_backend="local")
    except RuntimeError as exc:
        message = ANSI.sub("", str(exc))
        match = re.search(r"Inner task failed: '([^']+)'", message)
        failed = match.group(1) if match else "pipeline"
        reason = next((e for e in reversed(watcher.errors) if e.startswith(f"{failed}:")),
                      None) or message
    finally:
        sys.stdout = watcher._stream
    runs = sorted(root.glob(f"{PIPELINE_NAME}-*"), key=lambda p: p.stat().st_mtime)
    run_dir = runs[-1] if runs and runs[-1].stat().st_mtime >= started - 1 else None
    summary = build_summary(run_dir, watcher, failed, reason, registry, model_name)
    summary["seconds"] = round(time.time() - started, 1)
    summary["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    if run_dir:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        latest = work / "latest"
        if latest.is_symlink() or not latest.exists():
            latest.unlink(missing_ok=True)
            latest.symlink_to(run_dir)
    print_summary(summary)
    if failed:
        print(f"error: local run: step {failed} failed: {reason}", file=sys.stderr)
        return 1
    return 0
