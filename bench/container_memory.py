"""Peak memory of each step's container while a local run goes on, read from its cgroup.

What a pod's memory limit is held against is the container's cgroup, not one process: this
samples every running container of the step images (`<registry>/cfpb-pipeline-<step>:<tag>`)
a few times a second and keeps, per step, the largest
- `rss`: anonymous memory of all the container's processes (cgroup v1 `memory.stat` total_rss,
  v2 `memory.stat` anon), sampled: a spike shorter than the interval can be missed;
- `working_set`: usage minus inactive file pages, sampled: what the kubelet and `kubectl top`
  report and what eviction looks at (shared libraries the step has mapped count, page cache it
  no longer touches does not);
- `usage`: the cgroup's own peak counter (v1 `memory.max_usage_in_bytes`, v2 `memory.peak`),
  which includes the page cache of files the step wrote or read (reclaimable: the kernel
  drops it before a limit is hit), read last just before the container ends.
A cgroup is gone once its container exits, so a step shorter than the interval may go unseen.
"""

from __future__ import annotations

import threading
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")
MIB = 1 << 20
FIGURES = ("rss_mib", "working_set_mib", "usage_mib")


def _cgroup_dir(container_id: str) -> Path | None:
    for candidate in (CGROUP / "memory" / "docker" / container_id,  # v1, cgroupfs driver
                      CGROUP / "memory" / "system.slice" / f"docker-{container_id}.scope",
                      CGROUP / "docker" / container_id,  # v2, cgroupfs driver
                      CGROUP / "system.slice" / f"docker-{container_id}.scope"):
        if candidate.is_dir():
            return candidate
    return None


def _read(directory: Path) -> tuple[int, int, int] | None:
    """(anonymous memory, working set, peak usage) of a cgroup now, in bytes; None once it is
    gone. The working set is usage minus inactive file pages: what the kubelet and `kubectl
    top` report and evict on."""
    try:
        stat = dict(line.split() for line in (directory / "memory.stat").read_text().splitlines())
        if (directory / "memory.max_usage_in_bytes").exists():  # v1
            usage = int((directory / "memory.usage_in_bytes").read_text())
            return (int(stat["total_rss"]), usage - int(stat["total_inactive_file"]),
                    int((directory / "memory.max_usage_in_bytes").read_text()))
        usage = int((directory / "memory.current").read_text())
        peak = directory / "memory.peak"
        return (int(stat["anon"]), usage - int(stat["inactive_file"]),
                int(peak.read_text()) if peak.exists() else usage)
    except (OSError, KeyError, ValueError):
        return None


class ContainerMemory:
    """Use as a context manager around a run; `peaks` is {step: {figure: MiB}} (FIGURES)."""

    def __init__(self, image_prefix: str, interval: float = 0.2):
        self.image_prefix = image_prefix  # e.g. "local/cfpb-pipeline-"
        self.interval = interval
        self.peaks: dict[str, dict[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> ContainerMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _step_of(self, container) -> str | None:
        image = container.attrs.get("Config", {}).get("Image", "")  # the name it was run as
        if image.startswith(self.image_prefix):
            return image[len(self.image_prefix):].split(":", 1)[0]
        return None

    def _sample(self) -> None:
        import docker

        client = docker.from_env()
        known: dict[str, tuple[str, Path]] = {}  # container id -> (step, cgroup directory)
        while not self._stop.is_set():
            try:
                running = client.containers.list()
            except docker.errors.DockerException:
                running = []
            for container in running:
                if container.id not in known:
                    step = self._step_of(container)
                    directory = _cgroup_dir(container.id)
                    if step and directory:
                        known[container.id] = (step, directory)
            for container_id, (step, directory) in list(known.items()):
                read = _read(directory)
                if read is None:
                    del known[container_id]
                    continue
                peak = self.peaks.setdefault(step, dict.fromkeys(FIGURES, 0.0))
                for name, value in zip(FIGURES, read, strict=True):
                    peak[name] = max(peak[name], value / MIB)
            self._stop.wait(self.interval)
