"""The transform artifact: the preprocessing fitted on the train split, which training wraps
into the exported SavedModel so serving applies exactly what training applied.

    <dir>/preprocessing.keras          Keras model: raw strings -> model-ready ids
    <dir>/vocabularies/<feature>.txt   each fitted vocabulary, one value per line (for people)
    <dir>/transform.json               written last: preprocessing_hash, dataset_version,
                                       vocabulary_sizes, features, ...
"""

from __future__ import annotations

import os

from components.common import documents

MODEL_FILE = "preprocessing.keras"
INFO_FILE = "transform.json"
VOCABULARY_DIR = "vocabularies"


def write(directory: str, model, vocabularies: dict[str, list[str]], info: dict) -> None:
    """Save the fitted preprocessing, its vocabularies, then transform.json (the marker)."""
    model.save(os.path.join(directory, MODEL_FILE))
    vocabulary_dir = os.path.join(directory, VOCABULARY_DIR)
    os.makedirs(vocabulary_dir, exist_ok=True)
    for name, values in vocabularies.items():
        with open(os.path.join(vocabulary_dir, f"{name}.txt"), "w", encoding="utf-8") as handle:
            handle.writelines(f"{v}\n" for v in values)
    documents.write_json(os.path.join(directory, INFO_FILE), info)


def read_info(directory: str) -> dict:
    return documents.read_json(os.path.join(directory, INFO_FILE), INFO_FILE, "transform")


def load(directory: str):
    """(preprocessing Keras model, transform.json) of a transform output."""
    info = read_info(directory)
    import keras

    import components.common.preprocessing_layers  # noqa: F401  (registers the custom layers)

    return keras.models.load_model(os.path.join(directory, MODEL_FILE)), info
