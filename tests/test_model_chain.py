"""The model half end to end, through the steps' CLIs as their containers run them.

A good model becomes registry version 1; a model trained on shuffled labels is not blessed
against it, and push leaves the registry untouched.
"""

from __future__ import annotations

import csv
import json
import random

import pytest

pytestmark = pytest.mark.slow

FAST = json.dumps({"epochs": 3, "batch_size": 128, "hidden_units": [16], "embedding_dim": 8})


def ok(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def shuffle_labels(src, dst, seed=0):
    with open(src, newline="", encoding="utf-8") as fin:
        reader = csv.reader(fin)
        header = next(reader)
        rows = list(reader)
    label = header.index("Consumer disputed?")
    labels = [row[label] for row in rows]
    random.Random(seed).shuffle(labels)
    for row, value in zip(rows, labels, strict=True):
        row[label] = value
    with open(dst, "w", newline="", encoding="utf-8") as fout:
        writer = csv.writer(fout)
        writer.writerow(header)
        writer.writerows(rows)


def train_chain(cli, work, name, csv_path):
    ok(cli("components.ingest", "--source", str(csv_path), "--output", str(work / f"{name}-ex")))
    ok(cli("components.transform", "--examples", str(work / f"{name}-ex"),
           "--output", str(work / f"{name}-tf")))
    ok(cli("components.train", "--examples", str(work / f"{name}-ex"),
           "--transform", str(work / f"{name}-tf"), "--output", str(work / f"{name}-model"),
           "--hparams", FAST))


def tree(path):
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")
                  if not p.name.startswith(".lock"))


def test_worse_model_is_not_blessed_and_not_pushed(cli, tmp_path):
    registry = tmp_path / "registry"
    ok(cli("datagen", "--rows", "4000", "--seed", "11",
           "--out", str(tmp_path / "good.csv")))
    train_chain(cli, tmp_path, "good", tmp_path / "good.csv")
    ok(cli("components.evaluate", "--model", str(tmp_path / "good-model"),
           "--examples", str(tmp_path / "good-ex"), "--output", str(tmp_path / "good-eval"),
           "--baseline-model", f"{registry}/cfpb"))
    assert json.loads((tmp_path / "good-eval" / "blessing.json").read_text())["blessed"]
    ok(cli("components.push", "--model", str(tmp_path / "good-model"),
           "--evaluation", str(tmp_path / "good-eval"), "--registry", str(registry),
           "--model-name", "cfpb"))
    index = json.loads((registry / "cfpb" / "index.json").read_text())
    assert index["current"] == 1
    good = index["versions"][0]
    training = json.loads((tmp_path / "good-model" / "training.json").read_text())
    assert good["model_id"] == training["model_id"]
    assert good["dataset_version"] == training["dataset_version"]
    assert good["preprocessing_hash"] == training["preprocessing_hash"]
    before = tree(registry)

    shuffle_labels(tmp_path / "good.csv", tmp_path / "shuffled.csv")
    train_chain(cli, tmp_path, "bad", tmp_path / "shuffled.csv")
    # Judged on the real labels of the good data's eval split, against the current version.
    ok(cli("components.evaluate", "--model", str(tmp_path / "bad-model"),
           "--examples", str(tmp_path / "good-ex"), "--output", str(tmp_path / "bad-eval"),
           "--baseline-model", f"{registry}/cfpb"))
    blessing = json.loads((tmp_path / "bad-eval" / "blessing.json").read_text())
    assert blessing["blessed"] is False
    assert blessing["baseline"]["version"] == 1
    failed = [r for r in blessing["reasons"] if not r["passed"]]
    assert any("auc" in r["check"] for r in failed), blessing["reasons"]
    result = ok(cli("components.push", "--model", str(tmp_path / "bad-model"),
                    "--evaluation", str(tmp_path / "bad-eval"), "--registry", str(registry),
                    "--model-name", "cfpb"))
    assert "not blessed" in result.stderr + result.stdout
    assert tree(registry) == before
    assert json.loads((registry / "cfpb" / "index.json").read_text()) == index
