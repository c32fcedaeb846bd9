"""WebDataset tar shards: deterministic atomic writes, checksums, the manifest, random access.

A shard holds ``KEY.jpg`` + ``KEY.json`` per sample (see docs/data-format.md). Tars are written
with fixed mtime/owner so the same records always give byte-identical shards, under a temporary
name first and renamed into place, so a killed writer never leaves a partial tar visible.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ovdet.errors import OvdetError
from ovdet.fileio import read_json

MANIFEST = "manifest.json"
REJECTED = "rejected.jsonl"


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
        with tarfile.open(fileobj=stream, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
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
    tar.addfile(info, io.BytesIO(payload))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(shard_dir: Path) -> dict[str, Any]:
    path = Path(shard_dir) / MANIFEST
    if not path.is_file():
        raise OvdetError(f"{path}: no manifest; run `ovdet shard` first")
    return read_json(path, dict)


@dataclass(frozen=True)
class SampleLocation:
    """Byte ranges of one sample's members inside a tar (for random access)."""

    key: str
    jpg_offset: int
    jpg_size: int
    json_offset: int
    json_size: int


def index_tar(path: Path) -> list[SampleLocation]:
    """Scan tar headers (not data) and return each sample's member byte ranges, in tar order."""
    members: dict[str, dict[str, tuple[int, int]]] = {}
    with tarfile.open(path, "r:") as tar:
        for info in tar:
            key, _, ext = info.name.partition(".")
            members.setdefault(key, {})[ext] = (info.offset_data, info.size)
    return [
        SampleLocation(key, *parts["jpg"], *parts["json"])
        for key, parts in members.items()
        if "jpg" in parts and "json" in parts
    ]


def read_range(stream: io.BufferedReader, offset: int, size: int) -> bytes:
    stream.seek(offset)
    return stream.read(size)
