"""Image-text pairs as rows: JSONL and Parquet (LAION-style lists, img2dataset input and output).

JSONL / Parquet rows: column names match case-insensitively (LAION's ``URL`` / ``TEXT``), the
first column present with a non-null value wins. The image is a local path (relative paths
resolve against the image root) or a ``file://`` URL (img2dataset keeps the input URL, which for
local files is ``file:///abs/a.jpg``); remote URLs are rejected: download them with img2dataset
and read its tars with format ``wds``. A row whose img2dataset ``status`` is not ``success`` has
no image and is rejected. The key comes from the row's ``key``, ``id`` or ``sample_id`` when
present, else from the row number (JSONL: line number, Parquet: 0-based row). A line or row group
that does not decode rejects its rows; only a file that cannot be opened is fatal.
img2dataset's own output (WebDataset tars) is read by ``webdataset``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from urllib.request import url2pathname

from ovdet.config import SourceConfig
from ovdet.data.records import Record
from ovdet.data.sources.common import (
    BadLine,
    BadRecord,
    CategoryTable,
    check_caption,
    file_tags,
    image_root,
    input_files,
    line_error,
    make_key,
    read_jsonl,
    resolve,
)
from ovdet.errors import OvdetError, RecordError

# Local-path columns come before URL columns: a row with both is read from disk.
IMAGE_COLUMNS = (
    "image",
    "image_path",
    "filepath",
    "file_path",
    "path",
    "file_name",
    "filename",
    "url",
    "image_url",
)
CAPTION_COLUMNS = ("caption", "text", "txt", "alt_text", "alt")
KEY_COLUMNS = ("key", "id", "sample_id")
REMOTE_URL = "remote image URL (download it with img2dataset, then shard its tars with format wds)"
URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def read_image_text_jsonl(
    source: SourceConfig, root: Path, categories: CategoryTable | None = None
) -> Iterator[Record | RecordError]:
    """One image-text record per non-blank line of every JSONL in ``source.paths``; a line that
    does not parse is rejected with record id ``path:line``. ``categories``: unused (no table)."""
    yield from read_rows(source, root, jsonl_rows)


def read_image_text_parquet(
    source: SourceConfig, root: Path, categories: CategoryTable | None = None
) -> Iterator[Record | RecordError]:
    """One image-text record per row of every Parquet file in ``source.paths``. ``categories``: unused."""
    yield from read_rows(source, root, parquet_rows)


def read_rows(
    source: SourceConfig, root: Path, rows_of: Callable[[Path], Iterator[tuple[int, Any]]]
) -> Iterator[Record | RecordError]:
    """The record of every ``(row number, row)`` that ``rows_of`` gives per file; a row it already
    rejected (a ``RecordError``) passes through."""
    images_dir = image_root(source, root)
    files = input_files(source, root)
    tags = file_tags(files)
    for path in files:
        for row_number, row in rows_of(path):
            if isinstance(row, RecordError):
                yield row
            else:
                yield row_record(source.name, row, row_number, images_dir, tags[path])


def jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line number, value)`` per non-blank line; a line that does not parse is its rejection."""
    for line_number, row in read_jsonl(path):
        yield line_number, line_error(path, line_number, row) if isinstance(row, BadLine) else row


def parquet_rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | RecordError]]:
    """``(0-based row, row)`` per row of the file, read one row group at a time so a corrupt
    group costs only its own rows. A file that is not Parquet raises ``OvdetError``."""
    import pyarrow.parquet as pq  # only parquet sources pay for pyarrow

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError subclasses for bad files
        raise OvdetError(f"{path}: cannot read Parquet: {one_line(exc)}") from None
    first_row = 0
    for group in range(parquet.num_row_groups):
        yield from row_group_rows(parquet, path, group, first_row)
        first_row += parquet.metadata.row_group(group).num_rows


def row_group_rows(parquet: Any, path: Path, group: int, first_row: int) -> Iterator[tuple[int, Any]]:
    """The rows of row group ``group``; from where it fails to decode, each remaining row (the
    count is in the file's metadata) is ``RecordError("{path}:row {n}", ...)``."""
    import pyarrow as pa

    row_number = first_row
    try:
        for batch in parquet.iter_batches(row_groups=[group]):
            for row in batch.to_pylist():
                yield row_number, row
                row_number += 1
    except (pa.ArrowException, OSError) as exc:
        reason = f"cannot decode row group {group}: {one_line(exc)}"
        end = first_row + parquet.metadata.row_group(group).num_rows
        yield from ((n, RecordError(f"{path}:row {n}", reason)) for n in range(row_number, end))


def one_line(exc: BaseException) -> str:
    """An exception message on one line (pyarrow's span several)."""
    return " ".join(str(exc).split())


def row_record(
    source_name: str, row: Any, row_number: int, images_dir: Path, file_tag: str = ""
) -> Record | RecordError:
    """The record of one JSONL line / Parquet row, or its rejection."""
    columns = lowercase_columns(row) if isinstance(row, dict) else {}
    row_id = columns.get(first_column(columns, KEY_COLUMNS))
    original_id = row_id if isinstance(row_id, int | str) and row_id != "" else row_number
    key = make_key(source_name, original_id, file_tag)
    try:
        if not isinstance(row, dict):
            raise BadRecord("row is not a JSON object")
        check_status(columns)
        image_path = resolve(local_path(row_image(columns)), images_dir)
        caption = row_caption(columns)
    except BadRecord as exc:
        return RecordError(key, exc.reason)
    return Record(
        key=key,
        source=source_name,
        kind="image_text",
        image_path=str(image_path),
        caption=caption,
        meta={"row": row_number},
    )


def lowercase_columns(row: dict[Any, Any]) -> dict[str, Any]:
    """The row's non-null values by lowercased column name (of two spellings, the first wins)."""
    columns: dict[str, Any] = {}
    for name, value in row.items():
        if value is not None:
            columns.setdefault(str(name).lower(), value)
    return columns


def first_column(columns: dict[str, Any], names: tuple[str, ...]) -> str | None:
    """The first of ``names`` that the row has a value in."""
    return next((name for name in names if name in columns), None)


def check_status(columns: dict[str, Any]) -> None:
    """img2dataset writes a row per input URL; only ``status == "success"`` rows have an image."""
    status = columns.get("status")
    if status is not None and status != "success":
        message = columns.get("error_message")
        raise BadRecord(f"img2dataset status {status}" + (f": {message}" if message else ""))


def row_image(columns: dict[str, Any]) -> str:
    """The value of the first image column present."""
    name = first_column(columns, IMAGE_COLUMNS)
    if name is None:
        raise BadRecord(f"missing image path (looked for columns: {', '.join(IMAGE_COLUMNS)})")
    if not isinstance(columns[name], str):
        raise BadRecord("image path is not a string")
    if not columns[name].strip():
        raise BadRecord("empty image path")
    return columns[name]


def local_path(location: str) -> str:
    """``location`` as a local path: a ``file://`` URL is percent-decoded; other URLs are rejected."""
    scheme = URL_SCHEME.match(location)
    if scheme is None:
        return location
    if scheme.group(1).lower() != "file":
        raise BadRecord(REMOTE_URL)
    url = urlsplit(location)
    if url.netloc not in ("", "localhost"):
        raise BadRecord(f"file URL on another host ({url.netloc})")
    return url2pathname(url.path)


def row_caption(columns: dict[str, Any]) -> str:
    name = first_column(columns, CAPTION_COLUMNS)
    if name is None:
        raise BadRecord(f"missing caption (looked for columns: {', '.join(CAPTION_COLUMNS)})")
    return check_caption(columns[name])
