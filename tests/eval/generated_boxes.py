"""Random boxes for the generated evaluation fixtures (COCO and LVIS cases share them)."""

from __future__ import annotations

import numpy as np

IMAGE_SIZE = (640, 480)
SIDE_RANGES = [(4, 30), (35, 90), (100, 300)]  # small, medium, large boxes


def random_box(rng: np.random.Generator) -> list[float]:
    low, high = SIDE_RANGES[rng.integers(len(SIDE_RANGES))]
    w, h = rng.uniform(low, high, size=2)
    x, y = rng.uniform(0, IMAGE_SIZE[0] - w), rng.uniform(0, IMAGE_SIZE[1] - h)
    return [round(float(v), 2) for v in (x, y, w, h)]


def jitter(rng: np.random.Generator, box: list[float], sigma: float) -> list[float]:
    """``box`` moved and resized by normal noise of ``sigma`` times its size (sides at least 1)."""
    x, y, w, h = box
    dx, dy, dw, dh = rng.normal(0, sigma, size=4) * [w, h, w, h]
    return [round(float(v), 2) for v in (x + dx, y + dy, max(w + dw, 1.0), max(h + dh, 1.0))]
