"""WebDataset tar shards: deterministic atomic writes, checksums, the manifest, random access.

A shard holds ``KEY.jpg`` + ``KEY.json`` per sample (see docs/data-format.md). Tars are written
with fixed mtime/owner so the same records always give byte-identical shards, under a temporary
name first and renamed into place, so a killed writer never leaves a partial tar visible. Each
member carries the CRC-32 of its bytes in a POSIX (pax) header record, ``OVDET.crc32``: readers that
know it check every sample they read, so a shard changed or cut after it was written is an error
naming the shard and the sample, never a silently different sample (other tar readers ignore it).
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ovdet.errors import OvdetError
from ovdet.fileio import read_json

MANIFEST = "manifest.json"
REJECTED = "rejected.jsonl"
CRC_RECORD = "OVDET.crc32"  # pax header record of every member: its payload's CRC-32, 8 hex digits


def write_tar_atomic(path: Path, samples: list[tuple[str, bytes, dict]]) -> None:
    """Write ``(key, jpeg_bytes, record_json)`` samples to ``path`` atomically and reproducibly.

    The layout is WebDataset's (``KEY.jpg`` then ``KEY.json`` per sample). It is written with the
    standard library's tarfile rather than ``webdataset.TarWriter`` because importing webdataset
    imports torch, which costs every Ray worker seconds of start-up for nothing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(temp, "wb") as stream:
        with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for key, jpeg, record_json in samples:
                add_member(tar, f"{key}.jpg", jpeg)
                add_member(tar, f"{key}.json", json.dumps(record_json, sort_keys=True).encode())
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temp, path)


def add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mtime = 0  # fixed metadata: the same samples always give byte-identical shards
    info.mode = 0o444
    info.uname = info.gname = "ovdet"
    info.pax_headers = {CRC_RECORD: f"{zlib.crc32(payload):08x}"}
    tar.addfile(info, io.BytesIO(payload))


def read_manifest(shard_dir: Path) -> dict[str, Any]:
    path = Path(shard_dir) / MANIFEST
    if not path.is_file():
        raise OvdetError(f"{path}: no manifest; run `ovdet shard` first")
    return read_json(path, dict)


@dataclass(frozen=True)
class SampleLocation:
    """Byte ranges of one sample's members inside a tar (for random access), and their CRC-32s
    (None in shards written before members carried them)."""

    key: str
    jpg_offset: int
    jpg_size: int
    json_offset: int
    json_size: int
    jpg_crc32: int | None = None
    json_crc32: int | None = None


def index_tar(path: Path) -> list[SampleLocation]:
    """Scan tar headers (not data) and return each sample's member byte ranges, in tar order."""
    members: dict[str, dict[str, tuple[int, int, int | None]]] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for info in tar:
                key, _, ext = info.name.partition(".")
                crc = info.pax_headers.get(CRC_RECORD)
                members.setdefault(key, {})[ext] = (info.offset_data, info.size, int(crc, 16) if crc else None)
    except (OSError, tarfile.TarError, ValueError) as exc:
        raise OvdetError(f"{path}: cannot index shard: {getattr(exc, 'strerror', None) or exc}") from None
    return [
        SampleLocation(key, *parts["jpg"][:2], *parts["json"][:2], parts["jpg"][2], parts["json"][2])
        for key, parts in members.items()
        if "jpg" in parts and "json" in parts
    ]


def checked_member(shard: Path, key: str, member: str, payload: bytes, size: int, crc32: int | None) -> bytes:
    """``payload`` if it is the ``size`` bytes with the CRC-32 the shard was written with; else the
    error naming the shard and the sample (the file changed, was cut or replaced after indexing)."""
    if len(payload) != size:
        raise OvdetError(f"{shard}: sample {key}: {key}.{member} is cut short ({len(payload)} of {size} bytes); "
                         "the shard changed after it was written")
    if crc32 is not None and zlib.crc32(payload) != crc32:
        raise OvdetError(f"{shard}: sample {key}: {key}.{member} does not match its CRC-32; "
                         "the shard changed after it was written")
    return payload


def read_member(stream: io.BufferedReader, shard: Path, location: SampleLocation, member: str) -> bytes:
    """One member (``jpg`` or ``json``) of a sample, read from the open ``shard`` and checked
    (``checked_member``)."""
    offset, size = getattr(location, f"{member}_offset"), getattr(location, f"{member}_size")
    crc32 = getattr(location, f"{member}_crc32")
    return checked_member(shard, location.key, member, read_range(stream, offset, size), size, crc32)


def read_range(stream: io.BufferedReader, offset: int, size: int) -> bytes:
    stream.seek(offset)
    return stream.read(size)
