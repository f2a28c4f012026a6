"""Size of each step image, against the goals: TensorFlow images at most 1.3 GB, the others 0.3 GB.

    python3 bench/bench_images.py [--registry local] [--tag <version>-<git sha>]
        [--out bench/out/bench_images.json] [--no-run] [STEP ...]

`make image-sizes` runs it for the images `make build-images` just built (same REGISTRY, TAG).
The images, their names and the default tag come from components/common/build_facts.py (no
STEP: every image there, services such as serve included). Standard library only; talks to the
Docker daemon through its API socket (DOCKER_HOST, default /var/run/docker.sock) and runs each
image with the `docker` CLI. Per image:

- size: what `docker images` shows, uncompressed, MB = 10^6 bytes (a registry stores layers
  compressed, roughly a third of this);
- shared / unique: bytes in layers the image shares with any other local image (the base
  layers; transform, train and evaluate share one venv layer) and bytes only it has;
- tensorflow: whether `tensorflow` is importable in the image (decides its goal); with
  --no-run, whether the image's pyproject extra requires it and the image does not prune it;
- help_s: wall time of `docker run --rm <image> python -m components.<step> --help`, container
  start included (unless --no-run); import_tf_s: the same for `python -c "import tensorflow"`
  in the TensorFlow images, the start-up cost of those steps.

Prints a Markdown table and writes the same figures as JSON. Judges nothing (exit 0) unless
an image is missing (exit 1); `within_goal` says whether each image meets its goal.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
import tomllib

from benchlib import OUT, build_facts, write_json

GOAL_TF_MB = 1300
GOAL_OTHER_MB = 300
MB = 1_000_000


def requires_tensorflow(step: str) -> bool:
    """Whether the image of `step` should carry TensorFlow, from the build facts: its
    pyproject extra lists `tensorflow` and the image does not prune it. False for an image
    build_facts does not know."""
    try:
        spec = build_facts.image(step)
    except KeyError:
        return False
    pyproject = tomllib.loads((build_facts.ROOT / "pyproject.toml").read_text())
    extra = pyproject["project"]["optional-dependencies"].get(spec.extra, [])
    names = {re.split(r"[^A-Za-z0-9._-]", requirement, maxsplit=1)[0].lower()
             for requirement in extra}
    return "tensorflow" in names and "tensorflow" not in spec.prune


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 300):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def docker_api(endpoint: str):
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        raise SystemExit(f"error: bench_images: only unix:// DOCKER_HOST is supported ({host})")
    conn = _UnixConnection(host[len("unix://"):])
    try:
        conn.request("GET", endpoint)
        response = conn.getresponse()
        body = response.read()
    except OSError as exc:
        raise SystemExit(
            f"error: bench_images: Docker daemon not reachable at {host}: {exc}") from None
    finally:
        conn.close()
    if response.status != 200:
        raise SystemExit(
            f"error: bench_images: GET {endpoint}: HTTP {response.status} {body[:200]!r}")
    return json.loads(body)


def docker_run(image: str, *command: str, timeout: int = 300) -> tuple[int, str, float]:
    start = time.perf_counter()
    done = subprocess.run(["docker", "run", "--rm", image, *command], capture_output=True,
                          text=True, timeout=timeout)
    return done.returncode, done.stdout + done.stderr, time.perf_counter() - start


def measure(images: dict[str, str], run: bool) -> list[dict]:
    by_tag = {}
    for entry in docker_api("/system/df").get("Images") or []:
        for tag in entry.get("RepoTags") or []:
            by_tag[tag] = entry
    rows = []
    for step, image in images.items():
        entry = by_tag.get(image)
        if entry is None:
            rows.append({"step": step, "image": image, "missing": True})
            continue
        size, shared = entry["Size"], max(entry.get("SharedSize", 0), 0)
        row = {
            "step": step, "image": image, "id": entry["Id"],
            "created": dt.datetime.fromtimestamp(entry["Created"], dt.UTC).isoformat(),
            "code_version": (entry.get("Labels") or {}).get("org.opencontainers.image.version"),
            "size_mb": round(size / MB, 1), "shared_mb": round(shared / MB, 1),
            "unique_mb": round((size - shared) / MB, 1),
        }
        if run:
            code, out, _ = docker_run(image, "python", "-c",
                                      "import importlib.util as u; "
                                      "print(u.find_spec('tensorflow') is not None)")
            if code != 0:
                raise SystemExit(f"error: bench_images: {image} does not run python: {out[-300:]}")
            row["tensorflow"] = out.strip().splitlines()[-1] == "True"
            code, out, seconds = docker_run(image, "python", "-m", f"components.{step}", "--help")
            row["help_s"] = round(seconds, 2) if code == 0 else None
            if row["tensorflow"]:
                code, out, seconds = docker_run(image, "python", "-c", "import tensorflow")
                row["import_tf_s"] = round(seconds, 2) if code == 0 else None
        else:  # what the image is built to hold
            row["tensorflow"] = requires_tensorflow(step)
        row["goal_mb"] = GOAL_TF_MB if row["tensorflow"] else GOAL_OTHER_MB
        row["within_goal"] = row["size_mb"] <= row["goal_mb"]
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| step | image | size MB | unique MB | shared MB | TensorFlow | goal MB "
             "| within goal | --help s | import tf s |",
             "| --- | --- | ---: | ---: | ---: | --- | ---: | --- | ---: | ---: |"]
    for r in rows:
        if r.get("missing"):
            lines.append(f"| {r['step']} | {r['image']} | missing | | | | | | | |")
            continue
        help_s = "" if r.get("help_s") is None else f"{r['help_s']:.1f}"
        tf_s = "" if r.get("import_tf_s") is None else f"{r['import_tf_s']:.1f}"
        lines.append(
            f"| {r['step']} | {r['image']} | {r['size_mb']:.0f} | {r['unique_mb']:.0f} "
            f"| {r['shared_mb']:.0f} | {'yes' if r['tensorflow'] else 'no'} | {r['goal_mb']} "
            f"| {'yes' if r['within_goal'] else 'NO'} | {help_s} | {tf_s} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("steps", nargs="*", default=[i.name for i in build_facts.IMAGES],
                        metavar="STEP", help="default: every image in build_facts.IMAGES")
    parser.add_argument("--registry", default=build_facts.DEFAULT_REGISTRY)
    parser.add_argument("--tag", default=None, help="default: <version>-<git short sha>")
    parser.add_argument("--out", default=str(OUT / "bench_images.json"))
    parser.add_argument("--no-run", action="store_true",
                        help="do not start containers (no TensorFlow probe, no --help timing)")
    args = parser.parse_args(argv)
    tag = args.tag or build_facts.image_tag()
    for step in args.steps:
        if not re.fullmatch(r"[a-z0-9-]+", step):
            parser.error(f"bad step name {step!r}")
    images = {s: build_facts.image_name(s, args.registry, tag) for s in args.steps}
    rows = measure(images, run=not args.no_run)
    print(markdown(rows))
    result = {
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "registry": args.registry, "tag": tag, "unit": "MB = 10^6 bytes, uncompressed",
        "goals_mb": {"tensorflow": GOAL_TF_MB, "other": GOAL_OTHER_MB},
        "images": rows,
    }
    print(f"\nwritten: {write_json(args.out, result)}")
    missing = [r["image"] for r in rows if r.get("missing")]
    if missing:
        print(f"error: bench_images: not built: {', '.join(missing)} (make build-images)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
