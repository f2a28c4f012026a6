"""The model card of a registry version: what the model is for, what it was trained on, how it
did, why it was published, and what produced it. Push writes it for every version it publishes.

    <dir>/model_card.json   the card's fields (below), for programs
    <dir>/model_card.html   the same for people (also push's KFP HTML artifact)

`<dir>` is the version's card folder in the registry, `<registry>/<model>/cards/<N>/`
(`registry.card_uri`), beside the version's SavedModel `<N>/`, not inside it: `model_id` hashes
every file of `<N>/` and the registry checks the copy against the index by that hash, so a card
inside would either change the published model's identity or need an exception to its
definition; and the card names the version number and semver, which only exist once the model
is published. The JSON is written before the HTML, both before the index lists the version.

Fields (`build`): `model` (name, version, semver, model_id, signature_hash, decision threshold,
calibration), `intended_use` (the dataset config's `model_card` section), `data` (dataset
version and row counts: train, fit, calibration holdout, eval), `preprocessing`
(preprocessing_hash), `training` (hyperparameters, epochs, eval metrics at the end of training),
`privacy` (train's record: `{"mechanism": "none"}` or DP-SGD's epsilon at delta and settings),
`evaluation` (evaluate's overall metrics, metrics per slice, fairness gaps), `blessing` (the
baseline it was compared with, every check and why it passed), `provenance` (the code version
of each step, the images the pipeline was compiled with when push was told, with their digests
when they were resolved at compile time). Values are copied from training.json, evaluate's
metrics.json and blessing.json and the lineage record, never recomputed.
"""

from __future__ import annotations

import os

from components.common import documents, storage
from components.common.artifacts import evaluation
from components.common.artifacts import model as model_artifact
from components.common.errors import StepError
from components.common.html_report import e, n, num, page

JSON_FILE = "model_card.json"
HTML_FILE = "model_card.html"
SCHEMA = 1
SLICE_FIELDS = ("value", "count", "positives", "auc", "recall", "fpr", "precision", "eligible")
MAX_HTML_SLICES = 30
DIGESTS_NOT_KNOWN = (
    "not recorded: a step sees neither its own image's digest nor the other steps', and this "
    "package was compiled without them (`pipeline.py --compile --image-digests` records them; "
    "local runs always do). What is known is the code version baked into each image "
    "(CODE_VERSION) and the image names; the digests are in the run's pods "
    "(status.containerStatuses[].imageID) and in the image registry under those tags.")
DIGESTS_KNOWN = (
    "resolved when the pipeline was compiled: the registry digest of each image once pushed, "
    "else its local image id")


def image_digests(pipeline_images: dict | None) -> dict[str, str] | None:
    """{step: sha256 digest} from the images the pipeline was compiled with, written as
    name@digest when it knew them; None when it knew none."""
    found = {step: image.rsplit("@", 1)[1] for step, image in (pipeline_images or {}).items()
             if "@sha256:" in image}
    return found or None


# ---------------------------------------------------------------------------------------------
# The fields.

def _slices(metrics: dict) -> tuple[dict, dict]:
    """({feature: [slice rows]}, {feature: fairness gaps}) of evaluate's metrics.json."""
    slices, gaps = {}, {}
    for feature, entry in (metrics.get("slices") or {}).items():
        if not isinstance(entry, dict) or not isinstance(entry.get("slices"), list):
            continue  # not evaluate's layout: nothing to copy
        slices[feature] = [{k: row.get(k) for k in SLICE_FIELDS}
                           for row in entry["slices"] if isinstance(row, dict)]
        gaps[feature] = entry.get("fairness") or {}
    return slices, gaps


def why_blessed(blessing: dict) -> str:
    """One sentence: every check the model passed (or the ones it failed)."""
    reasons = [r for r in blessing.get("reasons") or [] if isinstance(r, dict)]
    failed = [r for r in reasons if not r.get("passed")]
    shown = failed or reasons
    parts = [f"{r.get('check')} (got {num(r.get('value'), '.4g')})" for r in shown]
    if not reasons:
        return "blessed with no checks configured" if blessing.get("blessed") else "not blessed"
    head = "blessed: every check passed" if not failed else "not blessed: failed"
    note = f"; {blessing['note']}" if blessing.get("note") else ""
    return f"{head}: " + "; ".join(parts) + note


def build(*, lineage: dict, training: dict, metrics: dict, blessing: dict,
          intended_use: dict, code_version: str, pipeline_images: dict | None = None) -> dict:
    """The card of a published version.

    `lineage`: the registry's record of the version (version, semver, uri, pushed_at, ...);
    `training`: train's training.json; `metrics`/`blessing`: evaluate's metrics.json and
    blessing.json; `intended_use`: {"intended_use", "out_of_scope", "dataset_config"};
    `code_version`: push's own; `pipeline_images`: {step: image} the pipeline was compiled
    with (None: not given).
    """
    threshold = training.get("decision_threshold") or {}
    slices, gaps = _slices(metrics)
    overall = metrics.get("overall") if isinstance(metrics.get("overall"), dict) else metrics
    baseline = blessing.get("baseline") if isinstance(blessing.get("baseline"), dict) else {}
    return {
        "schema": SCHEMA,
        "model": {
            "name": lineage.get("model_name"), "version": lineage.get("version"),
            "semver": lineage.get("semver"), "change": lineage.get("change"),
            "previous_version": lineage.get("previous_version"), "uri": lineage.get("uri"),
            "pushed_at": lineage.get("pushed_at"), "model_id": training.get("model_id"),
            "signature_hash": training.get("signature_hash"),
            "architecture": training.get("architecture"),
            "signatures": training.get("signatures"),
            "calibration": (training.get("calibration") or {}).get("method"),
            "decision_threshold": {"value": threshold.get("value"),
                                   "policy": threshold.get("policy")},
        },
        "intended_use": dict(intended_use),
        "data": {
            "dataset_version": training.get("dataset_version"),
            "rows": training.get("rows") or {},
            "evaluated_on": {"dataset_version": metrics.get("dataset_version"),
                             "eval_examples": metrics.get("eval_examples")},
        },
        "preprocessing": {"preprocessing_hash": training.get("preprocessing_hash")},
        "training": {
            "hparams": training.get("hparams") or {},
            "epochs_run": training.get("epochs_run"),
            "class_weights": training.get("class_weights"),
            "metrics": training.get("metrics") or {},
            "trained_at": training.get("created_at"),
            "seconds": training.get("seconds"),
            "tensorflow_version": training.get("tensorflow_version"),
        },
        "privacy": training.get(model_artifact.PRIVACY_FIELD) or {"mechanism": "none"},
        "evaluation": {
            "overall": evaluation.scalar_metrics(overall),
            "decision_threshold": metrics.get("decision_threshold"),
            "slices": slices,
            "fairness": gaps,
        },
        "blessing": {
            "blessed": blessing.get("blessed"),
            "why": why_blessed(blessing),
            "reasons": blessing.get("reasons") or [],
            "baseline": {k: baseline.get(k) for k in ("version", "semver", "model_id", "uri")},
            "note": blessing.get("note"),
            "thresholds": blessing.get("thresholds"),
            "baseline_tolerance": blessing.get("baseline_tolerance"),
        },
        "provenance": {
            "code_versions": {"train": training.get("code_version"),
                              "evaluate": metrics.get("code_version")
                              or blessing.get("code_version"),
                              "push": code_version},
            "pipeline_images": pipeline_images,
            "image_digests": image_digests(pipeline_images),
            "image_digests_note": (DIGESTS_KNOWN if image_digests(pipeline_images)
                                   else DIGESTS_NOT_KNOWN),
            "push_step_image": {"step": os.environ.get("STEP"),
                                "code_version": os.environ.get("CODE_VERSION")},
        },
    }


# ---------------------------------------------------------------------------------------------
# Writing and reading.

def write(directory: str, card: dict) -> None:
    """model_card.json, then model_card.html, into a local directory or an S3 prefix."""
    documents.write_json(storage.join(directory, JSON_FILE), card)
    storage.write_bytes(storage.join(directory, HTML_FILE), render(card).encode("utf-8"))


def read(directory: str) -> dict:
    card = documents.read_json(storage.join(directory, JSON_FILE), "model card")
    if card.get("schema") != SCHEMA or not isinstance(card.get("model"), dict):
        raise StepError(f"{storage.join(directory, JSON_FILE)}: not a model card (schema "
                        f"{SCHEMA})")
    return card


def html_of(directory: str) -> bytes:
    return storage.read_bytes(storage.join(directory, HTML_FILE))


# ---------------------------------------------------------------------------------------------
# The page.

def _t(value) -> str:
    """HTML text of a value, muted n/a for None."""
    return "<span class='muted'>n/a</span>" if value is None else e(value)


def _table(rows: list[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><th>{e(k)}</th><td>{v}</td></tr>" for k, v in rows) + \
        "</table>"


def _privacy(privacy: dict) -> list[str]:
    if privacy.get("mechanism") in (None, "none"):
        return ["<p>Trained without differential privacy: no bound on what the model reveals "
                "about any one training complaint.</p>"]
    rows = [("epsilon", f"<b>{n(privacy.get('epsilon'), '.3g')}</b> (planned at most "
                        f"{n(privacy.get('planned_epsilon'), '.3g')}; ceiling "
                        f"{n(privacy.get('max_epsilon'), '.3g')})"),
            ("delta", f"{n(privacy.get('target_delta'), '.3g')} "
                      f"({e(privacy.get('delta_source'))})"),
            ("mechanism", f"{e(privacy.get('mechanism'))}, {e(privacy.get('sampling'))} "
                          f"sampling, rate {n(privacy.get('sampling_rate'), '.4g')}, "
                          f"{n(privacy.get('steps'))} steps"),
            ("noise multiplier / clip", f"{n(privacy.get('noise_multiplier'), '.3g')} / "
                                        f"{n(privacy.get('l2_clip'), '.3g')}"),
            ("accountant", e(privacy.get("accountant"))),
            ("neighbouring datasets", e(privacy.get("neighbouring")))]
    not_covered = "".join(f"<li>{e(x)}</li>" for x in privacy.get("not_covered") or [])
    return [_table(rows), f"<p class='muted'>Not covered by the guarantee:</p><ul "
                          f"class='muted'>{not_covered}</ul>"]


def _slice_table(rows: list[dict]) -> str:
    head = "".join(f"<th>{e(k)}</th>" for k in ("slice", "count", "auc", "recall", "fpr",
                                                "precision"))
    body = "".join(
        f"<tr><td>{e(r.get('value'))}{'' if r.get('eligible') else ' <i>(small)</i>'}</td>"
        f"<td class='num'>{n(r.get('count'))}</td><td class='num'>{n(r.get('auc'), '.3f')}</td>"
        f"<td class='num'>{n(r.get('recall'), '.3f')}</td>"
        f"<td class='num'>{n(r.get('fpr'), '.3f')}</td>"
        f"<td class='num'>{n(r.get('precision'), '.3f')}</td></tr>"
        for r in rows[:MAX_HTML_SLICES])
    more = (f"<p class='muted'>{len(rows) - MAX_HTML_SLICES} smaller slices in "
            f"{JSON_FILE}.</p>" if len(rows) > MAX_HTML_SLICES else "")
    return f"<table><tr>{head}</tr>{body}</table>{more}"


def _gap_text(gap: dict) -> str:
    if not isinstance(gap, dict) or gap.get("gap") is None:
        return "<span class='muted'>n/a</span>"
    high, low = gap.get("max") or {}, gap.get("min") or {}
    return (f"{n(gap['gap'], '.3f')} ({e(high.get('slice'))} {n(high.get('value'), '.3f')} vs "
            f"{e(low.get('slice'))} {n(low.get('value'), '.3f')})")


def render(card: dict) -> str:
    """The card as one self-contained HTML page (html_report's shell, no plots)."""
    model, data, training = card["model"], card["data"], card["training"]
    use, privacy, blessing = card["intended_use"], card["privacy"], card["blessing"]
    result, provenance = card["evaluation"], card["provenance"]
    title = f"Model card: {model.get('name')} version {model.get('version')}"
    status = "ok" if blessing.get("blessed") else "bad"
    threshold, evaluated_on = model["decision_threshold"], data["evaluated_on"]
    intended = use.get("intended_use") or "not stated (model_card.intended_use in the config)"
    body = [
        f"<h1>{e(title)} ({_t(model.get('semver'))})</h1>",
        f"<p class='{status}'>{e(blessing.get('why'))}</p>",
        "<h2>Intended use</h2>",
        f"<p>{e(intended)}</p>",
        f"<p><b>Out of scope:</b> {e(use.get('out_of_scope') or 'not stated')}</p>",
        "<h2>Model</h2>",
        _table([("model_id", _t(model.get("model_id"))),
                ("signature_hash", _t(model.get("signature_hash"))),
                ("architecture", _t(model.get("architecture"))),
                ("calibration", _t(model.get("calibration"))),
                ("decision threshold", f"{n(threshold.get('value'), '.4g')} "
                                       f"({_t(threshold.get('policy'))})"),
                ("registry", f"{_t(model.get('uri'))}, pushed {_t(model.get('pushed_at'))}"),
                ("change", f"{_t(model.get('change'))} (previous version "
                           f"{_t(model.get('previous_version'))})")]),
        "<h2>Data</h2>",
        _table([("dataset version", _t(data.get("dataset_version"))),
                *[(f"rows: {k}", n(v)) for k, v in (data.get("rows") or {}).items()],
                ("evaluated on", f"{_t(evaluated_on.get('dataset_version'))}, "
                                 f"{n(evaluated_on.get('eval_examples'))} eval examples"),
                ("preprocessing_hash", _t(card["preprocessing"].get("preprocessing_hash")))]),
        "<h2>Training</h2>",
        _table([("hyperparameters", "<br>".join(
                    f"{e(k)} = {e(v)}" for k, v in sorted(training["hparams"].items()))),
                ("epochs run", n(training.get("epochs_run"))),
                ("TensorFlow", _t(training.get("tensorflow_version"))),
                ("trained at", _t(training.get("trained_at")))]),
        "<h2>Differential privacy</h2>",
        *_privacy(privacy),
        "<h2>Metrics (eval split)</h2>",
        _table([(k, n(v, ".4f")) for k, v in result["overall"].items()]),
    ]
    if result["fairness"]:
        body.append("<h2>Fairness gaps</h2><p class='muted'>Largest difference between slices "
                    "large enough to compare.</p>")
        body.append(_table([(f"{feature}: {metric}", _gap_text(gap))
                            for feature, gaps in result["fairness"].items()
                            for metric, gap in gaps.items()]))
    for feature, rows in result["slices"].items():
        body += [f"<h3>Slices by {e(feature)}</h3>", _slice_table(rows)]
    baseline = blessing.get("baseline") or {}
    compared = (f"version {_t(baseline.get('version'))} (model {e(baseline['model_id'])})"
                if baseline.get("model_id") else "no baseline (the first version, or none given)")
    checks = "".join(
        f"<tr><td>{e(r.get('check'))}</td><td class='num'>{n(r.get('value'), '.4g')}</td>"
        f"<td class='{'ok' if r.get('passed') else 'bad'}'>"
        f"{'passed' if r.get('passed') else 'failed'}</td></tr>"
        for r in blessing.get("reasons") or [] if isinstance(r, dict))
    images = "<br>".join(f"{e(k)}: {e(v)}"
                         for k, v in sorted((provenance.get("pipeline_images") or {}).items()))
    body += [
        "<h2>Blessing</h2>",
        f"<p>Compared with: {compared}.</p>",
        f"<table><tr><th>check</th><th>value</th><th></th></tr>{checks}</table>",
        "<h2>Provenance</h2>",
        _table([*[(f"code: {step}", _t(version))
                  for step, version in provenance["code_versions"].items()],
                ("pipeline images", images or "not given to push"),
                ("image digests", "<br>".join(
                    f"{e(k)}: {e(v)}" for k, v in sorted(
                        (provenance.get("image_digests") or {}).items()))
                 or e(provenance.get("image_digests_note")))]),
    ]
    return "\n".join(page(title, body)) + "\n"
