"""What the source readers share: rejections, keys, paths, JSONL lines and annotation checks.

A reader (``coco``, ``odvg``, ``mdetr``, ``image_text``, ``webdataset``) raises ``BadRecord`` inside while it
builds one record; the reader turns it into that record's ``RecordError`` and goes on. Helpers
work on plain Python values (no torch: the shard stage's processes never load it).
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ovdet.config import SourceConfig
from ovdet.data.records import Phrase, Record
from ovdet.errors import AnnotationError, OvdetError, RecordError
from ovdet.fileio import is_number

# A format's categories by id, every field kept (COCO/LVIS/Objects365 ``categories`` entries).
CategoryTable = dict[int, dict[str, Any]]


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
