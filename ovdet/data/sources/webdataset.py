"""WebDataset tars of image-text pairs, as img2dataset writes them: one record per sample.

Samples are consecutive members sharing a key (``KEY.jpg`` + ``KEY.txt`` and/or ``KEY.json``
with ``"caption"``). The image stays in the tar: ``meta["image_bytes_from"] = {"tar", "member",
"offset", "size"}`` (offset/size only for uncompressed tars) tells
``ovdet.data.images.load_image`` where to read it; ``image_path`` is ``""``. A tar whose stream
breaks keeps the samples before the break; the break is one rejection (record id: the tar's
path), and reading goes on with the next file.
"""

from __future__ import annotations

import json
import lzma
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ovdet.config import SourceConfig
from ovdet.data.records import Record
from ovdet.data.sources.common import (
    BadRecord,
    CategoryTable,
    check_caption,
    file_tags,
    input_files,
    make_key,
)
from ovdet.errors import OvdetError, RecordError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
# What a broken or corrupt (possibly compressed) tar stream raises while it is read.
TAR_READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)


def read_webdataset(
    source: SourceConfig, root: Path, categories: CategoryTable | None = None
) -> Iterator[Record | RecordError]:
    """One image-text record per sample of every tar in ``source.paths`` (globs allowed), plus one
    rejection per tar whose stream breaks. ``categories``: unused."""
    files = input_files(source, root)
    tags = file_tags(files)
    for path in files:
        is_seekable = is_uncompressed_tar(path)
        for sample in tar_samples(path):
            if isinstance(sample, RecordError):
                yield sample
                continue
            sample_key, members = sample
            key = make_key(source.name, sample_key, tags[path])
            try:
                item = wds_record(key, source.name, path, members, is_seekable)
            except BadRecord as exc:
                item = RecordError(key, exc.reason)
            yield item


def tar_samples(path: Path) -> Iterator[tuple[str, dict[str, Any]] | RecordError]:
    """``(key, members)`` per sample of the tar; where its stream breaks, one
    ``RecordError(path, "cannot read tar after sample N: ...")`` ends it (a sample whose member
    data is cut is part of the break). A tar that cannot be opened raises ``OvdetError``."""
    try:
        tar = tarfile.open(path, "r:*")
    except TAR_READ_ERRORS as exc:
        raise OvdetError(f"{path}: cannot read tar: {exc}") from None
    with tar:
        count = 0
        try:
            for sample in grouped_members(tar):
                yield sample
                count += 1
        except TAR_READ_ERRORS as exc:
            yield RecordError(str(path), f"cannot read tar after sample {count}: {exc}")


def grouped_members(tar: tarfile.TarFile) -> Iterator[tuple[str, dict[str, Any]]]:
    """Group consecutive regular members by WebDataset key (the name up to the first dot of its
    basename). Each sample maps extension to the image's ``TarInfo`` (left in the tar), to the
    bytes of a small member (``txt``, ``json``, ...), or to a ``BadRecord`` when those bytes
    cannot be read. Raises where the stream breaks; the sample whose member data it cuts is not
    yielded."""
    current_key, members = "", {}
    for member in tar:
        if not member.isfile():
            continue
        sample_key, extension = split_member_name(member.name)
        if sample_key != current_key and members:
            yield current_key, members
            members = {}
        current_key = sample_key
        members[extension] = member if extension in IMAGE_EXTENSIONS else member_bytes(tar, member)
    if members:  # every member of it was read whole: a break after it is in a later header
        yield current_key, members
    check_archive_end(tar)


def member_bytes(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes | BadRecord:
    try:
        return tar.extractfile(member).read()
    except TAR_READ_ERRORS as exc:
        return BadRecord(f"cannot read member {member.name}: {exc}")


def check_archive_end(tar: tarfile.TarFile) -> None:
    """Raise ``tarfile.ReadError`` unless iteration stopped at the end-of-archive marker.

    tarfile stops silently at a truncated or garbled header after the first one; the block where
    it stopped tells a broken stream from a complete one.
    """
    tar.fileobj.seek(tar.offset)
    block = tar.fileobj.read(tarfile.BLOCKSIZE)
    if block == bytes(tarfile.BLOCKSIZE):
        return
    if not block:
        raise tarfile.ReadError(f"no end-of-archive marker at byte {tar.offset} (file truncated?)")
    if len(block) < tarfile.BLOCKSIZE:
        raise tarfile.ReadError(f"truncated member header at byte {tar.offset}")
    raise tarfile.ReadError(f"invalid member header at byte {tar.offset}")


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
    unreadable = next((m for m in members.values() if isinstance(m, BadRecord)), None)
    if unreadable is not None:
        raise unreadable
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
