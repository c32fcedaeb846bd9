"""Source readers: every published format in, unified ``Record``s out.

``iter_source(source, root)`` yields, in file order, one item per input record: a valid
``Record`` or a ``RecordError`` naming the record and a short reason. Bad records never raise
and are never dropped silently (records + rejections = input records). A file that cannot be
parsed at all raises ``OvdetError("path:line: ...")``. Validation here looks at annotations
only; decoding the image is ``ovdet.data.images.load_image``'s job.

The helpers below are shared by the readers (``coco``, ``odvg``, ``mdetr``, ``image_text``).
"""

from __future__ import annotations

import glob
import importlib
import json
import math
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ovdet.config import SourceConfig
from ovdet.data.captions import match_vocabulary_spans
from ovdet.data.records import Phrase, Record
from ovdet.errors import AnnotationError, OvdetError, RecordError

# Readers are imported on first use: pyarrow is loaded only for parquet sources.
READERS = {
    "coco": "ovdet.data.sources.coco:read_coco",
    "odvg": "ovdet.data.sources.odvg:read_odvg",
    "mdetr": "ovdet.data.sources.mdetr:read_mdetr",
    "jsonl": "ovdet.data.sources.image_text:read_image_text_jsonl",
    "parquet": "ovdet.data.sources.image_text:read_image_text_parquet",
    "wds": "ovdet.data.sources.image_text:read_webdataset",
}


def iter_source(
    source: SourceConfig, root: Path, categories: dict[int, dict[str, Any]] | None = None
) -> Iterator[Record | RecordError]:
    """Yield a ``Record`` or ``RecordError`` per input record of ``source``, in file order, and an
    ``AnnotationError`` (a ``RecordError``) per annotation dropped from a record that is kept.

    Paths and the image root are resolved against ``root`` when relative. A key seen twice
    (after sanitizing) is rejected as ``"duplicate key"`` so keys stay unique in the shards.
    ``categories``, when given, receives a ``coco`` source's category table (by id).
    """
    if source.format not in READERS:
        raise OvdetError(f"source {source.name!r}: unknown format {source.format!r}")
    module_name, _, function_name = READERS[source.format].partition(":")
    reader = getattr(importlib.import_module(module_name), function_name)
    names = caption_vocabulary(source, Path(root))
    seen_keys: set[str] = set()
    extra = {"categories": categories} if categories is not None and source.format == "coco" else {}
    for item in reader(source, Path(root), **extra):
        if isinstance(item, Record):
            if item.key in seen_keys:
                item = RecordError(item.key, "duplicate key", boxes=len(item.boxes))
            else:
                seen_keys.add(item.key)
                item = label_caption(item, names) if names else item
        yield item


def caption_vocabulary(source: SourceConfig, root: Path) -> dict[str, str]:
    """What to look for in captions, for ``source.vocabulary`` (a path resolved against ``root``, or a
    preset): each category's name and synonyms as ``caption_term`` -> the category's raw name; {} if
    unset. A term two categories share (``bow`` of ``bow_(weapon)`` and ``bow_(decorative_ribbons)``)
    names neither."""
    if not source.vocabulary:
        return {}
    if source.kind != "image_text":
        raise OvdetError(f"source {source.name!r}: 'vocabulary' applies to image_text sources only")
    from ovdet.data.vocab import PRESETS, load_vocabulary

    spec = source.vocabulary if source.vocabulary in PRESETS else str(resolve(source.vocabulary, root))
    owners: dict[str, set[str]] = {}
    for category in load_vocabulary(spec).categories:
        for text in [category.name, *category.synonyms]:
            owners.setdefault(caption_term(text), set()).add(category.name)
    return {term: next(iter(names)) for term, names in owners.items() if term and len(names) == 1}


def caption_term(name: str) -> str:
    """How a category name is written in free text: Detic's ``map_name`` (``tools/get_cc_tags.py``):
    underscores as spaces, no parenthesised qualifier, lower case (``speaker_(stereo_equipment)``
    -> ``speaker``)."""
    return " ".join(re.sub(r"\(.*?\)", " ", name.replace("_", " ")).lower().split())


def label_caption(record: Record, terms: dict[str, str]) -> Record | RecordError:
    """Store the vocabulary categories the caption mentions as phrases (the raw name, the span of its
    first mention, no boxes); a caption that names none is rejected: it would give the image-level
    loss nothing to learn from."""
    phrases: dict[str, Phrase] = {}
    for start, end, term in match_vocabulary_spans(record.caption, list(terms)):
        phrases.setdefault(terms[term], Phrase(terms[term], [(start, end)], []))
    if not phrases:
        return RecordError(record.key, "caption names no vocabulary name")
    record.phrases = list(phrases.values())
    return record


class BadRecord(Exception):
    """Raised inside a reader to reject the record being built; turned into a ``RecordError``."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def with_dropped(
    record: Record, dropped: list[AnnotationError], annotated: int
) -> list[Record | RecordError]:
    """What a reader yields for one record: its dropped annotations, then the record, or, when
    it had annotations and none is valid, a rejection (an image whose every object lost its box
    would teach that those objects are background)."""
    if annotated and not record.boxes:
        return [*dropped, RecordError(record.key, f"no valid annotation left ({len(dropped)} invalid)")]
    return [*dropped, record]


def make_key(source_name: str, original_id: Any, file_tag: str = "") -> str:
    """Tar-safe unique key ``"{source}-{id}"``, or ``"{source}-{file_tag}-{id}"`` for a source read
    from several files (``file_tags``): every character outside [A-Za-z0-9_-] becomes ``_``."""
    key = f"{source_name}-{file_tag}-{original_id}" if file_tag else f"{source_name}-{original_id}"
    return re.sub(r"[^A-Za-z0-9_-]", "_", key)


def file_tags(files: list[Path]) -> dict[Path, str]:
    """The part of the key that tells a source's files apart: "" when there is one file, else each
    file's stem (its parent folder's name too when two stems are equal), because published sets
    number their images from 0 in every file (MDETR's GoldG files, Objects365's patches)."""
    if len(files) == 1:
        return {files[0]: ""}
    stems = [f.name.split(".")[0] for f in files]
    return {
        f: f"{f.parent.name}_{stem}" if stems.count(stem) > 1 else stem
        for f, stem in zip(files, stems, strict=True)
    }


def resolve(path: str, root: Path) -> Path:
    """``path`` made absolute against ``root`` (normalized, symlinks kept)."""
    return Path(os.path.normpath(os.path.join(os.path.abspath(root), os.path.expanduser(path))))


def image_root(source: SourceConfig, root: Path) -> Path:
    """The folder relative image paths are read from: ``source.image_root`` or else ``root``."""
    return resolve(source.image_root, root) if source.image_root else resolve(".", root)


def input_files(source: SourceConfig, root: Path) -> list[Path]:
    """``source.paths`` resolved; glob patterns expand in sorted order. A missing file is fatal."""
    if not source.paths:
        raise OvdetError(f"source {source.name!r}: no paths given")
    files: list[Path] = []
    for entry in source.paths:
        path = resolve(entry, root)
        if glob.has_magic(str(path)):
            matches = sorted(glob.glob(str(path)))
            if not matches:
                raise OvdetError(f"{path}: no file matches this pattern (source {source.name!r})")
            files.extend(Path(m) for m in matches)
        elif not path.is_file():
            raise OvdetError(f"{path}: no such file (source {source.name!r})")
        else:
            files.append(path)
    return files


def read_json(path: Path) -> Any:
    """Parse a whole JSON file; a syntax error is ``OvdetError("path:line: ...")``."""
    try:
        with open(path, "rb") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise OvdetError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise OvdetError(f"{path}:1: invalid UTF-8: {exc.reason}") from None
    except OSError as exc:
        raise OvdetError(f"{path}: cannot read: {exc.strerror or exc}") from None


class BadLine:
    """A JSONL line that does not parse: ``read_jsonl`` yields it in place of the value."""

    def __init__(self, reason: str):
        self.reason = reason


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, value)`` per non-blank line; a line that does not parse yields a
    ``BadLine`` (the reader rejects that one record: ``line_error``). Only a file that cannot be
    read at all is fatal (``OvdetError``)."""
    try:
        with open(path, "rb") as handle:
            for line_number, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    yield line_number, json.loads(raw)
                except json.JSONDecodeError as exc:
                    yield line_number, BadLine(f"invalid JSON: {exc.msg}")
                except UnicodeDecodeError as exc:
                    yield line_number, BadLine(f"invalid UTF-8: {exc.reason}")
    except OSError as exc:
        raise OvdetError(f"{path}: cannot read: {exc.strerror or exc}") from None


def line_error(path: Path, line_number: int, bad: BadLine) -> RecordError:
    """The rejection of a line that does not parse: its record id is ``path:line``."""
    return RecordError(f"{path}:{line_number}", bad.reason)


def image_size(width: Any, height: Any) -> tuple[int, int]:
    """The annotated image size as positive ints; ``BadRecord`` when missing or invalid.

    Integer strings (``"500"``) are accepted: MDETR's Flickr30k files store sizes that way.
    """
    if width is None or height is None:
        raise BadRecord("image size missing")
    size = as_integer(width), as_integer(height)
    if size[0] is None or size[1] is None or size[0] <= 0 or size[1] <= 0:
        raise BadRecord(f"invalid image size {width}x{height}")
    return size


def as_integer(value: Any) -> int | None:
    """``value`` as an int when it is an integral number or an integer string, else None."""
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    if is_number(value) and math.isfinite(value) and value == int(value):
        return int(value)
    return None


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_box(what: str, box: Any, width: int, height: int) -> tuple[list[float], bool]:
    """Validate one xyxy box against the image; return it clipped and whether clipping happened.

    Rejects (``BadRecord``) non-numeric, NaN, infinite, zero/negative-size boxes and boxes
    entirely outside the image; a box partly outside is clipped to the image.
    """
    if not isinstance(box, list | tuple) or len(box) != 4 or not all(is_number(v) for v in box):
        raise BadRecord(f"{what} is not 4 numbers")
    if any(math.isnan(v) for v in box):
        raise BadRecord(f"{what} has NaN coordinates")
    if any(math.isinf(v) for v in box):
        raise BadRecord(f"{what} has infinite coordinates")
    x1, y1, x2, y2 = (float(v) for v in box)
    if x2 <= x1 or y2 <= y1:
        raise BadRecord(f"{what} has zero or negative size")
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        raise BadRecord(f"{what} is outside the image")
    clipped = [max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))]
    return clipped, clipped != [x1, y1, x2, y2]


def xywh_to_xyxy(box: Any) -> Any:
    """COCO ``[x, y, w, h]`` to ``[x1, y1, x2, y2]``; anything else is passed on for ``check_box``."""
    if isinstance(box, list | tuple) and len(box) == 4 and all(is_number(v) for v in box):
        x, y, w, h = box
        return [x, y, x + w, y + h]
    return box


def check_spans(what: str, spans: Any, caption: str) -> list[tuple[int, int]]:
    """Validate ``[[start, end], ...]`` character spans into ``caption``."""
    if not isinstance(spans, list) or not spans:
        raise BadRecord(f"{what} has no spans")
    checked = []
    for span in spans:
        if not isinstance(span, list | tuple) or len(span) != 2 or not all(isinstance(v, int) for v in span):
            raise BadRecord(f"{what} span {span!r} is not [start, end]")
        start, end = span
        if not 0 <= start < end <= len(caption):
            raise BadRecord(f"{what} span [{start}, {end}] is outside the caption (length {len(caption)})")
        checked.append((start, end))
    return checked


def check_caption(caption: Any) -> str:
    if caption is None:
        raise BadRecord("missing caption")
    if not isinstance(caption, str):
        raise BadRecord("caption is not a string")
    if not caption.strip():
        raise BadRecord("empty caption")
    return caption


def span_text(caption: str, spans: Iterable[tuple[int, int]]) -> str:
    """The caption text of ``spans`` joined by a space (MDETR / GLIP convention)."""
    return " ".join(caption[start:end] for start, end in spans)


def group_phrases(caption: str, box_spans: list[list[tuple[int, int]]]) -> list[Phrase]:
    """One ``Phrase`` per distinct span set, in first-seen order, pointing to every box that has it."""
    phrases: dict[tuple[tuple[int, int], ...], Phrase] = {}
    for index, spans in enumerate(box_spans):
        group = tuple(sorted(spans))
        if group not in phrases:
            phrases[group] = Phrase(span_text(caption, group), list(group), [])
        phrases[group].box_indices.append(index)
    return list(phrases.values())
