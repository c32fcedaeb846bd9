"""Evaluating a model: from COCO JSON + images and from shards gives the same metrics; the
periodic validator returns headline numbers and leaves the model in training mode."""

import json

import pytest
import torch

from ovdet.config import DataConfig, EvalConfig, ModelConfig, SourceConfig, SynthConfig
from ovdet.data.vocab import load_vocabulary
from ovdet.eval.evaluator import (
    default_image_root,
    evaluate_model,
    image_paths,
    make_validator,
    predict_coco,
)
from ovdet.infer import Detector
from ovdet.models import create_detector


@pytest.fixture(scope="module")
def world_and_shards(tmp_path_factory):
    from ovdet.pipelines.shard import run_shard_stage

    from ovdet.data.synthetic import generate_world

    root = tmp_path_factory.mktemp("eval-world")
    world = root / "world"
    generate_world(SynthConfig(image_size=64, num_detection=1, num_grounding=1, num_image_text=1, num_eval=6), world, progress=False)
    source = SourceConfig(name="eval", kind="detection", format="coco", paths=["eval.json"], image_root="images")
    run_shard_stage(DataConfig(root=str(world), sources=[source], samples_per_shard=4), root / "shards", progress=False)
    return world, root / "shards"


@pytest.fixture(scope="module")
def lvis_world_and_shards(world_and_shards, tmp_path_factory):
    """The eval set in LVIS format: per image, half the absent categories verified negative and the
    first present one not exhaustive."""
    from ovdet.pipelines.shard import run_shard_stage

    world, _ = world_and_shards
    gt = json.loads((world / "eval.json").read_text())
    category_ids = [c["id"] for c in gt["categories"]]
    for image in gt["images"]:
        present = sorted({a["category_id"] for a in gt["annotations"] if a["image_id"] == image["id"]})
        image["neg_category_ids"] = [c for c in category_ids if c not in present][::2]
        image["not_exhaustive_category_ids"] = present[:1]
    (world / "eval_lvis.json").write_text(json.dumps(gt))
    source = SourceConfig(name="eval", kind="detection", format="coco", paths=["eval_lvis.json"], image_root="images")
    shards = tmp_path_factory.mktemp("lvis-shards")
    run_shard_stage(DataConfig(root=str(world), sources=[source], samples_per_shard=4), shards, progress=False)
    return world, shards


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


def test_lvis_format_sets_are_scored_federated_from_json_and_from_shards(lvis_world_and_shards, detector, tmp_path):
    world, shards = lvis_world_and_shards
    common = {"vocab": str(world / "vocab.yaml"), "prompt_templates": ["{}"]}
    from_json = evaluate_model("m", EvalConfig(gt=str(world / "eval_lvis.json"), **common), tmp_path / "a", False,
                               detector)  # fmt: skip
    from_shards = evaluate_model("m", EvalConfig(shards=str(shards), **common), tmp_path / "b", False, detector)
    assert from_json["protocol"] == from_shards["protocol"] == "lvis"
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR@300"):
        assert from_json[key] == pytest.approx(from_shards[key], abs=1e-9)
    assert from_json["detections"] == from_shards["detections"]
    assert from_json["detections"]["unverified"] > 0
    coco = evaluate_model("m", EvalConfig(gt=str(world / "eval_lvis.json"), protocol="coco", **common), tmp_path / "c",
                          False, detector)  # fmt: skip
    # each protocol asks the model for as many detections per image as it keeps
    assert coco["protocol"] == "coco" and coco["detections"]["read"] == 100 * coco["num_images"]
    assert from_json["detections"]["read"] == 300 * from_json["num_images"]


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


def test_validator_scores_under_the_configured_protocol(lvis_world_and_shards, detector, tmp_path):
    world, _ = lvis_world_and_shards
    cfg = EvalConfig(gt=str(world / "eval_lvis.json"), vocab=str(world / "vocab.yaml"), prompt_templates=["{}"],
                     protocol="lvis-fixed", dets_per_category=40)  # fmt: skip
    values = make_validator(cfg)(detector.model, 5)
    full = evaluate_model("m", cfg, tmp_path, False, detector)
    assert full["protocol"] == "lvis-fixed" and full["detections"]["over_category_cap"] > 0
    assert values == {f"{k}_{p}": full[k][p] for k in ("AP", "AP50") for p in ("base", "novel", "all", "hm")}


def test_synonym_ensembling_is_off_by_default_and_moves_scores_when_on(world_and_shards, detector):
    world, _ = world_and_shards
    gt = json.loads((world / "eval.json").read_text())
    images = image_paths(gt, default_image_root(world / "eval.json", gt))
    vocab = load_vocabulary(str(world / "vocab.yaml"), gt=gt)
    assert all(c.synonyms for c in vocab.categories)  # the synthetic world names synonyms for every class
    without = load_vocabulary(str(world / "vocab.yaml"), gt=gt)
    for category in without.categories:
        category.synonyms = []
    cfg = EvalConfig(prompt_templates=["{}"], max_detections=10)
    default = predict_coco(detector, gt, images, vocab, cfg, progress=False)
    assert default == predict_coco(detector, gt, images, without, cfg, progress=False)
    ensembled = predict_coco(detector, gt, images, vocab, EvalConfig(**{**vars(cfg), "synonym_prompts": True}), progress=False)
    assert [d["score"] for d in ensembled] != [d["score"] for d in default]


@pytest.mark.parametrize("spec, configured, method", [({}, "auto", "none"), ({"assigner": "atss"}, "auto", "class"),
                                                      ({}, "soft-gaussian", "soft-gaussian")])
def test_eval_records_and_applies_the_resolved_nms(world_and_shards, detector, tmp_path, spec, configured, method):
    world, _ = world_and_shards
    model = Detector(detector.model, spec)
    cfg = EvalConfig(gt=str(world / "eval.json"), vocab=str(world / "vocab.yaml"), max_detections=20, nms=configured,
                     prompt_templates=["{}"])
    metrics = evaluate_model("m", cfg, tmp_path, False, model)
    assert metrics["nms"] == {"method": method, "iou": 0.5, "sigma": 0.5, "configured": configured}
    detections = json.loads((tmp_path / "detections.json").read_text())
    assert len(detections) == 6 * 20  # an untrained model's boxes are its tokens' cells: enough survive NMS
    if method == "class":  # no two boxes of one class in one image overlap beyond the threshold
        from torchvision.ops import box_convert, box_iou

        groups = {}
        for d in detections:
            groups.setdefault((d["image_id"], d["category_id"]), []).append(d["bbox"])
        for boxes in groups.values():
            iou = box_iou(*[box_convert(torch.tensor(boxes), "xywh", "xyxy")] * 2).fill_diagonal_(0)
            assert iou.max() <= 0.5
