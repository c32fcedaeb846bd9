"""load_image: full decode, EXIF orientation, RGB conversion, resize, and every failure as RecordError."""

from __future__ import annotations

import io

import pytest
from fixtures import jpeg_bytes, write_jpeg, write_png, write_wds_tar
from PIL import Image, ImageFile

from ovdet.data.images import load_image
from ovdet.data.records import Record
from ovdet.errors import RecordError


def record_for(path, width=0, height=0, boxes=None) -> Record:
    return Record(
        key="k",
        source="s",
        kind="detection",
        image_path=str(path),
        width=width,
        height=height,
        boxes=boxes or [],
    )


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_unchanged_rgb_jpeg_bytes_are_returned_verbatim(tmp_path):
    path = write_jpeg(tmp_path / "a.jpg", 40, 30)
    data, record = load_image(record_for(path, 40, 30))
    assert data == path.read_bytes()
    assert (record.width, record.height) == (40, 30)
    assert "converted_from" not in record.meta


def test_unknown_size_is_filled_in_from_the_image(tmp_path):
    path = write_jpeg(tmp_path / "a.jpg", 40, 30)
    _, record = load_image(record_for(path))
    assert (record.width, record.height) == (40, 30)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "I;16"])
def test_png_modes_come_back_as_rgb_jpeg(tmp_path, mode):
    path = write_png(tmp_path / "a.png", 20, 10, mode=mode)
    data, record = load_image(record_for(path, 20, 10))
    image = decoded(data)
    assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (20, 10))
    assert record.meta["converted_from"] == mode


def test_rgb_png_is_reencoded_as_jpeg_without_a_mode_note(tmp_path):
    path = write_png(tmp_path / "a.png", 20, 10, mode="RGB")
    data, record = load_image(record_for(path))
    assert decoded(data).format == "JPEG"
    assert "converted_from" not in record.meta


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_grayscale_and_cmyk_jpegs_come_back_as_rgb(tmp_path, mode):
    path = write_jpeg(tmp_path / "a.jpg", 20, 10, mode=mode)
    data, record = load_image(record_for(path))
    assert decoded(data).mode == "RGB"
    assert record.meta["converted_from"] == mode


def test_transparent_pixels_become_white(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(path)
    data, _ = load_image(record_for(path))
    assert min(decoded(data).getpixel((4, 4))) > 245


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotated_jpeg_gets_swapped_width_and_height(tmp_path, orientation):
    path = write_jpeg(tmp_path / "a.jpg", 40, 30, exif_orientation=orientation)
    data, record = load_image(record_for(path, 30, 40))
    assert (record.width, record.height) == (30, 40)
    assert decoded(data).size == (30, 40)
    assert record.meta["exif_orientation"] == orientation
    assert decoded(data).getexif().get(0x0112) is None


def test_exif_mirrored_jpeg_is_reencoded_with_the_same_size(tmp_path):
    path = write_jpeg(tmp_path / "a.jpg", 40, 30, exif_orientation=2)
    data, record = load_image(record_for(path, 40, 30))
    assert data != path.read_bytes()
    assert (record.width, record.height) == (40, 30)


def test_size_disagreeing_with_the_annotation_is_rejected(tmp_path):
    path = write_jpeg(tmp_path / "a.jpg", 40, 30)
    with pytest.raises(RecordError) as caught:
        load_image(record_for(path, 50, 30))
    assert caught.value.reason == "image size 40x30 disagrees with annotation 50x30"


def test_size_is_compared_after_exif_orientation(tmp_path):
    path = write_jpeg(tmp_path / "a.jpg", 40, 30, exif_orientation=6)
    with pytest.raises(RecordError, match="image size 30x40 disagrees with annotation 40x30"):
        load_image(record_for(path, 40, 30))


def test_resize_scales_the_longer_side_and_the_boxes(tmp_path):
    path = write_jpeg(tmp_path / "a.jpg", 80, 40)
    original = record_for(path, 80, 40, boxes=[[10.0, 4.0, 50.0, 20.0]])
    data, record = load_image(original, max_side=40)
    assert decoded(data).size == (40, 20)
    assert (record.width, record.height) == (40, 20)
    assert record.boxes == [[5.0, 2.0, 25.0, 10.0]]
    assert record.meta["resized_from"] == [80, 40]
    assert original.boxes == [[10.0, 4.0, 50.0, 20.0]] and original.width == 80


def test_image_smaller_than_max_side_is_not_resized(tmp_path):
    path = write_jpeg(tmp_path / "a.jpg", 40, 30)
    data, record = load_image(record_for(path), max_side=64)
    assert data == path.read_bytes()
    assert "resized_from" not in record.meta


def test_output_bytes_are_deterministic(tmp_path):
    path = write_png(tmp_path / "a.png", 30, 20, mode="RGBA")
    first, _ = load_image(record_for(path), max_side=16)
    second, _ = load_image(record_for(path), max_side=16)
    assert first == second


def test_missing_file_is_a_record_error(tmp_path):
    with pytest.raises(RecordError) as caught:
        load_image(record_for(tmp_path / "nope.jpg"))
    assert caught.value.reason.startswith("image file not found")
    assert caught.value.record_id == "k"


def test_corrupt_jpeg_is_a_record_error(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(RecordError, match="cannot decode image"):
        load_image(record_for(path))


@pytest.mark.parametrize("kept", [0.5, 0.99])
def test_truncated_jpeg_is_a_record_error_even_if_truncation_was_allowed_globally(
    tmp_path, monkeypatch, kept
):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = jpeg_bytes(64, 64)
    path = tmp_path / "a.jpg"
    path.write_bytes(data[: int(len(data) * kept)])
    with pytest.raises(RecordError, match="cannot decode image"):
        load_image(record_for(path))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True


@pytest.mark.parametrize("max_pixels", [1500, 700])  # over the limit: PIL warns; over twice: PIL raises
def test_decompression_bomb_is_a_record_error(tmp_path, max_pixels):
    path = write_png(tmp_path / "a.png", 40, 40)
    previous = Image.MAX_IMAGE_PIXELS
    with pytest.raises(RecordError, match="decompression bomb"):
        load_image(record_for(path), max_pixels=max_pixels)
    assert Image.MAX_IMAGE_PIXELS == previous


def test_pixel_limit_is_per_call(tmp_path):
    path = write_png(tmp_path / "a.png", 40, 40)
    _, record = load_image(record_for(path), max_pixels=1600)
    assert record.width == 40


def test_image_is_read_from_a_tar_member(tmp_path):
    image = jpeg_bytes(20, 10)
    tar = write_wds_tar(tmp_path / "a.tar", [{"jpg": image, "txt": "a cat"}])
    for where in (
        {"tar": str(tar), "member": "000000000.jpg"},
        {"tar": str(tar), "member": "000000000.jpg", "offset": 512, "size": len(image)},
    ):
        record = Record(key="k", source="s", kind="image_text", meta={"image_bytes_from": where})
        data, loaded = load_image(record)
        assert data == image and loaded.width == 20
        assert "image_bytes_from" not in loaded.meta and "image_bytes_from" in record.meta


def test_missing_tar_member_is_a_record_error(tmp_path):
    tar = write_wds_tar(tmp_path / "a.tar", [{"jpg": jpeg_bytes(), "txt": "a cat"}])
    record = Record(
        key="k",
        source="s",
        kind="image_text",
        meta={"image_bytes_from": {"tar": str(tar), "member": "x.jpg"}},
    )
    with pytest.raises(RecordError, match="image member not found in tar"):
        load_image(record)
