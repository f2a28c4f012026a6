"""Tests for the ingest step: what a user relies on when they turn a CSV into train/eval data.

Most tests call `ingest()` in-process (TensorFlow is imported once); a few run the real CLI
(`python -m components.ingest`) to check exit codes, one-line errors and KFP executor output.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
import re
from pathlib import Path

import pytest
import yaml
from minio.versioningconfig import ENABLED, VersioningConfig

from components.common import data_store, storage
from components.common.dataset_config import CONFIG_DIR, load_dataset_config
from components.common.errors import StepError
from components.ingest.ingest import IngestOptions, ingest

MODULE = "components.ingest"

HEADER = [
    "Date received", "Product", "Sub-product", "Issue", "Sub-issue",
    "Consumer complaint narrative", "Company public response", "Company", "State", "ZIP code",
    "Tags", "Consumer consent provided?", "Submitted via", "Date sent to company",
    "Company response to consumer", "Timely response?", "Consumer disputed?", "Complaint ID",
]
DEFAULTS = {
    "Date received": "2015-09-23",
    "Product": "Mortgage",
    "Sub-product": "Conventional fixed mortgage",
    # Contains a comma, so every row has a quoted field, as in real exports.
    "Issue": "Loan servicing, payments, escrow account",
    "Sub-issue": "",
    "Consumer complaint narrative": "",
    "Company public response": "",
    "Company": "Wells Fargo & Company",
    "State": "CA",
    "ZIP code": "606XX",
    "Tags": "",
    "Consumer consent provided?": "",
    "Submitted via": "Web",
    "Date sent to company": "2015-09-24",
    "Company response to consumer": "Closed with explanation",
    "Timely response?": "Yes",
    "Consumer disputed?": "No",
    "Complaint ID": "",
}
SHORT = {
    "product": "Product", "sub_product": "Sub-product", "issue": "Issue",
    "narrative": "Consumer complaint narrative", "company": "Company", "state": "State",
    "zip_code": "ZIP code", "label": "Consumer disputed?",
}


# --------------------------------------------------------------------------- helpers


def complaint(cid: int | str, **values: str) -> dict[str, str]:
    """One complaint row keyed by official header; keyword names are the SHORT aliases."""
    row = {**DEFAULTS, "Complaint ID": str(cid)}
    for key, value in values.items():
        row[SHORT[key]] = value
    return row


def csv_bytes(rows, header=HEADER, delimiter=",", newline="\n", bom=False) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator=newline)
    writer.writerow(header)
    for row in rows:
        writer.writerow([row.get(name, "") for name in header] if isinstance(row, dict) else row)
    return (b"\xef\xbb\xbf" if bom else b"") + buffer.getvalue().encode("utf-8")


def write_csv(path: Path, rows, **kwargs) -> Path:
    path.write_bytes(csv_bytes(rows, **kwargs))
    return path


@functools.lru_cache(maxsize=1)
def cfpb_config():
    return load_dataset_config()


def run_ingest(source, output, config=None, **options) -> dict:
    return ingest(str(source), str(output), config or cfpb_config(), IngestOptions(**options))


def read_split(output: Path, split: str) -> list:
    """The tf.Examples of one split, read the way a downstream step reads them."""
    import tensorflow as tf

    metadata = json.loads((output / "metadata.json").read_text())
    files = [str(output / name) for name in metadata["files"][split]]
    if not files:
        return []
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP")
    return [tf.train.Example.FromString(record.numpy()) for record in dataset]


def feature_bytes(example, name: str) -> list[bytes]:
    return list(example.features.feature[name].bytes_list.value)


def example_id(example, id_feature: str = "complaint_id") -> str:
    (value,) = feature_bytes(example, id_feature)
    return value.decode()


def examples_by_id(output: Path, id_feature: str = "complaint_id") -> dict:
    return {example_id(ex, id_feature): ex for s in ("train", "eval")
            for ex in read_split(output, s)}


def split_ids(output: Path) -> dict[str, list[str]]:
    return {s: [example_id(ex) for ex in read_split(output, s)] for s in ("train", "eval")}


def assert_nothing_published(output: Path) -> None:
    """All or nothing: a failed run leaves no dataset and no staging directory behind."""
    assert not (output / "metadata.json").exists()
    assert not (output / "train").exists()
    assert not (output / "eval").exists()
    leftovers = [p.name for p in output.parent.iterdir() if ".partial-" in p.name]
    assert leftovers == []


def tree_state(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def write_config(path: Path, **changes) -> Path:
    """The built-in cfpb config with top-level sections updated (e.g. split={...})."""
    raw = yaml.safe_load((CONFIG_DIR / "cfpb.yaml").read_text())
    raw.update(changes)
    path.write_text(yaml.safe_dump(raw))
    return path


# --------------------------------------------------------------------------- 1. parsing


def test_multiline_narratives_with_commas_and_quotes_round_trip(tmp_path):
    """Narratives with embedded newlines, commas and quotes reach the model byte for byte."""
    narratives = {
        "1": 'I called on XX/XX/XXXX, they said "no".\nThen again, "maybe".\n\n  Signed, me ',
        "2": 'Quote at the end "',
        "3": "single line, with commas, only",
        "4": '""double"" quotes\r\nand a CRLF inside the field',
    }
    source = write_csv(tmp_path / "in.csv",
                       [complaint(cid, narrative=text) for cid, text in narratives.items()])

    metadata = run_ingest(source, tmp_path / "out")

    assert metadata["rows"]["read"] == 4  # embedded newlines do not create rows
    examples = examples_by_id(tmp_path / "out")
    assert {cid: feature_bytes(ex, "narrative") for cid, ex in examples.items()} == {
        cid: [text.encode()] for cid, text in narratives.items()
    }
    assert feature_bytes(examples["1"], "issue") == [b"Loan servicing, payments, escrow account"]


def test_bom_header_and_non_ascii_text(tmp_path):
    """Excel's 'CSV UTF-8' (BOM) works even when the first column is a mapped one."""
    header = ["Complaint ID", *[h for h in HEADER if h != "Complaint ID"]]
    text = "Café – naïve ‘quotes’, 日本語 and 😀"
    rows = [complaint(1, narrative=text, company="Société Générale"), complaint(2, label="Yes")]
    source = write_csv(tmp_path / "bom.csv", rows, header=header, bom=True)

    metadata = run_ingest(source, tmp_path / "out")

    assert metadata["column_mapping"]["complaint_id"] == "Complaint ID"
    examples = examples_by_id(tmp_path / "out")
    assert sorted(examples) == ["1", "2"]
    assert feature_bytes(examples["1"], "narrative") == [text.encode("utf-8")]


def test_crlf_line_endings(tmp_path):
    """Windows line endings leave no stray carriage return in the last column (the id)."""
    rows = [complaint(cid, narrative="line one\nline two" if cid == 2 else "")
            for cid in range(1, 6)]
    source = write_csv(tmp_path / "crlf.csv", rows, newline="\r\n")
    assert b"\r\n" in source.read_bytes()

    metadata = run_ingest(source, tmp_path / "out")

    assert metadata["rows"]["read"] == 5
    examples = examples_by_id(tmp_path / "out")
    assert sorted(examples) == ["1", "2", "3", "4", "5"]
    assert feature_bytes(examples["2"], "narrative") == [b"line one\nline two"]
    assert feature_bytes(examples["3"], "company_response") == [b"Closed with explanation"]


def test_real_snake_case_sample_ingests(tmp_path, real_sample):
    """The real 1,000-row snake_case CFPB sample ingests with the built-in config."""
    with open(real_sample, newline="", encoding="utf-8") as handle:
        labels = [r["consumer_disputed?"] for r in csv.DictReader(handle)]

    metadata = run_ingest(real_sample, tmp_path / "out")

    rows, counts = metadata["rows"], metadata["label_counts"]
    assert rows["read"] == 1000
    assert rows["kept"] == rows["train"] + rows["eval"] == 1000 - sum(metadata["dropped"].values())
    positives = counts["train"]["positive"] + counts["eval"]["positive"]
    negatives = counts["train"]["negative"] + counts["eval"]["negative"]
    assert positives + negatives == rows["kept"]
    assert positives == labels.count("Yes")
    assert 0.19 <= positives / rows["kept"] <= 0.25
    assert metadata["column_mapping"]["zip_code"] == "zipcode"
    assert metadata["column_mapping"]["consumer_disputed"] == "consumer_disputed?"
    assert len(read_split(tmp_path / "out", "train")) == rows["train"]
    assert len(read_split(tmp_path / "out", "eval")) == rows["eval"]


def test_blank_values_are_absent_and_label_is_int64(tmp_path):
    """Blank cells are missing values (not empty strings) to every reader; the label is int64.

    A missing value carries no value list in the Example: TensorFlow's parser substitutes the
    default and TFDV counts it as missing.
    """
    rows = [
        complaint(1, label="Yes", sub_product="", narrative="   ", zip_code=""),
        complaint(2, label="No", state="NY"),
    ]
    run_ingest(write_csv(tmp_path / "in.csv", rows), tmp_path / "out")

    examples = examples_by_id(tmp_path / "out")
    first, second = examples["1"], examples["2"]
    for name in ("sub_product", "narrative", "zip_code"):
        assert first.features.feature[name].WhichOneof("kind") is None
    assert feature_bytes(second, "sub_product") == [b"Conventional fixed mortgage"]
    assert feature_bytes(second, "state") == [b"NY"]
    assert list(first.features.feature["consumer_disputed"].int64_list.value) == [1]
    assert list(second.features.feature["consumer_disputed"].int64_list.value) == [0]
    assert feature_bytes(first, "consumer_disputed") == []


# --------------------------------------------------------------------------- 2. dropping


def test_unusable_labels_are_dropped_and_counted(tmp_path):
    """Blank labels are 'unknown', other values 'invalid'; neither reaches the examples."""
    labels = {"1": "Yes", "2": " no ", "3": "", "4": "   ", "5": "N/A", "6": "N/A", "7": "Maybe",
              "8": "YES", "9": "No"}
    rows = [complaint(cid, label=label) for cid, label in labels.items()]

    metadata = run_ingest(write_csv(tmp_path / "in.csv", rows), tmp_path / "out")

    assert metadata["rows"]["read"] == 9
    assert metadata["rows"]["kept"] == 4
    assert metadata["dropped"] == {"blank_label": 2, "invalid_label": 3}
    assert metadata["dropped_label_values"] == {"N/A": 2, "Maybe": 1}
    examples = examples_by_id(tmp_path / "out")
    assert sorted(examples) == ["1", "2", "8", "9"]
    assert {cid: ex.features.feature["consumer_disputed"].int64_list.value[0]
            for cid, ex in examples.items()} == {"1": 1, "2": 0, "8": 1, "9": 0}


def test_dropped_label_values_keep_counting_recorded_values(tmp_path):
    """The per-value count of dropped labels is exact for values it lists."""
    rows = [complaint(0, label="N/A")]
    rows += [complaint(i, label=f"v{i}") for i in range(1, 20)]  # 20 distinct values recorded
    rows += [complaint(100, label="N/A"), complaint(101, label="Yes"), complaint(102, label="No")]

    metadata = run_ingest(write_csv(tmp_path / "in.csv", rows), tmp_path / "out")

    assert metadata["dropped"]["invalid_label"] == 21
    assert metadata["dropped_label_values"]["N/A"] == 2


# --------------------------------------------------------------------------- 3. split


def test_split_is_deterministic_and_files_match_metadata(tmp_path):
    """Two runs on the same data give the same examples in the same splits."""
    source = write_csv(tmp_path / "in.csv", [complaint(i, label="Yes" if i % 4 else "No")
                                             for i in range(1, 301)])
    first = run_ingest(source, tmp_path / "a")
    second = run_ingest(source, tmp_path / "b")

    ids_a, ids_b = split_ids(tmp_path / "a"), split_ids(tmp_path / "b")
    assert ids_a == ids_b
    assert ids_a["train"] and ids_a["eval"]
    assert sorted(int(i) for i in ids_a["train"] + ids_a["eval"]) == list(range(1, 301))
    assert first["files"] == second["files"]
    for split_name in ("train", "eval"):
        on_disk = sorted(str(p.relative_to(tmp_path / "a"))
                         for p in (tmp_path / "a" / split_name).glob("*.tfrecord.gz"))
        assert on_disk == sorted(first["files"][split_name])
        assert first["rows"][split_name] == len(ids_a[split_name])


@pytest.mark.parametrize("fraction", [0.1, 0.3])
def test_eval_share_matches_fraction(tmp_path, fraction):
    """Over 5,000 rows the eval share is within 0.02 of --eval-fraction."""
    source = write_csv(tmp_path / "in.csv", [complaint(i) for i in range(1, 5001)])

    metadata = run_ingest(source, tmp_path / "out", eval_fraction=fraction)

    assert metadata["rows"]["train"] + metadata["rows"]["eval"] == 5000
    assert abs(metadata["rows"]["eval"] / 5000 - fraction) <= 0.02
    assert metadata["split"]["eval_fraction"] == fraction


def test_rows_keep_their_split_when_data_grows_or_is_reordered(tmp_path):
    """The split depends on the id only: new rows or a new order never move existing rows."""
    base = [complaint(i) for i in range(1, 401)]
    grown = [complaint(i, product="Debt collection", label="Yes") for i in range(401, 801)]
    run_ingest(write_csv(tmp_path / "v1.csv", base), tmp_path / "v1")
    run_ingest(write_csv(tmp_path / "v2.csv", grown[::2] + base[::-1] + grown[1::2]),
               tmp_path / "v2")

    old, new = split_ids(tmp_path / "v1"), split_ids(tmp_path / "v2")
    old_ids = {str(i) for i in range(1, 401)}
    assert set(old["eval"]) and set(new["eval"]) - old_ids
    assert set(new["eval"]) & old_ids == set(old["eval"])
    assert set(new["train"]) & old_ids == set(old["train"])


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_eval_fraction_outside_open_interval_is_an_error(tmp_path, fraction):
    """--eval-fraction must be in (0, 1): no silent all-train or all-eval dataset."""
    source = write_csv(tmp_path / "in.csv", [complaint(1), complaint(2)])
    with pytest.raises(StepError, match=r"--eval-fraction .*between 0 and 1"):
        run_ingest(source, tmp_path / "out", eval_fraction=fraction)
    assert_nothing_published(tmp_path / "out")


def test_split_salt_in_config_changes_the_split(tmp_path):
    """Changing split.salt draws a different (still deterministic) split, no code change."""
    source = write_csv(tmp_path / "in.csv", [complaint(i) for i in range(1, 1001)])
    salted = load_dataset_config(str(write_config(
        tmp_path / "salted.yaml", split={"eval_fraction": 0.2, "salt": "experiment-2"})))

    plain = run_ingest(source, tmp_path / "plain", eval_fraction=0.2)
    meta = run_ingest(source, tmp_path / "salted", config=salted)

    assert meta["split"] == {**plain["split"], "salt": "experiment-2"}
    plain_eval, salted_eval = (set(split_ids(tmp_path / d)["eval"]) for d in ("plain", "salted"))
    assert plain_eval != salted_eval
    assert abs(len(salted_eval) / 1000 - 0.2) <= 0.04  # the config's eval_fraction applies
    again = run_ingest(source, tmp_path / "salted-again", config=salted)
    assert again["rows"] == meta["rows"]
    assert set(split_ids(tmp_path / "salted-again")["eval"]) == salted_eval


# --------------------------------------------------------------------------- 4. versioning


def test_dataset_version_is_derived_from_the_bytes(tmp_path):
    """Same bytes (anywhere) give the same version; a one-byte change gives another."""
    data = csv_bytes([complaint(i) for i in range(1, 21)])
    (tmp_path / "a.csv").write_bytes(data)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "b.csv").write_bytes(data)
    (tmp_path / "c.csv").write_bytes(data.replace(b"Mortgage", b"Mortgagf", 1))

    a = run_ingest(tmp_path / "a.csv", tmp_path / "out-a")
    b = run_ingest(tmp_path / "elsewhere" / "b.csv", tmp_path / "out-b")
    c = run_ingest(tmp_path / "c.csv", tmp_path / "out-c")

    assert a["dataset_version"] == b["dataset_version"]
    assert a["dataset_version"] != c["dataset_version"]
    assert a["source_sha256"] == hashlib.sha256(data).hexdigest()
    assert a["source_bytes"] == len(data)
    saved = json.loads((tmp_path / "out-a" / "metadata.json").read_text())
    assert saved["dataset_version"] == a["dataset_version"]


def test_local_store_keeps_immutable_snapshots(tmp_path):
    """--store keeps the exact source bytes per version, once; new data adds a version."""
    store = tmp_path / "store"
    source = write_csv(tmp_path / "complaints.csv", [complaint(i) for i in range(1, 31)])

    first = run_ingest(source, tmp_path / "out1", store=str(store))

    manifests = list(store.rglob("manifest.json"))
    assert len(manifests) == 1
    manifest = json.loads(manifests[0].read_text())
    assert manifest["dataset_version"] == first["dataset_version"]
    assert Path(manifest["snapshot"]).read_bytes() == source.read_bytes()
    assert Path(manifest["snapshot"]).is_relative_to(first["snapshot"])
    before = tree_state(store)

    again = run_ingest(source, tmp_path / "out2", store=str(store))

    assert again["snapshot"] == first["snapshot"]
    assert again["dataset_version"] == first["dataset_version"]
    assert tree_state(store) == before  # nothing written, nothing touched

    changed = write_csv(tmp_path / "complaints-2.csv", [complaint(i) for i in range(1, 32)])
    third = run_ingest(changed, tmp_path / "out3", store=str(store))

    assert third["dataset_version"] != first["dataset_version"]
    versions = data_store.list_versions(str(store))
    assert {v["dataset_version"] for v in versions} == {
        first["dataset_version"], third["dataset_version"]}
    for version in versions:
        expected = source if version["dataset_version"] == first["dataset_version"] else changed
        assert Path(version["snapshot"]).read_bytes() == expected.read_bytes()


# --------------------------------------------------------------------------- 5. S3


def object_versions(bucket: str, prefix: str) -> list[tuple[str, str]]:
    """Every stored version of every object under a prefix (bucket versioning on)."""
    objects = storage.s3_client().list_objects(bucket, prefix=prefix, recursive=True,
                                               include_version=True)
    return sorted((o.object_name, o.version_id) for o in objects)


def test_new_data_says_whether_the_store_had_the_version(tmp_path, cli):
    """new_data: true the first time a version is stored, false for the same bytes again
    (whatever the file is called), true for other bytes; always true without a store."""
    store = tmp_path / "store"
    source = write_csv(tmp_path / "a.csv", [complaint(i) for i in range(1, 31)])
    assert run_ingest(source, tmp_path / "o1")["new_data"] is True  # no store
    assert run_ingest(source, tmp_path / "o2", store=str(store))["new_data"] is True
    assert run_ingest(source, tmp_path / "o3", store=str(store))["new_data"] is False
    copy = tmp_path / "renamed.csv"
    copy.write_bytes(source.read_bytes())
    assert run_ingest(copy, tmp_path / "o4", store=str(store))["new_data"] is False
    other = write_csv(tmp_path / "b.csv", [complaint(i) for i in range(1, 32)])
    assert run_ingest(other, tmp_path / "o5", store=str(store))["new_data"] is True
    # a run that failed after storing its data is run again on purpose with --rerun
    assert run_ingest(source, tmp_path / "rerun", store=str(store), rerun=True)["new_data"] is True
    assert "new_data" not in json.loads((tmp_path / "o3" / "metadata.json").read_text())

    output = tmp_path / "executor_output.json"
    payload = {"inputs": {"parameterValues": {}}, "outputs": {
        "artifacts": {"examples": {"artifacts": [
            {"name": "examples", "uri": str(tmp_path / "o6"), "metadata": {}}]}},
        "parameters": {"dataset_version": {"outputFile": str(tmp_path / "dv")},
                       "new_data": {"outputFile": str(tmp_path / "nd")}},
        "outputFile": str(output)}}
    done = cli(MODULE, "--source", str(source), "--output", str(tmp_path / "o6"), "--store",
               str(store), "--executor-input", json.dumps(payload))
    assert done.returncode == 0, done.stderr
    reported = json.loads(output.read_text())
    assert reported["parameterValues"]["new_data"] is False
    assert reported["artifacts"]["examples"]["artifacts"][0]["metadata"]["new_data"] is False
    assert "no new data" in done.stderr


def test_s3_source_and_s3_store(tmp_path, s3_bucket):
    """An s3:// source ingests, its exact bytes are snapshotted once in an s3:// store."""
    local = write_csv(tmp_path / "complaints.csv",
                      [complaint(i, narrative="two\nlines, \"quoted\"") for i in range(1, 41)])
    client = storage.s3_client()
    client.fput_object(s3_bucket, "raw/complaints.csv", str(local))
    source = f"s3://{s3_bucket}/raw/complaints.csv"
    store = f"s3://{s3_bucket}/store"
    client.set_bucket_versioning(s3_bucket, VersioningConfig(ENABLED))  # to see any rewrite

    first = run_ingest(source, tmp_path / "out1", store=store)

    assert first["source"] == source
    assert first["rows"]["read"] == 40
    assert first["source_sha256"] == hashlib.sha256(local.read_bytes()).hexdigest()
    assert len(examples_by_id(tmp_path / "out1")) == 40
    stored = storage.list_uris(store)
    writes = object_versions(s3_bucket, "store/")
    manifest_uri = storage.join(first["snapshot"], "manifest.json")
    assert manifest_uri in stored
    manifest = json.loads(storage.read_bytes(manifest_uri))
    assert manifest["snapshot"] in stored
    assert storage.read_bytes(manifest["snapshot"]) == local.read_bytes()

    again = run_ingest(source, tmp_path / "out2", store=store)

    assert again["snapshot"] == first["snapshot"]
    assert storage.list_uris(store) == stored
    assert object_versions(s3_bucket, "store/") == writes  # nothing rewritten either
    assert json.loads(storage.read_bytes(manifest_uri)) == manifest  # not rewritten


def test_missing_s3_object_names_the_uri(tmp_path, s3_bucket):
    """A wrong s3:// key is a user error naming the URI, and nothing is published."""
    source = f"s3://{s3_bucket}/raw/nope.csv"
    with pytest.raises(StepError, match=re.escape(source)):
        run_ingest(source, tmp_path / "out")
    assert_nothing_published(tmp_path / "out")


def test_cli_reads_and_stores_on_s3_with_env_credentials(tmp_path, s3_bucket, s3_env, cli):
    """The container form: endpoint and keys come only from the environment."""
    local = write_csv(tmp_path / "c.csv", [complaint(i, label="Yes" if i % 5 == 0 else "No")
                                           for i in range(1, 51)])
    storage.s3_client().fput_object(s3_bucket, "in/c.csv", str(local))
    out = tmp_path / "out"

    result = cli(MODULE, "--source", f"s3://{s3_bucket}/in/c.csv", "--output", str(out),
                 "--store", f"s3://{s3_bucket}/versions", env=s3_env)

    assert result.returncode == 0, result.stderr
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["rows"]["kept"] == 50
    manifest = json.loads(storage.read_bytes(storage.join(metadata["snapshot"], "manifest.json")))
    assert storage.read_bytes(manifest["snapshot"]) == local.read_bytes()


# --------------------------------------------------------------------------- 6. bad input


def _rows_with_multiline(n: int = 3) -> list[dict]:
    """Rows 1..n; row 2 spans two physical lines (lines 3-4), so row k>2 is on line k+2."""
    return [complaint(i, narrative="first line\nsecond line" if i == 2 else "")
            for i in range(1, n + 1)]


def _bad_utf8(path: Path) -> None:
    rows = _rows_with_multiline(5)
    rows[3]["Company"] = "BADBYTE"  # row 4, physical line 6
    path.write_bytes(csv_bytes(rows).replace(b"BADBYTE", b"Bad \xff\xfe bank"))


def _unterminated_at_eof(path: Path) -> None:
    rows = _rows_with_multiline(3)
    rows[2]["Consumer complaint narrative"] = "OPENQUOTE"  # row 3 starts on line 5
    path.write_bytes(csv_bytes(rows).replace(b"OPENQUOTE", b'"never closed', 1))


def _wrong_field_count(path: Path) -> None:
    rows = [list(complaint(i, narrative="a\nb" if i == 2 else "").values()) for i in range(1, 5)]
    del rows[2][4]  # row 3 (line 5) has 17 fields
    path.write_bytes(csv_bytes(rows))


BAD_INPUTS = {
    # name: (writer of the bad file or None for a missing file, message patterns)
    "missing file": (None, [r"file not found"]),
    "empty file": (lambda p: p.write_bytes(b""), [r"empty"]),
    "header only": (lambda p: write_csv(p, []), [r"header but no data rows"]),
    "no label column": (
        lambda p: write_csv(p, [complaint(1)], header=[h for h in HEADER
                                                        if h != "Consumer disputed?"]),
        [r"no column for the label", r"'Consumer disputed\?'"]),
    "semicolon delimiter": (
        lambda p: write_csv(p, [complaint(1)], delimiter=";"), [r"line 1", r"';'"]),
    "invalid utf-8": (_bad_utf8, [r"\bline 6\b", r"byte \d+", r"UTF-8"]),
    "unterminated quote": (_unterminated_at_eof, [r"\brow 3\b", r"\bline 5\b",
                                                  r"unterminated quoted field"]),
    "wrong field count": (_wrong_field_count, [r"\brow 3\b", r"\bline 5\b", r"\b17 fields",
                                               r"expected 18"]),
    "all labels blank": (
        lambda p: write_csv(p, [complaint(i, label="") for i in range(1, 4)]),
        [r"none of 3 rows is usable", r"blank_label=3"]),
}


def _make_bad(tmp_path: Path, case: str) -> Path:
    source = tmp_path / "bad input.csv"
    writer, _ = BAD_INPUTS[case]
    if writer is not None:
        writer(source)
    return source


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_clear_error_and_publishes_nothing(tmp_path, case):
    """Each bad file gives an error naming the file and where, and leaves no partial output."""
    source = _make_bad(tmp_path, case)
    out = tmp_path / "out"

    with pytest.raises(StepError) as info:
        run_ingest(source, out)

    message = str(info.value)
    assert str(source) in message
    message = message.replace(str(source), "<source>")  # match the text, not the path
    for pattern in BAD_INPUTS[case][1]:
        assert re.search(pattern, message), (pattern, message)
    assert_nothing_published(out)


def test_unterminated_quote_mid_file_points_at_the_quote(tmp_path):
    """An unclosed quote in an early row is reported as such, at the line it opens."""
    rows = [complaint(i) for i in range(1, 6)]
    rows[0]["Consumer complaint narrative"] = "OPENQUOTE"
    source = tmp_path / "in.csv"
    source.write_bytes(csv_bytes(rows).replace(b"OPENQUOTE", b'"never closed', 1))

    with pytest.raises(StepError) as info:
        run_ingest(source, tmp_path / "out")

    message = str(info.value).replace(str(source), "<source>")
    assert re.search(r"\brow 1\b", message)
    assert re.search(r"unterminated|quote\b", message, re.IGNORECASE), message
    assert re.search(r"\bline 2\b", message), message
    assert_nothing_published(tmp_path / "out")


def test_bom_only_file_is_reported_empty(tmp_path):
    """A file with nothing but a BOM is an empty file."""
    source = tmp_path / "bom-only.csv"
    source.write_bytes(b"\xef\xbb\xbf")
    with pytest.raises(StepError, match=r"empty"):
        run_ingest(source, tmp_path / "out")


def test_missing_feature_column_message_reads_well(tmp_path):
    """A missing feature column is named in a readable message."""
    source = write_csv(tmp_path / "in.csv", [complaint(1)], header=[h for h in HEADER
                                                                    if h != "State"])
    with pytest.raises(StepError, match=r"'State'") as info:
        run_ingest(source, tmp_path / "out")
    assert "column column" not in str(info.value)


def test_non_empty_output_is_refused_and_left_untouched(tmp_path):
    """An existing dataset is never overwritten or mixed with a new one."""
    source = write_csv(tmp_path / "in.csv", [complaint(i) for i in range(1, 11)])
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    before = tree_state(out)

    with pytest.raises(StepError, match=r"not empty"):
        run_ingest(source, out)

    assert tree_state(out) == before
    assert (out / "keep.txt").read_text() == "precious"
    assert_nothing_published(out)


def test_empty_existing_output_directory_is_used(tmp_path):
    """An empty output directory (as KFP creates for outputPath) receives the dataset."""
    out = tmp_path / "out"
    out.mkdir()
    run_ingest(write_csv(tmp_path / "in.csv", [complaint(i) for i in range(1, 11)]), out)
    assert (out / "metadata.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if ".partial-" in p.name] == []


def _cli_setup(tmp_path: Path, case: str) -> tuple[list[str], str]:
    """Arguments for one CLI failure and a string its message must contain."""
    out = tmp_path / "out"
    if case == "non-empty output":
        source = write_csv(tmp_path / "in.csv", [complaint(1)])
        out.mkdir()
        (out / "keep.txt").write_text("precious")
        return ["--source", str(source), "--output", str(out)], str(out)
    if case == "eval fraction":
        source = write_csv(tmp_path / "in.csv", [complaint(1)])
        return ["--source", str(source), "--output", str(out), "--eval-fraction", "1.5"], "1.5"
    if case == "unmapped feature in config":
        config = tmp_path / "bad.yaml"
        config.write_text(CUSTOM_CONFIG.replace("categorical: [category]",
                                                "categorical: [category, color]"))
        source = write_csv(tmp_path / "in.csv", [complaint(1)])
        return ["--source", str(source), "--output", str(out),
                "--dataset-config", str(config)], "'color'"
    source = _make_bad(tmp_path, case)
    return ["--source", str(source), "--output", str(out)], str(source)


# Failures found before TensorFlow is imported, so each run takes well under a second.
CLI_CASES = ["missing file", "empty file", "no label column", "semicolon delimiter",
             "non-empty output", "eval fraction", "unmapped feature in config"]


@pytest.mark.parametrize("case", CLI_CASES)
def test_cli_user_error_is_one_line_and_exit_2(tmp_path, cli, case):
    """A user error prints exactly one `error: ingest: ...` line, no traceback, exit 2."""
    args, expected = _cli_setup(tmp_path, case)

    result = cli(MODULE, *args)

    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("error: ingest: ")
    assert expected in errors[0]
    out = tmp_path / "out"
    if case == "non-empty output":
        assert (out / "keep.txt").read_text() == "precious"
    assert_nothing_published(out)


# --------------------------------------------------------------------------- 7. custom config


CUSTOM_CONFIG = """\
name: support-tickets
columns:
  ticket_id: id
  category: cat
  body: text
  amount: amount
  escalated: target
label:
  feature: escalated
  positive: [1]
  negative: [0]
id_feature: ticket_id
features:
  categorical: [category]
  text: [body]
  numeric: [amount]
"""


def test_other_dataset_is_a_config_change(tmp_path):
    """A CSV with entirely different headers ingests with only a config written for it."""
    config_path = tmp_path / "tickets.yaml"
    config_path.write_text(CUSTOM_CONFIG)
    rows = [["t1", "billing", "Charged twice,\n\"again\"", "12.5", "1"],
            ["t2", "login", "", "", "0"],
            ["t3", "billing", "cannot pay", "3", ""],
            ["t4", "other", "hello", "7", "0"]]
    source = write_csv(tmp_path / "tickets.csv", rows, header=["id", "cat", "text", "amount",
                                                                "target"])
    config = load_dataset_config(str(config_path))

    metadata = run_ingest(source, tmp_path / "out", config=config)

    assert metadata["column_mapping"] == {"ticket_id": "id", "category": "cat", "body": "text",
                                          "amount": "amount", "escalated": "target"}
    assert metadata["dropped"] == {"blank_label": 1}
    examples = examples_by_id(tmp_path / "out", id_feature="ticket_id")
    assert sorted(examples) == ["t1", "t2", "t4"]
    t1, t2 = examples["t1"].features.feature, examples["t2"].features.feature
    assert list(t1["escalated"].int64_list.value) == [1]
    assert list(t2["escalated"].int64_list.value) == [0]
    assert list(t1["body"].bytes_list.value) == [b"Charged twice,\n\"again\""]
    assert list(t1["amount"].float_list.value) == [12.5]
    assert t2["amount"].WhichOneof("kind") is None and t2["body"].WhichOneof("kind") is None
    assert "consumer_disputed" not in t1


def test_non_numeric_value_in_numeric_feature_names_row_and_column(tmp_path):
    """A bad number is reported with file, row and column, and nothing is published."""
    config_path = tmp_path / "tickets.yaml"
    config_path.write_text(CUSTOM_CONFIG)
    rows = [["t1", "a", "x", "1", "1"], ["t2", "b", "y", "12,50 EUR", "0"]]
    source = write_csv(tmp_path / "tickets.csv", rows, header=["id", "cat", "text", "amount",
                                                                "target"])

    with pytest.raises(StepError, match=r"row 2, column 'amount': '12,50 EUR' is not a number"):
        run_ingest(source, tmp_path / "out", config=load_dataset_config(str(config_path)))
    assert_nothing_published(tmp_path / "out")


def test_config_with_unmapped_feature_is_rejected(tmp_path):
    """A feature with no source column in the config is named before any data is read."""
    config_path = tmp_path / "bad.yaml"
    config_path.write_text(CUSTOM_CONFIG.replace("categorical: [category]",
                                                 "categorical: [category, color]"))
    with pytest.raises(StepError, match=r"'color' has no entry under columns"):
        load_dataset_config(str(config_path))


# --------------------------------------------------------------------------- 8. KFP executor


def test_cli_writes_kfp_executor_output(tmp_path, cli):
    """Under KFP the step reports the examples artifact and dataset_version to the launcher."""
    source = write_csv(tmp_path / "in.csv", [complaint(i, label="Yes" if i % 3 else "No")
                                             for i in range(1, 61)])
    examples_dir = tmp_path / "examples"
    executor_output = tmp_path / "executor_output.json"
    executor_input = {
        "inputs": {"parameterValues": {"source": str(source), "eval_fraction": 0.1}},
        "outputs": {
            "artifacts": {"examples": {"artifacts": [
                {"name": "examples", "uri": str(examples_dir), "metadata": {}}]}},
            "parameters": {"dataset_version": {"outputFile": str(tmp_path / "dv")}},
            "outputFile": str(executor_output),
        },
    }

    result = cli(MODULE, "--source", str(source), "--output", str(examples_dir),
                 "--executor-input", json.dumps(executor_input))

    assert result.returncode == 0, result.stderr
    metadata = json.loads((examples_dir / "metadata.json").read_text())
    reported = json.loads(executor_output.read_text())
    (artifact,) = reported["artifacts"]["examples"]["artifacts"]
    assert artifact["name"] == "examples"
    assert artifact["uri"] == str(examples_dir)
    assert artifact["metadata"]["dataset_version"] == metadata["dataset_version"]
    assert artifact["metadata"]["rows_train"] == metadata["rows"]["train"]
    assert artifact["metadata"]["rows_eval"] == metadata["rows"]["eval"]
    assert reported["parameterValues"]["dataset_version"] == metadata["dataset_version"]
    assert not os.path.exists(str(executor_output) + ".tmp")
    # The split is the same in another process (no per-process hash seed).
    run_ingest(source, tmp_path / "in-process")
    assert split_ids(examples_dir) == split_ids(tmp_path / "in-process")


# --------------------------------------------------------------------------- 9. real exports vary


@pytest.mark.parametrize("variant", ["Sub-product", "sub_product", "SubProduct", "subproduct",
                                     " SUB PRODUCT "])
def test_headers_match_ignoring_case_spaces_hyphens_and_underscores(tmp_path, variant):
    header = [variant if h == "Sub-product" else h for h in HEADER]
    rows = [{**complaint(i), variant: "Medical"} for i in range(1, 4)]
    metadata = run_ingest(write_csv(tmp_path / "in.csv", rows, header=header), tmp_path / "out")
    assert metadata["column_mapping"]["sub_product"] == variant.strip()
    assert {feature_bytes(ex, "sub_product")[0] for ex in examples_by_id(tmp_path / "out")
            .values()} == {b"Medical"}


def test_two_columns_matching_one_feature_is_an_error_naming_both(tmp_path):
    header = [*HEADER, "sub_product"]
    source = write_csv(tmp_path / "in.csv", [complaint(1)], header=header)
    with pytest.raises(StepError, match=r"columns 'Sub-product' \(column 3\) and 'sub_product' "
                                        r"\(column 19\) all match the feature 'sub_product'"):
        run_ingest(source, tmp_path / "out")
    assert_nothing_published(tmp_path / "out")


def test_duplicate_header_names_are_an_error_naming_them(tmp_path):
    header = [*HEADER, "Tags", "Company"]
    source = write_csv(tmp_path / "in.csv", [complaint(1)], header=header)
    with pytest.raises(StepError, match=r"line 1: the header names 'Tags' \(columns 11 and 19\), "
                                        r"'Company' \(columns 8 and 20\) more than once"):
        run_ingest(source, tmp_path / "out")
    assert_nothing_published(tmp_path / "out")


def _with_duplicates(tmp_path: Path) -> Path:
    rows = [complaint(7, product="Mortgage", label="No"), complaint(8),
            complaint(7, product="Credit card", label="Yes"), complaint(9),
            complaint(9), complaint(7, product="Debt collection", label="Yes")]
    return write_csv(tmp_path / "dup.csv", rows)


def test_rows_sharing_an_id_keep_the_last_by_default_and_are_counted(tmp_path, caplog):
    source = _with_duplicates(tmp_path)
    metadata = run_ingest(source, tmp_path / "out")
    examples = examples_by_id(tmp_path / "out")
    assert sorted(examples) == ["7", "8", "9"]
    assert feature_bytes(examples["7"], "product") == [b"Debt collection"]
    assert metadata["rows"]["read"] == 6 and metadata["rows"]["kept"] == 3
    assert metadata["dropped"] == {"duplicate_id": 3}
    assert metadata["duplicate_ids"] == {
        "policy": "keep-last", "ids": 2, "conflicting": 1, "identical": 1, "rows_dropped": 3,
        "examples": [{"id": "7", "rows": [1, 3, 6], "differ": True},
                     {"id": "9", "rows": [4, 5], "differ": False}]}
    assert "2 id(s) are on more than one row (1 with different content, 1 identical): kept " \
           "the last row of each, left out 3 rows" in caplog.text
    assert metadata["dataset_version"] == run_ingest(source, tmp_path / "again")[
        "dataset_version"]


def test_keep_first_and_error_policies(tmp_path):
    source = _with_duplicates(tmp_path)
    metadata = run_ingest(source, tmp_path / "first", on_duplicate_id="keep-first")
    assert feature_bytes(examples_by_id(tmp_path / "first")["7"], "product") == [b"Mortgage"]
    assert metadata["duplicate_ids"]["policy"] == "keep-first"
    with pytest.raises(StepError, match=r"rows 1 and 3 share the id '7' \(column 'Complaint "
                                        r"ID'\) but differ.*--on-duplicate-id error"):
        run_ingest(source, tmp_path / "error", on_duplicate_id="error")
    assert_nothing_published(tmp_path / "error")
    identical = write_csv(tmp_path / "same.csv", [complaint(1), complaint(2), complaint(1)])
    metadata = run_ingest(identical, tmp_path / "same", on_duplicate_id="error")
    assert metadata["rows"]["kept"] == 2 and metadata["duplicate_ids"]["identical"] == 1


def test_no_duplicates_reads_once_and_says_so(tmp_path):
    metadata = run_ingest(write_csv(tmp_path / "in.csv", [complaint(i) for i in range(1, 50)]),
                          tmp_path / "out")
    assert metadata["duplicate_ids"]["ids"] == 0 and "duplicate_id" not in metadata["dropped"]


def test_blank_ids_point_at_the_id_column(tmp_path):
    source = write_csv(tmp_path / "in.csv", [complaint("") for _ in range(3)])
    with pytest.raises(StepError) as info:
        run_ingest(source, tmp_path / "out")
    message = str(info.value)
    assert "missing_id=3" in message and "the id column 'Complaint ID'" in message
    assert "label column" not in message


def test_a_field_over_the_limit_says_how_to_raise_it(tmp_path):
    source = write_csv(tmp_path / "in.csv", [complaint(1), complaint(2, narrative="x" * 5_000_000)])
    with pytest.raises(StepError) as info:
        run_ingest(source, tmp_path / "out")
    message = str(info.value)
    assert "row 2 (from line 3): a field is over the limit of 1048576 bytes" in message
    assert "raise csv.max_field_bytes in the dataset config" in message
    assert "unterminated" not in message and "quote" not in message


def test_a_runaway_quote_is_still_called_one(tmp_path):
    rows = [complaint(i, issue="Other") for i in range(1, 3000)]  # no other quotes follow
    rows[0]["Consumer complaint narrative"] = "OPENQUOTE"
    data = csv_bytes(rows).replace(b"OPENQUOTE", b'"never closed', 1)
    source = tmp_path / "in.csv"
    source.write_bytes(data)
    config = load_dataset_config(str(write_config(tmp_path / "c.yaml",
                                                  csv={"max_field_bytes": 100_000})))
    with pytest.raises(StepError, match=r"row 1 \(from line 2\): a field is over the limit of "
                                        r"100000 bytes.*a quote opened there and never closed"):
        run_ingest(source, tmp_path / "out", config=config)


def test_cr_only_line_endings_are_read(tmp_path):
    rows = [complaint(i, narrative="two\rlines" if i == 2 else "") for i in range(1, 6)]
    lf = run_ingest(write_csv(tmp_path / "lf.csv", rows, newline="\r\n"), tmp_path / "lf")
    source = write_csv(tmp_path / "cr.csv", rows, newline="\r")
    assert b"\n" not in source.read_bytes()
    cr = run_ingest(source, tmp_path / "cr")
    assert cr["line_endings"] == "CR" and lf["line_endings"] == "LF or CRLF"
    assert cr["rows"] == lf["rows"]
    assert feature_bytes(examples_by_id(tmp_path / "cr")["2"], "narrative") == [b"two\rlines"]


def test_a_stray_carriage_return_is_said_in_plain_words(tmp_path):
    data = csv_bytes([complaint(1), complaint(2)]).replace(b"Wells Fargo", b"Wells\rFargo", 1)
    source = tmp_path / "in.csv"
    source.write_bytes(data)
    with pytest.raises(StepError, match=r"row 1 \(from line 2\): a carriage return \(CR\) "
                                        r"inside an unquoted field at line 2: the file mixes "
                                        r"line endings"):
        run_ingest(source, tmp_path / "out")


def test_an_export_without_the_narrative_column_reads_it_as_missing(tmp_path, caplog):
    header = [h for h in HEADER if h != "Consumer complaint narrative"]
    metadata = run_ingest(write_csv(tmp_path / "old.csv", [complaint(i) for i in range(1, 6)],
                                    header=header), tmp_path / "out")
    assert metadata["missing_columns"] == {"narrative": 5}
    assert metadata["column_mapping"]["narrative"] is None
    assert "no column for the optional feature(s) narrative" in caplog.text
    for example in examples_by_id(tmp_path / "out").values():
        assert example.features.feature["narrative"].WhichOneof("kind") is None


def test_a_missing_required_column_is_still_an_error(tmp_path):
    header = [h for h in HEADER if h != "Issue"]
    with pytest.raises(StepError, match=r"no column for the feature 'issue'"):
        run_ingest(write_csv(tmp_path / "in.csv", [complaint(1)], header=header),
                   tmp_path / "out")


def test_optional_features_must_be_features(tmp_path):
    with pytest.raises(StepError, match=r"optional_features: 'consumer_disputed' is not a "
                                        "feature"):
        load_dataset_config(str(write_config(tmp_path / "c.yaml",
                                             optional_features=["consumer_disputed"])))


def test_an_export_without_ids_splits_by_content(tmp_path, caplog):
    header = [h for h in HEADER if h != "Complaint ID"]
    rows = [complaint(i, narrative=f"text {i}") for i in range(1, 401)]
    source = write_csv(tmp_path / "old.csv", rows, header=header)
    first = run_ingest(source, tmp_path / "a")
    assert first["id_source"] == "content hash (no id column)"
    assert "no id column" in caplog.text
    ids = split_ids(tmp_path / "a")
    assert len(ids["train"]) + len(ids["eval"]) == 400 and ids["eval"]
    assert all(i.startswith("content-") for i in ids["train"] + ids["eval"])
    reordered = write_csv(tmp_path / "reordered.csv", rows[::-1], header=header)
    run_ingest(reordered, tmp_path / "b")
    assert {k: sorted(v) for k, v in split_ids(tmp_path / "b").items()} == \
        {k: sorted(v) for k, v in ids.items()}


def _r_export(rows, names) -> bytes:
    """R's write.table(row.names = TRUE): the header one field short of every row."""
    data = csv_bytes([[str(n), *[r[h] for h in HEADER]] for n, r in zip(names, rows,
                                                                         strict=True)])
    header_line = data.split(b"\n", 1)[0]
    return data.replace(header_line, csv_bytes([], header=HEADER).rstrip(b"\n"), 1)


def test_r_row_names_are_dropped(tmp_path, caplog):
    caplog.set_level("INFO")
    rows = [complaint(i, narrative="a\nb" if i == 2 else "") for i in range(1, 6)]
    source = tmp_path / "r.csv"
    source.write_bytes(_r_export(rows, [1, 2, 3, 5, 8]))
    metadata = run_ingest(source, tmp_path / "out")
    assert metadata["r_row_names_dropped"] is True and metadata["rows"]["kept"] == 5
    assert "R's row names" in caplog.text
    assert sorted(examples_by_id(tmp_path / "out")) == ["1", "2", "3", "4", "5"]
    assert feature_bytes(examples_by_id(tmp_path / "out")["2"], "narrative") == [b"a\nb"]


@pytest.mark.parametrize(("names", "extra_field_rows", "message"), [
    ([1, 2, 2], None, r"row 3 \(line 4\): first field '2' does not continue the increasing"),
    (["1", "2", "x"], None, r"row 3 \(line 4\): first field 'x' does not continue"),
    ([1, 2, 3], {2}, r"row 2 \(line 3\): 18 fields, expected 19 as in every row before"),
    (["a", "b", "c"], None, r"row 1 \(line 2\): 19 fields, expected 18 as in the header"),
])
def test_other_ragged_files_are_still_refused(tmp_path, names, extra_field_rows, message):
    rows = [complaint(i) for i in range(1, 4)]
    data = _r_export(rows, names)
    if extra_field_rows:  # a row without its row name: 18 fields
        lines = data.split(b"\n")
        for row_number in extra_field_rows:
            lines[row_number] = lines[row_number].split(b",", 1)[1]
        data = b"\n".join(lines)
    source = tmp_path / "ragged.csv"
    source.write_bytes(data)
    with pytest.raises(StepError, match=message):
        run_ingest(source, tmp_path / "out")
    assert_nothing_published(tmp_path / "out")


@pytest.mark.parametrize(("args", "message"), [
    (["--eval-fraction", "abc"], "argument --eval-fraction: not a number: 'abc'"),
    (["--rows-per-shard", "x"], "argument --rows-per-shard: not a whole number: 'x'"),
    (["--rows-per-shard", "0"], "argument --rows-per-shard: must be at least 1, got 0"),
    (["--on-duplicate-id", "newest"], "argument --on-duplicate-id: invalid choice: 'newest'"),
])
def test_bad_arguments_read_in_plain_words(tmp_path, cli, args, message):
    result = cli(MODULE, "--source", "x.csv", "--output", str(tmp_path / "out"), *args)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: ingest: {message}")
    assert "_optional" not in line and "optional_float" not in line


# --- the fast paths: the same bytes and rows as the plain ones -------------------------------

def test_batched_tfrecord_framing_is_the_per_record_framing():
    from components.ingest.tfrecord_writer import tfrecord_frame, tfrecord_frames

    records = [b"", b"x", os.urandom(300), os.urandom(70_000), b"\x00" * 9]
    assert tfrecord_frames(records) == b"".join(tfrecord_frame(r) for r in records)
    assert tfrecord_frames([]) == b""


def test_column_batches_reach_the_writer_as_columns():
    import pickle

    from components.ingest.tfrecord_writer import RowCollector

    collector = RowCollector({"a": 0, "b": 2}, {"n": 1}, "x.csv", ["a", "n", "b"])
    batch = collector.new_batch()
    collector.add(batch, ["1", " 2.5 ", "p\x00q"], 1, 1)  # a NUL inside a value: not joined
    collector.add(batch, ["3", "", "r"], 0, 2)
    shipped = pickle.loads(pickle.dumps(batch))
    expected = [["1", "3"], ["p\x00q", "r"], [2.5, None]]
    assert batch.columns == expected and shipped.columns == expected
    assert shipped.labels == [1, 0] and len(shipped) == 2
    single = RowCollector({"a": 1}, {}, "x.csv", ["n", "a"])
    assert single.take(["1", "v"]) == ("v",)


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_rows_read_the_same_across_blocks_and_line_endings(tmp_path, newline, monkeypatch):
    """Blocks split on the file's line break (io.StringIO where no CR is in the block, a split
    otherwise) give exactly the rows written, quoted line breaks included."""
    from components.ingest import csv_source

    monkeypatch.setattr(csv_source, "BLOCK_BYTES", 64)  # many blocks, rows across them
    rows = [["id", "text"]] + [[str(i), f"line {i}\u2028same line" + (newline + "next") * (i % 3)]
                               for i in range(200)]
    if newline == "\n":  # a CR inside quotes of an LF file: that block takes the split path
        rows[8][1] = "line\r7"
    buffer = io.StringIO(newline="")
    csv.writer(buffer, lineterminator=newline, quoting=csv.QUOTE_ALL).writerows(rows)
    read = csv_source.CsvRows(io.BytesIO(buffer.getvalue().encode()), "x.csv")
    assert read.header == rows[0]
    assert list(read) == rows[1:] and read.row_number == 200


def test_string_arrays_from_joined_columns_are_the_values():
    import pyarrow as pa

    from components.ingest.tfrecord_writer import SEPARATOR, _joined_string_array

    for values in (["a", "", " é ", "日本語", "x\u2028y", ""], [""], ["only"]):
        array = _joined_string_array(SEPARATOR.join(values).encode("utf-8"))
        assert array.equals(pa.array(values, type=pa.string())), values
