"""Source readers: every published format in, unified ``Record``s out.

``iter_source(source, root)`` yields, in file order, one item per input record: a valid
``Record`` or a ``RecordError`` naming the record and a short reason. Bad records never raise
and are never dropped silently (records + rejections = input records). A file that cannot be
parsed at all raises ``OvdetError("path:line: ...")``. Validation here looks at annotations
only; decoding the image is ``ovdet.data.images.load_image``'s job.

One module per format family (``coco``, ``odvg``, ``mdetr``, ``image_text``, ``webdataset``),
registered in ``READERS``; what the readers share is in ``common``. Every reader is called the
same way, ``reader(source, root, categories)``: ``categories`` (a dict, filled in place) receives
the source's category table by id when its format has one (``coco``: COCO, LVIS, Objects365).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

from ovdet.config import SourceConfig
from ovdet.data.captions import match_vocabulary_spans
from ovdet.data.records import Phrase, Record
from ovdet.data.sources.coco import read_coco
from ovdet.data.sources.common import CategoryTable, resolve
from ovdet.data.sources.image_text import read_image_text_jsonl, read_image_text_parquet
from ovdet.data.sources.mdetr import read_mdetr
from ovdet.data.sources.odvg import read_odvg
from ovdet.data.sources.webdataset import read_webdataset
from ovdet.errors import OvdetError, RecordError

Reader = Callable[[SourceConfig, Path, CategoryTable], Iterator[Record | RecordError]]
READERS: dict[str, Reader] = {
    "coco": read_coco,
    "odvg": read_odvg,
    "mdetr": read_mdetr,
    "jsonl": read_image_text_jsonl,
    "parquet": read_image_text_parquet,
    "wds": read_webdataset,
}


def iter_source(
    source: SourceConfig, root: Path, categories: CategoryTable | None = None
) -> Iterator[Record | RecordError]:
    """Yield a ``Record`` or ``RecordError`` per input record of ``source``, in file order, and an
    ``AnnotationError`` (a ``RecordError``) per annotation dropped from a record that is kept.

    Paths and the image root are resolved against ``root`` when relative. A key seen twice
    (after sanitizing) is rejected as ``"duplicate key"`` so keys stay unique in the shards.
    ``categories``, when given, receives the source's category table by id (``coco`` sources).
    """
    if source.format not in READERS:
        raise OvdetError(f"source {source.name!r}: unknown format {source.format!r}")
    names = caption_vocabulary(source, Path(root))
    seen_keys: set[str] = set()
    for item in READERS[source.format](source, Path(root), {} if categories is None else categories):
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
