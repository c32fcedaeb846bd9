"""One typed config tree for every stage: YAML files loaded into dataclasses, dotted overrides.

``load_config("configs/demo.yaml", ["train.steps=50"])`` returns a validated ``Config``. An unknown
key or a value of the wrong type raises ``OvdetError`` naming the key and the file. Each stage
receives its own sub-config (``cfg.train``, ``cfg.model``, ...), never the whole tree.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ovdet import fileio
from ovdet.errors import OvdetError
from ovdet.losses.registry import default_weights, weight_names
from ovdet.recipes import apply_recipe

# Keys that no longer exist, with why: loading a config that sets one says so instead of "unknown key".
REMOVED_KEYS = {
    "model.objectness": "use model.quality=objectness (trained by loss_quality, docs/losses.md)",
    "loss.weights.loss_bbox": "renamed loss.weights.loss_l1",
    "loss.contrastive_temperature": "it never had an effect: loss_contrastive is a softmax over the "
    "head's logits, which carry a learned scale, not over cosine similarities",
}


@dataclass
class SynthConfig:
    """The synthetic open-vocabulary world (``ovdet synth``)."""

    # compositional: novel names combine base words; novel-words: novel names use words no base name
    # (so no box) carries, taught only by image-text captions. docs/synthetic.md
    world: Literal["compositional", "novel-words"] = "compositional"
    seed: int = 0
    image_size: int = 192
    num_detection: int = 600
    num_grounding: int = 300
    num_image_text: int = 600
    num_eval: int = 150
    min_objects: int = 1
    max_objects: int = 8
    min_scale: float = 0.12  # object side as a fraction of the image side
    max_scale: float = 0.5
    jpeg_quality: int = 90


@dataclass
class SourceConfig:
    """One data source in its published format."""

    name: str = ""
    kind: Literal["detection", "grounding", "image_text"] = "detection"
    format: Literal["coco", "odvg", "mdetr", "jsonl", "parquet", "wds"] = "coco"
    paths: list[str] = field(default_factory=list)
    image_root: str = ""
    weight: float = 1.0
    # image_text only: a vocabulary (file or preset, as for `ovdet eval`) whose names are matched in
    # each caption at shard time to give its image-level labels (Detic); "" = split the caption into phrases
    vocabulary: str = ""


@dataclass
class DataConfig:
    """Sources and the shard stage (``ovdet shard``)."""

    root: str = ""  # source paths and image roots are relative to this folder when not absolute
    sources: list[SourceConfig] = field(default_factory=list)
    samples_per_shard: int = 256
    max_image_side: int = 0  # 0 keeps the original size
    jpeg_quality: int = 92
    max_image_pixels: int = 89_478_485  # PIL's decompression-bomb limit
    ray_address: str = ""  # "" starts a local cluster; "auto" or host:port joins one
    num_cpus: int = 2
    # a source rejecting more than this share of its records fails the stage (exit 1): curated sets
    # (COCO, LVIS, Objects365, GoldG) reject ~0%, a wrong image_root or split ~100% (docs/data-format.md)
    max_rejected_fraction: float = 0.1


@dataclass
class LoaderConfig:
    """The training loader: mixing, decode, resize, vocabulary sampling."""

    shard_dirs: list[str] = field(default_factory=list)  # [] = RUN_DIR/shards
    sources: list[str] = field(default_factory=list)  # the manifest sources to read; [] = all
    source_weights: dict[str, float] = field(default_factory=dict)  # overrides the data config's weights
    image_size: int = 192
    batch_size: int = 8  # per rank
    num_workers: int = 2
    num_negatives: int = 60  # 50-80 negatives per image, OWL-ViT / YOLO-World
    prompt_templates: list[str] = field(default_factory=lambda: ["a photo of a {}.", "a {}.", "{}"])
    template_probability: float = 0.5
    hflip_probability: float = 0.5
    # images with federated labels (LVIS neg_category_ids): "verified" takes negatives only from the
    # image's verified-absent names (OWL-ViT, federated loss); "pool" also samples the pool, never
    # the image's not-exhaustive categories
    federated_negatives: Literal["verified", "pool"] = "verified"
    min_scale: float = 0.75  # random letterbox scale jitter in [min_scale, 1]
    resize: Literal["letterbox", "stretch"] = "letterbox"  # the trainer sets a transformers model's own
    # Augmentation (docs/augmentation.md), all off by default; each draw is a function of (seed, sample
    # index) or (seed, global batch index), so resume, workers and world size do not change a sample.
    # [] keeps image_size; else each global batch draws its input size from the list (multi-scale
    # training, YOLO / DETR; multiples of 32, for an image tower that takes any size: a convnet)
    multiscale_sizes: list[int] = field(default_factory=list)
    mosaic_probability: float = 0.0  # 4 images on a 2x2 canvas, texts = the union (YOLOv4 / YOLOX: 1.0)
    mixup_probability: float = 0.0  # blend with another sample, boxes and texts of both (YOLOX: 1.0)
    mixup_alpha: float = 32.0  # Beta(alpha, alpha) blend ratio, YOLOv5
    photometric_probability: float = 0.0  # HSV jitter with the gains below (YOLOv5: 1.0)
    hsv_gains: list[float] = field(default_factory=lambda: [0.015, 0.7, 0.4])  # hue, sat., value: YOLOv5
    seed: int = 0

    def __post_init__(self):
        probabilities = ("hflip_probability", "template_probability", "mosaic_probability",
                         "mixup_probability", "photometric_probability")  # fmt: skip
        for name in probabilities:
            if not 0 <= getattr(self, name) <= 1:
                raise OvdetError(f"loader.{name} must be in [0, 1], got {getattr(self, name)}")
        bad_sizes = [s for s in self.multiscale_sizes if s <= 0 or s % 32]
        if bad_sizes:
            raise OvdetError(f"loader.multiscale_sizes must be positive multiples of 32, got {bad_sizes}")
        if self.mixup_alpha <= 0:
            raise OvdetError(f"loader.mixup_alpha must be > 0, got {self.mixup_alpha}")
        if len(self.hsv_gains) != 3 or not all(0 <= g <= 1 for g in self.hsv_gains):
            raise OvdetError(f"loader.hsv_gains must be 3 gains (hue, saturation, value) in [0, 1], "
                             f"got {self.hsv_gains}")


@dataclass
class ModelConfig:
    """The detector and its towers."""

    # configs/models/NAME.yaml, a YAML path, an open_clip name, or hf:FOLDER (ovdet.models.hf)
    name: str = "minilm-efficientnet-lite0"
    pretrained: str = ""  # open_clip pretrained tag or checkpoint path ("" keeps the config's own)
    head_width: int = 256
    feature_indices: list[int] = field(default_factory=lambda: [3, 4])
    box_head: Literal["direct", "dfl"] = "direct"  # dfl: distances as distributions (GFL, YOLOv8)
    reg_max: int = 16  # DFL bins per side, in grid cells (YOLOv8)
    # a per-token quality score trained by loss_quality and combined with the class score at inference
    # (docs/losses.md): OWLv2 objectness, FCOS centerness, or IoU-aware (the IoU with its target)
    quality: Literal["none", "objectness", "centerness", "iou"] = "none"
    freeze_text: bool = True
    freeze_image: bool = False
    lr_mult_text: float = 0.1
    lr_mult_image: float = 1.0
    grad_checkpointing: bool = False
    prior_probability: float = 0.01  # classification bias prior, RetinaNet
    text_chunk_size: int = 256

    def __post_init__(self):
        if self.reg_max < 2:
            raise OvdetError(f"model.reg_max={self.reg_max}: DFL needs at least 2 bins")


@dataclass
class LossConfig:
    """Matching costs and loss weights (keys are the criterion's loss names)."""

    # focal / bce: sigmoid per (region, text), soft targets from TAL; softmax: cross-entropy over the
    # image's texts plus a learned no-object logit per region (DETR), weighted no_object_weight
    classification: Literal["focal", "bce", "softmax"] = "focal"
    no_object_weight: float = 0.1  # DETR's eos_coef
    # label assignment (docs/losses.md): hungarian (one-to-one, DETR / OWL-ViT), max_iou (RetinaNet),
    # atss (GLIP), tal (TOOD / YOLOv8 / YOLO-World), simota (YOLOX); one-to-many ones need NMS
    assigner: Literal["hungarian", "max_iou", "atss", "tal", "simota"] = "hungarian"
    prior_scale: float = 4.0  # a token's prior box: a square of prior_scale grid cells (RetinaNet's octave base)
    max_iou_positive: float = 0.5  # RetinaNet
    max_iou_negative: float = 0.4  # RetinaNet
    atss_topk: int = 9  # ATSS
    tal_alpha: float = 0.5  # TOOD / YOLOv8
    tal_beta: float = 6.0
    tal_topk: int = 10
    simota_center_radius: float = 2.5  # YOLOX, in grid cells
    simota_iou_weight: float = 3.0  # YOLOX
    simota_candidates: int = 10  # YOLOX: dynamic k from the sum of the top-10 IoUs
    smooth_l1_beta: float = 0.11  # loss_smooth_l1's L2-to-L1 switch on normalized boxes (Detectron's 1/9)
    focal_alpha: float = 0.25  # focal loss, RetinaNet
    focal_gamma: float = 2.0  # focal loss, RetinaNet
    cost_class: float = 2.0  # matcher costs, MM-Grounding-DINO
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    # loss_image on image-text samples (docs/losses.md): "max_score_softmax" (each caption name's
    # highest-scoring region, softmax over the name and the image's negatives), "max_score"
    # (BCE of each name's max over regions, MIL), "max_size" (BCE on the largest box, Detic), "none"
    image_loss: Literal["max_score_softmax", "max_score", "max_size", "none"] = "max_score_softmax"
    # what loss_image may train: "all", or "similarity" (the per-token logit shift and scale detached)
    image_loss_grad: Literal["similarity", "all"] = "all"
    # max_score_softmax only: plus this weight x a BCE positive term on each caption name's logit at
    # its best query, with its gradient only to that query's logit shift (the softmax cannot move the
    # shift; the box losses push an unannotated object's shift down). 0: off
    image_loss_objectness: float = 0.0
    # loss_image is off for the first image_loss_start optimizer steps, then its weight rises
    # linearly over image_loss_ramp steps (Detic trains image labels on a box-supervised detector)
    image_loss_start: int = 0
    image_loss_ramp: int = 0
    # one weight per scalar of the loss registry (ovdet/losses/registry.py), which gives the defaults
    weights: dict[str, float] = field(metadata={"keys": weight_names()}, default_factory=default_weights)

    def __post_init__(self):
        if not 0 <= self.max_iou_negative <= self.max_iou_positive <= 1:
            raise OvdetError(f"loss.max_iou_negative={self.max_iou_negative} and loss.max_iou_positive="
                             f"{self.max_iou_positive}: need 0 <= negative <= positive <= 1")
        for key in ("atss_topk", "tal_topk", "simota_candidates"):
            if getattr(self, key) < 1:
                raise OvdetError(f"loss.{key}={getattr(self, key)}: must be at least 1")
        for key in ("prior_scale", "simota_center_radius", "no_object_weight"):
            if getattr(self, key) <= 0:
                raise OvdetError(f"loss.{key}={getattr(self, key)}: must be positive")
        if self.smooth_l1_beta < 0:
            raise OvdetError(f"loss.smooth_l1_beta={self.smooth_l1_beta}: must be at least 0")
        if self.image_loss_objectness < 0:
            raise OvdetError(f"loss.image_loss_objectness={self.image_loss_objectness}: must be at least 0")
        if self.image_loss_objectness and self.image_loss != "max_score_softmax":
            raise OvdetError(f"loss.image_loss_objectness={self.image_loss_objectness} adds to max_score_softmax; "
                             f"loss.image_loss is {self.image_loss}")


@dataclass
class TrainConfig:
    """The trainer (``ovdet train``)."""

    steps: int = 400
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 40
    min_lr_ratio: float = 0.05
    grad_accumulation: int = 1
    grad_clip: float = 1.0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    zero_stage: int = 0
    log_every: int = 10
    checkpoint_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 2
    resume: str = "latest"  # latest | none | a checkpoint path
    max_nonfinite_steps: int = 5
    seed: int = 0
    threads: int = 0  # torch intra-op threads per rank, 0 = torch's default
    # A rank waiting in a collective longer than this raises and exits, so a hung or vanished peer
    # cannot hold the job forever (a killed peer is seen at once: its sockets close). 1800 s is
    # torch's own default; periodic validation and checkpoint saves must fit in it. docs/reliability.md
    collective_timeout_s: float = 1800.0
    # How long each rank looks for the marker rank 0 writes into --out before it calls the folder
    # node-local. NFS clients may show a new file only after their attribute cache expires: raise it there.
    shared_folder_wait_s: float = 10.0

    def __post_init__(self):
        if self.collective_timeout_s <= 0:
            raise OvdetError(f"train.collective_timeout_s={self.collective_timeout_s}: must be positive seconds")
        if self.shared_folder_wait_s < 0:
            raise OvdetError(f"train.shared_folder_wait_s={self.shared_folder_wait_s}: must be >= 0 seconds")


@dataclass
class EvalConfig:
    """Evaluation and inference (``ovdet eval`` / ``ovdet detect``)."""

    gt: str = ""  # COCO JSON with every category annotated
    image_root: str = ""
    shards: str = ""  # or a shard folder (`ovdet shard` of the eval set) instead of gt + image_root
    vocab: str = ""
    prompt_templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])
    # average each class embedding over its name and its vocabulary synonyms (LVIS `synonyms`), like
    # prompt templates; off as Detic's --avg_synonyms (docs/evaluation.md)
    synonym_prompts: bool = False
    # "auto": lvis when the GT images carry neg_category_ids (LVIS format), else coco; or coco,
    # lvis (lvis-api's federated LVISEval) or lvis-fixed (Fixed AP, Dave et al. 2021); docs/evaluation.md
    protocol: Literal["auto", "coco", "lvis", "lvis-fixed"] = "auto"
    dets_per_category: int = 10_000  # lvis-fixed: top K per category over the dataset (Dave et al. 2021)
    score_threshold: float = 0.0
    max_detections: int = 0  # per image from the model; 0 = the protocol's (coco 100, lvis 300, lvis-fixed 1000)
    # "auto": none after one-to-one training (hungarian), class-wise hard NMS after one-to-many
    # assigners; or none, class, agnostic, soft-linear, soft-gaussian, diou, matrix, weighted (docs/losses.md)
    nms: Literal["auto", "none", "class", "agnostic", "soft-linear", "soft-gaussian", "diou", "matrix",
                 "weighted"] = "auto"
    nms_iou: float = 0.5  # the IoU threshold of the hard, soft-linear, DIoU and weighted variants
    nms_sigma: float = 0.5  # soft-gaussian (Bodla et al. 2017: 0.5); matrix NMS's kernel (SOLOv2: 2.0)
    batch_size: int = 16
    every: int = 0  # evaluate on this set every N training steps (0: only after training)
    max_images: int = 0  # cap for the periodic evaluation (0: all)

    def __post_init__(self):
        if not 0 < self.nms_iou <= 1:
            raise OvdetError(f"eval.nms_iou={self.nms_iou}: an IoU threshold in (0, 1] (eval.nms=none turns NMS off)")
        if self.nms_sigma <= 0:
            raise OvdetError(f"eval.nms_sigma={self.nms_sigma}: must be positive")


@dataclass
class PseudoLabelConfig:
    """``ovdet pseudo-label``: the rule that turns a detector's output on image-text samples into
    boxes (OWL-ST), and how the Ray stage runs. pipelines/pseudo_label.py"""

    threshold: float = 0.3  # keep a region whose best query is a caption name at this score or above
    top_k: int = 3  # per image and caption name, at most this many regions
    negatives: int = 20  # other vocabulary names queried beside the caption's (they compete for regions)
    nms_iou: float = 0.5  # class-agnostic NMS: each region keeps its best-scoring query
    max_regions: int = 100  # regions per image considered (highest scores first)
    prompt_templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])
    seed: int = 0  # the negatives' draw, per sample key
    weight: float = 1.0  # the written detection source's mixing weight in training
    num_workers: int = 2  # Ray actors, one CPU (or one model copy) each
    threads: int = 1  # torch threads per actor
    ray_address: str = ""  # join this cluster (default: RAY_ADDRESS, else a local one of num_workers CPUs)

    def __post_init__(self):
        problems = []
        if not 0 <= self.threshold <= 1:
            problems.append(f"pseudo_label.threshold={self.threshold}: a score in [0, 1]")
        for key in ("top_k", "num_workers", "max_regions"):
            if getattr(self, key) < 1:
                problems.append(f"pseudo_label.{key}={getattr(self, key)}: must be at least 1")
        if self.negatives < 0 or self.threads < 0:
            problems.append("pseudo_label.negatives and pseudo_label.threads must be >= 0")
        if not 0 < self.nms_iou <= 1:
            problems.append(f"pseudo_label.nms_iou={self.nms_iou}: an IoU threshold in (0, 1]")
        if not self.prompt_templates or not all("{}" in t for t in self.prompt_templates):
            problems.append(f"pseudo_label.prompt_templates={self.prompt_templates}: each needs a {{}} for the name")
        if problems:
            raise OvdetError("; ".join(problems))

    @property
    def num_cpus(self) -> int:  # of a local Ray cluster (pipelines.shard.init_ray)
        return self.num_workers


@dataclass
class Config:
    """The whole tree; ``run_dir`` holds every stage's output."""

    run_dir: str = "runs/demo"
    # a training recipe of ovdet/recipes.py (owl, glip, yolo-world) filled in under the config's own
    # keys; "" (none): the defaults below, which are the owl recipe's
    recipe: str = ""
    synth: SynthConfig = field(default_factory=SynthConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    pseudo_label: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)


def load_config(path: str | Path | None, overrides: list[str] | None = None, cls: type = Config):
    """Read YAML ``path`` (None: defaults only), apply ``key.sub=value`` overrides, validate."""
    source = str(path) if path else "<defaults>"
    raw: dict[str, Any] = {}
    if path:
        raw = read_yaml(path)
    for item in overrides or []:
        apply_override(raw, item)
    if cls is Config:
        raw = apply_recipe(raw, source)
    return build(cls, raw, source, prefix="")


def is_data_config(path: str | Path) -> bool:
    """A data config (what ``ovdet shard`` reads) holds ``sources`` at its top level; a run config does not."""
    return "sources" in read_yaml(path)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file's top-level mapping (``{}`` for an empty file); errors name the file and line."""
    return fileio.read_yaml(path, expected=dict)


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set ``a.b.c=value`` in a nested dict; the value is parsed as YAML (``3``, ``true``, ``[1,2]``)."""
    if "=" not in item:
        raise OvdetError(f"override {item!r}: expected key.sub=value")
    key, _, text = item.partition("=")
    value = yaml.safe_load(text) if text.strip() else ""
    parts = key.strip().split(".")
    node: Any = raw
    for part in parts[:-1]:
        if isinstance(node, list):
            node = node[parse_index(part, key, node)]
            continue
        node = node.setdefault(part, {})
    if isinstance(node, list):
        node[parse_index(parts[-1], key, node)] = value
    else:
        node[parts[-1]] = value


def parse_index(part: str, key: str, items: list) -> int:
    if not part.isdigit() or int(part) >= len(items):
        raise OvdetError(f"override {key!r}: {part!r} is not an index of a list of {len(items)}")
    return int(part)


def build(cls: type, raw: Any, source: str, prefix: str):
    """Build dataclass ``cls`` from ``raw``, checking every key and type."""
    if not isinstance(raw, dict):
        raise OvdetError(f"{source}: {prefix or 'config'} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if f"{prefix}{key}" in REMOVED_KEYS:
            raise OvdetError(f"{source}: key '{prefix}{key}' was removed: {REMOVED_KEYS[prefix + key]}")
        if key not in names:
            raise OvdetError(f"{source}: unknown key '{prefix}{key}' (known: {', '.join(sorted(names))})")
    values = {key: convert(hints[key], value, source, f"{prefix}{key}") for key, value in raw.items()}
    for field_ in dataclasses.fields(cls):
        # A mapping field given in part (``loss.weights.loss_image=0.1``) updates its default
        # mapping instead of replacing it, which would silently drop every other entry.
        if not isinstance(values.get(field_.name), dict):
            continue
        unknown = sorted(set(values[field_.name]) - set(field_.metadata.get("keys", values[field_.name])))
        removed = [f"{prefix}{field_.name}.{key}" for key in unknown if f"{prefix}{field_.name}.{key}" in REMOVED_KEYS]
        if removed:
            raise OvdetError(f"{source}: key '{removed[0]}' was removed: {REMOVED_KEYS[removed[0]]}")
        if unknown:
            known = ", ".join(field_.metadata["keys"])
            raise OvdetError(f"{source}: unknown key '{prefix}{field_.name}.{unknown[0]}' (known: {known})")
        if field_.default_factory is not dataclasses.MISSING:
            values[field_.name] = {**field_.default_factory(), **values[field_.name]}
    try:
        return cls(**values)
    except OvdetError as exc:  # a check of the dataclass itself (__post_init__)
        raise OvdetError(f"{source}: {exc}") from None


def convert(hint: Any, value: Any, source: str, key: str) -> Any:
    """Check ``value`` against type ``hint``; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, source, key + ".")
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise type_error(source, key, f"one of {list(typing.get_args(hint))}", value)
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise type_error(source, key, "a list", value)
        (item_hint,) = typing.get_args(hint)[:1]
        return [convert(item_hint, v, source, f"{key}.{i}") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise type_error(source, key, "a mapping", value)
        _, item_hint = typing.get_args(hint)
        return {k: convert(item_hint, v, source, f"{key}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return convert(option, value, source, key)
            except OvdetError:
                continue
        raise type_error(source, key, str(hint), value)
    return convert_scalar(hint, value, source, key)


def convert_scalar(hint: Any, value: Any, source: str, key: str) -> Any:
    if hint is type(None):
        if value is not None:
            raise type_error(source, key, "null", value)
        return None
    if hint is bool:
        if not isinstance(value, bool):
            raise type_error(source, key, "true or false", value)
        return value
    if hint is float:  # YAML 1.1 reads 1e-5 (no dot) as a string: a number in exponent form is one
        if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", value.strip()):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise type_error(source, key, "a number", value)
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise type_error(source, key, "an integer", value)
        return value
    if hint is str:
        if not isinstance(value, str):
            raise type_error(source, key, "a string", value)
        return value
    if hint is Any:
        return value
    raise TypeError(f"config field {key}: unsupported type {hint}")


def type_error(source: str, key: str, expected: str, value: Any) -> OvdetError:
    return OvdetError(f"{source}: key '{key}' must be {expected}, got {value!r} ({type(value).__name__})")


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
