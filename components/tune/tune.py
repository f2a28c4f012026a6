"""Tune core: check everything first, run the search on a backend, write the outputs (all or
nothing).

    <output>/best_hparams.json   the best trial's hyperparameters, as `train --hparams` takes them
    <output>/trials.json         every trial: name, parameters, status, objective, metrics, seconds
    <output>/report.html         objective against each parameter, best trial highlighted
    <output>/experiment.yaml     (katib) the Experiment that ran
    <output>/logs/               (local) each trial's output
    <output>/tuning.json         written last: backend, settings, best trial, counts

Both backends return the same trial records (`local.run`, `katib.run`). With tuning off the
step passes the given hyperparameters through, so the pipeline's train always reads its
hyperparameters from here.
"""

from __future__ import annotations

import datetime as dt
import glob
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass

from components.common import documents, kube
from components.common.errors import StepError
from components.common.hparams import METRICS, parse_hparams
from components.common.staging import staged_output
from components.tune import search_space

log = logging.getLogger(__name__)

BEST_FILE = "best_hparams.json"
TRIALS_FILE = "trials.json"
REPORT_FILE = "report.html"
EXPERIMENT_FILE = "experiment.yaml"
SUMMARY_FILE = "tuning.json"
BACKENDS = ("local", "katib")
GOALS = ("maximize", "minimize")
ALGORITHMS = ("random", "tpe", "bayesianoptimization", "grid")
DEFAULT_SEARCH_SPACE = os.path.join(os.path.dirname(__file__), "search_space.yaml")


@dataclass(frozen=True)
class TuneOptions:
    search_space: str | None = None      # None: the built-in search_space.yaml
    hparams: str | None = None           # base hyperparameters (JSON); the trials change some
    objective: str = "auc"
    goal: str = "maximize"
    algorithm: str = "tpe"
    max_trials: int = 12
    parallel_trials: int = 2
    max_failed_trials: int = 3
    backend: str = "local"
    timeout_minutes: float = 60.0
    enabled: bool = True
    early_stopping: bool = False
    cleanup: bool = False
    seed: int = 42
    dataset_config: str | None = None
    # katib only
    namespace: str | None = None
    trial_image: str | None = None
    s3_secret: str | None = None


def check(options: TuneOptions) -> tuple[list, dict]:
    """Every setting and the search space, before anything starts: (parameters, base)."""
    base = parse_hparams(options.hparams)
    if not options.enabled:
        return [], base
    for name, value, allowed in (("objective", options.objective, METRICS),
                                 ("goal", options.goal, GOALS),
                                 ("algorithm", options.algorithm, ALGORITHMS),
                                 ("backend", options.backend, BACKENDS)):
        if value not in allowed:
            raise StepError(f"--{name} {value!r}: expected one of {', '.join(allowed)}")
    if options.max_trials < 1:
        raise StepError(f"--max-trials must be at least 1, got {options.max_trials}")
    if not 1 <= options.parallel_trials <= options.max_trials:
        raise StepError(f"--parallel-trials must be between 1 and --max-trials "
                        f"({options.max_trials}), got {options.parallel_trials}")
    if not 0 <= options.max_failed_trials <= options.max_trials:
        raise StepError(f"--max-failed-trials must be between 0 and --max-trials "
                        f"({options.max_trials}), got {options.max_failed_trials}")
    if options.timeout_minutes <= 0:
        raise StepError(f"--timeout-minutes must be above 0, got {options.timeout_minutes}")
    parameters = search_space.load(options.search_space or DEFAULT_SEARCH_SPACE)
    if options.backend == "katib" and not options.trial_image:
        raise StepError("backend katib needs --trial-image (the train image the trials run)")
    return parameters, base


def best_trial(trials: list[dict], goal: str) -> dict | None:
    done = [t for t in trials if t["status"] == "Succeeded" and t["objective"] is not None]
    if not done:
        return None
    pick = max if goal == "maximize" else min
    return pick(done, key=lambda t: (t["objective"], [-ord(c) for c in t["name"]]))


def katib_settings(parameters, base: dict, options: TuneOptions, examples_uri: str,
                   transform_uri: str, name_parts: tuple[str, ...]):
    from components.tune import katib

    for label, uri in (("--examples", examples_uri), ("--transform", transform_uri)):
        if "://" not in uri:
            raise StepError(f"{label} {uri}: Katib's trial pods read it from S3: give an s3:// "
                            "URI (in a pipeline run the step takes the artifact's URI)")
    return katib.Settings(
        namespace=options.namespace or kube.pod_namespace(),
        name=katib.experiment_name(examples_uri, transform_uri, *name_parts),
        image=options.trial_image, examples=examples_uri, transform=transform_uri,
        base_hparams=base, objective=options.objective, goal=options.goal,
        algorithm=options.algorithm, max_trials=options.max_trials,
        parallel=options.parallel_trials, max_failed=options.max_failed_trials,
        early_stopping=options.early_stopping, dataset_config=options.dataset_config,
        s3_endpoint_url=os.environ.get("S3_ENDPOINT_URL"), s3_secret=options.s3_secret)



def tune(examples: str, transform: str, output: str, options: TuneOptions, *,
         examples_uri: str | None = None, transform_uri: str | None = None,
         run_key: str = "", katib_api=None) -> dict:
    """Run the search and write the outputs; returns tuning.json's content.

    `examples_uri` / `transform_uri`: where trial pods read the inputs (katib; default the
    given paths). `run_key` makes the Experiment's name unique per pipeline task.
    """
    started = time.monotonic()
    parameters, base = check(options)
    result = {"enabled": options.enabled, "backend": options.backend,
              "objective": options.objective, "goal": options.goal,
              "algorithm": options.algorithm, "settings": asdict(options)}
    with staged_output(output, last=SUMMARY_FILE) as staging:
        if not options.enabled:
            trials, best, best_hparams = [], None, base
            log.info("tuning is off: train uses the given hyperparameters")
        else:
            if options.backend == "local":
                trials = _run_local(parameters, base, examples, transform, options, staging)
            else:
                trials = _run_katib(parameters, base, options, examples_uri or examples,
                                    transform_uri or transform, run_key, katib_api, staging)
            best = best_trial(trials, options.goal)
            if best is None:  # the backends raise first; a guard for a bad record
                raise StepError(f"no trial reported {options.objective!r}; nothing to choose")
            best_hparams = best["hparams"]
            log.info("best trial %s: %s=%.4f with %s", best["name"], options.objective,
                     best["objective"], best["parameters"])
        result.update(
            best=best, best_hparams=best_hparams, trials=trials,
            succeeded=sum(t["status"] == "Succeeded" for t in trials),
            failed=sum(t["status"] not in ("Succeeded", "Running") for t in trials),
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            seconds=round(time.monotonic() - started, 1))
        documents.write_json(os.path.join(staging, BEST_FILE), best_hparams)
        documents.write_json(os.path.join(staging, TRIALS_FILE), trials)
        from components.tune.report import write_report

        write_report(os.path.join(staging, REPORT_FILE), result)
        documents.write_json(os.path.join(staging, SUMMARY_FILE),
                             {k: v for k, v in result.items() if k != "trials"})
    return result


def _run_local(parameters, base, examples, transform, options: TuneOptions, staging: str):
    from components.tune import local

    with tempfile.TemporaryDirectory(prefix="tune-") as workdir:
        try:
            return local.run(
                parameters, examples=examples, transform=transform, base_hparams=base,
                objective=options.objective, goal=options.goal, algorithm=options.algorithm,
                max_trials=options.max_trials, parallel=options.parallel_trials,
                max_failed=options.max_failed_trials,
                timeout_seconds=options.timeout_minutes * 60,
                dataset_config=options.dataset_config, seed=options.seed, workdir=workdir)
        finally:
            logs = sorted(glob.glob(os.path.join(workdir, "*.log")))
            if logs:
                os.makedirs(os.path.join(staging, "logs"), exist_ok=True)
                for path in logs:
                    shutil.copy(path, os.path.join(staging, "logs"))


def _run_katib(parameters, base, options: TuneOptions, examples_uri: str,
               transform_uri: str, run_key: str, api, staging: str):
    import yaml

    from components.tune import katib

    settings = katib_settings(parameters, base, options, examples_uri, transform_uri,
                              (run_key, json.dumps(asdict(options), sort_keys=True)))
    with open(os.path.join(staging, EXPERIMENT_FILE), "w", encoding="utf-8") as handle:
        yaml.safe_dump(katib.experiment(parameters, settings), handle, sort_keys=False)
    return katib.run(api or katib.KatibApi(), parameters, settings,
                     timeout_seconds=options.timeout_minutes * 60, cleanup=options.cleanup)


def dry_run(options: TuneOptions, examples_uri: str, transform_uri: str,
            run_key: str = "") -> dict:
    """The Experiment the katib backend would create (nothing is created)."""
    from components.tune import katib

    parameters, base = check(options)
    if not options.enabled:
        raise StepError("--dry-run with tuning off: there is no Experiment")
    settings = katib_settings(parameters, base, options, examples_uri, transform_uri,
                              (run_key, json.dumps(asdict(options), sort_keys=True)))
    return katib.experiment(parameters, settings)
