"""The model input's geometry: an image letterboxed onto a square, and boxes mapped into it and back.

``letterbox`` resizes so the longer side is ``size * scale_factor`` and pastes the image at the
top-left corner of a ``size`` square (zero padding right and below); ``stretch`` resizes both sides
to it instead, for models whose processor does not keep the aspect ratio (OWL-ViT). ``scale`` maps original
pixels to input pixels. Training (``ovdet.data.loader``) maps its boxes in with
``boxes_to_letterbox``; inference (``ovdet.infer``) maps the predictions out with
``boxes_to_pixels`` (``boxes_from_letterbox`` for the letterbox).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ovdet.ops.boxes import box_cxcywh_to_xyxy, box_xyxy_to_cxcywh_array, clip_boxes_xyxy


def letterbox(
    image: Image.Image, size: int, scale_factor: float = 1.0, flip: bool = False
) -> tuple[np.ndarray, float]:
    """``(uint8 array [size, size, 3], scale)``: ``image`` resized by ``scale``, flipped left-right
    when ``flip``, on a black ``size`` square."""
    width, height = image.size
    scale = size * scale_factor / max(width, height)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image.draft("RGB", new_size)  # JPEG DCT downscaling: decode less when shrinking a lot
    resized = image.convert("RGB").resize(new_size, Image.BILINEAR)
    if flip:
        resized = resized.transpose(Image.FLIP_LEFT_RIGHT)
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    canvas[: new_size[1], : new_size[0]] = np.asarray(resized)
    return canvas, scale


def stretch(
    image: Image.Image, size: int, scale_factor: float = 1.0, flip: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """``(uint8 array [size, size, 3], scale)``: each side resized to ``size * scale_factor`` (the
    aspect ratio is not kept: OWL-ViT's processor resizes this way), flipped when ``flip``, top-left
    on the canvas; ``scale`` is ``[sx, sy, sx, sy]``, which ``boxes_to_letterbox`` takes as is."""
    width, height = image.size
    side = max(1, round(size * scale_factor))
    image.draft("RGB", (side, side))
    resized = image.convert("RGB").resize((side, side), Image.BILINEAR)
    if flip:
        resized = resized.transpose(Image.FLIP_LEFT_RIGHT)
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    canvas[:side, :side] = np.asarray(resized)
    return canvas, np.array([side / width, side / height] * 2, dtype=np.float32)


def boxes_to_letterbox(
    boxes: np.ndarray, scale: float | np.ndarray, size: int, flip_width: float | None = None
) -> torch.Tensor:
    """[N, 4] float32 xyxy pixels of the original image -> [N, 4] float32 normalized cxcywh of the
    input. ``scale``: ``letterbox``'s, or ``stretch``'s per-axis one. ``flip_width``: the resized
    image's width when it was flipped (``flip=True``)."""
    boxes = boxes * scale
    if flip_width is not None:
        x1, y1, x2, y2 = boxes.T
        boxes = np.stack([flip_width - x2, y1, flip_width - x1, y2], axis=1)
    return torch.from_numpy(box_xyxy_to_cxcywh_array(boxes) / size)


def boxes_from_letterbox(
    boxes: torch.Tensor, scale: float, size: int, width: int, height: int
) -> torch.Tensor:
    """[N, 4] normalized cxcywh of the input -> [N, 4] xyxy pixels of the ``width`` x ``height``
    original, clipped to it (a box reaching into the padding ends at the image's edge)."""
    return boxes_to_pixels(boxes, (size / scale, size / scale), width, height)


def boxes_to_pixels(boxes: torch.Tensor, box_scale: tuple[float, float], width: int, height: int) -> torch.Tensor:
    """[N, 4] normalized cxcywh -> [N, 4] xyxy pixels of the ``width`` x ``height`` original, clipped
    to it; ``box_scale``: original pixels per normalized unit along x and y (``size / scale`` on
    both for the letterbox; a ``transformers`` detector's ``pixel_scale`` for its processor's geometry)."""
    scale_xyxy = torch.tensor([*box_scale, *box_scale], dtype=boxes.dtype, device=boxes.device)
    return clip_boxes_xyxy(box_cxcywh_to_xyxy(boxes) * scale_xyxy, width, height)
