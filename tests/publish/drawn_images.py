"""Small drawn test images that are not square (OWLv2 pads them, OWL-ViT stretches them)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw


def write_drawn_images(folder: Path) -> list[Path]:
    """Two PNGs, 96x64 and 50x80, each with a red ellipse and a blue rectangle, written to ``folder``."""
    paths = []
    for i, (w, h) in enumerate([(96, 64), (50, 80)]):
        image = Image.new("RGB", (w, h), (30 + 40 * i, 90, 160))
        draw = ImageDraw.Draw(image)
        draw.ellipse([5, 5, w // 2, h // 2], fill=(220, 30, 30))
        draw.rectangle([w // 2, h // 3, w - 4, h - 4], fill=(20, 40, 230))
        paths.append(folder / f"image{i}.png")
        image.save(paths[-1])
    return paths
