"""Every registry version gets a model card (components/common/artifacts/model_card.py) whose
fields are train's training.json and evaluate's metrics.json; a DP model's epsilon reaches the
evaluation report, its KFP metrics, the registry lineage and the card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.common import registry
from components.common.artifacts import model as model_artifact
from components.common.artifacts import model_card
from components.common.dataset_config import load_dataset_config
from components.common.hparams import parse_hparams
from components.push.push import STATUS_ALREADY, card_page, push
from tests.test_push import make_evaluation
from tests.test_registry import make_train_output

CONFIG = load_dataset_config()
NAME = "cfpb-disputes"
DP = {"privacy": "dp-sgd", "noise_multiplier": 1.0, "l2_clip": 1.0, "epochs": 3,
      "batch_size": 128, "hidden_units": [16], "embedding_dim": 8, "learning_rate": 0.01}
IMAGES = {"train": "registry.example.com/ml/cfpb-pipeline-train:0.1.0-abc1234"}


@pytest.fixture(scope="module")
def dp_chain(tmp_path_factory):
    """datagen -> ingest -> transform -> train (DP-SGD) -> evaluate -> push, by the real steps."""
    from components.evaluate.evaluate import evaluate
    from components.ingest.ingest import ingest
    from components.train.train import train
    from components.transform.transform import transform
    from tests.conftest import run_cli

    work = tmp_path_factory.mktemp("card")
    result = run_cli("datagen", "--rows", "3000", "--seed", "8", "--out", str(work / "d.csv"))
    assert result.returncode == 0, result.stderr
    ingest(str(work / "d.csv"), str(work / "examples"), CONFIG)
    transform(str(work / "examples"), str(work / "transform"), CONFIG)
    train(str(work / "examples"), str(work / "transform"), str(work / "model"), CONFIG,
          parse_hparams(json.dumps(DP)))
    evaluated = evaluate(str(work / "model"), str(work / "examples"), str(work / "evaluation"),
                         CONFIG, baseline_ref=str(work / "registry" / NAME))
    assert evaluated["blessing"]["blessed"], evaluated["blessing"]["reasons"]
    pushed = push(str(work / "model"), str(work / "evaluation"), str(work / "registry"), NAME,
                  CONFIG, IMAGES)
    assert pushed["pushed"] and pushed["version"] == 1
    return work, evaluated, pushed


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_the_evaluation_shows_the_dp_epsilon(dp_chain):
    from components.evaluate.evaluate import kfp_scalars

    work, evaluated, _ = dp_chain
    training = read_json(work / "model" / "training.json")
    epsilon = training["privacy"]["epsilon"]
    assert kfp_scalars(evaluated["metrics"])["dp_epsilon"] == epsilon
    report = (work / "evaluation" / "report.html").read_text()
    assert "Differentially private training" in report and f"= {epsilon:.3g}</b>" in report


def test_the_card_is_beside_the_version_and_model_ids_still_check(dp_chain):
    work, _, pushed = dp_chain
    root = work / "registry" / NAME
    assert pushed["model_card"] == str(root / "cards" / "1")
    assert (root / "cards" / "1" / model_card.JSON_FILE).is_file()
    assert (root / "cards" / "1" / model_card.HTML_FILE).is_file()
    assert not list((root / "1").rglob("model_card*"))  # not among the SavedModel's files
    training = read_json(work / "model" / "training.json")
    assert model_artifact.model_id_of(str(root / "1")) == training["model_id"]
    baseline = registry.resolve_baseline(str(root), str(work / "downloads"))  # checks model_id
    assert baseline.model_id == training["model_id"]


def test_card_fields_match_training_json_and_metrics_json(dp_chain):
    work, _, _ = dp_chain
    training = read_json(work / "model" / "training.json")
    metrics = read_json(work / "evaluation" / "metrics.json")
    blessing = read_json(work / "evaluation" / "blessing.json")
    card = model_card.read(str(work / "registry" / NAME / "cards" / "1"))
    lineage = registry.read_lineage(str(work / "registry"), NAME, 1)

    assert card["model"]["model_id"] == training["model_id"] == lineage["model_id"]
    assert (card["model"]["version"], card["model"]["semver"]) == (1, "1.0.0")
    assert card["model"]["decision_threshold"] == {
        "value": training["decision_threshold"]["value"],
        "policy": training["decision_threshold"]["policy"]}
    assert card["data"]["dataset_version"] == training["dataset_version"]
    assert card["data"]["rows"] == training["rows"]
    assert card["data"]["evaluated_on"] == {"dataset_version": metrics["dataset_version"],
                                            "eval_examples": metrics["eval_examples"]}
    assert card["preprocessing"]["preprocessing_hash"] == training["preprocessing_hash"]
    assert card["training"]["hparams"] == training["hparams"]
    assert card["training"]["metrics"] == training["metrics"]
    # privacy: train's record, unchanged, in the card and in the registry lineage
    assert card["privacy"] == training["privacy"] == lineage["privacy"]
    assert card["privacy"]["epsilon"] > 0 and card["privacy"]["sampling"] == "poisson"
    # metrics overall, per slice, fairness gaps: evaluate's
    for key, value in card["evaluation"]["overall"].items():
        assert metrics["overall"][key] == value
    assert card["evaluation"]["overall"]["auc"] == metrics["overall"]["auc"]
    assert set(card["evaluation"]["slices"]) == set(CONFIG.evaluation.slices)
    for feature, rows in card["evaluation"]["slices"].items():
        source = metrics["slices"][feature]
        assert [r["value"] for r in rows] == [r["value"] for r in source["slices"]]
        assert [r["auc"] for r in rows] == [r["auc"] for r in source["slices"]]
        assert card["evaluation"]["fairness"][feature] == source["fairness"]
    # the baseline and why it was blessed
    assert card["blessing"]["blessed"] is True
    assert card["blessing"]["reasons"] == blessing["reasons"]
    assert card["blessing"]["why"].startswith("blessed: every check passed: auc >= 0.6")
    assert card["blessing"]["baseline"]["version"] is None  # the first version
    # intended use from the dataset config; code versions and what is not known
    assert card["intended_use"]["intended_use"] == CONFIG.model_card.intended_use
    assert card["provenance"]["code_versions"] == {
        "train": training["code_version"], "evaluate": metrics["code_version"],
        "push": lineage["push_code_version"]}
    assert card["provenance"]["pipeline_images"] == IMAGES
    assert card["provenance"]["image_digests"] is None
    assert "not recorded" in card["provenance"]["image_digests_note"]


def test_the_html_card_says_what_the_json_says(dp_chain):
    work, _, pushed = dp_chain
    card = model_card.read(str(work / "registry" / NAME / "cards" / "1"))
    html = (work / "registry" / NAME / "cards" / "1" / model_card.HTML_FILE).read_text()
    assert "<h2>Intended use</h2>" in html and "Ranks incoming CFPB complaints" in html
    assert card["model"]["model_id"] in html and card["training"]["hparams"] and \
        "noise_multiplier = 1.0" in html
    assert f"<b>{card['privacy']['epsilon']:.3g}</b>" in html
    assert "Fairness gaps" in html and "Slices by product" in html
    assert "image digests" in html and "<script" not in html
    assert card_page(pushed) == (work / "registry" / NAME / "cards" / "1" /
                                 model_card.HTML_FILE).read_bytes()


def test_a_second_push_of_the_same_model_keeps_its_card(dp_chain):
    work, _, _ = dp_chain
    again = push(str(work / "model"), str(work / "evaluation"), str(work / "registry"), NAME,
                 CONFIG, IMAGES)
    assert again["status"] == STATUS_ALREADY and again["model_card"].endswith("cards/1")
    assert b"Model card: cfpb-disputes version 1" in card_page(again)


# ---------------------------------------------------------------------------------------------
# Without DP, without a card, without a blessing (hand-made outputs, no TensorFlow).

def test_a_model_trained_without_dp_says_so(tmp_path):
    training = make_train_output(tmp_path / "train")
    evaluation = make_evaluation(tmp_path / "eval", training["model_id"])
    result = push(str(tmp_path / "train"), str(evaluation), str(tmp_path / "registry"), NAME)
    card = model_card.read(result["model_card"])
    assert card["privacy"] == {"mechanism": "none"}
    assert card["evaluation"]["slices"] == {}  # metrics.json without evaluate's slice layout
    assert card["provenance"]["pipeline_images"] is None
    assert "Trained without differential privacy" in card_page(result).decode()


def test_an_unblessed_model_gets_no_card_but_a_page_saying_why(tmp_path):
    training = make_train_output(tmp_path / "train")
    evaluation = make_evaluation(tmp_path / "eval", training["model_id"], blessed=False)
    result = push(str(tmp_path / "train"), str(evaluation), str(tmp_path / "registry"), NAME)
    assert not result["pushed"] and result["model_card"] == ""
    assert not (tmp_path / "registry" / NAME / "cards").exists()
    page = card_page(result).decode()
    assert "was not published: not blessed: failed: auc &gt;= 0.6 (got 0.52)" in page


def test_a_card_that_cannot_be_written_publishes_nothing(tmp_path, monkeypatch):
    training = make_train_output(tmp_path / "train")
    evaluation = make_evaluation(tmp_path / "eval", training["model_id"])

    def broken(directory, card):
        raise OSError("disk full")

    monkeypatch.setattr(model_card, "write", broken)
    with pytest.raises(OSError, match="disk full"):
        push(str(tmp_path / "train"), str(evaluation), str(tmp_path / "registry"), NAME)
    assert registry.read_index(str(tmp_path / "registry"), NAME)["versions"] == []


def test_digests_resolved_at_compile_time_are_in_the_card(tmp_path):
    """The pipeline passes name@digest when it resolved the digests (local runs, `--compile
    --image-digests`): the card lists them by step, in the JSON and the page."""
    digest = "sha256:" + "ab" * 32
    images = {"train": f"local/cfpb-pipeline-train:1.0@{digest}",
              "push": "local/cfpb-pipeline-push:1.0"}
    training = make_train_output(tmp_path / "train")
    evaluation = make_evaluation(tmp_path / "eval", training["model_id"])
    result = push(str(tmp_path / "train"), str(evaluation), str(tmp_path / "registry"), NAME,
                  None, images)
    card = model_card.read(result["model_card"])
    assert card["provenance"]["pipeline_images"] == images
    assert card["provenance"]["image_digests"] == {"train": digest}
    assert "compiled" in card["provenance"]["image_digests_note"]
    assert f"train: {digest}" in card_page(result).decode()
