"""A ViT tower trained at 224 px detects at 768 px: its position embedding is resampled (OWL-ViT)."""

import json

import pytest
import torch
from open_clip.pos_embed import get_2d_sincos_pos_embed
from torch import nn

from ovdet.config import LossConfig, ModelConfig
from ovdet.errors import OvdetError
from ovdet.models import create_detector, resolve_model_spec
from ovdet.models.factory import build_clip
from ovdet.models.posembed import fit_vit_to_input_size
from ovdet.train.task import DetectionTask

HEADS = {"head_width": 32, "feature_indices": [1], "prior_probability": 0.01,
         "text_chunk_size": 256}
TINY_TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
# ViT-B/16's patch and native grid (224 px, 14x14 patches) with 2 narrow layers: fast on CPU.
B16_GRID = {"kind": "custom", "name": "b16-grid", "arch": {
    "embed_dim": 32, "vision_cfg": {"image_size": 224, "patch_size": 16, "width": 64, "layers": 2, "head_width": 32,
                                    "mlp_ratio": 2.0}, "text_cfg": TINY_TEXT}, **HEADS}
# The same grid as a timm ViT trunk (open_clip TimmModel), random init.
TIMM_B16_GRID = {"kind": "custom", "name": "timm-b16-grid", "arch": {
    "embed_dim": 32, "vision_cfg": {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False,
                                    "timm_pool": "avg", "timm_proj": "linear", "image_size": 224},
    "text_cfg": TINY_TEXT}, **HEADS}


def visual_of(spec):
    torch.manual_seed(0)
    return build_clip(spec, load_weights=False)[0].visual


def one_box_batch(size: int, batch: int = 2) -> dict:
    return {
        "images": torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8),
        "texts": [["a cat", "a dog"]] * batch,
        "labels": [torch.tensor([0])] * batch,
        "boxes": [torch.tensor([[0.5, 0.5, 0.2, 0.3]])] * batch,
        "image_labels": [torch.zeros(0, dtype=torch.long)] * batch,
        "has_boxes": torch.ones(batch, dtype=torch.bool),
    }


def test_vit_trains_at_768_px_with_a_224_px_position_embedding():
    torch.manual_seed(0)
    model = create_detector(B16_GRID, input_size=768)
    task = DetectionTask(model, LossConfig()).train()
    batch = one_box_batch(768)
    outputs = model(batch["images"], torch.randn(2, 2, 32), torch.ones(2, 2, dtype=torch.bool))
    assert outputs.pred_logits.shape == (2, (768 // 16) ** 2, 2)
    assert outputs.pred_boxes.shape == (2, 2304, 4)
    total, losses = task(batch)
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in losses.values())
    total.backward()
    position = model.backbone.body.positional_embedding
    assert position.shape == (1 + 2304, 64)
    assert position.grad is not None and position.grad.abs().sum() > 0


def test_timm_vit_trunk_is_resized_too():
    torch.manual_seed(0)
    model = create_detector(TIMM_B16_GRID, input_size=768)
    trunk = model.backbone.body
    assert trunk.pos_embed.shape == (1, 1 + 2304, 192)
    assert tuple(trunk.patch_embed.img_size) == (768, 768) and tuple(trunk.patch_embed.grid_size) == (48, 48)
    images = torch.randint(0, 256, (1, 3, 768, 768), dtype=torch.uint8)
    out = model(images, torch.randn(1, 3, 32), torch.ones(1, 3, dtype=torch.bool))
    assert out.pred_logits.shape == (1, 2304, 3)
    out.pred_logits.sigmoid().mean().backward()
    assert trunk.pos_embed.grad is not None and trunk.pos_embed.grad.abs().sum() > 0


@pytest.mark.slow  # ~15 s on 2 CPU cores: the full ViT-B/16 and its 12-layer text tower, random init
def test_open_clip_vit_b_16_detects_at_768_px():
    model = create_detector(ModelConfig(name="ViT-B-16"), input_size=768).eval()
    assert model.image_size == 768
    assert model.backbone.body.positional_embedding.shape == (1 + 48 * 48, 768)
    with torch.no_grad():
        texts = model.encode_texts(["a cat", "a dog"])
        out = model(torch.zeros(1, 3, 768, 768, dtype=torch.uint8), texts[None], torch.ones(1, 2, dtype=torch.bool))
    assert out.pred_logits.shape == (1, 2304, 2)
    assert torch.isfinite(out.pred_logits).all() and torch.isfinite(out.pred_boxes).all()


def test_resizing_up_and_back_nearly_recovers_a_smooth_embedding():
    """Bicubic up then antialiased bicubic down is a low-pass round trip: exact for the class row,
    within 2% (relative L2) for a smooth table like CLIP's learned ones (here 2D sin-cos)."""
    visual = visual_of(B16_GRID)
    smooth = torch.from_numpy(get_2d_sincos_pos_embed(64, 14, cls_token=True)).float()
    smooth[0] = torch.randn(64)
    visual.positional_embedding.data.copy_(smooth)
    assert fit_vit_to_input_size(visual, 768)
    assert visual.positional_embedding.shape == (1 + 48 * 48, 64) and visual.grid_size == (48, 48)
    assert fit_vit_to_input_size(visual, 224)
    back = visual.positional_embedding.detach()
    assert torch.equal(back[0], smooth[0])
    assert (back - smooth).norm() / smooth.norm() < 0.02


def test_native_size_is_a_no_op():
    visual = visual_of(B16_GRID)
    before = visual.positional_embedding
    assert not fit_vit_to_input_size(visual, 224)
    assert visual.positional_embedding is before and visual.image_size == (224, 224)


def test_resized_embedding_stays_a_trainable_parameter_of_the_same_dtype():
    visual = visual_of(B16_GRID).to(torch.bfloat16)
    assert fit_vit_to_input_size(visual, 384)
    position = visual.positional_embedding
    assert isinstance(position, nn.Parameter) and position.requires_grad
    assert position.dtype == torch.bfloat16 and position.shape == (1 + 24 * 24, 64)
    assert dict(visual.named_parameters())["positional_embedding"] is position


def test_convnet_tower_is_left_untouched():
    visual = visual_of(resolve_model_spec(ModelConfig()))  # tf_efficientnet_lite0 trunk
    before = {k: v.clone() for k, v in visual.state_dict().items()}
    assert not fit_vit_to_input_size(visual, 320)
    after = visual.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert tuple(visual.image_size) == (192, 192)


def test_input_size_off_the_patch_grid_is_a_user_error():
    with pytest.raises(OvdetError, match=r"input size 770 px .* patch size 16 px \(try 768\)"):
        fit_vit_to_input_size(visual_of(B16_GRID), 770)
    with pytest.raises(OvdetError, match="770"):
        create_detector(B16_GRID, input_size=770)


def test_saved_768_px_detector_reloads_from_its_spec(tmp_path):
    torch.manual_seed(0)
    model = create_detector(B16_GRID, input_size=768).eval()
    torch.save(model.state_dict(), tmp_path / "model.pt")
    spec = json.loads(json.dumps(model.spec))  # as published: the spec travels as JSON
    assert spec["input_size"] == 768
    fresh = create_detector(spec, load_weights=False).eval()
    fresh.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))  # strict: shapes match
    assert fresh.image_size == 768
    images = torch.randint(0, 256, (1, 3, 768, 768), dtype=torch.uint8)
    texts, mask = torch.randn(1, 2, 32), torch.ones(1, 2, dtype=torch.bool)
    with torch.no_grad():
        assert torch.allclose(model(images, texts, mask).pred_logits, fresh(images, texts, mask).pred_logits)
