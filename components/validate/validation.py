"""Validation core: TFDV statistics per split, a schema, and anomalies against it.

Anomalies come from three comparisons, all TFDV's own: each split against the schema, the
train split against the eval split (skew, L-infinity, label included) and the new train split
against the previous data version's (drift: L-infinity for categorical features and the label,
Jensen-Shannon divergence for numeric ones). Thresholds come from the dataset configuration.
"""

from __future__ import annotations

import datetime as dt
import glob
import logging
import os
import tempfile
import time
from dataclasses import dataclass

from components.common import documents
from components.common.artifacts.examples import SPLITS, read_metadata, split_pattern
from components.common.dataset_config import DatasetConfig
from components.common.errors import StepError
from components.common.staging import staged_output

log = logging.getLogger(__name__)
STATS_FILE = "FeatureStats.pb"
SCHEMA_FILE = "schema.pbtxt"
ANOMALIES_FILE = "anomalies.pbtxt"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"
# Up to this many rows in all (train, eval and the baseline's train), statistics are computed
# in this process with TFDV's in-memory path: a Beam pipeline's start-up took ~1 s, most of the
# step's work for a few thousand rows. Memory then holds those rows (~50 MB at this size).
IN_MEMORY_MAX_ROWS = 20_000


@dataclass(frozen=True)
class Anomaly:
    feature: str
    split: str  # where: train, eval, train vs eval (skew), train vs baseline (drift)
    short: str
    description: str


def _stats_options(config: DatasetConfig, schema=None):
    """The label is an int; declaring it categorical gives it a value distribution to compare."""
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import schema_pb2

    if schema is None:
        schema = schema_pb2.Schema()
        label = schema.feature.add(name=config.label.feature, type=schema_pb2.INT)
        label.int_domain.is_categorical = True
    # Sketches (misra-gries, KMV) instead of exact counts: memory stays flat as rows grow
    # (exact top-k/uniques grew ~1.8 KiB per row) and statistics run ~3.5x faster.
    return tfdv.StatsOptions(schema=schema, num_top_values=50, num_rank_histogram_buckets=200,
                             use_sketch_based_topk_uniques=True)


def beam_options(beam_pipeline_args: str | None = None):
    """Beam's options from `--beam-pipeline-args`, a string of Beam flags as TFX takes them
    (`--direct_num_workers=2 --direct_running_mode=multi_processing`, or a cluster's
    `--runner=FlinkRunner --flink_master=host:8081 ...`). Without `--runner`: the FnApiRunner
    in this process (Beam's DirectRunner would first try to download Prism). A flag Beam
    cannot parse is a one-line error, before any work."""
    import contextlib
    import io
    import shlex

    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    try:
        flags = shlex.split(beam_pipeline_args or "")
    except ValueError as exc:
        raise StepError(f"--beam-pipeline-args: {exc}: {beam_pipeline_args!r}") from None
    options = PipelineOptions(flags)
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            options.get_all_options()  # parses every flag Beam knows (argparse exits on a bad one)
    except SystemExit:
        lines = [line for line in errors.getvalue().splitlines() if line.strip()]
        reason = lines[-1].split("error: ", 1)[-1] if lines else "cannot be parsed"
        raise StepError(f"--beam-pipeline-args: {reason}") from None
    if options.view_as(StandardOptions).runner is None:
        options.view_as(StandardOptions).runner = "FnApiRunner"
    logging.getLogger("apache_beam").setLevel(logging.WARNING)  # our own lines say the rates
    return options


def compute_statistics(sources: dict[str, tuple[str, int]], output_dir: str,
                       config: DatasetConfig, schema=None, beam_pipeline_args: str | None = None,
                       in_memory: bool = False) -> dict:
    """Statistics of each source ({name: (examples file pattern, rows its metadata says)})
    from the TFRecords (never from CSV), written to `<output_dir>/<name>/FeatureStats.pb` in
    TFDV's binary format.

    `in_memory`: each source decoded into one Arrow batch and described in this process by
    TFDV's in-memory path (the one `tfdv.generate_statistics_from_dataframe` takes; the same
    decoder and statistics generators as the Beam pipeline), for small data only. Otherwise one
    Beam pipeline with a branch per source, not one pipeline each, on the runner
    `beam_pipeline_args` select (see `beam_options`)."""
    import tensorflow_data_validation as tfdv

    options = _stats_options(config, schema)
    outputs = {name: os.path.join(output_dir, name, STATS_FILE) for name in sources}
    for path in outputs.values():
        os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        if in_memory:
            for name, (pattern, _) in sources.items():
                _statistics_in_memory(pattern, options, outputs[name])
        else:
            _statistics_on_beam({name: pattern for name, (pattern, _) in sources.items()},
                                options, outputs, beam_options(beam_pipeline_args))
        stats = {name: tfdv.load_stats_binary(path) for name, path in outputs.items()}
        for name, (pattern, rows) in sources.items():
            if stats[name].datasets[0].num_examples != rows:
                raise StepError(f"{pattern}: {stats[name].datasets[0].num_examples} records, "
                                f"its metadata.json says {rows}; run ingest again")
    except Exception as exc:
        # Beam's message for a damaged file ends in a hex dump of the record, TensorFlow's
        # names no file; find the file and say what is wrong with it instead.
        for pattern, _ in sources.values():
            for path in sorted(glob.glob(pattern)):
                reason = damaged_tfrecord(path)
                if reason:
                    raise StepError(f"{path}: {reason}; the examples are damaged (an "
                                    "interrupted copy?): run ingest again") from exc
        raise
    return stats


def _statistics_on_beam(sources: dict[str, str], options, outputs: dict[str, str],
                        pipeline_options) -> None:
    import apache_beam as beam
    import tensorflow_data_validation as tfdv
    from tfx_bsl.public import tfxio

    with beam.Pipeline(options=pipeline_options) as pipeline:
        for name, pattern in sources.items():
            source = tfxio.TFExampleRecord(file_pattern=pattern,
                                           telemetry_descriptors=["cfpb", "validate"])
            _ = (pipeline
                 | f"Read {name}" >> source.BeamSource(options.desired_batch_size)
                 | f"Statistics of {name}" >> tfdv.GenerateStatistics(options)
                 # TFX's layout: a binary DatasetFeatureStatisticsList
                 | f"Write {name}" >> tfdv.WriteStatisticsToBinaryFile(outputs[name]))


def _statistics_in_memory(pattern: str, options, output: str) -> None:
    import tensorflow as tf
    from tensorflow_data_validation.statistics import stats_impl
    from tfx_bsl.coders import example_coder

    files = sorted(glob.glob(pattern))
    records = [record.numpy() for record in
               tf.data.TFRecordDataset(files, compression_type="GZIP")]
    batch = example_coder.ExamplesToRecordBatchDecoder().DecodeBatch(records)
    stats = stats_impl.generate_statistics_in_memory(batch, options)
    with open(output, "wb") as handle:  # what WriteStatisticsToBinaryFile writes
        handle.write(stats.SerializeToString())


def split_sources(examples: str, prefix: str = "", splits=SPLITS) -> dict[str, tuple[str, int]]:
    """{prefix + split: (file pattern, rows)} for the splits of `examples` that hold rows."""
    rows = read_metadata(examples)["rows"]
    return {f"{prefix}{split}": (split_pattern(examples, split), rows[split])
            for split in splits if rows.get(split)}


def _masked_crc32c(data: bytes) -> int:
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def damaged_tfrecord(path: str) -> str | None:
    """What makes a gzip TFRecord file unreadable (None when it reads through): a gzip stream
    that ends early or is corrupt, a record cut off, a checksum that does not match."""
    import gzip
    import struct
    import zlib

    records = 0
    try:
        with gzip.open(path, "rb") as handle:
            while header := handle.read(12):
                where = f"record {records + 1} (after {records} whole records)"
                if len(header) < 12:
                    return f"truncated: {where} is cut off in its header"
                (length,) = struct.unpack("<Q", header[:8])
                if _masked_crc32c(header[:8]) != struct.unpack("<I", header[8:])[0]:
                    return f"corrupt: {where} has a length whose checksum does not match"
                data = handle.read(length + 4)
                if len(data) < length + 4:
                    return (f"truncated: {where} is cut off ({len(data)} of its {length + 4} "
                            "bytes)")
                if _masked_crc32c(data[:length]) != struct.unpack("<I", data[length:])[0]:
                    return f"corrupt: {where} does not match its checksum"
                records += 1
    except EOFError:
        return (f"truncated: the gzip stream ends early, after {records} whole records (the "
                "file was cut off)")
    except (OSError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        return f"not readable as gzip after {records} whole records ({exc})"
    return None


def infer_schema(train_stats, config: DatasetConfig):
    """TFDV's inferred schema, corrected where inference guesses wrong for our roles."""
    import tensorflow_data_validation as tfdv

    schema = tfdv.infer_schema(train_stats, infer_feature_shape=False)
    string_features = {*config.feature_names, config.id_feature} - set(
        config.features.get("numeric", ())
    )
    for feature in schema.feature:
        if feature.name == config.label.feature:
            if feature.HasField("domain"):
                _drop_string_domain(schema, feature.domain)
            feature.ClearField("domain_info")
            feature.int_domain.min = 0
            feature.int_domain.max = 1
            feature.int_domain.is_categorical = True
        elif feature.name in string_features and feature.WhichOneof("domain_info") in (
            "int_domain", "float_domain"
        ):
            # ZIP codes and ids look numeric in a sample, but 606XX or A-123 are valid values.
            feature.ClearField("domain_info")
    apply_thresholds(schema, config)
    return schema


def _drop_string_domain(schema, name: str) -> None:
    for index, domain in enumerate(schema.string_domain):
        if domain.name == name:
            del schema.string_domain[index]
            return


def apply_thresholds(schema, config: DatasetConfig) -> None:
    """Skew and drift comparators from the configuration (schema files given by a user too).

    A curated schema's own distribution constraints win over the configured domain mass.
    """
    thresholds = config.validation
    numeric = set(config.features.get("numeric", ()))
    for feature in schema.feature:
        name = feature.name
        if name in thresholds.no_distribution_checks:
            feature.ClearField("skew_comparator")
            feature.ClearField("drift_comparator")
            continue
        if name == config.label.feature:
            feature.skew_comparator.infinity_norm.threshold = thresholds.label_linf
            feature.drift_comparator.infinity_norm.threshold = thresholds.label_linf
        elif name in numeric:
            feature.drift_comparator.jensen_shannon_divergence.threshold = thresholds.drift_js
            feature.skew_comparator.jensen_shannon_divergence.threshold = thresholds.drift_js
        else:
            feature.skew_comparator.infinity_norm.threshold = thresholds.skew_linf
            feature.drift_comparator.infinity_norm.threshold = thresholds.drift_linf
        if feature.HasField("domain") and not feature.HasField("distribution_constraints"):
            feature.distribution_constraints.min_domain_mass = thresholds.min_domain_mass


def _where(split: str, description: str) -> str:
    """TFDV reports drift and skew on the statistics it was given; say which comparison it was."""
    if "current and previous" in description:
        return f"{split} vs baseline (drift)"
    if "training and serving" in description:
        return "train vs eval (skew)"
    return split


def _anomalies_from(proto, split: str) -> list[Anomaly]:
    found = []
    for feature, info in sorted(proto.anomaly_info.items()):
        found.append(Anomaly(feature, _where(split, info.description), info.short_description,
                             info.description))
    if proto.HasField("dataset_anomaly_info"):
        info = proto.dataset_anomaly_info
        found.append(Anomaly("(dataset)", split, info.short_description, info.description))
    return found


def _measurements(proto) -> dict[str, dict]:
    """Distances TFDV measured, by feature: what the report shows beside the thresholds."""
    out: dict[str, dict] = {}
    for info in proto.drift_skew_info:
        name = "/".join(info.path.step)
        entry = out.setdefault(name, {})
        for kind, items in (("drift", info.drift_measurements), ("skew", info.skew_measurements)):
            for m in items:
                entry[kind] = {"type": type(m).Type.Name(m.type), "value": m.value,
                               "threshold": m.threshold}
    return out


def validate(examples: str, output: str, config: DatasetConfig, schema_path: str | None = None,
             baseline_examples: str | None = None, baseline_store: str | None = None,
             beam_pipeline_args: str | None = None,
             in_memory_max_rows: int = IN_MEMORY_MAX_ROWS) -> dict:
    """Write statistics, schema, anomalies, summary and report to `output`, all or nothing.

    The baseline is `baseline_examples`, or else the data version stored in `baseline_store`
    just before this one (continuous training compares each new version with the last).
    Statistics run on the Beam runner `beam_pipeline_args` select (`beam_options`), or in this
    process when they are not given and the rows to describe are at most `in_memory_max_rows`.
    """
    beam_options(beam_pipeline_args)  # a bad flag fails here, before any output or download
    with tempfile.TemporaryDirectory(prefix="baseline-") as download_dir, \
            staged_output(output, last=SUMMARY_FILE) as staging:
        if baseline_store and not baseline_examples:
            baseline_examples = previous_examples(examples, baseline_store, download_dir)
        summary = _validate_to(examples, staging, config, schema_path, baseline_examples,
                               beam_pipeline_args, in_memory_max_rows)
    if baseline_store and not summary["anomalies_found"]:
        from components.common import data_store

        data_store.mark_validated(baseline_store, summary["dataset_version"], {
            k: summary[k] for k in ("dataset_version", "baseline_dataset_version",
                                    "schema_source", "created_at")})
    return summary


def previous_examples(examples: str, store: str, download_dir: str) -> str | None:
    """The examples of the data version stored before this one, or None on the first run."""
    from components.common import data_store

    version = read_metadata(examples)["dataset_version"]
    previous = data_store.previous_version(store, version)
    if previous is None:
        log.info("no earlier data version in %s: no drift baseline for %s", store, version)
        return None
    log.info("drift baseline: %s, the version stored before %s", previous["dataset_version"],
             version)
    return data_store.fetch_examples(previous, download_dir)


def _validate_to(examples, staging, config, schema_path, baseline_examples,
                 beam_pipeline_args=None, in_memory_max_rows=IN_MEMORY_MAX_ROWS) -> dict:
    import tensorflow_data_validation as tfdv

    started = time.monotonic()
    metadata = read_metadata(examples)
    baseline_metadata = read_metadata(baseline_examples) if baseline_examples else None
    given_schema = None
    if schema_path:
        if not os.path.exists(schema_path):
            raise StepError(f"{schema_path}: schema file not found")
        try:
            given_schema = tfdv.load_schema_text(schema_path)
        except Exception as exc:  # text_format raises several types; all mean a bad file
            message = " ".join(str(exc).split())
            raise StepError(f"{schema_path}: not a TFDV schema in text format: {message}") from exc
        apply_thresholds(given_schema, config)

    sources = split_sources(examples)
    if baseline_examples:  # only its train split is compared
        sources.update(split_sources(baseline_examples, "baseline/", ("train",)))
    rows = {name: count for name, (_, count) in sources.items()}
    in_memory = not beam_pipeline_args and sum(rows.values()) <= in_memory_max_rows
    started_statistics = time.monotonic()
    stats = compute_statistics(sources, staging, config, given_schema, beam_pipeline_args,
                               in_memory)
    seconds = time.monotonic() - started_statistics
    log.info("statistics of %s in %.1f s (%.0f rows/s, %s)",
             ", ".join(f"{name} {count} rows" for name, count in rows.items()), seconds,
             sum(rows.values()) / max(seconds, 1e-9),
             f"in this process: at most {in_memory_max_rows} rows" if in_memory else "on Beam")
    baseline_stats = stats.pop("baseline/train", None)

    if given_schema is not None:
        schema, schema_source = given_schema, schema_path
    elif baseline_stats is not None:
        # What is expected is the previous data: its unseen categories are anomalies now.
        schema, schema_source = infer_schema(baseline_stats, config), "inferred from baseline"
    else:
        schema, schema_source = infer_schema(stats["train"], config), "inferred from train split"
    tfdv.write_schema_text(schema, os.path.join(staging, SCHEMA_FILE))

    anomalies: list[Anomaly] = []
    measurements: dict[str, dict] = {}
    eval_stats = stats.get("eval")
    train_result = tfdv.validate_statistics(
        stats["train"], schema, previous_statistics=baseline_stats, serving_statistics=eval_stats
    )
    tfdv.write_anomalies_text(train_result, os.path.join(staging, "train", ANOMALIES_FILE))
    anomalies += _anomalies_from(train_result, "train")
    measurements = _measurements(train_result)
    if eval_stats is not None:
        eval_result = tfdv.validate_statistics(eval_stats, schema)
        tfdv.write_anomalies_text(eval_result, os.path.join(staging, "eval", ANOMALIES_FILE))
        anomalies += _anomalies_from(eval_result, "eval")

    summary = {
        "anomalies_found": bool(anomalies),
        "anomaly_count": len(anomalies),
        "anomalies": [a.__dict__ for a in anomalies],
        "measurements": measurements,
        "dataset_version": metadata["dataset_version"],
        "baseline_dataset_version": baseline_metadata["dataset_version"]
        if baseline_metadata else None,
        "schema_source": schema_source,
        "rows": metadata["rows"],
        "label_counts": metadata["label_counts"],
        "thresholds": {k: v for k, v in config.validation.__dict__.items()},
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - started, 3),
    }
    from components.validate.report import write_report

    write_report(os.path.join(staging, REPORT_FILE), summary, stats, baseline_stats,
                 schema, config)
    documents.write_json(os.path.join(staging, SUMMARY_FILE), summary)
    log.info("validated %s (%s): %d anomalies, schema %s, %.1f s", examples,
             metadata["dataset_version"], len(anomalies), schema_source, summary["seconds"])
    return summary


def one_line_summary(summary: dict) -> str:
    """`3 anomalies: state (train): Unexpected string values; ...` for logs and failures."""
    items = [f"{a['feature']} ({a['split']}): {a['short']}" for a in summary["anomalies"]]
    shown = "; ".join(items[:5]) + ("; ..." if len(items) > 5 else "")
    count = summary["anomaly_count"]
    noun = "anomaly" if count == 1 else "anomalies"
    return f"{count} {noun} in {summary['dataset_version']}: {shown}"
