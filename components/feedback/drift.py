"""Serving data against training data, with TFDV: skew, drift and schema anomalies.

The training statistics are those of the deployed stable version's dataset version (its train
split, from the examples the data store keeps for it); the serving statistics come from the
logged inputs of the window (a uniform sample of at most --drift-sample records, built into
Arrow record batches the way ingest encodes a row: a blank value is absent). Both use the same
features: the model's features minus the config's `no_distribution_checks` (free text, codes),
compared as validate compares data versions, with the config's thresholds:

- skew (TFDV's skew comparator, training vs serving): L-infinity distance for categorical
  features (`validation.skew_linf`), Jensen-Shannon divergence for numeric ones (`drift_js`);
- drift (TFDV's drift comparator, serving vs the training data it follows): L-infinity
  (`validation.drift_linf`) / Jensen-Shannon (`drift_js`): a feature above its threshold is a
  reason to retrain;
- schema anomalies of the serving statistics against the schema inferred from the training
  data (unseen categories beyond `min_domain_mass`, missing values, ...).

TFDV is imported here only (it brings TensorFlow): this runs last, after the join freed its
memory.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time

from components.common.dataset_config import DatasetConfig

log = logging.getLogger(__name__)
STATS_FILE = "FeatureStats.pb"
BATCH_ROWS = 10_000


def compared_features(config: DatasetConfig) -> list[str]:
    skip = set(config.validation.no_distribution_checks)
    return [name for name in config.feature_names if name not in skip]


def _stats_options(features: list[str]):
    import tensorflow_data_validation as tfdv

    return tfdv.StatsOptions(feature_allowlist=features, num_top_values=50,
                             num_rank_histogram_buckets=200, use_sketch_based_topk_uniques=True)


def _beam_options():
    from apache_beam.options.pipeline_options import PipelineOptions

    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    return PipelineOptions(flags=[], runner="FnApiRunner", direct_num_workers=1,
                           direct_running_mode="in_memory")


def _record_batches(rows: list[dict], features: list[str], numeric: set[str]):
    import pyarrow as pa

    for start in range(0, len(rows), BATCH_ROWS):
        chunk = rows[start:start + BATCH_ROWS]
        arrays = []
        for name in features:
            if name in numeric:
                values = []
                for row in chunk:
                    try:
                        values.append([float(row.get(name))])
                    except (TypeError, ValueError):
                        values.append(None)
                arrays.append(pa.array(values, type=pa.list_(pa.float32())))
            else:
                arrays.append(pa.array(
                    [[str(row[name]).encode("utf-8")] if row.get(name) not in (None, "")
                     else None for row in chunk], type=pa.list_(pa.binary())))
        yield pa.RecordBatch.from_arrays(arrays, features)


def serving_statistics(rows: list[dict], config: DatasetConfig, directory: str):
    """TFDV statistics of the sampled logged inputs (written to `<directory>/FeatureStats.pb`)."""
    import apache_beam as beam
    import tensorflow_data_validation as tfdv

    features = compared_features(config)
    numeric = set(config.features.get("numeric", ()))
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, STATS_FILE)
    with beam.Pipeline(options=_beam_options()) as pipeline:
        _ = (pipeline
             | "Batches" >> beam.Create(list(_record_batches(rows, features, numeric)))
             | "Statistics" >> tfdv.GenerateStatistics(_stats_options(features))
             | "Write" >> tfdv.WriteStatisticsToBinaryFile(path))
    return tfdv.load_stats_binary(path)


def training_statistics(examples_dir: str, config: DatasetConfig, directory: str):
    """TFDV statistics of a stored dataset version's train split (its TFRecords)."""
    import tensorflow_data_validation as tfdv

    from components.common.artifacts.examples import split_pattern

    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        stats = tfdv.generate_statistics_from_tfrecord(
            split_pattern(examples_dir, "train"),
            output_path=os.path.join(scratch, "stats.tfrecord"),
            stats_options=_stats_options(compared_features(config)),
            pipeline_options=_beam_options())
    with open(os.path.join(directory, STATS_FILE), "wb") as handle:
        handle.write(stats.SerializeToString())
    return stats


def schema_for(training_stats, config: DatasetConfig):
    """The schema inferred from the training data, with the config's comparators."""
    import tensorflow_data_validation as tfdv

    schema = tfdv.infer_schema(training_stats, infer_feature_shape=False)
    thresholds = config.validation
    numeric = set(config.features.get("numeric", ()))
    for feature in schema.feature:
        if feature.name in numeric:
            feature.skew_comparator.jensen_shannon_divergence.threshold = thresholds.drift_js
            feature.drift_comparator.jensen_shannon_divergence.threshold = thresholds.drift_js
        else:
            if feature.WhichOneof("domain_info") in ("int_domain", "float_domain"):
                feature.ClearField("domain_info")  # codes that look numeric in a sample
            feature.skew_comparator.infinity_norm.threshold = thresholds.skew_linf
            feature.drift_comparator.infinity_norm.threshold = thresholds.drift_linf
        if feature.HasField("domain") and not feature.HasField("distribution_constraints"):
            feature.distribution_constraints.min_domain_mass = thresholds.min_domain_mass
    return schema


def _measurements(proto, kind: str) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for info in proto.drift_skew_info:
        name = "/".join(info.path.step)
        items = info.drift_measurements if kind == "drift" else info.skew_measurements
        for m in items:
            out[name] = {"type": type(m).Type.Name(m.type), "value": m.value,
                         "threshold": m.threshold, "above": m.value > m.threshold}
    return out


def _anomalies(proto) -> list[dict]:
    found = [{"feature": name, "short": info.short_description,
              "description": info.description}
             for name, info in sorted(proto.anomaly_info.items())]
    if proto.HasField("dataset_anomaly_info"):
        info = proto.dataset_anomaly_info
        found.append({"feature": "(dataset)", "short": info.short_description,
                      "description": info.description})
    return found


def compare(training_stats, serving_stats, config: DatasetConfig) -> dict:
    """Skew, drift and serving anomalies (TFDV's measurements against the config's thresholds)."""
    import tensorflow_data_validation as tfdv

    schema = schema_for(training_stats, config)
    skew = tfdv.validate_statistics(training_stats, schema, serving_statistics=serving_stats)
    drift = tfdv.validate_statistics(serving_stats, schema, previous_statistics=training_stats)
    drift_measured = _measurements(drift, "drift")
    return {
        "features": compared_features(config),
        "skew": _measurements(skew, "skew"),
        "drift": drift_measured,
        "drifted": sorted(name for name, m in drift_measured.items() if m["above"]),
        "serving_anomalies": [a for a in _anomalies(drift)
                              if "drift" not in a["short"].lower()],
        "serving_examples": int(serving_stats.datasets[0].num_examples),
        "training_examples": int(training_stats.datasets[0].num_examples),
    }


def drift_report(rows: list[dict], training_examples: str, config: DatasetConfig,
                 directory: str) -> dict:
    """Statistics of both sides into `directory` (serving/, training/), then `compare`."""
    started = time.monotonic()
    serving = serving_statistics(rows, config, os.path.join(directory, "serving"))
    training = training_statistics(training_examples, config,
                                   os.path.join(directory, "training"))
    result = compare(training, serving, config)
    result["seconds"] = round(time.monotonic() - started, 3)
    log.info("serving vs training data: %d vs %d examples, drifted: %s (%.1f s)",
             result["serving_examples"], result["training_examples"],
             ", ".join(result["drifted"]) or "none", result["seconds"])
    return result
