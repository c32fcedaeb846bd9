"""Image loading for the shard stage: decode fully, orient, convert to RGB, resize, JPEG bytes out.

``load_image(record)`` reads ``record.image_path`` (or the tar member named in
``record.meta["image_bytes_from"]``), forces a full decode so corrupt or truncated files are
caught here and not at training time, and returns ``(jpeg_bytes, updated_record)``. The
original bytes are returned unchanged when the image is an RGB JPEG that needs no EXIF rotation
and no resize; otherwise the image is re-encoded (deterministically, same input -> same bytes).

Every failure is a ``RecordError`` with a short reason, never another exception, because the
decoder runs on untrusted bytes and one bad image must not stop a shard job.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re
import tarfile
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image, ImageFile, ImageOps

from ovdet.data.records import Record
from ovdet.errors import RecordError

EXIF_ORIENTATION = 0x0112
WHITE = (255, 255, 255, 255)


def load_image(
    record: Record, max_side: int = 0, jpeg_quality: int = 92, max_pixels: int = 89_478_485
) -> tuple[bytes, Record]:
    """JPEG bytes of the record's image and a copy of the record with the final size and boxes.

    The copy's meta drops ``image_bytes_from`` (a local path) and gains ``exif_orientation``,
    ``converted_from`` and ``resized_from`` when those steps happened.

    Args:
        record: its ``width``/``height``, when non-zero, must match the decoded image after EXIF.
        max_side: resize so the longer side is at most this (boxes scaled); 0 keeps the size.
        jpeg_quality: quality of re-encoded images.
        max_pixels: images with more pixels are rejected as decompression bombs (0: no limit).

    Raises:
        RecordError: missing or unreadable file, corrupt/truncated image, too many pixels,
            size disagreeing with the annotation.
    """
    data = read_image_bytes(record)
    image, orientation = decode(record.key, data, max_pixels)
    check_annotated_size(record, image.size)
    meta = dict(record.meta)
    meta.pop("image_bytes_from", None)  # a local path, like image_path it stays out of the shards
    if orientation:
        meta["exif_orientation"] = orientation
    if image.mode != "RGB":
        meta["converted_from"] = image.mode
    is_original_jpeg = image.format == "JPEG" and image.mode == "RGB" and not orientation
    icc_profile = image.info.get("icc_profile") if image.mode == "RGB" else None
    rgb = to_rgb(image)
    boxes = record.boxes
    if max_side and max(rgb.size) > max_side:
        meta["resized_from"] = list(rgb.size)
        old_width, old_height = rgb.size
        rgb, boxes = resize(rgb, boxes, max_side)
        if "areas" in meta:  # COCO segment areas scale with the pixel count
            factor = rgb.size[0] * rgb.size[1] / (old_width * old_height)
            meta["areas"] = [area * factor for area in meta["areas"]]
        is_original_jpeg = False
    output = data if is_original_jpeg else encode_jpeg(rgb, jpeg_quality, icc_profile)
    width, height = rgb.size
    return output, dataclasses.replace(record, width=width, height=height, boxes=boxes, meta=meta)


def read_image_bytes(record: Record) -> bytes:
    """The encoded image: from the tar member in ``meta["image_bytes_from"]`` or from ``image_path``."""
    if "image_bytes_from" in record.meta:
        return read_tar_member(record.key, record.meta["image_bytes_from"])
    if not record.image_path:
        raise RecordError(record.key, "no image path")
    try:
        with open(record.image_path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise missing_image(record.key, record.image_path) from None
    except OSError as exc:
        raise RecordError(record.key, f"cannot read image file: {exc.strerror or exc}") from None


def missing_image(key: str, path: str) -> RecordError:
    """The rejection of a record whose image file does not exist (also what a dry run reports)."""
    return RecordError(key, f"image file not found: {path}")


def read_tar_member(key: str, where: dict[str, Any]) -> bytes:
    """Bytes of ``where["member"]`` in ``where["tar"]``; a direct seek when offset/size are known."""
    try:
        if "offset" in where and "size" in where:
            with open(where["tar"], "rb") as handle:
                handle.seek(where["offset"])
                data = handle.read(where["size"])
            if len(data) != where["size"]:
                raise RecordError(key, "image member is truncated in tar")
            return data
        with tarfile.open(where["tar"], "r:*") as tar:
            member = tar.extractfile(where["member"])
            if member is None:
                raise RecordError(key, "image member is not a file in tar")
            return member.read()
    except KeyError:
        raise RecordError(key, f"image member not found in tar: {where['member']}") from None
    except FileNotFoundError:
        raise RecordError(key, f"image tar not found: {where['tar']}") from None
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise RecordError(key, f"cannot read image tar: {exc}") from None


@contextlib.contextmanager
def strict_decoding(max_pixels: int) -> Iterator[None]:
    """PIL settings for one decode: pixel limit ``max_pixels``, bomb warnings as errors, no truncation.

    PIL keeps these as module globals; they are set and restored around each call (the shard
    stage decodes one image at a time per process).
    """
    previous = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    Image.MAX_IMAGE_PIXELS = max_pixels if max_pixels > 0 else None
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = previous


def decode(key: str, data: bytes, max_pixels: int) -> tuple[Image.Image, int]:
    """Fully decoded image in EXIF orientation (source mode kept), and the orientation applied (0: none)."""
    if not data:
        raise RecordError(key, "image file is empty (0 bytes)")
    try:
        with strict_decoding(max_pixels):
            image = Image.open(io.BytesIO(data))
            image.load()
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
            if orientation not in range(2, 9):
                return image, 0
            return ImageOps.exif_transpose(image), orientation
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise RecordError(key, f"image has more than {max_pixels} pixels (decompression bomb)") from None
    except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError, struct.error, ...
        reason = re.sub(r" <[^>]* at 0x[0-9a-f]+>", "", str(exc))  # no memory addresses: stable rejected.jsonl
        raise RecordError(key, f"cannot decode image: {reason}") from None


def check_annotated_size(record: Record, size: tuple[int, int]) -> None:
    width, height = size
    if record.width and record.height and (record.width, record.height) != (width, height):
        raise RecordError(
            record.key,
            f"image size {width}x{height} disagrees with annotation {record.width}x{record.height}",
        )


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB view of any mode: alpha composited on white, 16-bit scaled to 8-bit, the rest converted."""
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode.startswith("I;16"):
        pixels = np.asarray(image).astype(np.uint16)
        image = Image.fromarray((pixels >> 8).astype(np.uint8), "L")
    if "A" in image.getbands():
        background = Image.new("RGBA", image.size, WHITE)
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def resize(
    image: Image.Image, boxes: list[list[float]], max_side: int
) -> tuple[Image.Image, list[list[float]]]:
    """Shrink so the longer side is ``max_side``; boxes scaled by the actual per-axis factors."""
    width, height = image.size
    scale = max_side / max(width, height)
    new_width, new_height = max(1, round(width * scale)), max(1, round(height * scale))
    scale_x, scale_y = new_width / width, new_height / height
    scaled = [[x1 * scale_x, y1 * scale_y, x2 * scale_x, y2 * scale_y] for x1, y1, x2, y2 in boxes]
    return image.resize((new_width, new_height), Image.Resampling.BICUBIC), scaled


def encode_jpeg(image: Image.Image, quality: int, icc_profile: bytes | None) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, icc_profile=icc_profile)
    return buffer.getvalue()
