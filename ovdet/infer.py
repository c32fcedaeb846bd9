"""Zero-shot inference with a custom vocabulary: the one code path behind eval, detect and the API.

    from ovdet import Detector
    detector = Detector.from_pretrained("runs/demo/train/final")   # or a published Hub folder
    results = detector.detect(["street.jpg"], ["red car", "bicycle"])

A model folder holds ``model.safetensors`` and ``model_spec.json`` (written by the trainer and by
``ovdet publish``); loading reads safetensors only, nothing is unpickled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ovdet.data.letterbox import boxes_to_pixels, letterbox
from ovdet.data.prompts import class_prompts
from ovdet.errors import OvdetError, RecordError
from ovdet.fileio import read_json
from ovdet.runs import MODEL_SPEC, MODEL_WEIGHTS, find_model_dir


@dataclass
class Detection:
    """One detection in absolute pixels of the original image."""

    box_xyxy: list[float]
    label: str
    label_index: int
    score: float

    def to_json(self) -> dict:
        return {"box": [round(v, 2) for v in self.box_xyxy], "label": self.label, "score": round(self.score, 5)}


def postprocess(
    scores: torch.Tensor, boxes_cxcywh: torch.Tensor, box_scale: tuple[float, float], width: int, height: int,
    top_k: int, score_threshold: float, nms: NmsSettings,
) -> list[tuple[list[float], int, float]]:
    """One image: scores ``[Q, C]`` in [0, 1], boxes ``[Q, 4]`` normalized cxcywh -> top-k (xyxy px, class, score).

    ``box_scale``: original-image pixels per normalized box unit along x and y (the model's
    geometry: ``input_size / letterbox scale`` on both axes for ovdet's canvas). ``nms``: a
    resolved method of ``ovdet.ops.nms`` (not ``auto``) with its parameters."""
    from torchvision.ops import remove_small_boxes

    from ovdet.ops.nms import apply_nms

    num_classes = scores.shape[1]
    flat = scores.flatten()
    k = min(top_k * 4, flat.numel())  # spare candidates for the area filter and NMS
    values, order = flat.topk(k)
    queries, classes = order // num_classes, order % num_classes
    boxes = boxes_to_pixels(boxes_cxcywh[queries], box_scale, width, height)
    keep = torch.where(values >= score_threshold)[0]
    keep = keep[remove_small_boxes(boxes[keep], min_size=1.0)]  # a box in the padding is clipped to nothing
    kept = apply_nms(boxes[keep], values[keep], classes[keep], nms.method, nms.iou, nms.sigma, score_threshold)
    boxes, values, classes = kept.boxes[:top_k], kept.scores[:top_k], classes[keep][kept.indices[:top_k]]
    return [(b.tolist(), int(c), float(s)) for b, c, s in zip(boxes, classes, values, strict=True)]


@dataclass(frozen=True)
class NmsSettings:
    """Post-processing NMS (``eval.nms``, ``ovdet detect --nms``): a method of ``ovdet.ops.nms.METHODS``
    or ``auto``, the IoU threshold, soft-NMS's / Matrix NMS's sigma."""

    method: str = "auto"
    iou: float = 0.5
    sigma: float = 0.5

    def resolved(self, spec: dict) -> NmsSettings:
        """``auto`` follows the training assignment: none after one-to-one (Hungarian) matching, which
        trains duplicates away; class-wise hard NMS after a one-to-many assigner (RetinaNet, ATSS, TAL,
        SimOTA), whose neighbours all learn to fire."""
        if self.method != "auto":
            return self
        one_to_one = spec.get("assigner", "hungarian") == "hungarian"
        return NmsSettings("none" if one_to_one else "class", self.iou, self.sigma)


def detection_scores(output, spec: dict) -> torch.Tensor:
    """``[B, Q, C]`` scores in [0, 1] of a ``DetectorOutput`` scored the way its model was trained:
    sigmoid of the logits, or (softmax classification) the softmax over the classes and the
    no-object logit without the latter; with a trained quality score (``model.quality``) the
    geometric mean ``sqrt(class score x quality)`` (ATSS / GLIP's centerness rule, docs/losses.md)."""
    logits = output.pred_logits.float()
    if spec.get("no_object") and output.no_object_logits is not None:
        scores = torch.cat([logits, output.no_object_logits.float()[..., None]], dim=-1).softmax(-1)[..., :-1]
    else:
        scores = logits.sigmoid()
    if spec.get("quality", "none") != "none" and output.quality_logits is not None:
        scores = (scores * output.quality_logits.float().sigmoid()[..., None]).sqrt()
    return scores


class Detector:
    """A trained detector ready for zero-shot detection with any vocabulary."""

    def __init__(self, model, spec: dict):
        self.model = model.eval()
        self.spec = spec
        self.input_size = model.image_size

    @classmethod
    def from_pretrained(cls, path: str | Path) -> Detector:
        """Load a model folder (trainer ``final/``, a published folder, or a Hub repo id), or
        ``hf:FOLDER``: any ``transformers`` OWL-ViT/OWLv2/Grounding DINO folder (``ovdet.models.hf``)."""
        from safetensors.torch import load_file

        from ovdet.models.factory import create_detector
        from ovdet.models.hf.common import hf_spec, is_hf_name

        if is_hf_name(str(path)):
            spec = hf_spec(str(path))
            return cls(create_detector(spec, load_weights=True), spec)
        folder = resolve_model_folder(path)
        spec = read_json(folder / MODEL_SPEC, expected=dict)["spec"]
        if spec.get("kind") == "hf":  # the folder is a save_pretrained folder too
            spec = {**spec, "source": str(folder)}
            return cls(create_detector(spec, load_weights=True, model_folder=folder), spec)
        spec = localize_spec(spec, folder)
        model = create_detector(spec, load_weights=False)
        missing, unexpected = model.load_state_dict(load_file(str(folder / MODEL_WEIGHTS)), strict=False)
        if missing or unexpected:
            raise OvdetError(f"{folder}: weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
        return cls(model, spec)

    @torch.no_grad()
    def class_embeddings(
        self, vocabulary: list[str], templates: list[str] | None = None, synonyms: list[list[str]] | None = None,
    ) -> torch.Tensor:
        """``[C, D]``: per class, the normalized mean of the embeddings of its prompt texts (``class_prompts``:
        the name's, plus its synonyms' when ``synonyms`` gives one list per class) in every template (CLIP
        ensembling). Names are raw category names; ``prompt_name`` makes them text."""
        templates = templates or ["{}"]
        prompts = class_prompts(vocabulary, synonyms)
        texts = [t.format(text) for class_texts in prompts for text in class_texts for t in templates]
        sizes = [len(class_texts) * len(templates) for class_texts in prompts]
        groups = self.model.encode_texts(texts).split(sizes)
        return torch.nn.functional.normalize(torch.stack([group.mean(0) for group in groups]), dim=-1)

    @torch.no_grad()
    def detect(
        self, images, vocabulary: list[str], templates: list[str] | None = None, score_threshold: float = 0.1,
        top_k: int = 100, nms_iou: float = 0.5, batch_size: int = 8, progress: bool = False,
        synonyms: list[list[str]] | None = None, nms: str = "auto", nms_sigma: float = 0.5,
    ) -> list[list[Detection]]:
        """Detect ``vocabulary`` in each image (paths or PIL images); one list of Detections per image, each
        labelled with its raw vocabulary name. ``synonyms``: see ``class_embeddings``. ``nms``: a method of
        ``ovdet.ops.nms.METHODS`` or ``auto`` (``NmsSettings.resolved``), with ``nms_iou`` and ``nms_sigma``."""
        from tqdm import tqdm

        if not vocabulary:
            raise OvdetError("the vocabulary is empty")
        if getattr(self.model, "fuses_text", False):  # the names go into the prompt (Grounding DINO)
            if synonyms is not None:
                raise OvdetError(f"{self.spec['name']}: synonym ensembling needs text embeddings; this model "
                                 "reads the names in its prompt")
            queries = [texts[0] for texts in class_prompts(list(vocabulary))]
        else:
            queries = self.class_embeddings(list(vocabulary), templates, synonyms)
        settings = self.nms_settings(nms, nms_iou, nms_sigma)
        results = []
        for start in tqdm(range(0, len(images), batch_size), desc="detect", disable=not progress):
            chunk = [open_image(i) for i in images[start : start + batch_size]]
            raw = self.detect_batch(chunk, queries, score_threshold, top_k, settings)
            results.extend([[Detection(b, vocabulary[c], c, s) for b, c, s in image] for image in raw])
        return results

    def nms_settings(self, method: str = "auto", iou: float = 0.5, sigma: float = 0.5) -> NmsSettings:
        """The NMS this model's detections get (``auto`` resolved from how it was trained)."""
        from ovdet.ops.nms import METHODS

        if method != "auto" and method not in METHODS:
            raise OvdetError(f"nms '{method}': not one of auto, {', '.join(METHODS)}")
        return NmsSettings(method, iou, sigma).resolved(self.spec)

    def detect_batch(self, images: list[Image.Image], queries, score_threshold, top_k, nms: NmsSettings):
        """``queries``: class embeddings ``[C, D]``, or the names for a model that reads them (Grounding DINO).

        Runs where the model is, under autocast to its parameters' dtype (a bf16 model validated
        during training); scores and boxes come back in fp32 (bf16 boxes would be pixels off)."""
        device = self.model.pixel_mean.device
        dtype = next(self.model.parameters()).dtype
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            if self.spec.get("kind") == "hf":  # the model's own processor: pixels identical to transformers'
                output = self.model.predict_processed(self.model.processor_inputs(images), queries)
                box_scales = [self.model.pixel_scale(image.width, image.height) for image in images]
            else:
                arrays, scales = zip(*(letterbox(image, self.input_size) for image in images), strict=True)
                pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(device)
                text = queries[None].expand(len(images), -1, -1)
                output = self.model(pixels, text, torch.ones(text.shape[:2], dtype=torch.bool, device=device))
                box_scales = [(self.input_size / scale,) * 2 for scale in scales]
        scores, boxes = detection_scores(output, self.spec), output.pred_boxes.float()
        return [
            postprocess(scores[i], boxes[i], box_scales[i], image.width, image.height, top_k, score_threshold,
                        nms)  # fmt: skip
            for i, image in enumerate(images)
        ]


MAX_IMAGE_PIXELS = 89_478_485  # PIL's own limit: an image with more pixels is refused as a decompression bomb


def open_image(item, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """An RGB image from a path or a PIL image, read the way the shard stage reads training images
    (``ovdet.data.images``): full decode (a truncated file is refused, not padded), EXIF orientation
    applied (as transformers' ``load_image`` does, PIL images included), 16-bit scaled to 8, alpha
    on white, at most ``max_pixels``. Every failure is an ``OvdetError`` naming the file."""
    from PIL import ImageOps

    from ovdet.data.images import decode, to_rgb

    if isinstance(item, Image.Image):
        return to_rgb(ImageOps.exif_transpose(item))
    try:
        data = Path(item).read_bytes()
    except OSError as exc:
        raise OvdetError(f"{item}: cannot read image: {exc.strerror or exc}") from None
    try:
        image, _ = decode(str(item), data, max_pixels)
    except RecordError as exc:
        raise OvdetError(f"{item}: cannot read image: {exc.reason}") from None
    return to_rgb(image)


def load_detector(model: str | Path, threads: int = 0) -> Detector:
    """``Detector.from_pretrained`` in a process of its own (a Ray actor): ``threads`` torch threads first."""
    if threads:
        torch.set_num_threads(threads)
    return Detector.from_pretrained(model)


def model_weights_file(model: str | Path) -> Path:
    """The weights file of a model as ``--model`` names it (a folder, a training folder, ``hf:FOLDER``)."""
    from ovdet.models.hf.common import HF_PREFIX, is_hf_name

    folder = Path(str(model)[len(HF_PREFIX):]) if is_hf_name(str(model)) else resolve_model_folder(model)
    weights = folder / MODEL_WEIGHTS
    if not weights.is_file():
        raise OvdetError(f"{model}: no {MODEL_WEIGHTS} in {folder}")
    return weights


def resolve_model_folder(path: str | Path) -> Path:
    """A model folder, a training folder's ``final/`` (``ovdet.runs``), or a Hub repo id downloaded."""
    folder = Path(path)
    found = find_model_dir(folder)
    if found is not None:
        return found
    if not folder.exists() and str(path).count("/") == 1:
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(str(path), allow_patterns=["*.json", "*.safetensors", "*.txt", "*.yaml", "tokenizer/*"]))
        except Exception as exc:  # network errors come in many types; report one line
            raise OvdetError(f"{path}: not a local model folder and cannot download it from the Hub: {exc}") from None
    raise OvdetError(f"{path}: not a model folder (needs model.safetensors and model_spec.json)")


def localize_spec(spec: dict, folder: Path) -> dict:
    """A published folder carries its tokenizer/text config; point ``local:`` paths at it."""
    if spec.get("kind") != "custom":
        return spec
    arch = dict(spec["arch"])
    arch["text_cfg"] = {
        k: str(folder / v[6:]) if isinstance(v, str) and v.startswith("local:") else v
        for k, v in arch["text_cfg"].items()
    }
    arch.pop("vision_weights", None)
    return {**spec, "arch": arch}
