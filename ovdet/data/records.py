"""The unified sample record that flows from every source reader to the shards and the loader.

One record is one image with everything known about it. Boxes are absolute xyxy pixels in the
image as stored. The tar stores ``KEY.jpg`` (the image) and ``KEY.json`` (``Record.to_json()``);
``docs/data-format.md`` documents the schema with an example.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ovdet.data.captions import extract_caption_phrases

KINDS = ("detection", "grounding", "image_text")


@dataclass
class Phrase:
    """A phrase of the grounding caption: characters ``caption[start:end]`` refer to ``box_indices``."""

    text: str
    spans: list[tuple[int, int]]
    box_indices: list[int]


@dataclass
class Record:
    """One sample.

    Attributes:
        key: unique, tar-safe sample key (no dots or slashes).
        source: name of the source it was read from (data config).
        kind: one of ``KINDS``.
        image_path: where the image is read from at shard time (not stored in the tar).
        width, height: image size in pixels (after EXIF orientation).
        boxes: [N][4] absolute xyxy pixels.
        category_ids: [N] source category id per box (-1 for grounding-only boxes).
        category_names: [N] category name (or phrase text for grounding boxes).
        is_crowd: [N] COCO crowd flag.
        caption: image-level caption (image-text and grounding samples), "" if none.
        phrases: grounding phrases with character spans into ``caption``; for an image-text source
            with a ``vocabulary``, the names its caption mentions (no boxes).
        negatives: names known to be absent (e.g. LVIS ``neg_category_ids``), optional.
        meta: free-form source-specific extras (original id, LVIS frequency, ...).
    """

    key: str
    source: str
    kind: str
    image_path: str = ""
    width: int = 0
    height: int = 0
    boxes: list[list[float]] = field(default_factory=list)
    category_ids: list[int] = field(default_factory=list)
    category_names: list[str] = field(default_factory=list)
    is_crowd: list[int] = field(default_factory=list)
    caption: str = ""
    phrases: list[Phrase] = field(default_factory=list)
    negatives: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def has_boxes(self) -> bool:
        return len(self.boxes) > 0

    def caption_labels(self) -> list[str]:
        """An image-text sample's image-level labels: the vocabulary names matched at shard time
        (``phrases``), else the phrases the rule-based chunker finds in the caption."""
        if self.phrases:
            return list(dict.fromkeys(p.text for p in self.phrases))
        return extract_caption_phrases(self.caption)

    def to_json(self) -> dict[str, Any]:
        """The JSON stored in the tar (no local image path)."""
        out = asdict(self)
        out.pop("image_path")
        out["phrases"] = [
            {"text": p.text, "spans": [list(s) for s in p.spans], "box_indices": list(p.box_indices)}
            for p in self.phrases
        ]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        phrases = [
            Phrase(p["text"], [tuple(s) for s in p["spans"]], list(p["box_indices"]))
            for p in data.get("phrases", [])
        ]
        fields = {k: v for k, v in data.items() if k != "phrases"}
        return cls(**fields, phrases=phrases)
