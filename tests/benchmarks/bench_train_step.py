"""One training step (forward + backward + AdamW) of the default offline model at batch 8 on this CPU.

Prints samples/s and peak RSS, and, side by side in the same run, the same step of a peer: the
image tower alone (timm tf_efficientnet_lite0 at the same input size with a plain mean loss), so
the ratio shows what the heads, the text tower and the losses add on top of the backbone.
"""

import argparse
import resource
import time

import numpy as np
import torch

from ovdet.config import LossConfig, ModelConfig
from ovdet.models import create_detector
from ovdet.train.task import DetectionTask


def make_batch(batch_size: int, size: int, rng, num_texts: int = 60) -> dict:
    """Per image ``num_texts`` "colourC shapeS" names and 1-8 boxes labelled among them."""
    texts, labels, boxes = [], [], []
    for _ in range(batch_size):
        n = int(rng.integers(1, 9))
        names = [f"colour{c} shape{s}" for c, s in rng.integers(0, 8, size=(num_texts, 2))]
        texts.append(names)
        labels.append(torch.as_tensor(rng.integers(0, num_texts, size=n)))
        centers = rng.uniform(0.2, 0.8, size=(n, 2))
        sides = rng.uniform(0.1, 0.4, size=(n, 2))
        boxes.append(torch.as_tensor(np.concatenate([centers, sides], 1), dtype=torch.float32))
    return {
        "images": torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8),
        "texts": texts, "labels": labels, "boxes": boxes,
        "image_labels": [torch.zeros(0, dtype=torch.long)] * batch_size,
        "has_boxes": torch.ones(batch_size, dtype=torch.bool),
    }


def time_steps(step, repeats: int) -> float:
    step()  # warm-up (text cache, allocator)
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    batch = make_batch(args.batch_size, args.size, rng)

    task = DetectionTask(create_detector(ModelConfig(), input_size=args.size), LossConfig()).train()
    optimizer = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-4)

    def ours():
        loss, _ = task(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    import timm

    backbone = timm.create_model("tf_efficientnet_lite0", num_classes=0).train()
    peer_optimizer = torch.optim.AdamW(backbone.parameters(), lr=1e-4)
    pixels = batch["images"].float() / 127.5 - 1

    def peer():
        backbone.forward_features(pixels).mean().backward()
        peer_optimizer.step()
        peer_optimizer.zero_grad(set_to_none=True)

    ours_s, peer_s = time_steps(ours, args.repeats), time_steps(peer, args.repeats)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"threads {torch.get_num_threads()}, batch {args.batch_size}, input {args.size}px")
    print(f"ours (ovdet train step): {ours_s * 1000:.0f} ms/step, {args.batch_size / ours_s:.1f} samples/s")
    print(f"peer (EfficientNet-Lite0 backbone step alone): {peer_s * 1000:.0f} ms/step, {args.batch_size / peer_s:.1f} samples/s")
    print(f"ratio (ours/peer time): {ours_s / peer_s:.2f}x   peak RSS {rss:.0f} MiB")


if __name__ == "__main__":
    main()
