"""Transform core: fit, fingerprint and save the preprocessing; all or nothing."""

from __future__ import annotations

import datetime as dt
import logging
import time

from components.common.artifacts import transform as transform_artifact
from components.common.artifacts.examples import read_metadata
from components.common.dataset_config import DatasetConfig
from components.common.staging import staged_output

log = logging.getLogger(__name__)


def transform(examples: str, output: str, config: DatasetConfig) -> dict:
    from components.transform.preprocessing import (
        fit_preprocessing,
        preprocessing_code_hash,
        preprocessing_hash,
    )

    started = time.monotonic()
    metadata = read_metadata(examples)
    with staged_output(output, last=transform_artifact.INFO_FILE) as staging:
        model, vocabularies = fit_preprocessing(examples, config)
        info = {
            "preprocessing_hash": preprocessing_hash(config, vocabularies),
            "dataset_version": metadata["dataset_version"],
            "fitted_on": "train",
            "rows_fitted": metadata["rows"]["train"],
            "vocabulary_sizes": {name: len(v) for name, v in vocabularies.items()},
            "features": {role: list(n) for role, n in config.features.items() if n},
            "label": config.label.feature,
            "dataset_config": {"name": config.name, "fingerprint": config.fingerprint()},
            "code_hash": preprocessing_code_hash(),
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "seconds": round(time.monotonic() - started, 3),
        }
        transform_artifact.write(staging, model, vocabularies, info)
    log.info("preprocessing %s fitted on %d train rows of %s in %.1f s",
             info["preprocessing_hash"], info["rows_fitted"], info["dataset_version"],
             info["seconds"])
    return info
