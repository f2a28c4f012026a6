"""Transform core: fit, fingerprint and save the preprocessing; all or nothing."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time

from components.common.dataset_config import DatasetConfig
from components.common.examples import read_metadata
from components.common.staging import staged_output

log = logging.getLogger(__name__)
MODEL_FILE = "preprocessing.keras"
INFO_FILE = "transform.json"


def transform(examples: str, output: str, config: DatasetConfig) -> dict:
    from components.transform.preprocessing import (
        fit_preprocessing,
        preprocessing_code_hash,
        preprocessing_hash,
    )

    started = time.monotonic()
    metadata = read_metadata(examples)
    with staged_output(output, last=INFO_FILE) as staging:
        model, vocabularies = fit_preprocessing(examples, config)
        model.save(os.path.join(staging, MODEL_FILE))
        vocab_dir = os.path.join(staging, "vocabularies")
        os.makedirs(vocab_dir)
        for name, values in vocabularies.items():
            with open(os.path.join(vocab_dir, f"{name}.txt"), "w", encoding="utf-8") as handle:
                handle.writelines(f"{v}\n" for v in values)
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
        with open(os.path.join(staging, INFO_FILE), "w", encoding="utf-8") as handle:
            json.dump(info, handle, indent=2)
    log.info("preprocessing %s fitted on %d train rows of %s in %.1f s",
             info["preprocessing_hash"], info["rows_fitted"], info["dataset_version"],
             info["seconds"])
    return info


def load_transform(transform_dir: str):
    """(preprocessing keras model, transform.json) of a transform output."""
    import keras

    import components.transform.layers  # noqa: F401  (registers the custom layers)
    from components.common.errors import StepError

    info_path = os.path.join(transform_dir, INFO_FILE)
    if not os.path.exists(info_path):
        raise StepError(f"{transform_dir}: no {INFO_FILE}; not the output of a transform step")
    with open(info_path, encoding="utf-8") as handle:
        info = json.load(handle)
    return keras.models.load_model(os.path.join(transform_dir, MODEL_FILE)), info
