"""Grounding DINO and MM Grounding DINO (``transformers``) as ovdet detectors.

Grounding DINO scores each query against the *tokens* of one caption and fuses that caption into
the image pathway, so names cannot be encoded once and reused. ovdet therefore:

- writes an image's names in order as MM Grounding DINO's plain prompt, ``"cat . red car ."`` (mmdet's
  ``to_plain_text_prompts``: names joined by ``" . "``; BERT splits the dots into the delimiter tokens
  the model separates phrases by);
- splits the names into consecutive chunks whose prompt, ``[CLS]`` and ``[SEP]`` included, fits
  ``config.max_text_len``, and runs one forward per chunk (a chunk's queries see only its names);
- finds each name's tokens with the fast tokenizer's offsets (the name's characters in the prompt)
  and scores a name by the **max of its tokens' logits**: the logit of its most probable token,
  the token probability ``post_process_grounded_object_detection`` scores a query by. (mmdet
  averages the token probabilities instead; the max keeps a name's logit one of the model's own.)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ovdet.errors import OvdetError
from ovdet.models.detector import DetectorOutput
from ovdet.models.heads import PADDED_LOGIT
from ovdet.models.hf.common import HFDetectorBase

NAME_SEPARATOR = " . "
PROMPT_END = " ."


@dataclass(frozen=True)
class PromptChunk:
    """One forward's caption: names ``first .. first + len(token_spans) - 1`` of an image's list.

    ``input_ids`` hold ``[CLS]`` and ``[SEP]``; ``token_spans`` the ``[start, stop)`` token positions
    of each name in ``input_ids``.
    """

    first: int
    input_ids: tuple[int, ...]
    token_spans: tuple[tuple[int, int], ...]


def build_prompt(names: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """Names -> (``"cat . red car ."``, the ``[start, stop)`` character span of each name)."""
    spans, position = [], 0
    for name in names:
        spans.append((position, position + len(name)))
        position += len(name) + len(NAME_SEPARATOR)
    return NAME_SEPARATOR.join(names) + PROMPT_END, spans


def token_spans_of(offsets: list[tuple[int, int]], char_spans: list[tuple[int, int]],
                   names: list[str]) -> tuple[tuple[int, int], ...]:
    """Character spans (in order) -> ``[start, stop)`` token spans: the tokens whose characters lie
    in the span; one pass over the tokens, special tokens (empty offsets) never count."""
    token_spans, position = [], 0
    for name, (begin, end) in zip(names, char_spans, strict=True):
        while position < len(offsets) and (offsets[position][0] < begin or offsets[position][1] <= offsets[position][0]):
            position += 1
        start = position
        while position < len(offsets) and offsets[position][0] < offsets[position][1] <= end:
            position += 1
        if position == start:
            raise OvdetError(f"name {name!r}: the BERT tokenizer finds no tokens in it")
        token_spans.append((start, position))
    return tuple(token_spans)


def canvas_side(image_processor) -> int:
    """ovdet's square canvas side: the longest side the processor resizes an image to."""
    size = image_processor.size
    side = size.get("longest_edge") if isinstance(size, dict) else getattr(size, "longest_edge", None)
    if not side:
        raise OvdetError(f"Grounding DINO image processor size {size}: expected a longest_edge (the canvas side)")
    return int(side)


class GroundingDinoDetector(HFDetectorBase):
    """``GroundingDinoForObjectDetection`` / ``MMGroundingDinoForObjectDetection`` behind ovdet's
    detector protocol (``ovdet.models.hf.common``); prompts, chunks and per-name logits as in the
    module docstring. With K chunk rounds an image has K x Q queries."""

    fuses_text = True

    def __init__(self, module: nn.Module, processor, spec: dict[str, Any]):
        super().__init__(module, processor, spec, native_size=canvas_side(processor.image_processor))
        self.max_text_len = int(module.config.max_text_len)

    def text_parameter_prefixes(self) -> tuple[str, ...]:
        return ("hf.model.text_backbone.",)

    def image_parameter_prefixes(self) -> tuple[str, ...]:
        return ("hf.model.backbone.",)

    def set_grad_checkpointing(self, enabled: bool) -> None:
        """Checkpoint the BERT and the image backbone only: transformers' Grounding DINO does not
        support activation checkpointing as a whole (and its decoder's checkpointed branch passes the
        layer's arguments out of order). Like all of transformers', it acts in train mode only."""
        for tower in (self.hf.model.text_backbone, self.hf.model.backbone.conv_encoder.model):
            if not getattr(tower, "supports_gradient_checkpointing", False):
                continue
            if enabled:  # activation_*: transformers 5's name; gradient_*: 4.x's, deprecated in 5
                enable = getattr(tower, "activation_checkpointing_enable", None)
                if enable is not None:
                    enable(activation_checkpointing_kwargs={"use_reentrant": False})
                else:
                    tower.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            else:
                getattr(tower, "activation_checkpointing_disable", tower.gradient_checkpointing_disable)()

    def export_at_input_size(self, tensors: dict[str, torch.Tensor], config_dict: dict[str, Any]):
        """ovdet trains on its square canvas with the longer side at ``image_size``; the exported
        processor resizes the same way (``shortest_edge`` = ``longest_edge`` = ``image_size``),
        so ``transformers`` alone sees the images at the scale training did."""
        processor = copy.deepcopy(self.processor)
        processor.image_processor.size = {"shortest_edge": self.image_size, "longest_edge": self.image_size}
        return tensors, config_dict, processor

    def pixel_scale(self, width: int, height: int) -> tuple[float, float]:
        """Pixels per normalized box unit for an original ``width`` x ``height`` image: the boxes of
        ``predict_processed`` are relative to the image (the processor keeps its aspect ratio)."""
        return float(width), float(height)

    def split_into_chunks(self, names: list[str]) -> list[tuple[int, int]]:
        """Consecutive ``[start, stop)`` name ranges whose prompts fit ``max_text_len`` tokens."""
        if not names:  # the tokenizer fails on an empty batch
            return []
        lengths = [len(ids) for ids in self.processor.tokenizer(names, add_special_tokens=False)["input_ids"]]
        chunks, start, used = [], 0, 2  # [CLS] and [SEP]
        for index, (name, length) in enumerate(zip(names, lengths, strict=True)):
            if 2 + length + 1 > self.max_text_len:
                raise OvdetError(f"name {name!r}: {length} tokens do not fit a Grounding DINO prompt "
                                 f"(max_text_len {self.max_text_len}: at most {self.max_text_len - 3} per name)")
            if used + length + 1 > self.max_text_len:
                chunks.append((start, index))
                start, used = index, 2
            used += length + 1  # the name and its " ."
        if start < len(names):
            chunks.append((start, len(names)))
        return chunks

    def prompt_chunks(self, names: list[str]) -> list[PromptChunk]:
        """An image's names -> the prompt chunks of its forwards (none for no names)."""
        chunks = []
        for start, stop in self.split_into_chunks(names):
            prompt, char_spans = build_prompt(names[start:stop])
            encoded = self.processor.tokenizer(prompt, return_offsets_mapping=True)
            if len(encoded["input_ids"]) > self.max_text_len:  # a tokenizer that does not split at " . "
                raise RuntimeError(f"prompt {prompt!r} has {len(encoded['input_ids'])} tokens, its names' sum "
                                   f"fitted {self.max_text_len}")
            spans = token_spans_of(encoded["offset_mapping"], char_spans, names[start:stop])
            chunks.append(PromptChunk(start, tuple(encoded["input_ids"]), spans))
        return chunks

    def text_inputs(self, chunks: list[PromptChunk | None]) -> dict[str, torch.Tensor]:
        """One round's chunk per image (None: an empty prompt) -> padded ``input_ids``,
        ``attention_mask`` and ``token_type_ids`` ``[B, L]`` on the module's device."""
        tokenizer = self.processor.tokenizer
        empty = (tokenizer.cls_token_id, tokenizer.sep_token_id)
        rows = [chunk.input_ids if chunk is not None else empty for chunk in chunks]
        length = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), length), tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for b, row in enumerate(rows):
            input_ids[b, : len(row)] = torch.tensor(row)
            attention_mask[b, : len(row)] = 1
        text = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": torch.zeros_like(input_ids)}
        return {key: value.to(self.hf.device) for key, value in text.items()}

    def name_logits(self, token_logits: torch.Tensor, chunks: list[PromptChunk | None], num_texts: int) -> torch.Tensor:
        """Token logits ``[B, Q, max_text_len]`` -> name logits ``[B, Q, T]``: the max over each
        name's tokens; names outside this round's chunks get ``PADDED_LOGIT``."""
        batch, queries, _ = token_logits.shape
        width = max((stop - start for c in chunks if c for start, stop in c.token_spans), default=1)
        index = [[[0] * width for _ in range(num_texts)] for _ in chunks]
        present = [[False] * num_texts for _ in chunks]
        for b, chunk in enumerate(chunks):
            for j, (start, stop) in enumerate(chunk.token_spans if chunk else ()):
                # a short name repeats its first token: the max is unchanged
                index[b][chunk.first + j] = list(range(start, stop)) + [start] * (width - stop + start)
                present[b][chunk.first + j] = True
        index = torch.tensor(index, dtype=torch.long, device=token_logits.device)
        present = torch.tensor(present, dtype=torch.bool, device=token_logits.device)
        index = index.view(batch, 1, num_texts * width).expand(batch, queries, -1)
        logits = token_logits.gather(2, index).view(batch, queries, num_texts, width).amax(-1)
        return logits.masked_fill(~present.view(batch, 1, num_texts), PADDED_LOGIT)

    def run_round(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor, chunks: list[PromptChunk | None],
                  num_texts: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One forward, a chunk (or None) per image -> name logits ``[B, Q, T]``, boxes ``[B, Q, 4]``
        and the decoder's last hidden state ``[B, Q, d]``."""
        out = self.hf(pixel_values=pixel_values, pixel_mask=pixel_mask, **self.text_inputs(chunks))
        return self.name_logits(out.logits, chunks, num_texts), out.pred_boxes, out.last_hidden_state

    def run_rounds(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor,
                   chunks_per_image: list[list[PromptChunk]], num_texts: int) -> DetectorOutput:
        """Round k runs every image with its k-th chunk (an empty prompt where it has fewer; at least
        one round) and the rounds' queries are concatenated: ``[B, K*Q, ...]``."""
        rounds = max(1, max(len(chunks) for chunks in chunks_per_image))
        outputs = [self.run_round(pixel_values, pixel_mask, [c[k] if k < len(c) else None for c in chunks_per_image],
                                  num_texts) for k in range(rounds)]  # fmt: skip
        logits, boxes, hidden = (torch.cat(parts, dim=1) for parts in zip(*outputs, strict=True))
        return DetectorOutput(pred_logits=logits, pred_boxes=boxes, quality_logits=None, class_embeds=hidden,
                              logit_parts=None)  # fmt: skip

    def predict(self, images: torch.Tensor, texts: list[list[str]]) -> tuple[DetectorOutput, torch.Tensor]:
        """Canvas images ``[B, 3, S, S]`` in [0, 255] and each image's names -> (output, text_mask).

        ``pred_logits`` ``[B, K*Q, T]`` (T: the longest name list; padded names and names of another
        round's chunk hold ``PADDED_LOGIT``), ``pred_boxes`` ``[B, K*Q, 4]`` normalized cxcywh relative
        to the canvas, ``class_embeds`` the decoder's last hidden state; ``text_mask`` ``[B, T]``.
        """
        if len(texts) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(texts)} name lists")
        pixel_values = self.normalize(images).to(self.hf.dtype)
        batch, _, height, width = pixel_values.shape
        pixel_mask = torch.ones((batch, height, width), dtype=torch.long, device=pixel_values.device)
        num_texts = max((len(names) for names in texts), default=0)
        output = self.run_rounds(pixel_values, pixel_mask, [self.prompt_chunks(list(n)) for n in texts], num_texts)
        lengths = torch.tensor([len(names) for names in texts], device=pixel_values.device)
        text_mask = torch.arange(num_texts, device=pixel_values.device)[None, :] < lengths[:, None]
        return output, text_mask

    def predict_processed(self, inputs: dict[str, torch.Tensor], vocabulary: list[str]) -> DetectorOutput:
        """The processor's ``pixel_values`` (and ``pixel_mask``) and one vocabulary for every image ->
        ``DetectorOutput`` with ``pred_logits`` ``[B, K*Q, len(vocabulary)]`` and boxes relative to
        each image's valid (unpadded) region, as transformers returns them."""
        if isinstance(vocabulary, torch.Tensor):
            raise OvdetError("Grounding DINO fuses the names into the image pathway: pass the vocabulary's names, "
                             "not text embeddings")
        pixel_values = inputs["pixel_values"].to(self.hf.device, self.hf.dtype)
        pixel_mask = inputs.get("pixel_mask")
        if pixel_mask is None:
            pixel_mask = torch.ones_like(pixel_values[:, 0], dtype=torch.long)
        chunks = self.prompt_chunks(list(vocabulary))
        batch = pixel_values.shape[0]
        return self.run_rounds(pixel_values, pixel_mask.to(self.hf.device), [chunks] * batch, len(vocabulary))

    def forward(self, images: torch.Tensor, texts: list[list[str]]) -> tuple[DetectorOutput, torch.Tensor]:
        return self.predict(images, texts)
