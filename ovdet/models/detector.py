"""The OWL-ViT-style open-vocabulary detector on open_clip towers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ovdet.models.heads import MLP, ClassHead, build_box_head
from ovdet.models.posembed import fit_vit_to_input_size
from ovdet.models.text import TextEncoder, embed_text_lists


@dataclass
class DetectorOutput:
    """What the detector returns for a batch of B images, Q region tokens and T texts per image.

    Attributes:
        pred_logits: [B, Q, T] region-text logits (padded texts hold -1e4).
        pred_boxes: [B, Q, 4] boxes, normalized cxcywh relative to the (padded) input image.
        quality_logits: [B, Q] the quality score's logit (``model.quality``: OWLv2 objectness, FCOS
            centerness or IoU-aware), or None when the model has none.
        class_embeds: [B, Q, D] unit-norm region embeddings in the text space.
        logit_parts: the class head's factors of ``pred_logits`` (``region_similarity``,
            ``logit_shift``, ``logit_scale``), passed to the criterion.
        no_object_logits: [B, Q] the learned no-object logit of softmax classification, or None.
        box_distribution: [B, Q, 4, reg_max] DFL logits of the left/top/right/bottom distances from
            each token's centre, in grid cells (``model.box_head=dfl``), or None.
        token_grid: ``(H, W)`` when the Q tokens are an H x W grid (row-major), else None: the
            priors of the one-to-many assigners and of DFL.
    """

    pred_logits: torch.Tensor
    pred_boxes: torch.Tensor
    quality_logits: torch.Tensor | None
    class_embeds: torch.Tensor
    logit_parts: dict[str, torch.Tensor] | None = None
    no_object_logits: torch.Tensor | None = None
    box_distribution: torch.Tensor | None = None
    token_grid: tuple[int, int] | None = None

    def as_matcher_input(self, text_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """The criterion's (and matcher's) input dict: the fields that are set, under their names
        (``token_grid`` as an int64 tensor ``[2]``)."""
        out = {"pred_logits": self.pred_logits, "pred_boxes": self.pred_boxes, "text_mask": text_mask}
        optional = {"quality_logits": self.quality_logits, "no_object_logits": self.no_object_logits,
                    "box_distribution": self.box_distribution}  # fmt: skip
        out.update({name: value for name, value in optional.items() if value is not None})
        if self.token_grid is not None:
            out["token_grid"] = torch.tensor(self.token_grid, dtype=torch.int64)
        return {**out, **(self.logit_parts or {})}


class ImageBackbone(nn.Module):
    """An open_clip image tower as a feature-map extractor: images -> list of [B, C_i, H_i, W_i]."""

    def __init__(self, visual: nn.Module, indices: list[int], image_size: int):
        super().__init__()
        self.body = visual.trunk if hasattr(visual, "trunk") else visual
        self.indices = list(indices)
        self.body.prune_intermediate_layers(self.indices, prune_head=True)
        with torch.no_grad():
            was_training = self.body.training
            self.body.eval()
            maps = self.forward(torch.zeros(1, 3, image_size, image_size))
            self.body.train(was_training)
        self.channels = [m.shape[1] for m in maps]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        out = self.body.forward_intermediates(images, indices=self.indices, intermediates_only=True)
        if isinstance(out, dict):  # open_clip's VisionTransformer
            out = out["image_intermediates"]
        return list(out)


class FeatureNeck(nn.Module):
    """Fuses the selected levels at the finest one: 1x1 projections, upsample, sum, 3x3 conv."""

    def __init__(self, channels: list[int], width: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.fuse = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.GroupNorm(32, width), nn.GELU())

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        size = max((m.shape[-2:] for m in maps), key=lambda s: s[0] * s[1])
        fused = sum(
            F.interpolate(conv(m), size=size, mode="nearest") if m.shape[-2:] != size else conv(m)
            for conv, m in zip(self.lateral, maps, strict=True)
        )
        return self.fuse(fused)


class OpenVocabDetector(nn.Module):
    """Image tower -> grid of region tokens -> per-token box, class embedding, quality score.

    ``forward(images, text_embeds, text_mask)`` takes images as uint8 or float in [0, 255]
    (``[B, 3, S, S]``; normalisation happens here so loaders ship uint8) and the texts of each
    image already encoded (``encode_texts``), and returns a ``DetectorOutput``.
    """

    has_token_grid = True  # its Q queries are the H x W grid of region tokens

    def __init__(self, clip_model: nn.Module, tokenizer, spec: dict[str, Any], mean: list, std: list):
        super().__init__()
        self.spec = spec
        self.image_size = int(spec.get("input_size") or input_size_of(clip_model.visual))
        fit_vit_to_input_size(clip_model.visual, self.image_size)  # a 224 px ViT detects at 768 px (OWL-ViT)
        # a convolutional tower takes any size (multi-scale training); a ViT's grid is fitted to one
        self.accepts_any_input_size = not has_position_embedding(clip_model.visual)
        self.backbone = ImageBackbone(clip_model.visual, spec["feature_indices"], self.image_size)
        clip_model.visual = nn.Identity()  # the text tower keeps the rest of the CLIP module
        for name in ("logit_scale", "logit_bias"):  # CLIP's image-text scalars: unused here
            if isinstance(getattr(clip_model, name, None), nn.Parameter):
                setattr(clip_model, name, None)
        self.text = TextEncoder(clip_model, tokenizer, spec["name"], spec.get("text_chunk_size", 256))
        width = spec["head_width"]
        embed_dim = embed_dim_of(spec, clip_model)
        self.neck = FeatureNeck(self.backbone.channels, width)
        self.token_norm = nn.LayerNorm(width)
        self.box_head = build_box_head(spec.get("box_head", "direct"), width, spec.get("reg_max", 16))
        self.class_head = ClassHead(width, embed_dim, spec["prior_probability"], bool(spec.get("no_object")))
        has_quality = spec.get("quality", "none") != "none"
        self.quality_head = MLP(width, width, 1, num_layers=2) if has_quality else None
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1) * 255, persistent=False)

    def set_trainable(self, train_text: bool, train_image: bool) -> None:
        self.text.set_frozen(not train_text)
        for param in self.backbone.parameters():
            param.requires_grad_(train_image)

    def set_grad_checkpointing(self, enabled: bool) -> None:
        if hasattr(self.backbone.body, "set_grad_checkpointing"):
            self.backbone.body.set_grad_checkpointing(enabled)
        text_tower = getattr(self.text.clip, "text", None) or getattr(self.text.clip, "transformer", None)
        if hasattr(text_tower, "set_grad_checkpointing"):
            text_tower.set_grad_checkpointing(enabled)
        elif hasattr(text_tower, "grad_checkpointing"):
            text_tower.grad_checkpointing = enabled

    def parameter_groups_by_tower(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Trainable parameters split into 'text', 'image' and 'heads' (per-tower LR multipliers)."""
        groups: dict[str, list] = {"text": [], "image": [], "heads": []}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            tower = "text" if name.startswith("text.") else "image" if name.startswith("backbone.") else "heads"
            groups[tower].append((name, param))
        return groups

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """N strings -> ``[N, D]`` unit-norm text embeddings (cached when the tower is frozen)."""
        return self.text(texts)

    def region_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images ``[B, 3, S, S]`` in [0, 255] -> tokens ``[B, Q, W]`` and the grid ``(H, W)``."""
        pixels = (images.float() - self.pixel_mean) / self.pixel_std
        fused = self.neck(self.backbone(pixels))  # (B, W, H, W')
        grid = (fused.shape[-2], fused.shape[-1])
        return self.token_norm(fused.flatten(2).transpose(1, 2)), grid

    def predict(self, images: torch.Tensor, texts: list[list[str]]) -> tuple[DetectorOutput, torch.Tensor]:
        """Images and each image's texts -> ``(DetectorOutput, text_mask)`` (the trainer's call)."""
        text_embeds, text_mask = embed_text_lists(self, texts)
        return self(images, text_embeds, text_mask), text_mask

    def forward(self, images: torch.Tensor, text_embeds: torch.Tensor, text_mask: torch.Tensor) -> DetectorOutput:
        tokens, grid = self.region_tokens(images)
        logits, class_embeds, logit_parts, no_object = self.class_head(tokens, text_embeds, text_mask)
        quality = self.quality_head(tokens).squeeze(-1) if self.quality_head is not None else None
        boxes, distribution = self.box_head(tokens, grid)
        return DetectorOutput(logits, boxes, quality, class_embeds, logit_parts, no_object, distribution, grid)


def input_size_of(visual: nn.Module) -> int:
    size = getattr(visual, "image_size", None)
    if size is None and hasattr(visual, "preprocess_cfg"):
        size = visual.preprocess_cfg.get("size")
    if isinstance(size, list | tuple):
        size = size[0]
    return int(size or 224)


def embed_dim_of(spec: dict[str, Any], clip_model: nn.Module) -> int:
    if spec["kind"] == "custom":
        return int(spec["arch"]["embed_dim"])
    projection = getattr(clip_model, "text_projection", None)
    if projection is not None:
        return projection.shape[-1] if isinstance(projection, torch.Tensor) else projection.out_features
    return int(clip_model.text.output_dim)


def has_position_embedding(visual: nn.Module) -> bool:
    """Whether an open_clip image tower (or its timm trunk) adds learned absolute position embeddings."""
    body = getattr(visual, "trunk", visual)
    return any(getattr(body, name, None) is not None for name in ("pos_embed", "positional_embedding"))
