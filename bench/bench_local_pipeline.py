"""Wall time of the whole pipeline run locally in containers, per step, as rows grow.

    .venv-sdk/bin/python bench/bench_local_pipeline.py [--rows 20000 200000] [--repeat N]
        [--memory-limit 1g] [--workdir bench/out]

Needs the step images (`make build-images`; the tag defaults to build_facts.image_tag()). For
each row count it generates complaints with datagen (once, reused while the name matches:
`<workdir>/complaints-<rows>-seed<seed>.csv`), runs `pipeline.py --run local` in a fresh work
directory (so every run is a first run: no baseline data version, no registry version), and
reads the run's summary.json, while `container_memory.ContainerMemory` samples each step
container's cgroup. Then, per step image, where the fixed cost goes (`fixed_costs`): starting
a container (`docker run --rm <image> true`) and starting Python with the libraries the step
loads before its work (STEP_LIBRARIES), each the median of three runs; the rest of a step's
time is its own work, its exit and kfp.local's bookkeeping. Prints Markdown tables of per-step
seconds (with the growth factor between row counts), the fixed costs and per-step container
memory, and writes `<workdir>/bench_local_pipeline.json`. Judges nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchlib import OUT, PYTHON, REPO, build_facts, ensure_data, write_json
from container_memory import ContainerMemory

# What each step imports before it starts its work: its CLI module and the libraries its
# core loads (lazily, inside functions) on a normal run.
STEP_LIBRARIES = {
    "ingest": ["components.ingest.ingest", "numpy", "pyarrow.compute",
               "tfx_bsl.coders.example_coder"],
    "validate": ["components.validate.validation", "tensorflow_data_validation",
                 "apache_beam", "matplotlib.pyplot"],
    "transform": ["components.transform.preprocessing", "tensorflow"],
    "tune": ["components.tune.tune"],
    "train": ["components.train.train", "tensorflow", "sklearn.isotonic",
              "sklearn.linear_model"],
    "evaluate": ["components.evaluate.evaluate", "tensorflow", "sklearn.metrics",
                 "matplotlib.pyplot"],
    "push": ["components.push.push"],
    "deploy": ["components.deploy.deploy"],
}


def _median_seconds(command: list[str], runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        started = time.monotonic()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.monotonic() - started)
    return statistics.median(times)


def fixed_costs(image_tag: str, steps: list[str]) -> dict[str, dict[str, float]]:
    """{step: {"container": s, "python_and_libraries": s}}: a container's start and end with
    nothing to run, and Python's start with the step's libraries on top of it."""
    costs = {}
    for step in steps:
        image = build_facts.image_name(step, build_facts.DEFAULT_REGISTRY, image_tag)
        container = _median_seconds(["docker", "run", "--rm", image, "true"])
        modules = STEP_LIBRARIES.get(step, [f"components.{step}"])
        # ended as the steps end (components.common.cli.end_process): no interpreter teardown
        with_python = _median_seconds(["docker", "run", "--rm", image, "python", "-c",
                                       f"import {', '.join(modules)}; import os; os._exit(0)"])
        costs[step] = {"container": round(container, 2),
                       "python_and_libraries": round(with_python - container, 2)}
    return costs


def run_once(rows: int, workdir: Path, seed: int, hparams: str, image_tag: str,
             memory_limit: str | None = None) -> dict:
    data, _ = ensure_data(workdir, rows, seed)
    runs = workdir / f"local-{rows}"
    shutil.rmtree(runs, ignore_errors=True)
    started = time.monotonic()
    prefix = f"{build_facts.DEFAULT_REGISTRY.rstrip('/')}/{build_facts.PROJECT}-"
    with ContainerMemory(prefix) as memory:
        result = subprocess.run([PYTHON, str(REPO / "pipeline.py"), "--run", "local",
                                 "--workdir", str(runs), "--source", data, "--hparams", hparams,
                                 "--image-tag", image_tag,
                                 *(["--memory-limit", memory_limit] if memory_limit else [])],
                                cwd=REPO, capture_output=True, text=True)
    wall = time.monotonic() - started
    (workdir / f"local-{rows}.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise SystemExit(f"run on {rows} rows failed; see {workdir}/local-{rows}.log")
    summary = json.loads((runs / "latest" / "summary.json").read_text())
    return {"rows": rows, "wall_seconds": round(wall, 1),
            "steps": {s["name"]: s["seconds"] for s in summary["steps"]},
            "container_memory_mib": memory.peaks,
            "auc": summary["metrics"].get("auc")}


def run_repeated(rows: int, repeat: int, *args) -> dict:
    """`repeat` runs; per step and for the whole run the median seconds (every wall time kept),
    per step the largest memory seen."""
    runs = [run_once(rows, *args) for _ in range(repeat)]
    result = dict(runs[0])
    result["wall_seconds"] = round(statistics.median(r["wall_seconds"] for r in runs), 1)
    result["wall_seconds_each"] = [r["wall_seconds"] for r in runs]
    result["steps"] = {step: round(statistics.median(r["steps"][step] for r in runs), 1)
                       for step in runs[0]["steps"]}
    result["container_memory_mib"] = {}
    for r in runs:
        for step, peak in r["container_memory_mib"].items():
            seen = result["container_memory_mib"].setdefault(step, dict(peak))
            for key, value in peak.items():
                seen[key] = max(seen[key], value)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--hparams", default="{}")
    parser.add_argument("--memory-limit", metavar="SIZE",
                        help="each step container's memory limit (pipeline.py --memory-limit)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per row count; tables show the median (default: 1)")
    parser.add_argument("--workdir", default=str(OUT))
    parser.add_argument("--image-tag", default=None,
                        help="tag of the step images (default: make build-images' default, "
                             "build_facts.image_tag())")
    args = parser.parse_args(argv)
    image_tag = args.image_tag or build_facts.image_tag()  # fixed for the whole bench
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    results = [run_repeated(rows, args.repeat, workdir, args.seed, args.hparams, image_tag,
                            args.memory_limit) for rows in args.rows]
    steps = list(results[0]["steps"])
    header = "| step | " + " | ".join(f"{r['rows']:,} rows" for r in results)
    header += " | growth |" if len(results) > 1 else " |"
    print(header)
    print("|---" * (len(results) + 1 + (len(results) > 1)) + "|")
    for name in [*steps, "whole run (wall)"]:
        values = [r["wall_seconds"] if name.startswith("whole") else r["steps"][name]
                  for r in results]
        cells = " | ".join(f"{v:.1f} s" for v in values)
        growth = (f" | {values[-1] / values[0]:.1f}x" if len(values) > 1 and values[0] else
                  (" | " if len(values) > 1 else ""))
        print(f"| {name} | {cells}{growth} |")
    print("AUC: " + ", ".join(f"{r['rows']:,} rows {r['auc']:.4f}" for r in results))
    if args.repeat > 1:
        print(f"median of {args.repeat} runs; whole run each time: " + "; ".join(
            f"{r['rows']:,} rows " + ", ".join(f"{w:.1f}" for w in r["wall_seconds_each"]) + " s"
            for r in results))
    print()
    costs = fixed_costs(image_tag, steps)
    first = results[0]
    print(f"| step | {first['rows']:,} rows | container start | Python and the step's "
          "libraries | the rest: work, exit, kfp.local |")
    print("|---|---|---|---|---|")
    for name in steps:
        cost, total = costs[name], first["steps"][name]
        rest = total - cost["container"] - cost["python_and_libraries"]
        print(f"| {name} | {total:.1f} s | {cost['container']:.2f} s | "
              f"{cost['python_and_libraries']:.2f} s | {rest:.2f} s |")
    outside = first["wall_seconds"] - sum(first["steps"].values())
    print(f"| outside the steps (pipeline.py: kfp import, compile, summary) | | | | "
          f"{outside:.1f} s |")
    print()
    print("| step | " + " | ".join(f"{r['rows']:,} rows: container anonymous / working set "
                                     "/ cgroup peak incl. page cache" for r in results) + " |")
    print("|---" * (len(results) + 1) + "|")
    for name in steps:
        cells = []
        for r in results:
            peak = r["container_memory_mib"].get(name)
            cells.append(f"{peak['rss_mib']:,.0f} / {peak['working_set_mib']:,.0f} / "
                         f"{peak['usage_mib']:,.0f} MiB" if peak else "not seen (too short)")
        print(f"| {name} | " + " | ".join(cells) + " |")
    written = write_json(workdir / "bench_local_pipeline.json",
                         {"runs": results, "fixed_costs": costs})
    print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
