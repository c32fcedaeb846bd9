"""The synthetic worlds' scenes: their categories and how one image of them is drawn.

Categories are colour x shape ("red circle", "blue star", ...). Two worlds (``synth.world``):

- ``compositional``: 6 colours x 8 shapes, a fixed quarter of them novel (``is_novel``). Every
  novel name combines words that base names teach ("red circle" from "red square" and "blue circle").
- ``novel-words``: those 48 categories are all base; the novel ones are 3 new colours x 3 new
  shapes ("pink crescent", "cyan ring", "white arrow"), words that occur in no base name and so in
  no detection or grounding record. Only image-text captions name them, as they name base objects.

``sample_image(cfg, split, index)`` draws image ``index`` of ``split``: a textured background and
objects placed so that each keeps most of its pixels visible, each with its tight box and pixel
area. Writing the world's files is ``ovdet.data.synthetic``'s job.

Determinism: image ``i`` of split ``s`` draws from its own stream,
``SeedSequence(seed, spawn_key=(s, i))``, so an image depends only on the seed, the split, its
index and the drawing parameters, never on the other splits' sizes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ovdet.config import SynthConfig

SPLITS = ("detection", "grounding", "image_text", "eval")  # index = spawn key, never reorder

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 170, 60),
    "blue": (40, 85, 225),
    "yellow": (240, 215, 35),
    "purple": (145, 55, 195),
    "orange": (250, 135, 20),
}
SHAPES = ("circle", "square", "triangle", "star", "hexagon", "diamond", "cross", "heart")
WORLDS = ("compositional", "novel-words")
# The novel-words world's novel vocabulary: colours far from the base colours and from the grey and
# brown backgrounds, shapes unlike any base outline (an arrow, a crescent, a ring with its hole).
NOVEL_WORD_COLOURS: dict[str, tuple[int, int, int]] = {
    "pink": (245, 110, 185),
    "cyan": (25, 215, 225),
    "white": (248, 248, 244),
}
NOVEL_WORD_SHAPES = ("arrow", "crescent", "ring")
PALETTE = {**COLOURS, **NOVEL_WORD_COLOURS}

COLOUR_SYNONYMS: dict[str, list[str]] = {
    "red": ["crimson", "scarlet"],
    "green": ["emerald"],
    "blue": ["azure"],
    "yellow": ["golden"],
    "purple": ["violet"],
    "orange": ["amber"],
    "pink": ["rose"],
    "cyan": ["turquoise"],
    "white": ["ivory"],
}
SHAPE_SYNONYMS: dict[str, list[str]] = {
    "circle": ["disc"],
    "square": ["box"],
    "triangle": ["three-sided shape"],
    "star": ["five-pointed star"],
    "hexagon": ["six-sided shape"],
    "diamond": ["rhombus", "lozenge"],
    "cross": ["plus sign"],
    "heart": ["love heart"],
    "arrow": ["pointer"],
    "crescent": ["sickle"],
    "ring": ["hoop"],
}

CAPTION_TEMPLATES = (
    "a photo of {}.",
    "an image showing {}.",
    "{} on a textured background.",
    "a picture with {}.",
)
MIN_VISIBLE_FRACTION = 0.4  # each object keeps >= 40% of its pixels after later ones are drawn
PLACEMENT_ATTEMPTS = 30


def is_novel(colour_index: int, shape_index: int) -> bool:
    """Colour c is novel with shapes 2c and 2c+1 (mod 8): every colour and shape stays in some base
    category."""
    return shape_index in ((2 * colour_index) % len(SHAPES), (2 * colour_index + 1) % len(SHAPES))


def build_categories(world: str = "compositional") -> list[dict[str, Any]]:
    """The world's categories: the 48 colour x shape ones, ids 1..48 in colour-major order, then (in
    ``novel-words``) the 9 new-word ones, ids 49..57."""
    if world not in WORLDS:
        raise ValueError(f"unknown synthetic world {world!r}; one of {list(WORLDS)}")
    categories = []
    for c, colour in enumerate(COLOURS):
        for s, shape in enumerate(SHAPES):
            novel = world == "compositional" and is_novel(c, s)
            categories.append(category(len(categories) + 1, colour, shape, novel))
    if world == "novel-words":
        for colour in NOVEL_WORD_COLOURS:
            for shape in NOVEL_WORD_SHAPES:
                categories.append(category(len(categories) + 1, colour, shape, novel=True))
    return categories


def category(category_id: int, colour: str, shape: str, novel: bool) -> dict[str, Any]:
    return {"id": category_id, "name": f"{colour} {shape}", "colour": colour, "shape": shape,
            "split": "novel" if novel else "base"}  # fmt: skip


@functools.cache
def world_categories(world: str) -> tuple[dict[str, Any], ...]:
    return tuple(build_categories(world))


def novel_names(world: str) -> list[str]:
    return [c["name"] for c in world_categories(world) if c["split"] == "novel"]


def base_ids(world: str) -> list[int]:
    return [c["id"] for c in world_categories(world) if c["split"] == "base"]


CATEGORIES = build_categories()  # the compositional world's
NOVEL_NAMES = novel_names("compositional")
BASE_IDS = base_ids("compositional")


def category_synonyms(colour: str, shape: str) -> list[str]:
    """Names that mean the same category: one word swapped for a synonym at a time."""
    return [f"{c} {shape}" for c in COLOUR_SYNONYMS[colour]] + [
        f"{colour} {s}" for s in SHAPE_SYNONYMS[shape]
    ]


def regular_polygon(corners: int, radius: float, phase: float = -np.pi / 2) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(corners) / corners
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def star_polygon() -> np.ndarray:
    outer = regular_polygon(5, 0.5)
    inner = regular_polygon(5, 0.2, phase=-np.pi / 2 + np.pi / 5)
    return np.stack([outer, inner], axis=1).reshape(10, 2)


def heart_polygon() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    points = np.stack([x, y], axis=1)
    points -= (points.max(0) + points.min(0)) / 2
    return points / (points.max(0) - points.min(0)).max()


def cross_polygon() -> np.ndarray:
    a, b = 0.5, 1 / 6
    return np.array(
        [
            [-b, -a],
            [b, -a],
            [b, -b],
            [a, -b],
            [a, b],
            [b, b],
            [b, a],
            [-b, a],
            [-b, b],
            [-a, b],
            [-a, -b],
            [-b, -b],
        ]
    )


UNIT_POLYGONS: dict[str, np.ndarray] = {
    # [V, 2] vertices with a longest unrotated side of 1; the diamond is elongated so that it is
    # never a rotated square
    "circle": regular_polygon(48, 0.5),
    "square": np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]]),
    "triangle": np.array([[0.0, -0.5], [0.5, 0.5], [-0.5, 0.5]]),
    "star": star_polygon(),
    "hexagon": regular_polygon(6, 0.5, phase=0.0),
    "diamond": np.array([[0.0, -0.5], [0.3, 0.0], [0.0, 0.5], [-0.3, 0.0]]),
    "cross": cross_polygon(),
    "heart": heart_polygon(),
    "arrow": np.array([[-0.5, -0.12], [0.08, -0.12], [0.08, -0.36], [0.5, 0.0], [0.08, 0.36], [0.08, 0.12],
                       [-0.5, 0.12]]),  # fmt: skip
    "crescent": regular_polygon(48, 0.5),
    "ring": regular_polygon(48, 0.5),
}
# Shapes with a hole cut out of their outline (same rotation and position): the ring's is concentric,
# the crescent's is a disc shifted right that leaves the left third of the outer disc.
UNIT_HOLES: dict[str, np.ndarray] = {
    "crescent": regular_polygon(48, 0.45) + np.array([0.22, 0.0]),
    "ring": regular_polygon(48, 0.28),
}


@dataclass
class SynthObject:
    """One drawn object: ``box`` is the tight xyxy pixel box of its polygon, ``area`` its pixel count."""

    category_id: int
    name: str
    box: list[float]
    area: float
    is_novel: bool


@dataclass
class SynthImage:
    """One image of a split: pixels [H, W, 3] uint8 (None once saved), objects in drawing order."""

    split: str
    index: int
    width: int
    height: int
    objects: list[SynthObject]
    template: str  # caption template, e.g. "a photo of {}."
    pixels: np.ndarray | None = None

    @property
    def file_name(self) -> str:
        return f"{self.split}/{self.index:06d}.jpg"


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(SPLITS.index(split), index)))


def sample_image(cfg: SynthConfig, split: str, index: int) -> SynthImage:
    """Draw image ``index`` of ``split``; the same arguments always give the same image."""
    rng = image_rng(cfg.seed, split, index)
    size = cfg.image_size
    pixels = draw_background(rng, size)
    categories = world_categories(cfg.world)
    category_ids = sample_categories(rng, cfg, needs_base=split in ("detection", "grounding"))
    objects = []
    for category_id, mask in place_objects(rng, cfg, category_ids):
        paint_object(rng, pixels, mask, categories[category_id - 1]["colour"])
        objects.append(describe_object(categories[category_id - 1], mask))
    template = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
    return SynthImage(split, index, size, size, objects, template, np.clip(pixels, 0, 255).astype(np.uint8))


def sample_categories(rng: np.random.Generator, cfg: SynthConfig, needs_base: bool) -> list[int]:
    """Uniform over the world's categories; training images with boxes get at least one base object."""
    count = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    ids = [int(i) for i in rng.integers(1, len(world_categories(cfg.world)) + 1, size=count)]
    base = base_ids(cfg.world)
    if needs_base and not any(i in base for i in ids):
        ids[0] = base[rng.integers(len(base))]
    return ids


def draw_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A grey or brown texture [size, size, 3] float32: smooth noise, optional stripes, blobs, grain."""
    level = rng.uniform(70, 170)
    tint = np.array([1.0, 1.0, 1.0]) if rng.random() < 0.5 else np.array([1.0, 0.85, 0.7])
    cells = max(2, size // 16)
    smooth = Image.fromarray(rng.normal(0, 1, (cells, cells)).astype(np.float32))
    texture = 14 * np.asarray(smooth.resize((size, size), Image.BILINEAR))
    if rng.random() < 0.5:
        angle, period = rng.uniform(0, np.pi), rng.uniform(6, 24)
        y, x = np.mgrid[0:size, 0:size]
        texture += 10 * np.sin((x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / period)
    texture += draw_blobs(rng, size)
    grain = rng.normal(0, 5, (size, size, 1))
    return (level + texture)[..., None] * tint + grain


def draw_blobs(rng: np.random.Generator, size: int) -> np.ndarray:
    blobs = Image.new("F", (size, size), 0.0)
    draw = ImageDraw.Draw(blobs)
    for _ in range(rng.integers(0, 5)):
        cx, cy = rng.uniform(0, size, 2)
        rx, ry = rng.uniform(0.05, 0.25, 2) * size
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=float(rng.uniform(-25, 25)))
    return np.asarray(blobs)


def place_objects(
    rng: np.random.Generator, cfg: SynthConfig, category_ids: list[int]
) -> list[tuple[int, np.ndarray]]:
    """Masks [size, size] bool in drawing order; a placement that would hide an earlier object is retried.

    The first ``min_objects`` objects keep trying until placed; later ones are dropped after
    ``PLACEMENT_ATTEMPTS`` failures, so crowded images hold fewer objects.
    """
    placed: list[tuple[int, np.ndarray]] = []
    visible: list[np.ndarray] = []
    for number, category_id in enumerate(category_ids):
        attempts = PLACEMENT_ATTEMPTS * (100 if number < cfg.min_objects else 1)
        for _ in range(attempts):
            mask = object_mask(rng, cfg, world_categories(cfg.world)[category_id - 1]["shape"])
            remaining = [v & ~mask for v in visible]
            if all(
                r.sum() >= MIN_VISIBLE_FRACTION * m.sum() for r, (_, m) in zip(remaining, placed, strict=True)
            ):
                placed.append((category_id, mask))
                visible = remaining + [mask]
                break
    return placed


def object_mask(rng: np.random.Generator, cfg: SynthConfig, shape: str) -> np.ndarray:
    """A randomly scaled, rotated and positioned shape, kept inside the image, as a bool mask."""
    size = cfg.image_size
    side = rng.uniform(cfg.min_scale, cfg.max_scale) * size
    angle = rng.uniform(0, 2 * np.pi)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = side * UNIT_POLYGONS[shape] @ rotation.T
    low, high = points.min(0), points.max(0)
    offset = rng.uniform(-low, np.maximum(size - high, -low))
    canvas = Image.new("1", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    draw.polygon([tuple(p) for p in (points + offset).tolist()], fill=1)
    if shape in UNIT_HOLES:
        draw.polygon([tuple(p) for p in (side * UNIT_HOLES[shape] @ rotation.T + offset).tolist()], fill=0)
    return np.asarray(canvas)


def paint_object(rng: np.random.Generator, pixels: np.ndarray, mask: np.ndarray, colour: str) -> None:
    """Fill ``mask`` with the colour, jittered in brightness and hue a little, plus pixel grain."""
    base = np.array(PALETTE[colour], dtype=np.float64)
    tone = base + rng.uniform(-20, 20) + rng.uniform(-8, 8, 3)
    pixels[mask] = tone + rng.normal(0, 4, (int(mask.sum()), 3))


def describe_object(category: dict[str, Any], mask: np.ndarray) -> SynthObject:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    box = [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]
    return SynthObject(category["id"], category["name"], box, float(mask.sum()), category["split"] == "novel")
