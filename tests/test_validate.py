"""Data validation as a data scientist relies on it: real data passes, planted problems caught."""

from __future__ import annotations

import csv
import json
import os
import shutil

import pytest

from components.common import data_store
from components.common.dataset_config import load_dataset_config
from components.common.errors import StepError
from components.ingest.ingest import IngestOptions, ingest
from components.validate.validation import validate

CONFIG = load_dataset_config()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("validate")


def generate(cli, path, rows, seed, **options):
    args = ["--rows", str(rows), "--seed", str(seed), "--out", str(path)]
    for key, value in options.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    result = cli("datagen", *args)
    assert result.returncode == 0, result.stderr
    return path


@pytest.fixture(scope="module")
def baseline(workdir):
    """An ingested dataset with the usual ~25% disputed, the 'previous data version'."""
    from tests.conftest import run_cli

    csv_path = generate(run_cli, workdir / "baseline.csv", 4000, seed=1)
    ingest(str(csv_path), str(workdir / "baseline"), CONFIG)
    return workdir / "baseline"


def anomalies_by_feature(summary):
    found = {}
    for anomaly in summary["anomalies"]:
        found.setdefault(anomaly["feature"], []).append(anomaly)
    return found


def test_real_sample_ingests_and_validates_cleanly(real_sample, tmp_path, cli):
    """The real 2013 export goes through both steps as a container would run them."""
    result = cli("components.ingest", "--source", str(real_sample),
                 "--output", str(tmp_path / "examples"))
    assert result.returncode == 0, result.stderr
    result = cli("components.validate", "--examples", str(tmp_path / "examples"),
                 "--output", str(tmp_path / "validation"), "--fail-on-anomalies",
                 "--report", str(tmp_path / "report" / "index.html"))
    assert result.returncode == 0, result.stderr
    out = tmp_path / "validation"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["anomalies_found"] is False
    assert summary["rows"]["read"] == 1000
    assert set(summary["measurements"]) >= {"product", "state", "consumer_disputed"}

    import tensorflow_data_validation as tfdv

    train_stats = tfdv.load_stats_binary(str(out / "train" / "FeatureStats.pb"))
    names = {f.path.step[0] for f in train_stats.datasets[0].features}
    assert {"product", "issue", "state", "zip_code", "consumer_disputed"} <= names
    assert train_stats.datasets[0].num_examples == summary["rows"]["train"]
    schema = tfdv.load_schema_text(str(out / "schema.pbtxt"))
    zip_feature = tfdv.get_feature(schema, "zip_code")
    assert zip_feature.WhichOneof("domain_info") is None, "masked ZIPs like 606XX must stay valid"
    report = (tmp_path / "report" / "index.html").read_text()
    assert "no anomalies" in report and "product: share of" in report
    assert 'src="data:image/png;base64,' in report


def test_label_shift_against_previous_version_is_an_anomaly(baseline, workdir, cli):
    """25% disputed becoming 60% in new data stops the pipeline with a one-line reason."""
    shifted_csv = generate(cli, workdir / "shifted.csv", 4000, seed=2, disputed_rate=0.6)
    ingest(str(shifted_csv), str(workdir / "shifted"), CONFIG)
    result = cli("components.validate", "--examples", str(workdir / "shifted"),
                 "--baseline-examples", str(baseline), "--output", str(workdir / "v-shift"),
                 "--fail-on-anomalies")
    assert result.returncode == 2
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "consumer_disputed" in error_lines[0]
    summary = json.loads((workdir / "v-shift" / "summary.json").read_text())
    label = summary["measurements"]["consumer_disputed"]["drift"]
    assert label["value"] > 0.3 and label["threshold"] == pytest.approx(0.1)
    label_anomalies = anomalies_by_feature(summary)["consumer_disputed"]
    assert [a["split"] for a in label_anomalies] == ["train vs baseline (drift)"]
    assert "consumer_disputed" in (workdir / "v-shift" / "report.html").read_text()


def test_same_distribution_new_sample_has_no_drift(baseline, workdir, cli):
    """Fresh data from the same process is not flagged: the checks do not cry wolf."""
    fresh_csv = generate(cli, workdir / "fresh.csv", 4000, seed=3)
    ingest(str(fresh_csv), str(workdir / "fresh"), CONFIG)
    summary = validate(str(workdir / "fresh"), str(workdir / "v-fresh"), CONFIG,
                       baseline_examples=str(baseline))
    assert summary["anomalies_found"] is False, summary["anomalies"]
    assert summary["baseline_dataset_version"] == json.loads(
        (baseline / "metadata.json").read_text())["dataset_version"]
    assert summary["schema_source"] == "inferred from baseline"


def _plant_state(src, dst, value, every):
    with open(src, newline="", encoding="utf-8") as fin, \
            open(dst, "w", newline="", encoding="utf-8") as fout:
        reader, writer = csv.reader(fin), csv.writer(fout)
        header = next(reader)
        writer.writerow(header)
        state = header.index("State")
        for i, row in enumerate(reader):
            if i % every == 0:
                row[state] = value
            writer.writerow(row)


def test_unknown_category_is_reported(baseline, workdir, cli):
    """A state code never seen before ('ZZ') is an anomaly on the state feature."""
    fresh_csv = workdir / "fresh-zz-src.csv"
    generate(cli, fresh_csv, 2000, seed=4)
    _plant_state(fresh_csv, workdir / "zz.csv", "ZZ", every=10)
    ingest(str(workdir / "zz.csv"), str(workdir / "zz"), CONFIG)
    summary = validate(str(workdir / "zz"), str(workdir / "v-zz"), CONFIG,
                       baseline_examples=str(baseline))
    state = anomalies_by_feature(summary).get("state")
    assert state, summary["anomalies"]
    assert any("ZZ" in a["description"] for a in state)


def test_curated_schema_is_applied(baseline, workdir, cli):
    """A schema written by one run and committed by a person is what the next run checks."""
    first = validate(str(baseline), str(workdir / "v-first"), CONFIG)
    assert first["anomalies_found"] is False
    schema_path = workdir / "v-first" / "schema.pbtxt"
    summary = validate(str(workdir / "zz"), str(workdir / "v-zz-schema"), CONFIG,
                       schema_path=str(schema_path))
    assert summary["schema_source"] == str(schema_path)
    assert "state" in anomalies_by_feature(summary)


def test_train_eval_skew_is_reported(baseline, workdir):
    """An eval split whose label distribution differs from train's is skew."""
    skewed = workdir / "skewed"
    shutil.copytree(baseline, skewed)
    shutil.rmtree(skewed / "eval")
    shutil.copytree(workdir / "shifted" / "train", skewed / "eval")
    shifted = json.loads((workdir / "shifted" / "metadata.json").read_text())
    metadata = json.loads((skewed / "metadata.json").read_text())
    metadata["rows"]["eval"] = shifted["rows"]["train"]
    metadata["label_counts"]["eval"] = shifted["label_counts"]["train"]
    (skewed / "metadata.json").write_text(json.dumps(metadata))
    summary = validate(str(skewed), str(workdir / "v-skew"), CONFIG)
    skew = summary["measurements"]["consumer_disputed"]["skew"]
    assert skew["value"] > 0.3
    assert {"feature": "consumer_disputed", "split": "train vs eval (skew)"} in [
        {"feature": a["feature"], "split": a["split"]} for a in summary["anomalies"]]


def test_executor_output_reports_anomalies_found(baseline, tmp_path, cli):
    """Inside KFP the decision and the artifacts' metadata reach the next step and ML Metadata."""
    executor_input = {
        "inputs": {"artifacts": {}, "parameterValues": {}},
        "outputs": {
            "artifacts": {
                "statistics": {"artifacts": [{"name": "statistics",
                                              "uri": str(tmp_path / "statistics")}]},
                "report": {"artifacts": [{"name": "report", "uri": str(tmp_path / "report")}]},
            },
            "parameters": {"anomalies_found": {"outputFile": str(tmp_path / "af")}},
            "outputFile": str(tmp_path / "out" / "executor_output.json"),
        },
    }
    result = cli("components.validate", "--examples", str(baseline),
                 "--output", str(tmp_path / "statistics"), "--report", str(tmp_path / "report"),
                 "--fail-on-anomalies", "false", "--executor-input", json.dumps(executor_input))
    assert result.returncode == 0, result.stderr
    output = json.loads((tmp_path / "out" / "executor_output.json").read_text())
    assert output["parameterValues"] == {"anomalies_found": False}
    stats = output["artifacts"]["statistics"]["artifacts"][0]
    assert stats["uri"] == str(tmp_path / "statistics")
    assert stats["metadata"]["dataset_version"].startswith("ds-")
    assert output["artifacts"]["report"]["artifacts"][0]["uri"] == str(tmp_path / "report")
    assert (tmp_path / "report").read_text().startswith("<!DOCTYPE html>")


def test_not_an_ingest_output_is_a_clear_error(tmp_path):
    with pytest.raises(StepError, match="not the output of a finished ingest step"):
        validate(str(tmp_path), str(tmp_path / "out"), CONFIG)
    assert not os.path.exists(tmp_path / "out")


def test_bad_schema_file_is_a_clear_error(baseline, tmp_path):
    bad = tmp_path / "schema.pbtxt"
    bad.write_text("feature { name: 'x' type: NOT_A_TYPE }\n")
    with pytest.raises(StepError, match="not a TFDV schema"):
        validate(str(baseline), str(tmp_path / "out"), CONFIG, schema_path=str(bad))
    assert not os.path.exists(tmp_path / "out")
    assert not [p for p in os.listdir(tmp_path) if ".partial-" in p]


def test_continuous_runs_compare_with_the_last_clean_version_in_the_store(tmp_path, cli):
    """Each new version is compared with the last stored version that passed validation."""
    store = tmp_path / "store"
    options = IngestOptions(store=str(store))
    summaries = []
    for name, seed, rate in (("a", 21, 0.25), ("b", 22, 0.6), ("c", 23, 0.25)):
        generate(cli, tmp_path / f"{name}.csv", 2500, seed=seed, disputed_rate=rate)
        ingest(str(tmp_path / f"{name}.csv"), str(tmp_path / f"{name}-ex"), CONFIG, options)
        summaries.append(validate(str(tmp_path / f"{name}-ex"), str(tmp_path / f"{name}-v"),
                                  CONFIG, baseline_store=str(store)))
    first, shifted, recovered = summaries
    assert first["baseline_dataset_version"] is None and not first["anomalies_found"]
    assert shifted["baseline_dataset_version"] == first["dataset_version"]
    assert "consumer_disputed" in anomalies_by_feature(shifted)
    # The anomalous version is stored (nothing is lost) but is not the new normal.
    assert recovered["baseline_dataset_version"] == first["dataset_version"]
    assert not recovered["anomalies_found"], recovered["anomalies"]
    stored = {m["dataset_version"] for m in data_store.list_versions(str(store))}
    assert stored == {s["dataset_version"] for s in summaries}


MULTI_PROCESS = "--direct_num_workers=2 --direct_running_mode=multi_processing"


@pytest.mark.slow
def test_statistics_in_this_process_on_beam_and_on_two_workers_agree(tmp_path, cli):
    """Small data is described in the step's own process (no Beam pipeline); larger data, or
    any `--beam-pipeline-args`, on Beam: here one process and Beam's multi-process runner (as
    a cluster runner would: rows split between workers, partial statistics merged). Everything
    exact is equal in all three: counts, missing, uniques, lengths, every categorical
    feature's values and frequencies; so the schema, anomalies and distances are the same.
    Only the top values of features with more distinct values than the sketch holds (ids, ZIP
    codes, free text: Misra-Gries) may differ, as approximations do."""
    import tensorflow_data_validation as tfdv

    generate(cli, tmp_path / "data.csv", 3000, seed=31)
    # many shards, so that both workers read rows
    ingest(str(tmp_path / "data.csv"), str(tmp_path / "ex"), CONFIG,
           IngestOptions(rows_per_shard=300))
    runs = {"in process": [], "beam": ["--in-memory-max-rows", "0"],
            "beam, two workers": ["--beam-pipeline-args", MULTI_PROCESS]}
    outputs, logs = {}, {}
    for label, flags in runs.items():
        result = cli("components.validate", "--examples", str(tmp_path / "ex"),
                     "--output", str(tmp_path / label), *flags)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[label], logs[label] = tmp_path / label, result.stderr
    assert "in this process: at most 20000 rows" in logs["in process"]
    assert "on Beam" in logs["beam"] and "on Beam" in logs["beam, two workers"]
    one = json.loads((outputs["in process"] / "summary.json").read_text())
    sketched = set(CONFIG.validation.no_distribution_checks)
    for label in ("beam", "beam, two workers"):
        other = json.loads((outputs[label] / "summary.json").read_text())
        assert one["anomalies"] == other["anomalies"], label
        assert one["measurements"] == other["measurements"], label
        assert (outputs["in process"] / "schema.pbtxt").read_text() == \
            (outputs[label] / "schema.pbtxt").read_text(), label
        for split in ("train", "eval"):
            stats = {k: tfdv.load_stats_binary(str(outputs[k] / split / "FeatureStats.pb"))
                     .datasets[0] for k in ("in process", label)}
            assert stats["in process"].num_examples == stats[label].num_examples
            features = {k: {f.path.step[0]: f for f in s.features} for k, s in stats.items()}
            assert features["in process"].keys() == features[label].keys()
            for name, feature in features["in process"].items():
                theirs = features[label][name]
                if name not in sketched:
                    assert feature == theirs, f"{label}: {split}/{name}"
                    continue
                for field in ("common_stats", "unique", "avg_length"):
                    assert getattr(feature.string_stats, field) == \
                        getattr(theirs.string_stats, field), f"{label}: {split}/{name}: {field}"


def test_bad_beam_pipeline_args_are_a_one_line_error(baseline, tmp_path, cli):
    result = cli("components.validate", "--examples", str(baseline), "--output",
                 str(tmp_path / "out"), "--beam-pipeline-args", "--direct_num_workers=two")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: validate: --beam-pipeline-args: argument --direct_num_workers: "
        "invalid int value: 'two'")
    assert not os.path.exists(tmp_path / "out")
    with pytest.raises(StepError, match="--beam-pipeline-args: No closing quotation"):
        validate(str(baseline), str(tmp_path / "out"), CONFIG,
                 beam_pipeline_args="--job_name='unterminated")


def _damaged_copy(baseline, tmp_path, damage) -> tuple:
    examples = tmp_path / "examples"
    shutil.copytree(baseline, examples)
    shard = sorted((examples / "train").glob("*.tfrecord.gz"))[0]
    data = shard.read_bytes()
    shard.write_bytes(damage(data))
    return examples, shard


def test_a_truncated_tfrecord_is_a_precise_one_line_error(baseline, tmp_path, cli):
    """Beam's own message ends in a 4.9 KB hex dump of a record; the step names the file and
    what is wrong with it."""
    examples, shard = _damaged_copy(baseline, tmp_path, lambda data: data[:len(data) // 2])
    result = cli("components.validate", "--examples", str(examples), "--output",
                 str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert errors[0].startswith(f"error: validate: {shard}: truncated: the gzip stream ends "
                                "early, after ")
    assert "run ingest again" in errors[0] and len(errors[0]) < 300
    assert not os.path.exists(tmp_path / "out")


def test_a_corrupt_tfrecord_names_the_file(baseline, tmp_path):
    def flip(data: bytes) -> bytes:
        middle = len(data) // 2
        return data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 64]) + \
            data[middle + 64:]

    examples, shard = _damaged_copy(baseline, tmp_path, flip)
    with pytest.raises(StepError, match=f"^{shard}: (not readable as gzip|corrupt)"):
        validate(str(examples), str(tmp_path / "out"), CONFIG)
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.parametrize("in_memory_max_rows", [20_000, 0], ids=["in process", "beam"])
def test_records_that_do_not_match_the_metadata_are_an_error(baseline, tmp_path,
                                                              in_memory_max_rows):
    """A split whose files hold other rows than its metadata.json says (a partial copy, files
    from another version) is refused, in both statistics paths, before any output."""
    examples = tmp_path / "examples"
    shutil.copytree(baseline, examples)
    metadata = json.loads((examples / "metadata.json").read_text())
    metadata["rows"]["eval"] += 1
    (examples / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(StepError, match=r"/eval/\*\.tfrecord\.gz: \d+ records, its "
                                        r"metadata\.json says \d+; run ingest again"):
        validate(str(examples), str(tmp_path / "out"), CONFIG,
                 in_memory_max_rows=in_memory_max_rows)
    assert not os.path.exists(tmp_path / "out")
