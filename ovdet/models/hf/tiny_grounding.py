"""Tiny random-init Grounding DINO and MM Grounding DINO model folders, for tests and CPU smoke runs.

The real tokenizer (BERT-base-uncased WordPiece, ``tiny.bert_tokenizer``) keeps the ids the model
treats as phrase delimiters (``[CLS]``, ``[SEP]``, ``.``, ``?``) right; everything else is shrunk
so a folder builds and runs in about a second on a CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ovdet.errors import OvdetError

# The Grounding DINO config fields ``write_tiny_grounding_dino(**small)`` may override.
TINY_GROUNDING_CONFIG: dict[str, Any] = {
    "d_model": 32,  # the input projections' GroupNorm(32, d_model) needs a multiple of 32
    "encoder_layers": 1, "decoder_layers": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64,
    "encoder_attention_heads": 2, "decoder_attention_heads": 2, "num_queries": 12,
    "num_feature_levels": 3, "encoder_n_points": 2, "decoder_n_points": 2,
    "max_text_len": 32,  # small, so a handful of names already needs two prompts (chunking)
}  # fmt: skip


def tiny_swin_config(image_size: int):
    """A three-stage Swin (Grounding DINO's backbone family) with 16/32/64 channels; stages 2 and 3 feed
    the encoder, the third feature level comes from the model's own stride-2 projection."""
    from transformers import SwinConfig

    return SwinConfig(image_size=image_size, patch_size=4, embed_dim=16, depths=[1, 1, 1], num_heads=[1, 1, 2],
                      window_size=4, out_indices=[2, 3])  # fmt: skip


def tiny_bert_config():
    """A one-layer BERT with the full uncased vocabulary (the tokenizer's ids must all embed)."""
    from transformers import BertConfig

    return BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64)  # fmt: skip


def tiny_grounding_config(kind: str, image_size: int, **small):
    from transformers import GroundingDinoConfig, MMGroundingDinoConfig

    unknown = sorted(set(small) - set(TINY_GROUNDING_CONFIG))
    if unknown:
        raise OvdetError(f"tiny {kind}: unknown size options {unknown}; expected some of {sorted(TINY_GROUNDING_CONFIG)}")
    config_class = MMGroundingDinoConfig if kind == "mm-grounding-dino" else GroundingDinoConfig
    return config_class(backbone_config=tiny_swin_config(image_size), text_config=tiny_bert_config(),
                        **{**TINY_GROUNDING_CONFIG, **small})  # fmt: skip


def write_tiny_grounding_dino(folder: Path, kind: str = "grounding-dino", image_size: int = 64, seed: int = 0,
                              **small) -> Path:
    """A random-init Grounding DINO (``grounding-dino``) or MM Grounding DINO (``mm-grounding-dino``)
    with its processor, saved to ``folder``; ``small`` overrides ``TINY_GROUNDING_CONFIG`` fields.

    The image processor resizes the longer side to ``image_size`` (``shortest_edge`` = ``longest_edge``),
    so ovdet's training canvas (``size["longest_edge"]``) is ``image_size`` too.
    """
    import torch

    if kind not in ("grounding-dino", "mm-grounding-dino"):
        raise OvdetError(f"tiny Grounding DINO kind '{kind}': expected grounding-dino or mm-grounding-dino")
    torch.manual_seed(seed)
    config = tiny_grounding_config(kind, image_size, **small)
    return write_grounding_dino(folder, config, {"shortest_edge": image_size, "longest_edge": image_size})


def write_grounding_dino(folder: Path, config, size: dict[str, int]) -> Path:
    """A random-init model of ``config`` with a BERT-uncased processor resizing to ``size``, saved."""
    from transformers import GroundingDinoImageProcessor, GroundingDinoProcessor
    from transformers.utils import logging as hf_logging

    from ovdet.models.hf.common import hf_model_class
    from ovdet.models.hf.tiny import bert_tokenizer

    model = hf_model_class(config.model_type)(config)
    processor = GroundingDinoProcessor(GroundingDinoImageProcessor(size=size), bert_tokenizer())
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    had_progress_bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Writing model shards" on every test run
    try:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
    finally:
        if had_progress_bar:
            hf_logging.enable_progress_bar()
    return folder
