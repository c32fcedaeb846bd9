"""OWL-ViT-style per-token heads: boxes with a grid-position bias, text-space class embeddings."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ovdet.ops.boxes import grid_centers


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
    centers = grid_centers(height, width)
    sizes = torch.tensor([1.0 / width, 1.0 / height]).expand_as(centers)
    return torch.cat([inverse_sigmoid(centers), inverse_sigmoid(sizes)], dim=-1)


class BoxHead(nn.Module):
    """Tokens ``[B, Q, W]`` on an ``H x W`` grid -> boxes ``[B, Q, 4]`` cxcywh in [0, 1] (and None:
    no distribution), as an offset from the token's own cell (OWL-ViT's box bias)."""

    def __init__(self, width: int):
        super().__init__()
        self.mlp = MLP(width, width, 4, num_layers=3)
        nn.init.zeros_(self.mlp.layers[-1].weight)
        nn.init.zeros_(self.mlp.layers[-1].bias)

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, None]:
        bias = grid_box_bias(*grid).to(tokens)
        return torch.sigmoid(self.mlp(tokens) + bias), None


class DistributionBoxHead(nn.Module):
    """Generalized focal loss's box head (Li et al. 2020; YOLOv8's DFL): each of the left, top, right
    and bottom distances from the token's centre is a distribution over ``reg_max`` bins of 0 ..
    reg_max - 1 grid cells, decoded by its expectation.

    Tokens ``[B, Q, W]`` on an ``H x W`` grid -> ``(boxes [B, Q, 4] cxcywh, logits [B, Q, 4, reg_max])``.
    """

    def __init__(self, width: int, reg_max: int):
        super().__init__()
        self.reg_max = reg_max
        self.mlp = MLP(width, width, 4 * reg_max, num_layers=3)
        nn.init.zeros_(self.mlp.layers[-1].weight)
        # Bin k starts at weight 3^-k: an expected distance of about half a cell, the token's own
        # cell as OWL's box bias starts (a uniform start would be a box of (reg_max - 1) cells a side).
        with torch.no_grad():
            self.mlp.layers[-1].bias.copy_((-math.log(3.0) * torch.arange(reg_max)).repeat(4))

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.mlp(tokens).unflatten(-1, (4, self.reg_max))  # (B, Q, 4, bins)
        cells = distribution_expectation(logits)  # (B, Q, 4): l, t, r, b in cells
        cell_size = tokens.new_tensor([1.0 / grid[1], 1.0 / grid[0]]).repeat(2)  # (4,)
        return distances_to_cxcywh(grid_centers(*grid).to(tokens), cells * cell_size), logits


def distribution_expectation(logits: torch.Tensor) -> torch.Tensor:
    """``[..., reg_max]`` bin logits -> ``[...]`` expected bin (softmax-weighted 0 .. reg_max - 1)."""
    bins = torch.arange(logits.shape[-1], device=logits.device, dtype=torch.float32)
    return logits.float().softmax(-1) @ bins


def distances_to_cxcywh(centers: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """centres ``[..., 2]`` (x, y), distances ``[..., 4]`` (left, top, right, bottom) -> ``[..., 4]`` cxcywh."""
    left_top, right_bottom = distances[..., :2], distances[..., 2:]
    center = centers + (right_bottom - left_top) / 2
    return torch.cat([center, left_top + right_bottom], dim=-1)


def build_box_head(kind: str, width: int, reg_max: int) -> nn.Module:
    """``model.box_head``: ``direct`` (``BoxHead``) or ``dfl`` (``DistributionBoxHead``)."""
    return DistributionBoxHead(width, reg_max) if kind == "dfl" else BoxHead(width)


PADDED_LOGIT = -1e4  # the region-text logit of a padded text: no score, finite gradients


class ClassHead(nn.Module):
    """Tokens ``[B, Q, W]`` + texts ``[B, T, D]`` -> region-text logits ``[B, Q, T]``.

    logits = (cos(class_embed, text) + shift) * scale, with per-token learned shift and scale
    (OWL-ViT); the shift bias starts at the RetinaNet prior -log((1 - pi) / pi). With ``no_object``
    each token also has a learned no-object logit (softmax classification, DETR), starting at 0.
    """

    def __init__(self, width: int, embed_dim: int, prior_probability: float, no_object: bool = False):
        super().__init__()
        self.project = nn.Linear(width, embed_dim)
        self.logit_shift = nn.Linear(width, 1)
        self.logit_scale = nn.Linear(width, 1)
        nn.init.constant_(self.logit_shift.bias, -math.log((1 - prior_probability) / prior_probability))
        nn.init.zeros_(self.logit_scale.weight)
        nn.init.constant_(self.logit_scale.bias, 0.0)
        self.no_object = nn.Linear(width, 1) if no_object else None

    def forward(self, tokens: torch.Tensor, text_embeds: torch.Tensor, text_mask: torch.Tensor):
        """-> ``(logits, class_embeds, parts, no_object)``. ``parts`` holds the factors of ``logits``
        (before padding): ``region_similarity`` [B, Q, T], ``logit_shift`` and ``logit_scale`` [B, Q, 1],
        for losses that rebuild the logits with the calibration detached; ``no_object`` [B, Q] or None."""
        class_embeds = F.normalize(self.project(tokens), dim=-1)  # (B, Q, D)
        similarity = torch.einsum("bqd,btd->bqt", class_embeds, F.normalize(text_embeds, dim=-1))
        scale = F.elu(self.logit_scale(tokens)) + 1.0  # (B, Q, 1), > 0
        shift = self.logit_shift(tokens)  # (B, Q, 1)
        logits = ((similarity + shift) * scale).masked_fill(~text_mask[:, None, :], PADDED_LOGIT)
        no_object = self.no_object(tokens).squeeze(-1) if self.no_object is not None else None
        parts = {"region_similarity": similarity, "logit_shift": shift, "logit_scale": scale}
        return logits, class_embeds, parts, no_object
