"""Evaluating a model: from COCO JSON + images and from shards gives the same metrics; the
periodic validator returns headline numbers and leaves the model in training mode."""

import json

import pytest
import torch

from ovdet.config import DataConfig, EvalConfig, ModelConfig, SourceConfig, SynthConfig
from ovdet.eval.evaluator import evaluate_model, make_validator
from ovdet.infer import Detector
from ovdet.models import create_detector


@pytest.fixture(scope="module")
def world_and_shards(tmp_path_factory):
    from ovdet.data.synthetic import generate_world
    from pipelines.shard import run_shard_stage

    root = tmp_path_factory.mktemp("eval-world")
    world = root / "world"
    generate_world(SynthConfig(image_size=64, num_detection=1, num_grounding=1, num_image_text=1, num_eval=6), world, progress=False)
    source = SourceConfig(name="eval", kind="detection", format="coco", paths=["eval.json"], image_root="images")
    run_shard_stage(DataConfig(root=str(world), sources=[source], samples_per_shard=4), root / "shards", progress=False)
    return world, root / "shards"


@pytest.fixture(scope="module")
def detector():
    torch.manual_seed(0)
    return Detector(create_detector(ModelConfig(name="tiny-vit-minilm", feature_indices=[1])), {})


def test_shards_and_coco_json_give_the_same_metrics(world_and_shards, detector, tmp_path):
    world, shards = world_and_shards
    common = {"vocab": str(world / "vocab.yaml"), "max_detections": 20, "prompt_templates": ["{}"]}
    from_json = evaluate_model("m", EvalConfig(gt=str(world / "eval.json"), **common), tmp_path / "a", False, detector)
    from_shards = evaluate_model("m", EvalConfig(shards=str(shards), **common), tmp_path / "b", False, detector)
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert from_json[key] == pytest.approx(from_shards[key], abs=1e-9)
    assert from_json["num_images"] == from_shards["num_images"] == 6
    detections = json.loads((tmp_path / "a" / "detections.json").read_text())
    assert len(detections) == 6 * 20
    assert (tmp_path / "a" / "report.md").is_file()


def test_validator_reports_headline_numbers_and_restores_training_mode(world_and_shards, detector):
    world, _ = world_and_shards
    model = detector.model.train()
    validate = make_validator(EvalConfig(gt=str(world / "eval.json"), vocab=str(world / "vocab.yaml"), max_images=3))
    values = validate(model, 10)
    assert set(values) == {f"{k}_{p}" for k in ("AP", "AP50") for p in ("base", "novel", "all", "hm")}
    assert all(-1.0 <= v <= 1.0 for v in values.values())
    assert model.training


def test_eval_without_a_set_is_a_user_error(tmp_path):
    from ovdet.errors import OvdetError

    with pytest.raises(OvdetError, match="eval.gt .* or eval.shards"):
        evaluate_model("m", EvalConfig(vocab="a,b"), tmp_path)
