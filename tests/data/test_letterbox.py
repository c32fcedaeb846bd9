"""The model input's geometry: letterboxed pixels, and boxes mapped into the input and back out."""

import numpy as np
import pytest
import torch
from PIL import Image

from ovdet.data.letterbox import boxes_from_letterbox, boxes_to_letterbox, letterbox, stretch


def test_letterbox_pastes_the_resized_image_top_left_on_a_black_square():
    image = Image.new("RGB", (64, 32), (200, 100, 50))
    pixels, scale = letterbox(image, 32)
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8 and scale == 0.5
    assert (pixels[:16] == (200, 100, 50)).all()
    assert (pixels[16:] == 0).all()


def test_boxes_to_letterbox_follows_a_hand_worked_box():
    # A 64x48 image in a 32 input: scale 0.5, [10, 6, 30, 20] -> [5, 3, 15, 10] -> cxcywh
    # [10, 6.5, 10, 7] / 32; flipped in the 32-wide resized image: x [32 - 15, 32 - 5].
    box = np.array([[10.0, 6.0, 30.0, 20.0]], dtype=np.float32)
    boxes = boxes_to_letterbox(box, 0.5, 32)
    assert boxes.dtype == torch.float32
    assert boxes.tolist() == [[10 / 32, 6.5 / 32, 10 / 32, 7 / 32]]
    flipped = boxes_to_letterbox(box, 0.5, 32, flip_width=32.0)
    assert flipped.tolist() == [[22 / 32, 6.5 / 32, 10 / 32, 7 / 32]]


@pytest.mark.parametrize("scale", [0.25, 0.5, 1.7])
def test_boxes_come_back_out_where_they_went_in(scale):
    generator = torch.Generator().manual_seed(0)
    corner = torch.rand(20, 2, generator=generator) * 50
    original = torch.cat([corner, corner + torch.rand(20, 2, generator=generator) * 40 + 1], dim=1)
    size = 128
    width, height = 100, 100
    in_input = boxes_to_letterbox(original.numpy(), scale, size)
    back = boxes_from_letterbox(in_input, scale, size, width, height)
    torch.testing.assert_close(back, original.clamp(0, 100), atol=1e-4, rtol=0)


def test_boxes_from_letterbox_clips_to_the_original_image():
    # A box over the padding (right of a 40-pixel-wide image letterboxed at scale 1) ends at its edge.
    in_padding = torch.tensor([[50 / 64, 10 / 64, 40 / 64, 8 / 64]])  # xyxy [30, 6, 70, 14] in the input
    clipped = boxes_from_letterbox(in_padding, 1.0, 64, width=40, height=64)
    assert clipped.tolist() == [[30.0, 6.0, 40.0, 14.0]]


def test_stretch_resizes_each_side_and_maps_boxes_per_axis():
    # OWL-ViT's geometry: a 64x32 image stretched onto a 32 square (scale_factor 1), x by 0.5, y by 1.
    image = Image.new("RGB", (64, 32), (200, 100, 50))
    pixels, scale = stretch(image, 32)
    assert pixels.shape == (32, 32, 3) and (pixels == (200, 100, 50)).all()
    assert scale.tolist() == [0.5, 1.0, 0.5, 1.0]
    box = np.array([[10.0, 6.0, 30.0, 20.0]], dtype=np.float32)  # -> [5, 6, 15, 20] in the input
    assert boxes_to_letterbox(box, scale, 32).tolist() == [[10 / 32, 13 / 32, 10 / 32, 14 / 32]]
    assert boxes_to_letterbox(box, scale, 32, flip_width=32.0).tolist() == [[22 / 32, 13 / 32, 10 / 32, 14 / 32]]
    # scale jitter shrinks both sides onto the top-left of the black canvas
    small, small_scale = stretch(image, 32, scale_factor=0.5)
    assert (small[:16, :16] == (200, 100, 50)).all() and (small[16:] == 0).all() and (small[:, 16:] == 0).all()
    assert small_scale.tolist() == [0.25, 0.5, 0.25, 0.5]
