"""Grounding DINO behind ovdet's detector protocol, checked against transformers' own module and
post-processing on tiny random-init folders (``write_tiny_grounding_dino``)."""

import numpy as np
import pytest
import torch
from PIL import Image

from ovdet.errors import OvdetError
from ovdet.models.heads import PADDED_LOGIT
from ovdet.models.hf.common import create_hf_detector, hf_spec
from ovdet.models.hf.tiny_grounding import write_tiny_grounding_dino
from ovdet.ops.boxes import box_cxcywh_to_xyxy

KINDS = ("grounding-dino", "mm-grounding-dino")
NAMES = ["cat", "red car", "traffic light"]
PROMPT = "cat . red car . traffic light ."  # written out here, not built by ovdet's prompt code
MANY_NAMES = ["cat", "red car", "traffic light", "person", "dog", "fire hydrant", "bicycle", "zebra crossing",
              "umbrella", "tennis racket", "hot dog", "teddy bear", "hair drier", "potted plant"]  # fmt: skip


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("grounding")
    return {kind: write_tiny_grounding_dino(root / kind, kind) for kind in KINDS}


@pytest.fixture(scope="module")
def pil_images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((48, 80), (70, 40))]


def load_detector(folder):
    torch.manual_seed(0)
    return create_hf_detector(hf_spec("hf:" + str(folder)), load_weights=True).eval()


def load_transformers(folder):
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    return AutoModelForZeroShotObjectDetection.from_pretrained(folder).eval(), AutoProcessor.from_pretrained(folder)


def reference_run(folder, pil_images, prompt):
    """transformers' module on the processor's own tokenization of ``prompt``: (outputs, inputs)."""
    module, processor = load_transformers(folder)
    inputs = processor(images=pil_images, text=[prompt] * len(pil_images), return_tensors="pt")
    with torch.no_grad():
        outputs = module(pixel_values=inputs["pixel_values"], pixel_mask=inputs["pixel_mask"],
                         input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                         token_type_ids=inputs["token_type_ids"])  # fmt: skip
    return outputs, inputs, processor


def reference_name_logits(token_logits, processor, prompt, names):
    """Max over each name's token logits, the tokens found from the offsets of the name's first
    occurrence in ``prompt``: ``[B, Q, len(names)]``."""
    offsets = processor.tokenizer(prompt, return_offsets_mapping=True)["offset_mapping"]
    columns = []
    for name in names:
        begin = prompt.index(name)
        tokens = [i for i, (a, b) in enumerate(offsets) if b > a and begin <= a and b <= begin + len(name)]
        columns.append(token_logits[..., tokens].max(-1).values)
    return torch.stack(columns, dim=-1)


@pytest.mark.parametrize("kind", KINDS)
def test_predict_processed_equals_max_of_transformers_token_logits(folders, pil_images, kind):
    outputs, _, processor = reference_run(folders[kind], pil_images, PROMPT)
    detector = load_detector(folders[kind])
    with torch.no_grad():
        ours = detector.predict_processed(detector.processor_inputs(pil_images), NAMES)
    expected = reference_name_logits(outputs.logits, processor, PROMPT, NAMES)
    assert ours.pred_logits.shape == (2, detector.hf.config.num_queries, 3)
    assert torch.allclose(ours.pred_logits, expected, atol=1e-5)
    assert torch.allclose(ours.pred_boxes, outputs.pred_boxes, atol=1e-6)
    assert ours.quality_logits is None and ours.logit_parts is None


def test_boxes_and_scores_equal_transformers_post_processing(folders, pil_images):
    outputs, _, processor = reference_run(folders["grounding-dino"], pil_images, PROMPT)
    sizes = [(image.height, image.width) for image in pil_images]
    results = processor.post_process_grounded_object_detection(outputs, threshold=0.0, text_threshold=0.5,
                                                               target_sizes=sizes)  # fmt: skip
    detector = load_detector(folders["grounding-dino"])
    with torch.no_grad():
        ours = detector.predict_processed(detector.processor_inputs(pil_images), NAMES)
    offsets = processor.tokenizer(PROMPT, return_offsets_mapping=True)["offset_mapping"]
    name_tokens = {i for i, (a, b) in enumerate(offsets) if b > a and PROMPT[a:b] != "."}
    for b, ((height, width), result) in enumerate(zip(sizes, results, strict=True)):
        scale_x, scale_y = detector.pixel_scale(width, height)
        xyxy = box_cxcywh_to_xyxy(ours.pred_boxes[b]) * torch.tensor([scale_x, scale_y, scale_x, scale_y])
        assert torch.allclose(result["boxes"], xyxy, atol=1e-4)
        top_token = outputs.logits[b].argmax(-1)
        in_name = torch.tensor([int(t) in name_tokens for t in top_token])
        assert in_name.any()
        our_scores = ours.pred_logits[b].sigmoid().max(-1).values
        assert torch.allclose(result["scores"][in_name], our_scores[in_name], atol=1e-6)


def test_long_vocabulary_is_chunked_and_each_chunk_equals_its_own_run(folders, pil_images):
    detector = load_detector(folders["grounding-dino"])
    chunks = detector.prompt_chunks(MANY_NAMES)
    assert len(chunks) >= 2
    covered = [chunk.first + j for chunk in chunks for j in range(len(chunk.token_spans))]
    assert covered == list(range(len(MANY_NAMES)))
    assert all(len(chunk.input_ids) <= detector.max_text_len for chunk in chunks)
    inputs = detector.processor_inputs(pil_images)
    queries = detector.hf.config.num_queries
    with torch.no_grad():
        full = detector.predict_processed(inputs, MANY_NAMES)
        assert full.pred_logits.shape == (2, len(chunks) * queries, len(MANY_NAMES))
        for k, chunk in enumerate(chunks):
            names = slice(chunk.first, chunk.first + len(chunk.token_spans))
            alone = detector.predict_processed(inputs, MANY_NAMES[names])
            rows = slice(k * queries, (k + 1) * queries)
            assert torch.allclose(full.pred_logits[:, rows, names], alone.pred_logits, atol=1e-5)
            assert torch.allclose(full.pred_boxes[:, rows], alone.pred_boxes, atol=1e-6)
            others = torch.ones(len(MANY_NAMES), dtype=torch.bool)
            others[names] = False
            assert (full.pred_logits[:, rows][..., others] == PADDED_LOGIT).all()


def test_chunk_prompts_match_the_processor_tokenization(folders):
    detector = load_detector(folders["grounding-dino"])
    (chunk,) = detector.prompt_chunks(NAMES)
    assert list(chunk.input_ids) == detector.processor.tokenizer(PROMPT)["input_ids"]
    # transformers' own candidate-label format ("cat. red car. traffic light.") gives the same ids
    assert list(chunk.input_ids) == detector.processor(text=[NAMES])["input_ids"][0]
    assert chunk.token_spans == ((1, 2), (3, 5), (6, 8))


def test_over_long_name_raises_naming_it(folders):
    detector = load_detector(folders["grounding-dino"])
    name = " ".join(["giraffe"] * 40)
    with pytest.raises(OvdetError, match="giraffe giraffe"):
        detector.prompt_chunks(["cat", name])


def canvas_batch(detector):
    torch.manual_seed(1)  # also fixes the dropout masks of the forward that follows
    size = detector.image_size
    return torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8), [["cat", "dog"], MANY_NAMES]


def test_predict_pads_names_and_rounds_and_equals_per_image_runs(folders):
    detector = load_detector(folders["grounding-dino"])
    images, texts = canvas_batch(detector)
    queries, rounds = detector.hf.config.num_queries, len(detector.prompt_chunks(MANY_NAMES))
    with torch.no_grad():
        out, text_mask = detector.predict(images, texts)
        first, _ = detector.predict(images[:1], texts[:1])
        second, _ = detector.predict(images[1:], texts[1:])
    assert out.pred_logits.shape == (2, rounds * queries, len(MANY_NAMES))
    assert out.pred_boxes.shape == (2, rounds * queries, 4)
    assert out.class_embeds.shape == (2, rounds * queries, detector.hf.config.d_model)
    assert text_mask.tolist() == [[True, True] + [False] * (len(MANY_NAMES) - 2), [True] * len(MANY_NAMES)]
    assert (out.pred_logits[0, :, 2:] == PADDED_LOGIT).all()
    assert (out.pred_logits[0, queries:] == PADDED_LOGIT).all()  # image 0 has no second chunk
    assert torch.allclose(out.pred_logits[0, :queries, :2], first.pred_logits[0], atol=1e-5)
    assert torch.allclose(out.pred_boxes[0, :queries], first.pred_boxes[0], atol=1e-6)
    assert torch.allclose(out.pred_logits[1], second.pred_logits[0], atol=1e-5)
    assert torch.allclose(out.pred_boxes[1], second.pred_boxes[0], atol=1e-6)


def test_images_without_names_get_one_round_of_queries_and_no_logits(folders):
    detector = load_detector(folders["grounding-dino"])
    images, _ = canvas_batch(detector)
    with torch.no_grad():
        out, text_mask = detector.predict(images, [[], []])
    assert out.pred_logits.shape == (2, detector.hf.config.num_queries, 0)
    assert out.pred_boxes.shape == (2, detector.hf.config.num_queries, 4)
    assert text_mask.shape == (2, 0)


def gradients(detector):
    images, texts = canvas_batch(detector)
    out, text_mask = detector.predict(images, texts)
    loss = out.pred_logits[text_mask[:, None, :].expand_as(out.pred_logits)].sigmoid().sum() + out.pred_boxes.sum()
    loss.backward()
    return {name: param.grad for name, param in detector.named_parameters()}


def test_gradients_reach_the_text_backbone_only_when_it_trains(folders):
    detector = load_detector(folders["grounding-dino"])
    detector.set_trainable(True, True)
    groups = detector.parameter_groups_by_tower()
    assert groups["text"] and all(name.startswith("hf.model.text_backbone.") for name, _ in groups["text"])
    assert all(name.startswith("hf.model.backbone.") for name, _ in groups["image"])
    grads = gradients(detector)
    assert grads["hf.model.text_backbone.embeddings.word_embeddings.weight"].abs().sum() > 0
    box_head = [grad for name, grad in grads.items() if "bbox_embed" in name and grad is not None]
    assert box_head and any(grad.abs().sum() > 0 for grad in box_head)
    detector.zero_grad(set_to_none=True)
    detector.set_trainable(False, True)
    assert not detector.parameter_groups_by_tower()["text"]
    grads = gradients(detector)
    assert all(grad is None for name, grad in grads.items() if name.startswith("hf.model.text_backbone."))
    assert grads["hf.model.text_projection.weight"].abs().sum() > 0


def test_grad_checkpointing_keeps_the_gradients(folders):
    detector = load_detector(folders["grounding-dino"]).train()  # transformers checkpoints in train mode only
    plain = gradients(detector)
    detector.zero_grad(set_to_none=True)
    detector.set_grad_checkpointing(True)
    assert detector.hf.model.text_backbone.encoder.layer[0].gradient_checkpointing
    checkpointed = gradients(detector)
    for name in ("hf.model.text_backbone.embeddings.word_embeddings.weight",
                 "hf.model.backbone.conv_encoder.model.swin.embeddings.patch_embeddings.projection.weight"):
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-5)


def test_tiny_builder_takes_config_overrides_through_write_tiny_model(tmp_path):
    from transformers import AutoConfig

    from ovdet.models.hf.tiny import write_tiny_model

    folder = write_tiny_model(tmp_path / "short", "mm-grounding-dino", max_text_len=16, num_queries=5)
    config = AutoConfig.from_pretrained(folder)
    assert (config.model_type, config.max_text_len, config.num_queries) == ("mm-grounding-dino", 16, 5)
    with pytest.raises(OvdetError, match="width"):
        write_tiny_model(tmp_path / "bad", "grounding-dino", width=8)


@pytest.mark.parametrize("kind", KINDS)
def test_factory_builds_both_kinds_and_rebuilds_from_the_spec(folders, pil_images, kind):
    spec = hf_spec("hf:" + str(folders[kind]))
    detector = create_hf_detector(spec, load_weights=True).eval()
    assert type(detector).__name__ == "GroundingDinoDetector" and detector.fuses_text
    assert all(key.startswith("hf.") for key in detector.state_dict())
    assert detector.image_size == 64
    rebuilt = create_hf_detector(spec, load_weights=False, processor_source=folders[kind]).eval()
    rebuilt.load_state_dict(detector.state_dict())
    inputs = detector.processor_inputs(pil_images)
    with torch.no_grad():
        expected = detector.predict_processed(inputs, NAMES)
        actual = rebuilt.predict_processed(inputs, NAMES)
    assert torch.equal(expected.pred_logits, actual.pred_logits)
    assert torch.equal(expected.pred_boxes, actual.pred_boxes)


def test_export_writes_a_folder_whose_processor_resizes_like_the_training_canvas(folders, pil_images, tmp_path):
    """Training letterboxes the longer side to the canvas; the exported processor does the same, and
    the exported folder gives the detector's outputs in transformers alone."""
    from ovdet.models.factory import create_detector
    from ovdet.models.hf.common import write_hf_folder

    detector = create_detector(hf_spec("hf:" + str(folders["grounding-dino"])), input_size=48).eval()
    write_hf_folder(tmp_path, detector.spec, {k: v.detach().clone() for k, v in detector.state_dict().items()},
                    detector)  # fmt: skip
    module, processor = load_transformers(tmp_path)
    inputs = processor(images=pil_images[:1], return_tensors="pt")
    assert max(inputs["pixel_values"].shape[-2:]) == 48
    exported = load_detector(tmp_path)
    names = ["cat", "red car"]
    with torch.no_grad():
        ours = detector.predict_processed(dict(inputs), names)
        theirs = exported.predict_processed(dict(inputs), names)
    torch.testing.assert_close(ours.pred_logits, theirs.pred_logits)
    torch.testing.assert_close(ours.pred_boxes, theirs.pred_boxes)
