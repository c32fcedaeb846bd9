"""Image-text pairs: JSONL, Parquet, and WebDataset tars written by img2dataset.

JSONL / Parquet rows name a local image (``image`` | ``image_path`` | ``filepath`` | ``url``,
first present wins; relative paths resolve against the image root) and a caption
(``caption`` | ``text``). The key comes from the row's ``key`` or ``id`` when present, else
from the row number (JSONL: line number, Parquet: 0-based row). Remote URLs are rejected:
download them first (img2dataset) and read the tars with format ``wds``.

WebDataset tars: samples are consecutive members sharing a key (``KEY.jpg`` + ``KEY.txt``
and/or ``KEY.json`` with ``"caption"``). The image stays in the tar:
``meta["image_bytes_from"] = {"tar", "member", "offset", "size"}`` (offset/size only for
uncompressed tars) tells ``ovdet.data.images.load_image`` where to read it; ``image_path``
is ``""``.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ovdet.config import SourceConfig
from ovdet.data.records import Record
from ovdet.data.sources import (
    BadRecord,
    check_caption,
    image_root,
    input_files,
    make_key,
    read_jsonl,
    resolve,
)
from ovdet.errors import OvdetError, RecordError

IMAGE_KEYS = ("image", "image_path", "filepath", "url")
CAPTION_KEYS = ("caption", "text")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def read_image_text_jsonl(source: SourceConfig, root: Path) -> Iterator[Record | RecordError]:
    """One image-text record per non-blank line of every JSONL in ``source.paths``."""
    images_dir = image_root(source, root)
    for path in input_files(source, root):
        for line_number, row in read_jsonl(path):
            yield row_record(source.name, row, line_number, images_dir)


def read_image_text_parquet(source: SourceConfig, root: Path) -> Iterator[Record | RecordError]:
    """One image-text record per row of every Parquet file in ``source.paths``."""
    import pyarrow.parquet as pq  # only parquet sources pay for pyarrow

    images_dir = image_root(source, root)
    for path in input_files(source, root):
        try:
            parquet = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises ArrowInvalid/OSError subclasses for bad files
            raise OvdetError(f"{path}: cannot read Parquet: {exc}") from None
        row_number = 0
        for batch in parquet.iter_batches():
            for row in batch.to_pylist():
                yield row_record(source.name, row, row_number, images_dir)
                row_number += 1


def row_record(source_name: str, row: Any, row_number: int, images_dir: Path) -> Record | RecordError:
    row_id = first_present(row, ("key", "id")) if isinstance(row, dict) else None
    key = make_key(source_name, row_id if isinstance(row_id, int | str) and row_id != "" else row_number)
    try:
        if not isinstance(row, dict):
            raise BadRecord("row is not a JSON object")
        image = first_present(row, IMAGE_KEYS)
        if not isinstance(image, str) or not image:
            raise BadRecord("missing image path")
        if image.startswith(("http://", "https://")):
            raise BadRecord("remote image URL (download it first, e.g. with img2dataset)")
        caption = check_caption(first_present(row, CAPTION_KEYS))
    except BadRecord as exc:
        return RecordError(key, exc.reason)
    return Record(
        key=key,
        source=source_name,
        kind="image_text",
        image_path=str(resolve(image, images_dir)),
        caption=caption,
        meta={"row": row_number},
    )


def first_present(row: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if row.get(key) is not None:
            return row[key]
    return None


def read_webdataset(source: SourceConfig, root: Path) -> Iterator[Record | RecordError]:
    """One image-text record per sample of every tar in ``source.paths`` (globs allowed)."""
    for path in input_files(source, root):
        is_seekable = is_uncompressed_tar(path)
        for sample_key, members in tar_samples(path):
            key = make_key(source.name, sample_key)
            try:
                item = wds_record(key, source.name, path, members, is_seekable)
            except BadRecord as exc:
                item = RecordError(key, exc.reason)
            yield item


def tar_samples(path: Path) -> Iterator[tuple[str, dict[str, tarfile.TarInfo | bytes]]]:
    """Group consecutive regular members by WebDataset key (the name up to the first dot of its basename).

    Each sample maps extension to the image's ``TarInfo`` (left in the tar) or to the bytes of a
    small member (``txt``, ``json``, ...).
    """
    try:
        with tarfile.open(path, "r:*") as tar:
            current_key, members = "", {}
            for member in tar:
                if not member.isfile():
                    continue
                sample_key, extension = split_member_name(member.name)
                if sample_key != current_key and members:
                    yield current_key, members
                    members = {}
                current_key = sample_key
                is_image = extension in IMAGE_EXTENSIONS
                members[extension] = member if is_image else tar.extractfile(member).read()
            if members:
                yield current_key, members
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise OvdetError(f"{path}: cannot read tar: {exc}") from None


def is_uncompressed_tar(path: Path) -> bool:
    try:
        with tarfile.open(path, "r:"):
            return True
    except (tarfile.TarError, OSError):
        return False


def split_member_name(name: str) -> tuple[str, str]:
    directory, _, base = name.removeprefix("./").rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), extension.lower()


def wds_record(key: str, source_name: str, path: Path, members: dict[str, Any], is_seekable: bool) -> Record:
    image_extension = next((e for e in IMAGE_EXTENSIONS if e in members), None)
    if image_extension is None:
        raise BadRecord("no image in sample")
    image_member = members[image_extension]
    sample_json = wds_json(members["json"]) if "json" in members else {}
    caption = wds_caption(members, sample_json)
    record = Record(key=key, source=source_name, kind="image_text", caption=caption)
    image_from: dict[str, Any] = {"tar": str(path), "member": image_member.name}
    if is_seekable:
        image_from.update(offset=image_member.offset_data, size=image_member.size)
    record.meta["image_bytes_from"] = image_from
    if isinstance(sample_json.get("url"), str):
        record.meta["url"] = sample_json["url"]
    return record


def wds_caption(members: dict[str, Any], sample_json: dict[str, Any]) -> str:
    """The ``.txt`` caption, else ``.json["caption"]`` (img2dataset writes both)."""
    if "txt" in members:
        try:
            return check_caption(members["txt"].decode("utf-8"))
        except UnicodeDecodeError:
            raise BadRecord("caption .txt is not UTF-8") from None
    return check_caption(sample_json.get("caption"))


def wds_json(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRecord("invalid JSON in sample .json") from None
    if not isinstance(value, dict):
        raise BadRecord("sample .json is not an object")
    return value
