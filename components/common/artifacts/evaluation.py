"""The evaluation artifact: evaluate's output, what push reads to publish (or not).

    <dir>/report.html     the model analysis a person reads
    <dir>/metrics.json    overall metrics, slices, fairness gaps, feature dependence, baseline
    <dir>/blessing.json   written last: blessed, the reasons (one per check), model_id evaluated,
                          the baseline it was compared with
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable

from components.common import documents
from components.common.errors import StepError

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.json"
BLESSING_FILE = "blessing.json"
REPORT_FILE = "report.html"
# The scalars worth a KFP Metrics entry, a lineage field and a line in the report, in order.
SCALAR_METRICS = ("auc", "pr_auc", "accuracy", "precision", "recall", "f1", "log_loss", "brier",
                  "ece")


def write(directory: str, metrics: dict, blessing: dict) -> None:
    """metrics.json, then blessing.json (the marker of a finished evaluation)."""
    documents.write_json(os.path.join(directory, METRICS_FILE), metrics)
    documents.write_json(os.path.join(directory, BLESSING_FILE), blessing)


def read_blessing(directory: str) -> dict:
    path = os.path.join(directory, BLESSING_FILE)
    blessing = documents.read_json(path, BLESSING_FILE, "evaluate")
    if not isinstance(blessing.get("blessed"), bool):
        raise StepError(f"{path}: 'blessed' must be true or false, got {blessing.get('blessed')!r}")
    if not blessing.get("model_id"):
        raise StepError(f"{path}: missing 'model_id' (which model was evaluated?)")
    return blessing


def read_metrics(directory: str) -> dict:
    return documents.read_json(os.path.join(directory, METRICS_FILE), METRICS_FILE, "evaluate")


def scalar_metrics(values, keys: Iterable[str] | None = None) -> dict[str, float]:
    """The finite numbers of a metrics mapping (curves, matrices, None and NaN left out), only
    `keys` and in their order when given."""
    if not isinstance(values, dict):
        return {}
    names = list(keys) if keys is not None else list(values)
    return {str(k): values[k] for k in names
            if isinstance(values.get(k), int | float) and not isinstance(values[k], bool)
            and math.isfinite(values[k])}


def overall_scalars(directory: str) -> dict[str, float]:
    """The finite numbers of metrics.json's `overall` object (else of its top level): what the
    registry lineage records. No metrics.json: none, with a warning."""
    if not os.path.isfile(os.path.join(directory, METRICS_FILE)):
        log.warning("%s: no %s; the lineage will have no evaluation metrics", directory,
                    METRICS_FILE)
        return {}
    metrics = read_metrics(directory)
    overall = metrics.get("overall")
    return scalar_metrics(overall if isinstance(overall, dict) else metrics)


def failed_checks(blessing: dict) -> list[str]:
    """The checks that did not pass, as the blessing names them."""
    return [str(r.get("check", r)) if isinstance(r, dict) else str(r)
            for r in blessing.get("reasons") or []
            if not (isinstance(r, dict) and r.get("passed"))]
