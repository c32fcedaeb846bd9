"""Text tower wrapper: chunked encoding and an embedding cache for fixed vocabularies."""

from __future__ import annotations

import torch
from torch import nn


class TextEncoder(nn.Module):
    """Encodes lists of strings into L2-normalised embeddings ``[N, D]``.

    When the tower is frozen (or gradients are off) embeddings are cached by text, keyed by
    (model name, prompt), and long vocabularies are encoded ``chunk_size`` texts at a time so a
    1,203-name LVIS vocabulary times several prompt templates runs in bounded memory.
    """

    def __init__(self, clip_model: nn.Module, tokenizer, model_name: str, chunk_size: int = 256):
        super().__init__()
        self.clip = clip_model
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.chunk_size = chunk_size
        self.is_frozen = False
        self.cache: dict[tuple[str, str], torch.Tensor] = {}

    def set_frozen(self, frozen: bool) -> None:
        self.is_frozen = frozen
        for param in self.clip.parameters():
            param.requires_grad_(not frozen)
        self.cache.clear()
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.is_frozen:
            self.clip.eval()  # frozen tower: no dropout, so cached embeddings stay valid
        else:
            self.cache.clear()  # weights may change while training
        return self

    def forward(self, texts: list[str]) -> torch.Tensor:
        """``texts`` (N strings) -> ``[N, D]`` unit-norm embeddings."""
        use_cache = self.is_frozen or not torch.is_grad_enabled()
        if not use_cache:
            return self.encode_chunked(texts)
        missing = list(dict.fromkeys(t for t in texts if (self.model_name, t) not in self.cache))
        if missing:
            with torch.no_grad():
                embeddings = self.encode_chunked(missing)
            for text, embedding in zip(missing, embeddings, strict=True):
                self.cache[(self.model_name, text)] = embedding
        return torch.stack([self.cache[(self.model_name, t)] for t in texts])

    def encode_chunked(self, texts: list[str]) -> torch.Tensor:
        device = next(self.clip.parameters()).device
        parts = []
        for start in range(0, len(texts), self.chunk_size):
            tokens = self.tokenizer(texts[start : start + self.chunk_size]).to(device)
            parts.append(self.clip.encode_text(tokens, normalize=True).float())
        return torch.cat(parts)


def embed_text_lists(detector: nn.Module, texts: list[list[str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode each distinct text of the batch once -> ``[B, T, D]`` embeddings and ``[B, T]`` mask."""
    unique = list(dict.fromkeys(t for image_texts in texts for t in image_texts)) or [""]
    position = {text: i for i, text in enumerate(unique)}
    embeddings = detector.encode_texts(unique)  # (U, D)
    width = max(1, max(len(t) for t in texts))
    index = torch.zeros(len(texts), width, dtype=torch.long)
    mask = torch.zeros(len(texts), width, dtype=torch.bool)
    for b, image_texts in enumerate(texts):
        index[b, : len(image_texts)] = torch.tensor([position[t] for t in image_texts], dtype=torch.long)
        mask[b, : len(image_texts)] = True
    return embeddings[index.to(embeddings.device)], mask.to(embeddings.device)
