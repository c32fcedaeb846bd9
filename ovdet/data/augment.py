"""The training loader's augmentations as pure functions: input size per batch, Mosaic and MixUp
geometry, HSV jitter, and the union of several samples' texts.

``ovdet.data.loader`` decides which apply to a sample and assembles it; every random number comes
from a ``numpy`` Generator seeded by (seed, stream index k) or (seed, global batch index), so a
sample is a function of (seed, k) alone and resume, worker count and world size do not change it.
The contract, the sources (YOLOv4/v5, YOLOX, ultralytics) and the measured costs are in
``docs/augmentation.md``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ovdet.ops.boxes import box_cxcywh_to_xyxy_array, box_xyxy_to_cxcywh_array

# Random streams, by the tag after the seed: a sample's own stream is [seed, 7, k] (texts, scale
# jitter, flip, as before augmentation existed, so turning these on leaves its draws unchanged)
SIZE_STREAM = 11  # [seed, 11, global batch index]: the batch's input size
AUGMENT_STREAM = 13  # [seed, 13, k]: which augmentations apply, partners, layout, ratio, gains

# A box cut by the mosaic's crop is kept when this much of its area and this many pixels of each
# side stay visible (YOLOv5's box_candidates keeps 10% and 2 px; a fifth keeps fewer unrecognisable slivers)
MIN_VISIBLE_FRACTION = 0.2
MIN_VISIBLE_SIDE = 2.0


def batch_input_size(sizes: list[int], seed: int, k: int, global_batch_size: int) -> int:
    """The input size of stream index ``k``: one of ``sizes``, drawn once per global batch
    ``k // global_batch_size``, so every sample of a global batch (all ranks) shares it."""
    rng = np.random.default_rng([seed, SIZE_STREAM, k // global_batch_size])
    return int(sizes[int(rng.integers(len(sizes)))])


def augment_rng(seed: int, k: int) -> np.random.Generator:
    return np.random.default_rng([seed, AUGMENT_STREAM, k])


def mosaic_centre(size: int, rng: np.random.Generator) -> tuple[int, int]:
    """The point where the four images meet, uniform in the middle half of the canvas on each axis
    (YOLOX draws it in [0.5 s, 1.5 s] of its 2 s canvas)."""
    low, high = size // 4, size - size // 4
    return int(rng.integers(low, high + 1)), int(rng.integers(low, high + 1))


def mosaic_offset(position: int, extent: tuple[int, int], centre: tuple[int, int]) -> tuple[int, int]:
    """Top-left canvas corner ``(x, y)`` of an image of ``extent`` ``(w, h)`` in mosaic ``position``
    0-3 (top-left, top-right, bottom-left, bottom-right), its inner corner at ``centre`` (YOLOv5's
    ``load_mosaic``): each image stays in its quadrant, and what leaves the canvas is cropped."""
    (xc, yc), (w, h) = centre, extent
    return (xc - w if position in (0, 2) else xc, yc - h if position in (0, 1) else yc)


def paste(canvas: np.ndarray, image: np.ndarray, offset: tuple[int, int]) -> None:
    """Copy ``image`` [h, w, 3] onto ``canvas`` [S, S, 3] with its top-left corner at ``offset``
    ``(x, y)``, cropped to the canvas."""
    x, y = offset
    size_y, size_x = canvas.shape[:2]
    x1, y1 = max(x, 0), max(y, 0)
    x2, y2 = min(x + image.shape[1], size_x), min(y + image.shape[0], size_y)
    if x2 > x1 and y2 > y1:
        canvas[y1:y2, x1:x2] = image[y1 - y : y2 - y, x1 - x : x2 - x]


def place_boxes(boxes: np.ndarray, offset: tuple[int, int], size: int) -> tuple[np.ndarray, np.ndarray]:
    """[N, 4] normalized cxcywh of an image's own ``size`` canvas, the image pasted at ``offset`` on
    the mosaic's -> ``(boxes, keep)``: [N, 4] normalized cxcywh of the mosaic's canvas, clipped to it,
    and the [N] mask of boxes that stay visible enough to train on (``MIN_VISIBLE_FRACTION`` of their
    area, ``MIN_VISIBLE_SIDE`` px of each side)."""
    moved = box_cxcywh_to_xyxy_array(boxes) * size + np.array([*offset, *offset], dtype=boxes.dtype)
    clipped = np.clip(moved, 0, size)
    width, height = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    area = (moved[:, 2] - moved[:, 0]) * (moved[:, 3] - moved[:, 1])
    keep = (width >= MIN_VISIBLE_SIDE) & (height >= MIN_VISIBLE_SIDE)
    keep &= width * height >= MIN_VISIBLE_FRACTION * area
    return box_xyxy_to_cxcywh_array(clipped) / size, keep


def blend(first: np.ndarray, second: np.ndarray, ratio: float) -> np.ndarray:
    """MixUp's pixels: ``ratio * first + (1 - ratio) * second``, uint8 (YOLOv5's ``mixup``), with
    PIL's ``Image.blend`` (C on uint8: ~4x faster than numpy in float32 at 640 px)."""
    return np.asarray(Image.blend(Image.fromarray(second), Image.fromarray(first), float(ratio)))


def hsv_jitter(pixels: np.ndarray, gains: list[float], rng: np.random.Generator) -> np.ndarray:
    """[H, W, 3] uint8 RGB with random hue, saturation and value gains (ultralytics' ``RandomHSV``):
    ``r ~ U(-1, 1) * gains``; hue shifts by ``r[0]`` of the colour circle, saturation and value are
    multiplied by ``1 + r[1]`` and ``1 + r[2]``, each through a lookup table on 8-bit HSV (PIL's,
    where ultralytics uses OpenCV's, which is not a dependency here)."""
    hue_gain, saturation_gain, value_gain = rng.uniform(-1, 1, 3) * np.asarray(gains)
    levels = np.arange(256)
    hue = (levels + hue_gain * 256) % 256  # PIL's hue spans 0-255 (OpenCV's 0-179)
    saturation = np.clip(levels * (1 + saturation_gain), 0, 255)
    value = np.clip(levels * (1 + value_gain), 0, 255)
    table = np.concatenate([hue, saturation, value]).astype(np.uint8).tolist()
    return np.asarray(Image.fromarray(pixels).convert("HSV").point(table).convert("RGB"))


def merge_texts(positives: list[list[str]], labels: list[list[int]]) -> tuple[list[str], list[int]]:
    """Several samples' positive texts as one list, first appearance first, and each sample's box
    labels (indices into its own ``positives``) as indices into the merged list, concatenated."""
    merged = list(dict.fromkeys(text for texts in positives for text in texts))
    index = {text: i for i, text in enumerate(merged)}
    remapped = [index[texts[label]] for texts, own in zip(positives, labels, strict=True) for label in own]
    return merged, remapped
