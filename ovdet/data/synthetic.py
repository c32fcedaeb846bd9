"""The synthetic open-vocabulary world: coloured shapes on textured backgrounds.

48 categories ("red circle", "blue star", ...) are colour x shape; a fixed quarter of them is
novel. ``generate_world(cfg, out_dir)`` writes four splits of different images, each in the
published format of its kind (COCO detection with base annotations only, ODVG grounding, image-text
JSONL, COCO eval with every category), plus ``vocab.yaml`` and ``world.json``.
``docs/synthetic.md`` documents the layout with examples.

Determinism: image ``i`` of split ``s`` draws from its own stream,
``SeedSequence(seed, spawn_key=(s, i))``, so a file depends only on the seed, the split, its index
and the drawing parameters, never on the other splits' sizes.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image, ImageDraw
from tqdm import tqdm

from ovdet.config import SynthConfig
from ovdet.errors import OvdetError

FORMAT_VERSION = 1
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

COLOUR_SYNONYMS: dict[str, list[str]] = {
    "red": ["crimson", "scarlet"],
    "green": ["emerald"],
    "blue": ["azure"],
    "yellow": ["golden"],
    "purple": ["violet"],
    "orange": ["amber"],
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
}

CAPTION_TEMPLATES = (
    "a photo of {}.",
    "an image showing {}.",
    "{} on a textured background.",
    "a picture with {}.",
)
MIN_VISIBLE_FRACTION = 0.4  # each object keeps >= 40% of its pixels after later ones are drawn
PLACEMENT_ATTEMPTS = 30
TEXT_FILES = (
    "detection_train.json",
    "grounding_train.jsonl",
    "image_text_train.jsonl",
    "eval.json",
    "vocab.yaml",
)


def is_novel(colour_index: int, shape_index: int) -> bool:
    """Colour c is novel with shapes 2c and 2c+1 (mod 8): every colour and shape stays in some base category."""
    return shape_index in ((2 * colour_index) % len(SHAPES), (2 * colour_index + 1) % len(SHAPES))


def build_categories() -> list[dict[str, Any]]:
    """The 48 categories, ids 1..48 in colour-major order."""
    categories = []
    for c, colour in enumerate(COLOURS):
        for s, shape in enumerate(SHAPES):
            categories.append(
                {
                    "id": 1 + c * len(SHAPES) + s,
                    "name": f"{colour} {shape}",
                    "colour": colour,
                    "shape": shape,
                    "split": "novel" if is_novel(c, s) else "base",
                }
            )
    return categories


CATEGORIES = build_categories()
NOVEL_NAMES = [c["name"] for c in CATEGORIES if c["split"] == "novel"]
BASE_IDS = [c["id"] for c in CATEGORIES if c["split"] == "base"]


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
}


@dataclass
class SynthObject:
    """One drawn object: ``box`` is the tight xyxy pixel box of its polygon, ``area`` its pixel count."""

    category_id: int
    name: str
    box: list[float]
    area: float

    @property
    def is_novel(self) -> bool:
        return CATEGORIES[self.category_id - 1]["split"] == "novel"


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
    category_ids = sample_categories(rng, cfg, needs_base=split in ("detection", "grounding"))
    objects = []
    for category_id, mask in place_objects(rng, cfg, category_ids):
        paint_object(rng, pixels, mask, CATEGORIES[category_id - 1]["colour"])
        objects.append(describe_object(category_id, mask))
    template = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
    return SynthImage(split, index, size, size, objects, template, np.clip(pixels, 0, 255).astype(np.uint8))


def sample_categories(rng: np.random.Generator, cfg: SynthConfig, needs_base: bool) -> list[int]:
    """Uniform over all 48 categories; training images with boxes get at least one base object."""
    count = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    ids = [int(i) for i in rng.integers(1, len(CATEGORIES) + 1, size=count)]
    if needs_base and not any(i in BASE_IDS for i in ids):
        ids[0] = BASE_IDS[rng.integers(len(BASE_IDS))]
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
            mask = object_mask(rng, cfg, CATEGORIES[category_id - 1]["shape"])
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
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in (points + offset).tolist()], fill=1)
    return np.asarray(canvas)


def paint_object(rng: np.random.Generator, pixels: np.ndarray, mask: np.ndarray, colour: str) -> None:
    """Fill ``mask`` with the colour, jittered in brightness and hue a little, plus pixel grain."""
    base = np.array(COLOURS[colour], dtype=np.float64)
    tone = base + rng.uniform(-20, 20) + rng.uniform(-8, 8, 3)
    pixels[mask] = tone + rng.normal(0, 4, (int(mask.sum()), 3))


def describe_object(category_id: int, mask: np.ndarray) -> SynthObject:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    box = [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]
    return SynthObject(category_id, CATEGORIES[category_id - 1]["name"], box, float(mask.sum()))


def list_names(names: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """``"a red circle, a blue star and an orange heart"`` and each name's character span."""
    text, spans = "", []
    for i, name in enumerate(names):
        if i:
            text += " and " if i == len(names) - 1 else ", "
        text += "an " if name[0] in "aeiou" else "a "
        spans.append((len(text), len(text) + len(name)))
        text += name
    return text, spans


def caption_for(image: SynthImage, names: list[str]) -> tuple[str, dict[str, tuple[int, int]]]:
    """The caption naming each distinct category once (first-drawn first) and each name's span."""
    distinct = list(dict.fromkeys(names))
    listing, spans = list_names(distinct)
    start = image.template.index("{}")
    caption = image.template.format(listing)
    return caption, {name: (start + a, start + b) for name, (a, b) in zip(distinct, spans, strict=True)}


def odvg_line(image: SynthImage) -> dict[str, Any]:
    """ODVG grounding record (Open-GroundingDino): base objects only, spans into the caption."""
    base = [o for o in image.objects if not o.is_novel]
    caption, spans = caption_for(image, [o.name for o in base])
    regions = [{"bbox": o.box, "phrase": o.name, "tokens_positive": [list(spans[o.name])]} for o in base]
    return {
        "filename": image.file_name,
        "height": image.height,
        "width": image.width,
        "grounding": {"caption": caption, "regions": regions},
    }


def image_text_line(image: SynthImage) -> dict[str, Any]:
    caption, _ = caption_for(image, [o.name for o in image.objects])
    return {"image": image.file_name, "caption": caption}


def coco_dataset(images: list[SynthImage], with_novel: bool) -> dict[str, Any]:
    """COCO detection JSON listing all 48 categories; novel objects are annotated only ``with_novel``."""
    coco_images, annotations = [], []
    for image_id, image in enumerate(images, start=1):
        coco_images.append(
            {"id": image_id, "file_name": image.file_name, "width": image.width, "height": image.height}
        )
        for obj in image.objects:
            if obj.is_novel and not with_novel:
                continue
            x1, y1, x2, y2 = obj.box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": obj.category_id,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": obj.area,
                    "iscrowd": 0,
                }
            )
    categories = [{"id": c["id"], "name": c["name"], "supercategory": c["shape"]} for c in CATEGORIES]
    return {"images": coco_images, "annotations": annotations, "categories": categories}


def vocab_document() -> dict[str, Any]:
    categories = [
        {
            "id": c["id"],
            "name": c["name"],
            "split": c["split"],
            "synonyms": category_synonyms(c["colour"], c["shape"]),
        }
        for c in CATEGORIES
    ]
    return {"categories": categories, "prompts": ["a photo of a {}."]}


def check_config(cfg: SynthConfig) -> None:
    """Reject settings the generator cannot honour, naming the key."""
    problems = []
    if cfg.image_size < 16:
        problems.append(f"synth.image_size must be >= 16, got {cfg.image_size}")
    if not 1 <= cfg.min_objects <= cfg.max_objects:
        problems.append(
            f"synth needs 1 <= min_objects <= max_objects, got {cfg.min_objects}, {cfg.max_objects}"
        )
    if not 0 < cfg.min_scale <= cfg.max_scale <= 0.7:
        # above 0.7 a rotated shape (bbox up to sqrt(2) x side) no longer fits in the image
        problems.append(
            f"synth needs 0 < min_scale <= max_scale <= 0.7, got {cfg.min_scale}, {cfg.max_scale}"
        )
    if not 1 <= cfg.jpeg_quality <= 95:
        problems.append(f"synth.jpeg_quality must be in 1..95, got {cfg.jpeg_quality}")
    for split in SPLITS:
        if split_size(cfg, split) < 0:
            problems.append(f"synth.num_{split} must be >= 0, got {split_size(cfg, split)}")
    if problems:
        raise OvdetError("; ".join(problems))


def split_size(cfg: SynthConfig, split: str) -> int:
    return getattr(cfg, f"num_{split}")


def generate_split(cfg: SynthConfig, out_dir: Path, split: str, bar: tqdm) -> list[SynthImage]:
    """Draw and save every image of ``split``; the returned images hold objects, not pixels."""
    (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
    images = []
    for index in range(split_size(cfg, split)):
        image = sample_image(cfg, split, index)
        Image.fromarray(image.pixels).save(
            out_dir / "images" / image.file_name, format="JPEG", quality=cfg.jpeg_quality, optimize=False
        )
        images.append(dataclasses.replace(image, pixels=None))
        bar.update(1)
    return images


def write_text(path: Path, text: str) -> None:
    """Write through a temporary file so an interrupted run never leaves a truncated file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def world_summary(cfg: SynthConfig, counts: dict[str, dict[str, int]]) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "config": dataclasses.asdict(cfg),
        "counts": counts,
        "files": {
            "images": "images",
            "detection": "detection_train.json",
            "grounding": "grounding_train.jsonl",
            "image_text": "image_text_train.jsonl",
            "eval": "eval.json",
            "vocab": "vocab.yaml",
        },
        "num_categories": len(CATEGORIES),
        "novel_names": NOVEL_NAMES,
    }


def existing_world(cfg: SynthConfig, out_dir: Path, overwrite: bool) -> dict[str, Any] | None:
    """The summary of the identical world already in ``out_dir``; raises if a different one is there."""
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return None
    marker = out_dir / "world.json"
    found = json.loads(marker.read_text()) if marker.is_file() else None
    wanted = world_summary(cfg, {})
    if found and found.get("format_version") == FORMAT_VERSION and found.get("config") == wanted["config"]:
        return found
    if overwrite:
        clear_world(out_dir)
        return None
    what = (
        "a different world (see its world.json)" if found else "files but no world.json (an interrupted run?)"
    )
    raise OvdetError(f"{out_dir}: holds {what}; pick another folder or overwrite it (overwrite=True)")


def clear_world(out_dir: Path) -> None:
    """Remove what a world consists of, and nothing else the folder may hold."""
    (out_dir / "world.json").unlink(missing_ok=True)
    for split in SPLITS:
        shutil.rmtree(out_dir / "images" / split, ignore_errors=True)
    for name in TEXT_FILES:
        (out_dir / name).unlink(missing_ok=True)


def generate_world(
    cfg: SynthConfig, out_dir: str | Path, overwrite: bool = False, progress: bool = True
) -> dict:
    """Write the synthetic world into ``out_dir`` and return its summary (``world.json`` plus ``out_dir``).

    Re-running with the same config is a no-op; a folder holding anything else raises
    ``OvdetError`` unless ``overwrite``. ``world.json`` is written last, so it marks a complete world.
    """
    check_config(cfg)
    out_dir = Path(out_dir)
    found = existing_world(cfg, out_dir, overwrite)
    if found is not None:
        return {**found, "out_dir": str(out_dir)}
    out_dir.mkdir(parents=True, exist_ok=True)
    total = sum(split_size(cfg, split) for split in SPLITS)
    with tqdm(total=total, desc="synth", unit="img", file=sys.stderr, disable=not progress) as bar:
        images = {split: generate_split(cfg, out_dir, split, bar) for split in SPLITS}
    counts = write_annotations(out_dir, images)
    summary = world_summary(cfg, counts)
    write_text(out_dir / "world.json", json.dumps(summary, indent=2) + "\n")
    return {**summary, "out_dir": str(out_dir)}


def write_annotations(out_dir: Path, images: dict[str, list[SynthImage]]) -> dict[str, dict[str, int]]:
    """Write every split's annotation file and the vocabulary; return per-split counts."""
    detection = coco_dataset(images["detection"], with_novel=False)
    evaluation = coco_dataset(images["eval"], with_novel=True)
    grounding = [odvg_line(image) for image in images["grounding"]]
    write_text(out_dir / "detection_train.json", json.dumps(detection) + "\n")
    write_text(out_dir / "eval.json", json.dumps(evaluation) + "\n")
    write_jsonl(out_dir / "grounding_train.jsonl", grounding)
    write_jsonl(
        out_dir / "image_text_train.jsonl", [image_text_line(image) for image in images["image_text"]]
    )
    write_text(out_dir / "vocab.yaml", yaml.safe_dump(vocab_document(), sort_keys=False))
    return {
        "detection": {"images": len(detection["images"]), "annotations": len(detection["annotations"])},
        "grounding": {
            "images": len(grounding),
            "regions": sum(len(g["grounding"]["regions"]) for g in grounding),
        },
        "image_text": {"images": len(images["image_text"])},
        "eval": {"images": len(evaluation["images"]), "annotations": len(evaluation["annotations"])},
    }
