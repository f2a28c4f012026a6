"""The feedback step's output: what the live model did and whether to retrain.

    <dir>/report.html        the report a person reads (also the KFP HTML artifact)
    <dir>/statistics/        TFDV statistics of the serving sample and of the training data
                             (serving/FeatureStats.pb, training/FeatureStats.pb)
    <dir>/feedback.json      written last: the join's counts, live metrics per version, the
                             A/B verdict, skew and drift, the new dataset version, the retrain
                             decision with its reasons, and any deployment change made

`feedback.json` keys: window, join, labels, versions ({version: metrics}), ab, drift, dataset,
decision ({retrain, reasons, checks}), deployment, created_at, seconds.
"""

from __future__ import annotations

import os

from components.common import documents

FEEDBACK_FILE = "feedback.json"
REPORT_FILE = "report.html"
STATISTICS_DIR = "statistics"


def write(directory: str, result: dict) -> None:
    documents.write_json(os.path.join(directory, FEEDBACK_FILE), result)


def read(directory: str) -> dict:
    return documents.read_json(os.path.join(directory, FEEDBACK_FILE), "feedback result",
                               producer="feedback")
