"""The synthetic complaint generator: official format, determinism, realism and a noisy signal.

Why: the demo, the pipeline tests and the benchmarks all rely on this data behaving like a real
CFPB export, so a regression here would silently weaken every other test.
"""

from __future__ import annotations

import csv
import io
import re
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from datagen.generator import HEADER, iter_complaints, write_complaints

REPO_ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_HEADER = (
    "Date received,Product,Sub-product,Issue,Sub-issue,Consumer complaint narrative,"
    "Company public response,Company,State,ZIP code,Tags,Consumer consent provided?,"
    "Submitted via,Date sent to company,Company response to consumer,Timely response?,"
    "Consumer disputed?,Complaint ID"
)
ROWS = 20_000


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def disputed_share(rows: list[dict[str, str]]) -> float:
    labels = [row["Consumer disputed?"] for row in rows if row["Consumer disputed?"]]
    return sum(label == "Yes" for label in labels) / len(labels)


@pytest.fixture(scope="module")
def file_20k(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("datagen") / "complaints.csv"
    assert write_complaints(path, ROWS, seed=7) == ROWS
    return path


@pytest.fixture(scope="module")
def rows_20k(file_20k) -> list[dict[str, str]]:
    return read_rows(file_20k)


def test_header_is_the_official_one_and_every_row_has_18_columns(file_20k):
    raw = file_20k.read_bytes()
    assert not raw.startswith(b"\xef\xbb\xbf"), "no BOM"
    assert raw.split(b"\n", 1)[0].decode() == OFFICIAL_HEADER
    assert ",".join(HEADER) == OFFICIAL_HEADER
    with open(file_20k, newline="", encoding="utf-8") as handle:
        records = list(csv.reader(handle))
    assert len(records) == ROWS + 1
    assert {len(record) for record in records} == {18}


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    first, second, other = tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv"
    write_complaints(first, 3000, seed=11)
    write_complaints(second, 3000, seed=11)
    write_complaints(other, 3000, seed=12)
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() != other.read_bytes()
    assert not list(tmp_path.glob("*.part")), "no temporary file is left behind"


def test_row_iterator_yields_what_the_file_holds(tmp_path):
    path = tmp_path / "c.csv"
    write_complaints(path, 500, seed=5)
    assert list(iter_complaints(500, seed=5)) == read_rows(path)
    buffer = io.StringIO(newline="")
    write_complaints(buffer, 500, seed=5)
    assert buffer.getvalue().encode("utf-8") == path.read_bytes()


def test_narratives_need_a_real_csv_reader(rows_20k):
    narratives = [row["Consumer complaint narrative"] for row in rows_20k
                  if row["Consumer complaint narrative"]]
    assert 0.40 <= len(narratives) / len(rows_20k) <= 0.55
    multiline = sum("\n" in text for text in narratives) / len(narratives)
    assert 0.25 <= multiline <= 0.45
    assert any("\n\n" in text for text in narratives)
    assert sum('"' in text for text in narratives) > 100
    assert sum("," in text for text in narratives) > len(narratives) / 2
    assert any("XX/XX/XXXX" in text for text in narratives)
    assert any(re.search(r"\{\$\d+\.\d\d\}", text) for text in narratives)
    lengths = [len(text) for text in narratives]
    assert min(lengths) < 150 and max(lengths) > 2500
    for row in rows_20k:  # a narrative is published only with the consumer's consent
        if row["Consumer complaint narrative"]:
            assert row["Consumer consent provided?"] == "Consent provided"


def test_zip_codes_come_in_every_real_format(rows_20k):
    patterns = {
        "five digits": r"\d{5}",
        "ZIP+4": r"\d{5}-\d{4}",
        "masked": r"\d{3}XX",
        "empty": r"",
    }
    seen = {name: 0 for name in patterns}
    for row in rows_20k:
        matched = [name for name, pattern in patterns.items()
                   if re.fullmatch(pattern, row["ZIP code"])]
        assert len(matched) == 1, row["ZIP code"]
        seen[matched[0]] += 1
    assert all(count >= 20 for count in seen.values()), seen


def test_values_look_like_the_real_export(rows_20k):
    products = {row["Product"] for row in rows_20k}
    assert len(products) >= 11 and {"Mortgage", "Debt collection", "Payday loan"} <= products
    assert len({row["Issue"] for row in rows_20k}) >= 40
    assert sum(row["Sub-product"] == "" for row in rows_20k) > ROWS / 5
    assert sum(row["Sub-issue"] == "" for row in rows_20k) > ROWS / 3
    states = {row["State"] for row in rows_20k}
    assert len(states) >= 55 and {"DC", "PR", "AE", ""} <= states
    assert {row["Company response to consumer"] for row in rows_20k} == {
        "Closed with explanation", "Closed with non-monetary relief",
        "Closed with monetary relief", "Closed", "Untimely response", "In progress"}
    assert {row["Submitted via"] for row in rows_20k} == {
        "Web", "Referral", "Phone", "Postal mail", "Fax", "Email"}
    assert {row["Tags"] for row in rows_20k} >= {"", "Older American", "Servicemember"}
    for row in rows_20k:
        received = date.fromisoformat(row["Date received"])
        assert date(2015, 1, 1) <= received <= date(2017, 4, 24)
        assert date.fromisoformat(row["Date sent to company"]) >= received
        assert row["Timely response?"] in {"Yes", "No"}


def test_complaint_ids_are_unique_integers(rows_20k):
    ids = [int(row["Complaint ID"]) for row in rows_20k]
    assert len(set(ids)) == len(ids)


def test_blank_labels_appear_at_the_requested_rate(rows_20k):
    blank = sum(row["Consumer disputed?"] == "" for row in rows_20k) / len(rows_20k)
    assert abs(blank - 0.03) < 0.008
    assert {row["Consumer disputed?"] for row in rows_20k} == {"Yes", "No", ""}
    no_blanks = iter_complaints(2000, seed=1, blank_label_rate=0.0)
    assert all(row["Consumer disputed?"] for row in no_blanks)


def test_disputed_rate_matches_the_default_target(rows_20k):
    assert abs(disputed_share(rows_20k) - 0.25) < 0.02


def test_disputed_rate_can_be_shifted_without_touching_the_features():
    shifted = list(iter_complaints(ROWS, seed=7, disputed_rate=0.6))
    assert abs(disputed_share(shifted) - 0.6) < 0.02
    base = iter_complaints(2000, seed=7)
    for before, after in zip(base, shifted[:2000], strict=True):
        assert {**before, "Consumer disputed?": ""} == {**after, "Consumer disputed?": ""}


def test_dispute_signal_is_learnable_but_noisy(rows_20k):
    """A plain logistic regression beats chance clearly, yet far from perfectly."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import OneHotEncoder

    labelled = [row for row in rows_20k if row["Consumer disputed?"]]
    words = ("ignored", "never", "still", "again", "lied", "resolved", "thank", "helpful")
    word_patterns = [re.compile(rf"\b{word}", re.IGNORECASE) for word in words]
    encoder = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
    categories = encoder.fit_transform(
        [[row["Product"], row["Company response to consumer"], row["Issue"]] for row in labelled]
    )
    features = [
        list(one_hot) + [float(bool(p.search(row["Consumer complaint narrative"])))
                         for p in word_patterns]
        for one_hot, row in zip(categories, labelled, strict=True)
    ]
    target = [row["Consumer disputed?"] == "Yes" for row in labelled]
    held_out = [int(row["Complaint ID"]) % 10 >= 7 for row in labelled]
    train_x = [x for x, test in zip(features, held_out, strict=True) if not test]
    train_y = [y for y, test in zip(target, held_out, strict=True) if not test]
    test_x = [x for x, test in zip(features, held_out, strict=True) if test]
    test_y = [y for y, test in zip(target, held_out, strict=True) if test]
    model = LogisticRegression(max_iter=1000).fit(train_x, train_y)
    auc = roc_auc_score(test_y, model.predict_proba(test_x)[:, 1])
    print(f"held-out AUC {auc:.3f}")
    assert 0.62 <= auc <= 0.9


def test_bad_arguments_are_refused_in_python():
    with pytest.raises(ValueError):
        iter_complaints(0, seed=1)
    with pytest.raises(ValueError):
        iter_complaints(10, seed=1, disputed_rate=1.0)
    with pytest.raises(ValueError):
        iter_complaints(10, seed=1, blank_label_rate=1.0)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "datagen", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)


def test_cli_help_exits_zero():
    result = run_cli("--help")
    assert result.returncode == 0
    assert "--disputed-rate" in result.stdout


@pytest.mark.parametrize("bad", [
    ["--rows", "0"],
    ["--rows", "many"],
    ["--rows", "10", "--disputed-rate", "0"],
    ["--rows", "10", "--disputed-rate", "1.2"],
    ["--rows", "10", "--blank-label-rate", "1"],
])
def test_cli_bad_arguments_give_one_line_and_nonzero_exit(tmp_path, bad):
    out = tmp_path / "out.csv"
    result = run_cli(*bad, "--seed", "1", "--out", str(out))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: datagen:"), result.stderr
    assert not out.exists()


def test_cli_writes_the_file_and_logs_a_summary(tmp_path):
    out = tmp_path / "nested" / "out.csv"
    result = run_cli("--rows", "300", "--seed", "3", "--out", str(out),
                     "--disputed-rate", "0.4", "--blank-label-rate", "0.1")
    assert result.returncode == 0, result.stderr
    assert len(read_rows(out)) == 300
    assert f"wrote {out}: 300 rows" in result.stderr
    expected = io.StringIO(newline="")
    write_complaints(expected, 300, seed=3, disputed_rate=0.4, blank_label_rate=0.1)
    assert out.read_bytes() == expected.getvalue().encode("utf-8")


@pytest.mark.parametrize(("file", "old", "new", "expected"), [
    ("catalog.yaml", "    weight: 22\n", "    weight: lots\n",
     "products.Mortgage.weight: expected a number, got str 'lots'"),
    ("catalog.yaml", '  "Web":', '  "Fax": {weight: 1}\n  "Web":',
     "invalid YAML: repeated key 'Fax'"),
    ("catalog.yaml", 'company_effects:\n  "Ocwen":', 'company_effects:\n  "Ocwenn":',
     "company_effects.Ocwenn: not a company of any product"),
    ("narratives.yaml", '"Please help me."', '"Please help {me}."',
     "closings[0]: unknown placeholder {me}"),
])
def test_a_broken_vocabulary_file_gives_one_line_naming_file_and_key(tmp_path, file, old, new,
                                                                     expected):
    """People edit the vocabulary by hand; a mistake must point at itself, not at a traceback."""
    from datagen.vocabulary import VOCABULARY_DIR, VocabularyError, load_vocabulary

    for name in ("catalog.yaml", "narratives.yaml"):
        (tmp_path / name).write_bytes((VOCABULARY_DIR / name).read_bytes())
    text = (tmp_path / file).read_text(encoding="utf-8")
    assert old in text
    (tmp_path / file).write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(VocabularyError) as caught:
        load_vocabulary(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / file}: ") and expected in message, message
    assert "\n" not in message
