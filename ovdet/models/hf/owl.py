"""OWL-ViT and OWLv2 (``transformers``) as ovdet detectors.

Texts are embedded once by the text tower (``encode_texts``, cached while it is frozen) and scored
against every patch token by OWL's class head, so the whole ovdet text path (padded text lists,
prompt ensembling, synonyms) applies unchanged. The forward is the module's own: image embedder,
class head, box head with its grid bias, and for OWLv2 the objectness head (returned as the quality
logit; trained, and combined into ovdet's scores, only with ``model.quality=objectness``:
``transformers``' post-processing never uses it). The class head is evaluated here from its
own layers so the criterion also gets the logit's factors (similarity, shift, scale).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from ovdet.models.detector import DetectorOutput
from ovdet.models.heads import PADDED_LOGIT
from ovdet.models.hf.common import HFDetectorBase
from ovdet.models.text import embed_text_lists


class OwlDetector(HFDetectorBase):
    has_token_grid = True  # one query per patch token, row-major (OWL's box bias grid)

    def __init__(self, module, processor, spec: dict[str, Any]):
        super().__init__(module, processor, spec, native_size=module.config.vision_config.image_size)
        self.is_v2 = module.config.model_type == "owlv2"
        # the loader's canvas as the processor makes it: OWLv2 pads to a square (bottom/right; with
        # 0.0 in transformers 5.24; scenic's OWL examples use grey 0.5) and resizes, OWL-ViT resizes each side
        self.resize = "letterbox" if self.is_v2 else "stretch"
        self.native_size = module.config.vision_config.image_size
        self.tokenizer = processor.tokenizer
        self.max_length = module.config.text_config.max_position_embeddings
        self.cache: dict[str, torch.Tensor] = {}
        self.text_frozen = False

    @property
    def owl(self):
        return self.hf.owlv2 if self.is_v2 else self.hf.owlvit

    def text_parameter_prefixes(self) -> tuple[str, ...]:
        base = "hf.owlv2." if self.is_v2 else "hf.owlvit."
        return (base + "text_model.", base + "text_projection.")

    def image_parameter_prefixes(self) -> tuple[str, ...]:
        base = "hf.owlv2." if self.is_v2 else "hf.owlvit."
        return (base + "vision_model.", "hf.layer_norm.")

    def set_trainable(self, train_text: bool, train_image: bool) -> None:
        super().set_trainable(train_text, train_image)
        self.text_frozen = not train_text
        self.cache.clear()
        # never in a detection loss: CLIP's image-text scale and image projection, and OWLv2's
        # objectness head unless loss_quality trains it (model.quality=objectness); a trainable
        # parameter without a gradient only costs
        trains_objectness = self.spec.get("quality", "none") == "objectness"
        for name, param in self.named_parameters():
            if name.endswith(".logit_scale") and "class_head" not in name or ".visual_projection." in name \
                    or name.startswith("hf.objectness_head.") and not trains_objectness:
                param.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.text_frozen:  # a frozen tower runs without dropout, so cached embeddings stay valid
            self.owl.text_model.eval()
        else:
            self.cache.clear()
        return self

    # -- texts ---------------------------------------------------------------------------------

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """N strings -> ``[N, D]`` unit-norm text embeddings (OWL's projected text features)."""
        if not (self.text_frozen or not torch.is_grad_enabled()):
            return self.embed(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if missing:
            with torch.no_grad():
                for text, embedding in zip(missing, self.embed(missing, fixed_rows=True), strict=True):
                    self.cache[text] = embedding
        return torch.stack([self.cache[t] for t in texts])

    def embed(self, texts: list[str], chunk_size: int = 32, fixed_rows: bool = False) -> torch.Tensor:
        """``fixed_rows``: every chunk padded to ``chunk_size`` texts. A matmul's rounding depends on
        its row count, so a cached embedding would otherwise depend on which texts were new with it,
        and a resumed run (empty cache) would drift from an uninterrupted one in the last bits."""
        device = self.pixel_mean.device
        parts = []
        for start in range(0, len(texts), chunk_size):
            chunk = texts[start : start + chunk_size]
            padded = chunk + [""] * (chunk_size - len(chunk)) if fixed_rows else chunk
            tokens = self.tokenizer(padded, padding="max_length", truncation=True, max_length=self.max_length,
                                    return_tensors="pt")  # fmt: skip
            features = self.owl.get_text_features(input_ids=tokens["input_ids"].to(device),
                                                  attention_mask=tokens["attention_mask"].to(device))  # fmt: skip
            pooled = features.pooler_output if hasattr(features, "pooler_output") else features
            parts.append(F.normalize(pooled[: len(chunk)].float(), dim=-1))
        return torch.cat(parts)

    # -- images --------------------------------------------------------------------------------

    def forward(self, images: torch.Tensor, text_embeds: torch.Tensor, text_mask: torch.Tensor) -> DetectorOutput:
        """Canvas images ``[B, 3, S, S]`` in [0, 255] + text embeddings ``[B, T, D]`` -> DetectorOutput."""
        return self.forward_pixels(self.normalize(images), text_embeds, text_mask)

    def forward_pixels(self, pixel_values: torch.Tensor, text_embeds: torch.Tensor, text_mask: torch.Tensor):
        interpolate = pixel_values.shape[-1] != self.native_size
        feature_map, _ = self.hf.image_embedder(pixel_values=pixel_values, interpolate_pos_encoding=interpolate)
        batch, height, width, hidden = feature_map.shape
        tokens = feature_map.reshape(batch, height * width, hidden)
        logits, class_embeds, parts = self.class_logits(tokens, text_embeds.to(tokens.dtype), text_mask)
        boxes = self.hf.box_predictor(tokens, feature_map, interpolate_pos_encoding=interpolate)
        objectness = self.hf.objectness_predictor(tokens) if self.is_v2 else None
        return DetectorOutput(logits, boxes, objectness, class_embeds, parts, token_grid=(height, width))

    def class_logits(self, tokens: torch.Tensor, text_embeds: torch.Tensor, text_mask: torch.Tensor):
        """OWL's ``ClassPredictionHead.forward`` from its own layers, keeping the factors."""
        head = self.hf.class_head
        class_embeds = head.dense0(tokens)
        class_embeds = class_embeds / (torch.linalg.norm(class_embeds, dim=-1, keepdim=True) + 1e-6)
        queries = text_embeds / (torch.linalg.norm(text_embeds, dim=-1, keepdim=True) + 1e-6)
        similarity = torch.einsum("bqd,btd->bqt", class_embeds, queries)
        shift = head.logit_shift(tokens)
        scale = head.elu(head.logit_scale(tokens)) + 1
        logits = ((similarity + shift) * scale).masked_fill(~text_mask[:, None, :], PADDED_LOGIT)
        return logits, class_embeds, {"region_similarity": similarity, "logit_shift": shift, "logit_scale": scale}

    def predict(self, images: torch.Tensor, texts: list[list[str]]) -> tuple[DetectorOutput, torch.Tensor]:
        text_embeds, text_mask = embed_text_lists(self, texts)
        return self(images, text_embeds, text_mask), text_mask

    def predict_processed(self, inputs: dict[str, torch.Tensor], class_embeds: torch.Tensor) -> DetectorOutput:
        """Processor pixels + one vocabulary's ``[C, D]`` embeddings (shared by every image)."""
        pixel_values = inputs["pixel_values"]
        text = class_embeds[None].expand(len(pixel_values), -1, -1)
        mask = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
        return self.forward_pixels(pixel_values, text, mask)

    def export_at_input_size(self, tensors: dict[str, torch.Tensor], config_dict: dict[str, Any]):
        """At an input size other than the checkpoint's, OWL's forward interpolates the position
        embeddings (bicubic, ``interpolate_pos_encoding``); the export bakes that interpolation into
        the weights and sets the config's and the processor's image size, so the folder runs at
        ovdet's size in ``transformers`` with no flag (``pipeline`` passes none)."""
        if self.image_size == self.native_size:
            return tensors, config_dict, self.processor
        key = ("hf.owlv2." if self.is_v2 else "hf.owlvit.") + "vision_model.embeddings.position_embedding.weight"
        patch = config_dict["vision_config"]["patch_size"]
        tensors = {**tensors, key: resample_position_embedding(tensors[key], self.image_size // patch)}
        config_dict["vision_config"] = {**config_dict["vision_config"], "image_size": self.image_size}
        processor = copy.deepcopy(self.processor)
        size = {"height": self.image_size, "width": self.image_size}
        processor.image_processor.size = size
        if getattr(processor.image_processor, "crop_size", None) is not None:
            processor.image_processor.crop_size = size
        return tensors, config_dict, processor

    def pixel_scale(self, width: int, height: int) -> tuple[float, float]:
        """Pixels per normalized box unit: OWLv2 pads to a square (bottom/right) before resizing,
        OWL-ViT resizes each side to the input size."""
        side = max(width, height)
        return (side, side) if self.is_v2 else (width, height)


def resample_position_embedding(weight: torch.Tensor, grid: int) -> torch.Tensor:
    """``[1 + g*g, C]`` -> ``[1 + grid*grid, C]``: OWL's ``interpolate_pos_encoding`` (bicubic,
    ``align_corners=False``, the class row kept), computed once on the weight."""
    old = int(round((weight.shape[0] - 1) ** 0.5))
    patches = weight[1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    return torch.cat([weight[:1], patches.permute(0, 2, 3, 1).reshape(grid * grid, -1)])

