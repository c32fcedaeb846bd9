"""OWL-ViT and OWLv2 through ovdet equal the ``transformers`` modules, processors and pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ovdet.data.letterbox import letterbox, stretch
from ovdet.infer import Detector
from ovdet.models.factory import create_detector
from ovdet.models.hf.common import hf_spec
from ovdet.models.hf.tiny import write_tiny_model

KINDS = ("owlv2", "owlvit")
NAMES = ["cat", "red car", "a photo of a dog"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-owl")
    return {kind: write_tiny_model(root / kind, kind) for kind in KINDS}


def reference(folder):
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    return AutoModelForZeroShotObjectDetection.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)


def images() -> list[Image.Image]:
    """A wide and a tall image: both geometries (OWLv2's square padding, OWL-ViT's squash) matter."""
    rng = np.random.default_rng(0)
    return [Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)) for h, w in ((50, 80), (90, 40))]


def smooth_image(height: int, width: int) -> Image.Image:
    """A smooth image: resampling filters agree on it, so pixel differences measure the geometry."""
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 255
    return Image.fromarray(rgb.astype(np.uint8))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [None, 96])
def test_forward_equals_the_transformers_module(folders, kind, size):
    detector = create_detector(hf_spec("hf:" + str(folders[kind])), input_size=size).eval()
    module, processor = reference(folders[kind])
    inputs = processor(images=images(), text=[NAMES, NAMES], return_tensors="pt")
    if size:  # a resolution other than the native one: OWL's interpolated position embeddings
        inputs["pixel_values"] = torch.nn.functional.interpolate(inputs["pixel_values"], size=(size, size))
    with torch.no_grad():
        expected = module(**inputs, interpolate_pos_encoding=size is not None)
        output = detector.predict_processed({"pixel_values": inputs["pixel_values"]}, detector.encode_texts(NAMES))
    # The logits reach about 150, where one float32 step is 1.5e-5: rtol 1e-6 allows a few steps of
    # rounding (the order of additions differs by CPU kernel), atol alone would demand bit equality.
    torch.testing.assert_close(output.pred_logits, expected.logits, atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(output.pred_boxes, expected.pred_boxes, atol=1e-6, rtol=0)
    if kind == "owlv2":
        torch.testing.assert_close(output.quality_logits, expected.objectness_logits, atol=1e-6, rtol=0)
    else:
        assert output.quality_logits is None
    shift, scale = output.logit_parts["logit_shift"], output.logit_parts["logit_scale"]
    torch.testing.assert_close((output.logit_parts["region_similarity"] + shift) * scale, output.pred_logits)


@pytest.mark.parametrize("kind", KINDS)
def test_detect_equals_the_processors_post_processing_and_the_pipeline(folders, kind):
    from transformers import pipeline

    module, processor = reference(folders[kind])
    detector = Detector.from_pretrained("hf:" + str(folders[kind]))
    threshold = 0.2  # random-init scores sit near 0.5; most queries take part
    found = detector.detect(images(), NAMES, score_threshold=threshold, top_k=10_000)
    for image, ours in zip(images(), found, strict=True):
        inputs = processor(images=image, text=[NAMES], return_tensors="pt")
        with torch.no_grad():
            outputs = module(**inputs)
        (theirs,) = processor.post_process_grounded_object_detection(
            outputs, threshold=threshold, target_sizes=[(image.height, image.width)], text_labels=[NAMES])
        by_key: dict[tuple, list[float]] = {}  # clipping can give two queries the same box
        for d in ours:
            by_key.setdefault((d.label, tuple(round(v, 2) for v in d.box_xyxy)), []).append(d.score)
        compared = 0
        for box, score, label in zip(theirs["boxes"], theirs["scores"], theirs["text_labels"], strict=True):
            x1, y1, x2, y2 = box.tolist()
            clipped = (max(0.0, x1), max(0.0, y1), min(image.width, x2), min(image.height, y2))
            if clipped[2] - clipped[0] < 1 or clipped[3] - clipped[1] < 1:
                continue  # entirely outside the image: ovdet drops what its clipping leaves empty
            key = (label, tuple(round(v, 2) for v in clipped))
            assert key in by_key, f"{key} not among ovdet's detections"
            assert min(abs(ours_score - float(score)) for ours_score in by_key[key]) <= 1e-4
            compared += 1
        assert compared >= 3  # the comparison is not vacuous
        # transformers lists each query under its best label only; ovdet's extra entries are the
        # same queries' other labels, so every ovdet detection's box is one of transformers' boxes
        # or a box under a lower-scoring label
        assert len(ours) >= compared
        pipe = pipeline("zero-shot-object-detection", model=module, image_processor=processor.image_processor,
                        tokenizer=processor.tokenizer)  # fmt: skip
        for item in pipe(image, candidate_labels=NAMES, threshold=threshold):
            box = item["box"]
            if min(box["xmax"], image.width) - max(box["xmin"], 0) < 1 or min(box["ymax"], image.height) - max(box["ymin"], 0) < 1:  # noqa: E501
                continue
            scores = [d.score for d in ours if d.label == item["label"] and abs(d.score - item["score"]) <= 1e-4]
            assert scores, f"pipeline detection {item} not among ovdet's"


@pytest.mark.parametrize("kind", KINDS)
def test_training_pixels_match_the_processors(folders, kind):
    """ovdet's loader canvas (letterbox for OWLv2, stretch for OWL-ViT) normalized by the
    detector gives the processor's tensor: same geometry, same padding; the resampling (PIL bilinear
    on uint8 vs the processor's on floats, after padding for OWLv2) differs by under 2 grey levels
    (0.03 in normalized units) on average on a smooth image."""
    detector = create_detector(hf_spec("hf:" + str(folders[kind])))
    _, processor = reference(folders[kind])
    for height, width in ((50, 80), (90, 40)):
        image = smooth_image(height, width)
        fit = letterbox if detector.resize == "letterbox" else stretch
        canvas, _ = fit(image, detector.image_size)
        ours = detector.normalize(torch.from_numpy(canvas).permute(2, 0, 1)[None].float())
        theirs = processor(images=image, return_tensors="pt")["pixel_values"]
        assert ours.shape == theirs.shape
        difference = (ours - theirs).abs()
        assert difference.mean() < 0.03, float(difference.mean())
        if kind == "owlv2":  # the padding (bottom or right) is the processor's exactly
            side = detector.image_size
            pad_rows = slice(round(height * side / max(height, width)) + 1, None)
            pad_cols = slice(round(width * side / max(height, width)) + 1, None)
            pad = difference[..., pad_rows, :] if height < width else difference[..., :, pad_cols]
            assert pad.numel() > 0 and pad.max() < 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_trainable_towers_and_the_training_forward(folders, kind):
    detector = create_detector(hf_spec("hf:" + str(folders[kind])))
    detector.set_trainable(train_text=False, train_image=True)
    groups = detector.parameter_groups_by_tower()
    assert not groups["text"] and groups["image"] and groups["heads"]
    assert all(not name.startswith("hf.objectness_head.") for name, _ in groups["heads"])
    canvas = torch.randint(0, 256, (2, 3, detector.image_size, detector.image_size), dtype=torch.uint8)
    output, mask = detector.predict(canvas, [["cat", "dog"], ["red car"]])
    assert output.pred_logits.shape == (2, (detector.image_size // 16) ** 2, 2)
    assert mask.tolist() == [[True, True], [True, False]]
    assert (output.pred_logits[1, :, 1] == -1e4).all()
    (output.pred_logits[mask[:, None, :].expand_as(output.pred_logits)].sigmoid().mean()
     + output.pred_boxes.mean()).backward()  # fmt: skip
    assert all(p.grad is not None for _, p in groups["image"] + groups["heads"])
    state = detector.state_dict()
    assert state and all(key.startswith("hf.") for key in state)


def test_owlv2_objectness_trains_as_the_quality_score_and_grid_assigners_apply(folders):
    from ovdet.config import LossConfig, ModelConfig
    from ovdet.train.task import DetectionTask

    name = "hf:" + str(folders["owlv2"])
    detector = create_detector(ModelConfig(name=name, quality="objectness"), input_size=32)
    heads = [name for name, _ in detector.parameter_groups_by_tower()["heads"]]
    assert any(name.startswith("hf.objectness_head.") for name in heads)
    task = DetectionTask(detector, LossConfig(assigner="atss"))
    batch = {"images": torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8), "texts": [["cat", "dog"], ["car"]],
             "labels": [torch.tensor([0]), torch.tensor([0])], "boxes": [torch.tensor([[0.5, 0.5, 0.5, 0.5]])] * 2,
             "image_labels": [torch.zeros(0, dtype=torch.long)] * 2, "has_boxes": torch.tensor([True, True])}
    total, losses = task(batch)
    total.backward()
    assert losses["loss_quality"] > 0 and "loss_dfl" not in losses
    assert all(p.grad is not None for n, p in detector.named_parameters() if n.startswith("hf.objectness_head."))


@pytest.mark.parametrize("quality, kind, message", [
    ("centerness", "owlv2", r"model\.quality=centerness: hf:.* \(owlv2\) has no such head; it can train: none, objectness"),
    ("objectness", "owlvit", r"model\.quality=objectness: hf:.* \(owlvit\) has no such head; it can train: none"),
])
def test_quality_scores_a_transformers_model_has_no_head_for_are_refused(folders, quality, kind, message):
    from ovdet.config import ModelConfig
    from ovdet.errors import OvdetError

    with pytest.raises(OvdetError, match=message):
        create_detector(ModelConfig(name="hf:" + str(folders[kind]), quality=quality))
    with pytest.raises(OvdetError, match=r"model\.box_head=dfl needs an ovdet head"):
        create_detector(ModelConfig(name="hf:" + str(folders[kind]), box_head="dfl"))


@pytest.mark.parametrize("kind", KINDS)
def test_the_demo_config_names_the_recipe_a_transformers_model_trains(folders, kind):
    """configs/demo.yaml trains YOLO-World's recipe (a DFL box head); a transformers model keeps its own
    box head, and the error says which recipe it trains."""
    from ovdet.config import load_config
    from ovdet.errors import OvdetError

    name = "model.name=hf:" + str(folders[kind])
    with pytest.raises(OvdetError, match=r"model\.box_head=dfl needs an ovdet head; .*\(model\.box_head=direct, or recipe=owl"):
        create_detector(load_config("configs/demo.yaml", [name]).model)
    assert create_detector(load_config("configs/demo.yaml", [name, "recipe=owl"]).model).spec["kind"] == "hf"


@pytest.mark.parametrize("kind", KINDS)
def test_a_model_trained_at_another_size_exports_a_folder_that_runs_natively_at_it(folders, kind, tmp_path):
    """OWL at 96 px interpolates its 64 px position embeddings in every forward; the exported
    folder has them baked in, so transformers alone (no interpolate flag) gives ovdet's outputs."""
    from ovdet.models.hf.common import write_hf_folder

    detector = create_detector(hf_spec("hf:" + str(folders[kind])), input_size=96).eval()
    tensors = {k: v.detach().clone() for k, v in detector.state_dict().items()}
    write_hf_folder(tmp_path, detector.spec, tensors, detector)
    module, processor = reference(tmp_path)
    assert module.config.vision_config.image_size == 96
    inputs = processor(images=images(), text=[NAMES, NAMES], return_tensors="pt")
    assert inputs["pixel_values"].shape[-2:] == (96, 96)
    with torch.no_grad():
        expected = module(**inputs)
        output = detector.predict_processed({"pixel_values": inputs["pixel_values"]}, detector.encode_texts(NAMES))
    torch.testing.assert_close(output.pred_logits, expected.logits, atol=1e-5, rtol=1e-6)  # as above
    torch.testing.assert_close(output.pred_boxes, expected.pred_boxes, atol=1e-6, rtol=0)
