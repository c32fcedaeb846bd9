"""The ``transformers`` detectors through ovdet, next to the default model, on this CPU.

One row per backend and size: parameters (total, and trainable with the text tower frozen, as the
demo trains), the training step at the demo's batch (8 images, 60 texts each; ``DetectionTask``
forward + backward + AdamW), inference (``Detector.detect``, 16 PIL images, a 60-name vocabulary,
batch 8), and the **overhead ratio**: the same step through ovdet against its peer, a plain loop
that calls the ``transformers`` module directly with the same ``SetCriterion``, weights, targets,
freezing and AdamW, measured side by side (the two steps alternate, medians are compared).

The plain OWL loop tokenizes each image's texts every step and runs them through the frozen text
tower inside the module's forward (``input_ids`` ``[B*T, L]``); ovdet caches frozen text embeddings,
which is part of what it saves. Grounding DINO reads the names in its prompt: with 60 names the
tiny models' 32-token prompts need several chunks (one forward each, column ``chunks``), so the ratio
is measured on names that fit one prompt (the largest count that does, ``ratio texts``), on both sides.
HF rows use tiny random-init models (``write_tiny_model``) written at the listed size.
"""

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_train_step import make_batch  # the sibling benchmark (its folder is on sys.path when run)
from PIL import Image
from transformers.utils import logging as hf_logging

from ovdet.config import LossConfig, ModelConfig
from ovdet.infer import Detector
from ovdet.losses.criterion import SetCriterion, weighted_sum
from ovdet.losses.matcher import build_matcher
from ovdet.models import create_detector
from ovdet.models.hf.common import hf_model_class, hf_spec
from ovdet.models.hf.tiny import write_tiny_model
from ovdet.train.task import DetectionTask

BACKENDS = ("default", "owlvit", "owlv2", "grounding-dino", "mm-grounding-dino")
TINY_SIZES = (64, 128)  # the tiny models' native size, and a larger tiny scale
NAMES = [f"colour{c} shape{s}" for c in range(8) for s in range(8)]


def median_seconds(steps: dict[str, callable], repeats: int) -> dict[str, float]:
    """One warm-up call each (text cache, allocator), then the steps alternate ``repeats`` times."""
    for step in steps.values():
        step()
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def optimizer_step(loss_fn, parameters) -> callable:
    """``loss_fn() -> loss`` -> one forward + backward + AdamW step, as a callable."""
    optimizer = torch.optim.AdamW([p for p in parameters if p.requires_grad], lr=1e-4)

    def step():
        loss_fn().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def ovdet_step(detector, batch) -> callable:
    task = DetectionTask(detector, LossConfig()).train()
    return optimizer_step(lambda: task(batch)[0], task.parameters())


def plain_module(detector, folder: str):
    """The same weights as a bare ``transformers`` module, trainable exactly where ovdet's is
    (0-dim parameters, buffers in ovdet, are in no detection loss: frozen)."""
    hf_logging.disable_progress_bar()  # building an ovdet detector enables it again
    module = hf_model_class(detector.spec["model_type"]).from_pretrained(folder).train()
    trainable = {name.removeprefix("hf."): p.requires_grad for name, p in detector.named_parameters()}
    for name, param in module.named_parameters():
        param.requires_grad_(trainable.get(name, False))
    return module


def plain_loss(batch, logits, boxes, text_mask, criterion) -> torch.Tensor:
    columns = zip(batch["labels"], batch["boxes"], strict=True)
    targets = [{"labels": labels, "boxes": boxes_b, "has_boxes": True} for labels, boxes_b in columns]
    outputs = {"pred_logits": logits, "pred_boxes": boxes, "text_mask": text_mask}
    return weighted_sum(criterion(outputs, targets), dict(LossConfig().weights))


def normalized(images: torch.Tensor, image_processor) -> torch.Tensor:
    mean = torch.tensor(image_processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(image_processor.image_std).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def plain_owl_step(module, processor, batch) -> callable:
    """OWL's own query layout: every image's texts padded to the batch's count, ``input_ids`` ``[B*T, L]``
    (an all-padding query starts with id 0, which OWL masks)."""
    criterion = SetCriterion(build_matcher(LossConfig()), LossConfig())
    tokenizer, texts = processor.tokenizer, batch["texts"]
    width = max(len(t) for t in texts)
    interpolate = batch["images"].shape[-1] != module.config.vision_config.image_size

    def loss():
        queries = [t for names in texts for t in names + [""] * (width - len(names))]
        tokens = tokenizer(queries, padding="max_length", truncation=True, return_tensors="pt",
                           max_length=module.config.text_config.max_position_embeddings)  # fmt: skip
        text_mask = torch.tensor([[j < len(names) for j in range(width)] for names in texts])  # (b, t)
        tokens["input_ids"][~text_mask.flatten()] = 0
        out = module(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                     pixel_values=normalized(batch["images"], processor.image_processor),
                     interpolate_pos_encoding=interpolate)  # fmt: skip
        return plain_loss(batch, out.logits, out.pred_boxes, text_mask, criterion)

    return optimizer_step(loss, module.parameters())


def plain_grounding_step(module, processor, batch) -> callable:
    """One prompt per image (``"a . b ."``, every name fits), a name's logit the max over its tokens."""
    criterion = SetCriterion(build_matcher(LossConfig()), LossConfig())
    texts, images = batch["texts"], batch["images"]

    def loss():
        prompts = [" . ".join(names) + " ." for names in texts]
        tokens = processor.tokenizer(prompts, padding=True, return_offsets_mapping=True, return_tensors="pt")
        offsets = tokens.pop("offset_mapping")  # (b, l, 2)
        pixel_values = normalized(images, processor.image_processor)
        out = module(pixel_values=pixel_values, pixel_mask=torch.ones_like(pixel_values[:, 0], dtype=torch.long),
                     **tokens)  # fmt: skip
        lengths = torch.tensor([[len(name) for name in names] for names in texts])  # (b, t)
        ends = (lengths + len(" . ")).cumsum(1) - len(" . ")  # each name's [start, end) in its prompt
        starts = ends - lengths
        is_member = ((offsets[:, None, :, 0] >= starts[..., None]) & (offsets[:, None, :, 1] <= ends[..., None])
                     & (offsets[:, None, :, 1] > offsets[:, None, :, 0]))  # (b, t, l)  # fmt: skip
        token_logits = out.logits[:, :, None, : offsets.shape[1]]  # (b, q, 1, l)
        logits = token_logits.masked_fill(~is_member[:, None], float("-inf")).amax(-1)  # (b, q, t)
        text_mask = torch.ones(logits.shape[0], logits.shape[2], dtype=torch.bool)
        return plain_loss(batch, logits, out.pred_boxes, text_mask, criterion)

    return optimizer_step(loss, module.parameters())


def images_per_second(detector, size: int, repeats: int, rng) -> float:
    images = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(16)]
    model = Detector(detector, detector.spec)
    seconds = median_seconds({"detect": lambda: model.detect(images, NAMES[:60], batch_size=8)}, repeats)
    return len(images) / seconds["detect"]


def count_parameters(detector) -> tuple[int, int]:
    params = list(detector.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def measure(backend: str, size: int, folder: str | None, args, rng) -> dict:
    if folder is None:
        detector = create_detector(ModelConfig(), input_size=size)
    else:
        detector = create_detector(hf_spec("hf:" + folder), input_size=size)
        detector.set_trainable(train_text=False, train_image=True)
    total, trainable = count_parameters(detector)
    row = {"backend": backend, "size": size, "total": total, "trainable": trainable, "chunks": "-",
           "ratio_texts": "-", "ours": None, "plain": None}  # fmt: skip
    batch = make_batch(args.batch_size, size, rng, num_texts=60)
    if folder is not None and not detector.fuses_text:  # the ratio's batch is the demo's
        peer = plain_owl_step(plain_module(detector, folder), detector.processor, batch)
        row.update(median_seconds({"ours": ovdet_step(detector, batch), "plain": peer}, args.repeats))
        row["step"], row["ratio_texts"] = row["ours"], 60
    else:
        row["step"] = median_seconds({"step": ovdet_step(detector, batch)}, args.repeats)["step"]
    if folder is not None and detector.fuses_text:
        row["chunks"] = len(detector.prompt_chunks(NAMES[:60]))
        fits = min(stop for names in batch["texts"] for _, stop in detector.split_into_chunks(names)[:1])
        ratio_batch = make_batch(args.batch_size, size, rng, num_texts=fits)
        row["ratio_texts"] = fits
        peer = plain_grounding_step(plain_module(detector, folder), detector.processor, ratio_batch)
        pair = median_seconds({"ours": ovdet_step(detector, ratio_batch), "plain": peer}, args.repeats)
        row.update(pair)
    row["images_s"] = images_per_second(detector, size, max(2, args.repeats // 2), rng)
    return row


def format_row(row: dict) -> str:
    ratio = f"{row['ours'] / row['plain']:.2f}" if row["plain"] else "-"
    pair = f"{row['ours'] * 1000:.0f} / {row['plain'] * 1000:.0f}" if row["plain"] else "-"
    return (f"| {row['backend']} | {row['size']} | {row['total'] / 1e6:.2f} M | {row['trainable'] / 1e6:.2f} M "
            f"| {row['step'] * 1000:.0f} | {row['images_s']:.1f} | {row['chunks']} | {row['ratio_texts']} | {pair} "
            f"| {ratio} |")  # fmt: skip


def cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.machine())


HEADER = ("| backend | px | params | trainable | train step ms | detect img/s | chunks (60 names) | ratio texts "
          "| ovdet / plain ms | ratio |\n|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per measurement (default 15)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--quick", action="store_true", help="3 repeats, tiny models at 64 px only")
    args = parser.parse_args()
    args.repeats = args.repeats or (3 if args.quick else 15)
    torch.set_num_threads(2)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for backend in args.backends:
            sizes = [192] if backend == "default" else TINY_SIZES[:1] if args.quick else TINY_SIZES
            for size in sizes:
                folder = None
                if backend != "default":
                    folder = str(write_tiny_model(Path(scratch) / f"{backend}-{size}", backend, image_size=size))
                rows.append(measure(backend, size, folder, args, rng))
                print(format_row(rows[-1]), flush=True)
    print(f"\n{cpu_name()} ({os.cpu_count()} cores), {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}, batch {args.batch_size}, 60 texts per image, median of {args.repeats}")
    print("peer: the transformers module called directly with the same loss (module docstring)\n")
    print(HEADER)
    print("\n".join(format_row(row) for row in rows))


if __name__ == "__main__":
    main()
