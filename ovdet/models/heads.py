"""OWL-ViT-style per-token heads: boxes with a grid-position bias, text-space class embeddings."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [out_dim], strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.gelu(x)
        return x


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    x = x.clamp(eps, 1 - eps)
    return torch.log(x / (1 - x))


def grid_box_bias(height: int, width: int) -> torch.Tensor:
    """``[H*W, 4]`` logits of each token's own cell as a cxcywh box (OWL-ViT's box bias)."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    centers = torch.stack([(xs + 0.5) / width, (ys + 0.5) / height], dim=-1).reshape(-1, 2)
    sizes = torch.tensor([1.0 / width, 1.0 / height]).expand_as(centers)
    return torch.cat([inverse_sigmoid(centers), inverse_sigmoid(sizes)], dim=-1)


class BoxHead(nn.Module):
    """Tokens ``[B, Q, W]`` on an ``H x W`` grid -> boxes ``[B, Q, 4]`` cxcywh in [0, 1]."""

    def __init__(self, width: int):
        super().__init__()
        self.mlp = MLP(width, width, 4, num_layers=3)
        nn.init.zeros_(self.mlp.layers[-1].weight)
        nn.init.zeros_(self.mlp.layers[-1].bias)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        bias = grid_box_bias(*grid).to(tokens)
        return torch.sigmoid(self.mlp(tokens) + bias)


PADDED_LOGIT = -1e4  # the region-text logit of a padded text: no score, finite gradients


class ClassHead(nn.Module):
    """Tokens ``[B, Q, W]`` + texts ``[B, T, D]`` -> region-text logits ``[B, Q, T]``.

    logits = (cos(class_embed, text) + shift) * scale, with per-token learned shift and scale
    (OWL-ViT); the shift bias starts at the RetinaNet prior -log((1 - pi) / pi).
    """

    def __init__(self, width: int, embed_dim: int, prior_probability: float):
        super().__init__()
        self.project = nn.Linear(width, embed_dim)
        self.logit_shift = nn.Linear(width, 1)
        self.logit_scale = nn.Linear(width, 1)
        nn.init.constant_(self.logit_shift.bias, -math.log((1 - prior_probability) / prior_probability))
        nn.init.zeros_(self.logit_scale.weight)
        nn.init.constant_(self.logit_scale.bias, 0.0)

    def forward(self, tokens: torch.Tensor, text_embeds: torch.Tensor, text_mask: torch.Tensor):
        """-> ``(logits, class_embeds, parts)``. ``parts`` holds the factors of ``logits`` (before
        padding): ``region_similarity`` [B, Q, T], ``logit_shift`` and ``logit_scale`` [B, Q, 1], for
        losses that rebuild the logits with the calibration detached; references, no extra compute."""
        class_embeds = F.normalize(self.project(tokens), dim=-1)  # (B, Q, D)
        similarity = torch.einsum("bqd,btd->bqt", class_embeds, F.normalize(text_embeds, dim=-1))
        scale = F.elu(self.logit_scale(tokens)) + 1.0  # (B, Q, 1), > 0
        shift = self.logit_shift(tokens)  # (B, Q, 1)
        logits = ((similarity + shift) * scale).masked_fill(~text_mask[:, None, :], PADDED_LOGIT)
        return logits, class_embeds, {"region_similarity": similarity, "logit_shift": shift, "logit_scale": scale}
