"""The HTML reports a person reads in the Kubeflow UI: validate's data report and evaluate's
model analysis, and the helper both are written with (components/common/html_report.py).

What a user relies on: each report is one self-contained file (no scripts, nothing fetched
from anywhere), its plots are embedded PNG images, and the verdict (the anomalies, the blessing
decision) is in it, first. The reports are written here from statistics and metrics built the
way the steps build them (TFDV's statistics protos; evaluate's own analysis functions), so the
tests take seconds; tests/test_validate.py and tests/test_evaluate.py render them from real runs.
"""

from __future__ import annotations

import base64
import io
import re
import subprocess
import sys

import numpy as np
import pytest

from components.common import html_report
from components.common.dataset_config import load_dataset_config
from components.evaluate import analysis, blessing
from components.evaluate.report import write_report as write_evaluation_report
from components.validate.report import write_report as write_validation_report
from tests.conftest import ROOT

CONFIG = load_dataset_config()
IMAGE = re.compile(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">')


def assert_self_contained(page: str) -> None:
    """One file that renders offline: nothing to run, nothing to fetch."""
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</body></html>")
    assert "<meta charset='utf-8'>" in page and page.count("<style>") == 1
    lowered = page.lower()
    for banned in ("<script", "<link", "<iframe", "<object", "<embed", "@import", "url("):
        assert banned not in lowered, banned
    assert not re.search(r"<[^>]*\son[a-z]+\s*=", lowered), "no inline event handlers"
    for reference in re.findall(r"""\b(?:src|href)\s*=\s*["']([^"']*)""", page, flags=re.I):
        assert reference.startswith(("data:image/png;base64,", "#")), reference


def embedded_images(page: str) -> list:
    """The page's plots, decoded: each one a real PNG."""
    from PIL import Image

    images = []
    for data in IMAGE.findall(page):
        image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        image.load()
        assert image.format == "PNG" and min(image.size) > 50
        images.append(image)
    assert len(images) == page.count("<img"), "every image is an embedded PNG"
    return images


# ------------------------------------------------------------------------------------------
# Validate's report
# ------------------------------------------------------------------------------------------


def _statistics(shares: dict[str, dict[str, float]], rows: int = 1000, numeric_mean=3.0):
    """A TFDV statistics proto: categorical features with the given value shares, the
    narrative (text), the id, and a numeric feature."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    stats = statistics_pb2.DatasetFeatureStatisticsList()
    dataset = stats.datasets.add(num_examples=rows)
    for name, values in {**shares, "complaint_id": {str(i): 1 / rows for i in range(rows)},
                         "narrative": {f"text {i}": 1 / rows for i in range(rows)}}.items():
        feature = dataset.features.add()
        feature.path.step.append(name)
        s = feature.string_stats
        s.common_stats.num_non_missing = rows
        s.unique = len(values)
        s.avg_length = 8
        for value, share in sorted(values.items(), key=lambda item: -item[1]):
            bucket = s.rank_histogram.buckets.add()
            bucket.label, bucket.sample_count = value, share * rows
    feature = dataset.features.add()
    feature.path.step.append("days_open")
    n = feature.num_stats
    n.common_stats.num_non_missing, n.common_stats.num_missing = rows - 10, 10
    n.mean, n.std_dev, n.min, n.median, n.max, n.num_zeros = numeric_mean, 1.5, 0, 3, 40, 12
    return stats


PRODUCTS = {"Mortgage": 0.4, "Credit & debt <collection>": 0.3, "Fees $5 or $\\frac{$": 0.2,
            "Student loan": 0.1}
DRIFT = {"feature": "consumer_disputed", "split": "train vs baseline (drift)",
         "short": "High Linfty distance between current and previous",
         "description": "The Linfty distance between current and previous is 0.35 <above> the "
                        "threshold 0.1."}


def _summary(anomalies: list[dict]) -> dict:
    return {"anomalies_found": bool(anomalies), "anomaly_count": len(anomalies),
            "anomalies": anomalies,
            "measurements": {"consumer_disputed": {
                "drift": {"type": "L_INFTY", "value": 0.35, "threshold": 0.1},
                "skew": {"type": "L_INFTY", "value": 0.01, "threshold": 0.1}}},
            "dataset_version": "ds-new", "baseline_dataset_version": "ds-old",
            "schema_source": "inferred from baseline",
            "rows": {"read": 2200, "train": 1000, "eval": 200}}


@pytest.fixture(scope="module")
def validation_report(tmp_path_factory):
    stats = {"train": _statistics({"consumer_disputed": {"0": 0.4, "1": 0.6},
                                   "product": PRODUCTS}),
             "eval": _statistics({"consumer_disputed": {"0": 0.42, "1": 0.58},
                                  "product": PRODUCTS}, rows=200)}
    baseline = _statistics({"consumer_disputed": {"0": 0.75, "1": 0.25},
                            "product": {**PRODUCTS, "Mortgage": 0.5, "Student loan": 0.0}},
                           numeric_mean=2.5)
    path = tmp_path_factory.mktemp("validate") / "report.html"
    write_validation_report(str(path), _summary([DRIFT]), stats, baseline, None, CONFIG)
    return path.read_text(encoding="utf-8")


def test_validation_report_is_one_self_contained_file(validation_report):
    assert_self_contained(validation_report)
    assert "<svg" not in validation_report  # one plotting approach: embedded PNGs


def test_validation_report_plots_each_categorical_feature(validation_report):
    # The label, product and the id; not the free text, not the numeric feature (a table).
    images = embedded_images(validation_report)
    assert len(images) == 3
    alts = re.findall(r'<img alt="([^"]*)"', validation_report)
    assert [alt.split(":")[0] for alt in alts] == ["consumer_disputed", "product", "complaint_id"]
    assert all("train, eval, baseline" in alt for alt in alts)
    assert "the 12 values most common in train" in alts[2]  # 1000 ids: the top 12 only


def test_validation_report_puts_the_anomalies_first(validation_report):
    page = validation_report
    assert "1 anomaly found" in page
    assert page.index("<h2>Anomalies</h2>") < page.index("<h2>Features</h2>")
    assert "<a href='#f-consumer_disputed'>consumer_disputed</a>" in page
    assert "0.35 &lt;above&gt; the threshold" in page  # escaped, in the table and the feature
    flagged = re.findall(r"<div class='section flagged' id='f-([^']+)'>", page)
    assert flagged == ["consumer_disputed"]
    features = re.findall(r"<div class='section[^']*' id='f-([^']+)'>", page)
    assert features[0] == "consumer_disputed"  # the label first
    assert set(features) == {"consumer_disputed", "product", "complaint_id", "narrative",
                             "days_open"}
    assert "L_INFTY 0.350 (threshold 0.100)" in page


def test_validation_report_tables_numeric_features(validation_report):
    page = validation_report
    section = page[page.index("id='f-days_open'"):]
    section = section[:section.index("</div></div>")]
    assert "<th>mean</th>" in section and "<td class='num'>3</td>" in section
    assert "<td class='num'>1.0%</td>" in section  # 10 missing of 1000


def test_validation_report_without_anomalies_says_so(tmp_path):
    stats = {"train": _statistics({"product": PRODUCTS})}
    path = tmp_path / "report.html"
    write_validation_report(str(path), _summary([]), stats, None, None, CONFIG)
    page = path.read_text(encoding="utf-8")
    assert_self_contained(page)
    assert "no anomalies" in page and "<h2>Anomalies</h2>" not in page
    assert "section flagged" not in page
    assert len(embedded_images(page)) == 2  # product and the id


# ------------------------------------------------------------------------------------------
# Evaluate's report
# ------------------------------------------------------------------------------------------


def _evaluation(thresholds: dict[str, float]) -> tuple[dict, dict]:
    """metrics.json and blessing.json as evaluate writes them, from its own analysis."""
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 600)
    probabilities = np.clip(0.35 * labels + 0.65 * rng.random(600), 0, 1)
    products = rng.choice(["Mortgage", "Credit card", "Debt $collection$", "Payday loan"],
                          p=[0.4, 0.3, 0.27, 0.03], size=600)
    overall = analysis.overall_metrics(labels, probabilities, 0.5)
    rows = analysis.slice_metrics(labels, probabilities, list(products), 0.5, 30)
    sample = probabilities[:40]
    counterfactuals = [(i, feature, value) for i in range(40)
                       for feature, value in (("product", "Mortgage"), ("state", ""))]
    changed = [min(1.0, sample[i] + (0.2 if feature == "product" else 0.01))
               for i, feature, _ in counterfactuals]
    metrics = {
        "model": {"model_id": "m-1234", "training": {"dataset_version": "ds-train"}},
        "dataset_version": "ds-eval", "eval_examples": 600, "decision_threshold": 0.5,
        "overall": overall,
        "slices": {"product": {"min_slice_size": 30, "slices": rows,
                               "fairness": analysis.fairness_gaps(rows)}},
        "feature_dependence": {
            "sample_size": 40, "seed": 0, "replacements": 3, "notes": [],
            "features": analysis.summarise_counterfactuals(sample, changed, counterfactuals,
                                                           ["product", "state"], 0.5),
            "signature_max_abs_diff": 0.0},
        "baseline": None, "code_version": "test", "created_at": "2026-01-01T00:00:00+00:00",
    }
    decision = blessing.decide(overall, thresholds, {}, None)
    doc = {**decision, "baseline": {"model_id": None},
           "note": "no baseline given: only the absolute thresholds apply"}
    return metrics, doc


@pytest.mark.parametrize("auc_bound, verdict", [(0.5, "BLESSED"), (0.99, "NOT BLESSED")])
def test_evaluation_report_is_self_contained_with_the_decision_first(tmp_path, auc_bound,
                                                                      verdict):
    metrics, decision = _evaluation({"auc": auc_bound})
    assert decision["blessed"] is (verdict == "BLESSED")
    path = tmp_path / "report.html"
    write_evaluation_report(str(path), metrics, decision, CONFIG)
    page = path.read_text(encoding="utf-8")
    assert_self_contained(page)
    css = "ok" if verdict == "BLESSED" else "bad"
    assert page.count(f"<span class='{css}'>{verdict}</span>") == 1
    assert page.index(verdict) < page.index("<h2>Blessing</h2>") < page.index("<h2>Overall")
    assert f"auc &gt;= {auc_bound}" in page
    assert ("<td class='ok'>passed" if verdict == "BLESSED" else "<td class='bad'>failed") in page
    # ROC, calibration, fairness gaps, the product slices, feature dependence
    images = embedded_images(page)
    assert len(images) == 5
    assert "Payday loan" in page and "too small" in page  # 18 examples: a row, not a bar


# ------------------------------------------------------------------------------------------
# The shared helper
# ------------------------------------------------------------------------------------------


def test_numbers_and_escaping():
    assert html_report.num(None) == html_report.num(float("nan")) == "n/a"
    assert html_report.num(0.123456) == "0.1235"
    assert html_report.num(0.123456, ".3f") == "0.123" and html_report.num(12, ".3f") == "12"
    assert html_report.num(0.25, ".1%") == "25.0%" and html_report.num(1, ".0%") == "100%"
    assert html_report.num(1234.5, ".4g") == "1234"  # half to even
    assert html_report.n(None) == "<span class='muted'>n/a</span>"
    assert html_report.n(0.5, ".2f") == "0.50"
    assert html_report.e("<a href='x'>&</a>") == "&lt;a href=&#x27;x&#x27;&gt;&amp;&lt;/a&gt;"


def test_page_shell_streams_the_body(tmp_path):
    def body():
        yield "<h1>first</h1>"
        yield "<p>second</p>"

    path = tmp_path / "page.html"
    html_report.write_page(str(path), "Report <ds-1> & co", body())
    page = path.read_text(encoding="utf-8")
    assert_self_contained(page)
    assert "<title>Report &lt;ds-1&gt; &amp; co</title>" in page
    assert f"<style>{html_report.STYLE}</style>" in page
    assert page.index("<h1>first</h1>") < page.index("<p>second</p>") < page.index("</body>")


def test_grouped_bars_draw_data_as_text_and_missing_values_as_n_a():
    fig = html_report.figure(6, 3)
    ax = fig.add_subplot()
    labels = ["plain", "cost $\\frac{$ (not math)", "x"]
    html_report.grouped_barh(ax, labels, [("a $b$", [0.5, None, 0.25], "#1f77b4"),
                                          ("c", [0.1, 0.2, 0.3], "#ff7f0e")])
    assert [t.get_text() for t in ax.get_yticklabels()] == labels
    assert [t.get_text() for t in ax.texts] == ["0.50", "n/a", "0.25", "0.10", "0.20", "0.30"]
    tag = html_report.img(fig, 'bars "quoted"')  # mathtext would fail to parse the label
    assert tag.startswith('<img alt="bars &quot;quoted&quot;" src="data:image/png;base64,')
    assert len(embedded_images(tag)) == 1
    assert not fig.axes, "img releases the figure's artists"


def test_steps_import_without_matplotlib_and_never_use_pyplot():
    code = (
        "import sys\n"
        "import components.common.html_report, components.validate.report, "
        "components.evaluate.report\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported at import time'\n"
        "from components.common import html_report as h\n"
        "fig = h.figure(); fig.add_subplot().plot([0, 1]); h.img(fig, 'x')\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot keeps every figure alive'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
