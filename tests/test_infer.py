"""Zero-shot inference: Detector.from_pretrained / detect, prompt ensembling, NMS, ovdet detect."""

import json

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors.torch import save_file
from torchvision.ops import box_iou

from ovdet.config import ModelConfig
from ovdet.errors import OvdetError
from ovdet.infer import Detector
from ovdet.models import create_detector


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    torch.manual_seed(0)
    model = create_detector(ModelConfig(name="tiny-vit-minilm", feature_indices=[1]))
    folder = tmp_path_factory.mktemp("model")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "model_spec.json").write_text(json.dumps({"spec": model.spec, "step": 0}))
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for i, (w, h) in enumerate([(120, 80), (64, 64), (50, 100)]):
        image = Image.new("RGB", (w, h), (90, 90, 90))
        ImageDraw.Draw(image).ellipse([5 + i, 5, 40, 40], fill=(220, 30, 30))
        image.save(folder / f"img{i}.jpg")
    return folder


def test_detections_respect_threshold_top_k_and_image_bounds(model_folder, images):
    detector = Detector.from_pretrained(model_folder)
    paths = sorted(images.glob("*.jpg"))
    results = detector.detect(paths, ["red circle", "blue star"], score_threshold=0.0, top_k=7)
    assert len(results) == 3
    for path, found in zip(paths, results, strict=True):
        width, height = Image.open(path).size
        assert len(found) == 7
        assert all(d.label in {"red circle", "blue star"} for d in found)
        for d in found:
            x1, y1, x2, y2 = d.box_xyxy
            assert 0 <= x1 <= x2 <= width and 0 <= y1 <= y2 <= height
    high = detector.detect(paths, ["red circle"], score_threshold=0.5)
    assert all(d.score >= 0.5 for found in high for d in found)


def test_prompt_ensembling_averages_template_embeddings(model_folder):
    detector = Detector.from_pretrained(model_folder)
    ensemble = detector.class_embeddings(["red circle"], ["a photo of a {}.", "{}"])
    single = detector.model.encode_texts(["a photo of a red circle.", "red circle"])
    expected = torch.nn.functional.normalize(single.mean(0, keepdim=True), dim=-1)
    assert torch.allclose(ensemble, expected, atol=1e-6)


def test_class_embeddings_of_plain_names_are_the_template_mean_bit_for_bit(model_folder):
    """Names that are their own prompt text (the synthetic world's) embed exactly as before prompt names."""
    detector = Detector.from_pretrained(model_folder)
    names, templates = ["red circle", "blue star", "green heart"], ["a photo of a {}.", "a {}.", "{}"]
    encoded = detector.model.encode_texts([t.format(n) for n in names for t in templates])
    before = torch.nn.functional.normalize(encoded.view(len(names), len(templates), -1).mean(1), dim=-1)
    assert torch.equal(detector.class_embeddings(names, templates), before)


def test_lvis_names_reach_the_encoder_as_prompt_texts_and_detections_keep_raw_names(model_folder, images, monkeypatch):
    detector = Detector.from_pretrained(model_folder)
    encoded, encode = [], detector.model.encode_texts

    def recording_encode(texts):
        encoded.extend(texts)
        return encode(texts)

    monkeypatch.setattr(detector.model, "encode_texts", recording_encode)
    vocabulary = ["bow_(weapon)", "bow_(decorative_ribbons)", "speaker_(stereo_equipment)"]
    embeddings = detector.class_embeddings(vocabulary, ["a photo of a {}."])
    assert encoded == ["a photo of a bow (weapon).", "a photo of a bow (decorative ribbons).",
                       "a photo of a speaker (stereo equipment)."]  # fmt: skip
    assert not torch.allclose(embeddings[0], embeddings[1])
    found = detector.detect([images / "img0.jpg"], vocabulary, score_threshold=0.0, top_k=9)[0]
    assert {d.label for d in found} <= set(vocabulary) and all(vocabulary[d.label_index] == d.label for d in found)


def test_synonyms_are_averaged_with_the_name_over_every_template(model_folder):
    detector = Detector.from_pretrained(model_folder)
    templates = ["a photo of a {}.", "{}"]
    ensemble = detector.class_embeddings(["red_circle", "blue star"], templates, [["crimson circle", "red circle"], []])
    texts = ["a photo of a red circle.", "red circle", "a photo of a crimson circle.", "crimson circle"]
    expected = torch.nn.functional.normalize(detector.model.encode_texts(texts).mean(0), dim=-1)
    assert torch.allclose(ensemble[0], expected, atol=1e-6)
    names_only = detector.class_embeddings(["red_circle", "blue star"], templates)
    assert not torch.allclose(ensemble[0], names_only[0], atol=1e-4)
    assert torch.equal(ensemble[1], names_only[1])


def test_class_wise_nms_removes_same_class_overlaps(model_folder, images):
    detector = Detector.from_pretrained(model_folder)
    found = detector.detect([images / "img0.jpg"], ["red circle", "dog"], score_threshold=0.0, top_k=20, nms_iou=0.3, nms="class")[0]
    for label in ("red circle", "dog"):
        boxes = torch.tensor([d.box_xyxy for d in found if d.label == label]).reshape(-1, 4)
        iou = box_iou(boxes, boxes) - torch.eye(len(boxes))
        assert (iou <= 0.3 + 1e-6).all()


def test_lvis_sized_vocabulary_runs(model_folder, images):
    detector = Detector.from_pretrained(model_folder)
    vocabulary = [f"category {i}" for i in range(1203)]
    found = detector.detect([images / "img1.jpg"], vocabulary, ["a photo of a {}.", "{}"], score_threshold=0.0, top_k=5)
    assert len(found[0]) == 5 and all(d.label in vocabulary for d in found[0])


def test_bad_inputs_are_user_errors(model_folder, tmp_path):
    detector = Detector.from_pretrained(model_folder)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(OvdetError, match="broken.jpg: cannot read image"):
        detector.detect([broken], ["cat"])
    with pytest.raises(OvdetError, match="vocabulary is empty"):
        detector.detect([broken], [])
    with pytest.raises(OvdetError, match="not a model folder"):
        Detector.from_pretrained(tmp_path)


def test_detect_command_writes_json_and_drawn_copy_per_image(model_folder, images, tmp_path):
    from ovdet.cli import main

    out = tmp_path / "out"
    assert main(["detect", "--model", str(model_folder), "--vocab", "red circle, dog", str(images), "--out", str(out),
                 "--threshold", "0", "--top-k", "3"]) == 0
    records = sorted(out.glob("*.json"))
    assert len(records) == 3 and len(list(out.glob("*.jpg"))) == 3
    first = json.loads(records[0].read_text())
    assert first["vocabulary"] == ["red circle", "dog"] and len(first["detections"]) <= 3
    assert set(first["detections"][0]) == {"box", "label", "score"}


def test_top_level_api_is_lazy_and_exposes_detector():
    import ovdet

    assert ovdet.Detector is Detector
