"""Fit a ViT image tower to the detection input size (OWL-ViT: train CLIP at 224 px, detect at 768 px).

A ViT's learned absolute position embedding has one row per patch of its native grid, so a larger
input needs a larger table. The patch-grid rows are resampled bicubically (timm's
``resample_abs_pos_embed``, as timm and open_clip do when loading checkpoints at another size); the
class/prefix rows are kept. Run it after the weights load: it resizes whatever table is there.
"""

from __future__ import annotations

from torch import nn

from ovdet.errors import OvdetError


def fit_vit_to_input_size(visual: nn.Module, input_size: int) -> bool:
    """Resize ``visual``'s position embedding to square ``input_size`` inputs; True if it changed.

    ``visual`` is an open_clip image tower: a ``VisionTransformer`` (``positional_embedding``
    ``[1 + N, C]``) or a ``TimmModel`` whose trunk is a timm ViT (``pos_embed`` ``[1, P + N, C]``).
    Other towers (convnets) take any input size and are left untouched.
    """
    trunk = getattr(visual, "trunk", None)
    if isinstance(getattr(trunk, "pos_embed", None), nn.Parameter) and hasattr(trunk, "set_input_size"):
        return fit_timm_vit(visual, trunk, input_size)
    if isinstance(getattr(visual, "positional_embedding", None), nn.Parameter) and hasattr(visual, "conv1"):
        return fit_open_clip_vit(visual, input_size)
    return False


def fit_open_clip_vit(visual: nn.Module, input_size: int) -> bool:
    """open_clip ``VisionTransformer``: class token row first, then the row-major patch grid."""
    from timm.layers import resample_abs_pos_embed  # timm loads only when a ViT is resized

    patch = tuple(visual.patch_size)
    new_grid = grid_for(input_size, patch)
    old_grid = tuple(visual.grid_size)
    if new_grid == old_grid:
        return False
    old = visual.positional_embedding
    resized = resample_abs_pos_embed(old.detach()[None], new_size=new_grid, old_size=old_grid, num_prefix_tokens=1)
    visual.positional_embedding = nn.Parameter(resized[0].contiguous(), requires_grad=old.requires_grad)
    visual.image_size = (input_size, input_size)
    visual.grid_size = new_grid
    return True


def fit_timm_vit(visual: nn.Module, trunk: nn.Module, input_size: int) -> bool:
    """timm ViT trunk: its own ``set_input_size`` resamples ``pos_embed`` (``resample_abs_pos_embed``,
    prefix tokens kept) and updates ``patch_embed.img_size``/``grid_size``, which its strict
    input-size check and ``forward_intermediates`` read."""
    new_grid = grid_for(input_size, tuple(trunk.patch_embed.patch_size))
    if new_grid == tuple(trunk.patch_embed.grid_size):
        return False
    trunk.set_input_size(img_size=(input_size, input_size))
    visual.image_size = (input_size, input_size)
    return True


def grid_for(input_size: int, patch: tuple[int, int]) -> tuple[int, int]:
    if input_size % patch[0] or input_size % patch[1]:
        raise OvdetError(f"input size {input_size} px is not a multiple of the ViT image tower's patch size "
                         f"{patch[0]} px (try {max(1, round(input_size / patch[0])) * patch[0]})")
    return input_size // patch[0], input_size // patch[1]
