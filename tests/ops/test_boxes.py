"""Box conversions and GIoU against hand-worked values and torchvision."""

import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from torchvision.ops import box_convert, box_iou, generalized_box_iou

from ovdet.ops.boxes import (
    box_area,
    box_cxcywh_to_xyxy,
    box_xywh_to_xyxy_list,
    box_xyxy_to_cxcywh_array,
    box_xyxy_to_xywh,
    clip_boxes_xyxy,
    cxcywh_l1_and_giou,
)


def random_xyxy(*shape: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(*shape, 4) valid xyxy boxes in [0, 2]."""
    corner = torch.rand(*shape, 2, generator=generator)
    size = torch.rand(*shape, 2, generator=generator) + 0.05
    return torch.cat([corner, corner + size], dim=-1)


def test_conversions_follow_hand_worked_box():
    xyxy = torch.tensor([10.0, 20.0, 50.0, 80.0])
    assert box_xyxy_to_cxcywh_array(xyxy[None].numpy()).tolist() == [[30.0, 50.0, 40.0, 60.0]]
    assert box_xyxy_to_xywh(xyxy).tolist() == [10.0, 20.0, 40.0, 60.0]
    assert box_cxcywh_to_xyxy(torch.tensor([30.0, 50.0, 40.0, 60.0])).tolist() == xyxy.tolist()
    assert box_xywh_to_xyxy_list([10.0, 20.0, 40.0, 60.0]) == xyxy.tolist()


def test_conversions_round_trip_over_leading_dims():
    boxes = random_xyxy(3, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(box_cxcywh_to_xyxy(box_convert(boxes, "xyxy", "cxcywh")), boxes)
    torch.testing.assert_close(box_convert(box_xyxy_to_xywh(boxes), "xywh", "xyxy"), boxes)
    assert box_cxcywh_to_xyxy(boxes).shape == box_xyxy_to_xywh(boxes).shape == (3, 5, 4)


def test_box_area_over_leading_dims():
    boxes = torch.tensor([[[0.0, 0.0, 2.0, 3.0], [1.0, 1.0, 2.0, 1.5]]])
    assert box_area(boxes).tolist() == [[6.0, 0.5]]


# Hand-worked pairs: (box1, box2, IoU, GIoU).
# Disjoint: unit squares 1 apart, union 2, hull [0, 3] x [0, 1] = 3: GIoU = 0 - (3 - 2) / 3.
# Nested: 2x2 inside 4x4, IoU 4/16, hull is the outer box: GIoU = IoU.
# Partial: two 2x2 squares shifted by 1 in x: inter 2, union 6, hull 3x2 = 6.
# Diagonal: unit squares touching at a corner: inter 0, union 2, hull 4: GIoU = -(4 - 2) / 4.
HAND_WORKED = [
    ([0.0, 0.0, 1.0, 1.0], [2.0, 0.0, 3.0, 1.0], 0.0, -1.0 / 3.0),
    ([0.0, 0.0, 4.0, 4.0], [1.0, 1.0, 3.0, 3.0], 0.25, 0.25),
    ([0.0, 0.0, 2.0, 2.0], [1.0, 0.0, 3.0, 2.0], 1.0 / 3.0, 1.0 / 3.0),
    ([0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 2.0, 2.0], 0.0, -0.5),
    ([0.2, 0.3, 0.7, 0.9], [0.2, 0.3, 0.7, 0.9], 1.0, 1.0),
]


@pytest.mark.parametrize("box1, box2, iou, giou", HAND_WORKED)
def test_iou_and_giou_match_hand_worked_values(box1, box2, iou, giou):
    boxes1, boxes2 = torch.tensor([box1]), torch.tensor([box2])
    assert box_iou(boxes1, boxes2).item() == pytest.approx(iou)
    assert generalized_box_iou(boxes1, boxes2).item() == pytest.approx(giou)
    cxcywh = [box_convert(b, "xyxy", "cxcywh").T[:, :, None] for b in (boxes1, boxes2)]  # (4, 1, 1)
    assert cxcywh_l1_and_giou(*cxcywh)[1].item() == pytest.approx(giou)  # the matcher's fused cost


def test_clip_boxes_xyxy_clamps_to_the_image():
    boxes = torch.tensor([[[-5.0, 10.0, 120.0, 90.0]], [[20.0, -1.0, 30.0, 200.0]]])
    clipped = clip_boxes_xyxy(boxes, width=100, height=80)
    assert clipped.tolist() == [[[0.0, 10.0, 100.0, 80.0]], [[20.0, 0.0, 30.0, 80.0]]]


def test_xywh_list_conversion_equals_torchvision_in_double_precision():
    """The source readers' plain-Python conversion gives what ``box_convert`` gives on float64."""
    rng = random.Random(0)
    boxes = [[rng.uniform(-50, 500), rng.uniform(-50, 500), rng.uniform(0, 300), rng.uniform(0, 300)]
             for _ in range(200)]
    expected = box_convert(torch.tensor(boxes, dtype=torch.float64), "xywh", "xyxy").tolist()
    assert [box_xywh_to_xyxy_list(box) for box in boxes] == expected


@pytest.mark.parametrize("box", [None, [1.0, 2.0, 3.0], [1, 2, "3", 4], [True, 0, 1, 1], "0 0 1 1"])
def test_xywh_list_conversion_passes_malformed_boxes_on_for_validation(box):
    assert box_xywh_to_xyxy_list(box) is box


def test_importing_box_ops_does_not_load_torch():
    """The shard stage's readers use the list conversion in processes that never load torch."""
    code = "import sys, ovdet.ops.boxes; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_array_conversion_equals_torchvision_bit_for_bit():
    """The loader's numpy conversion gives exactly what ``box_convert`` gives on the same float32 boxes."""
    boxes = random_xyxy(50, generator=torch.Generator().manual_seed(3)) * 300
    converted = box_xyxy_to_cxcywh_array(boxes.numpy())
    assert converted.dtype == np.float32
    assert torch.equal(torch.from_numpy(converted), box_convert(boxes, "xyxy", "cxcywh"))


def test_batched_box_iou_equals_torchvision_per_batch_item_and_broadcasts():
    from ovdet.ops.boxes import batched_box_iou

    generator = torch.Generator().manual_seed(0)
    corners = torch.rand(3, 7, 2, 2, generator=generator).sort(dim=2).values
    boxes1 = corners.transpose(2, 3).reshape(3, 7, 4)[..., [0, 2, 1, 3]]  # x1 y1 x2 y2 from sorted pairs
    boxes2 = boxes1.flip(1)[:, :5]
    iou = batched_box_iou(boxes1, boxes2)
    for b in range(3):
        torch.testing.assert_close(iou[b], box_iou(boxes1[b], boxes2[b]))
    broadcast = torch.stack([box_iou(boxes1[0], boxes2[b]) for b in range(3)])  # [N, 4] with [B, M, 4]
    torch.testing.assert_close(batched_box_iou(boxes1[0], boxes2), broadcast)
    assert batched_box_iou(torch.zeros(1, 4), torch.zeros(1, 4)).item() == 0.0  # empty pair: 0, not NaN


def test_numpy_cxcywh_to_xyxy_inverts_xyxy_to_cxcywh():
    from ovdet.ops.boxes import box_cxcywh_to_xyxy_array

    xyxy = np.array([[0.1, 0.2, 0.5, 0.9], [0.0, 0.0, 1.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(box_cxcywh_to_xyxy_array(box_xyxy_to_cxcywh_array(xyxy)), xyxy, atol=1e-7)
    assert box_cxcywh_to_xyxy_array(xyxy).dtype == np.float32
