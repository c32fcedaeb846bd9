"""Expected GPU memory of fine-tuning the real OWL-ViT / OWLv2 / Grounding DINO checkpoints through
ovdet with bf16 and ZeRO-2, computed on a CPU from the real architectures (random init, no download).

Per GPU, for P parameters of which P_t train, N data-parallel ranks and b images per rank:

    weights (bf16)                 2 P
    gradients (bf16, ZeRO-2)       2 P_t / N   (+ DeepSpeed's reduce buckets, 2 x 5e8 elements max)
    fp32 master + Adam m, v        12 P_t / N
    activations                    b x A, A = the bytes autograd saves for one image's backward

A is measured, not guessed: one image goes through ovdet's training forward (``predict`` + the
criterion's inputs) at the checkpoint's native resolution with the text tower frozen, and a
``saved_tensors_hooks`` pair sums the distinct storages autograd keeps. It runs in fp32 on the
CPU; bf16 halves it. Gradient checkpointing (``model.grad_checkpointing=true``) keeps only each
checkpointed layer's input; the script measures that too.

    .venv/bin/python scripts/hf_memory.py [--models owlv2 owlvit grounding-dino] [--gpus 8 --batch 4]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

# the published checkpoints' architectures (their config.json), and the canvas ovdet trains them on
REAL = {
    "owlvit": ("google/owlvit-base-patch32", {"vision": {"image_size": 768, "patch_size": 32}}, 768),
    "owlv2": ("google/owlv2-base-patch16-ensemble", {"vision": {"image_size": 960, "patch_size": 16}}, 960),
    "grounding-dino": ("IDEA-Research/grounding-dino-tiny", {}, 1333),
}
GIB = 1024**3


def write_real_size_model(kind: str, folder: Path) -> Path:
    """A random-init model of the checkpoint's architecture, with a processor, as a folder."""
    from ovdet.models.hf import tiny

    if kind in ("owlvit", "owlv2"):
        from transformers import Owlv2Config, OwlViTConfig

        vision = REAL[kind][1]["vision"]
        config = (Owlv2Config if kind == "owlv2" else OwlViTConfig)(
            text_config={"max_position_embeddings": 16}, vision_config=vision, projection_dim=512)
        return tiny.write_owl(folder, config)
    from transformers import GroundingDinoConfig

    from ovdet.models.hf.tiny_grounding import write_grounding_dino

    # the defaults are grounding-dino-tiny's: Swin-T, BERT-base, 900 queries, 256 text tokens
    return write_grounding_dino(folder, GroundingDinoConfig(), {"shortest_edge": 800, "longest_edge": 1333})


def saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd saves while ``fn`` runs (its backward's activations)."""
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def measure(kind: str, texts_per_image: int, canvas: int | None = None) -> dict:
    from ovdet.models.factory import create_detector
    from ovdet.models.hf.common import hf_spec

    with tempfile.TemporaryDirectory() as scratch:
        folder = write_real_size_model(kind, Path(scratch) / kind)
        canvas = canvas or REAL[kind][2]
        detector = create_detector(hf_spec("hf:" + str(folder)), load_weights=True, input_size=canvas)
    detector.set_trainable(train_text=False, train_image=True)
    detector.train()
    towers = {"text": 0, "image": 0, "heads": 0}
    for name, param in detector.named_parameters():
        towers[detector.tower_of(name)] += param.numel()
    trainable = sum(p.numel() for p in detector.parameters() if p.requires_grad)
    images = torch.randint(0, 256, (1, 3, canvas, canvas), dtype=torch.uint8)
    names = [[f"object {i}" for i in range(texts_per_image)]]
    result = {"kind": kind, "checkpoint": REAL[kind][0], "canvas": canvas, "params": sum(towers.values()),
              "trainable": trainable, **{f"params_{k}": v for k, v in towers.items()}}  # fmt: skip
    def forward():
        out, _ = detector.predict(images, names)
        return out.pred_logits.float().sigmoid().mean() + out.pred_boxes.mean()

    for checkpointing in (False, True):
        detector.set_grad_checkpointing(checkpointing)
        result["activations_checkpointed" if checkpointing else "activations"] = saved_bytes(forward)
    return result


def per_gpu(row: dict, gpus: int, batch: int, checkpointing: bool) -> float:
    activations = row["activations_checkpointed" if checkpointing else "activations"] / 2  # bf16
    return (2 * row["params"] + 14 * row["trainable"] / gpus + batch * activations) / GIB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(REAL))
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--texts", type=int, default=20, help="names per image (Grounding DINO: one prompt)")
    parser.add_argument("--canvas", type=int, default=None, help="measure at this canvas side instead of the native one")
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = [measure(kind, args.texts, args.canvas) for kind in args.models]
    print(f"| checkpoint | canvas | params (M) | trainable (M) | activations / image, bf16 (GiB) | "
          f"with grad. checkpointing | per GPU, {args.gpus} GPUs x {args.batch} images (GiB) | with checkpointing |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['checkpoint']} | {row['canvas']} | {row['params'] / 1e6:.1f} | {row['trainable'] / 1e6:.1f} | "
              f"{row['activations'] / 2 / GIB:.2f} | {row['activations_checkpointed'] / 2 / GIB:.2f} | "
              f"{per_gpu(row, args.gpus, args.batch, False):.1f} | {per_gpu(row, args.gpus, args.batch, True):.1f} |")


if __name__ == "__main__":
    main()
