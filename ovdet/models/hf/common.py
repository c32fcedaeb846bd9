"""What every ``transformers``-backed detector shares: loading, pixels, towers, saving.

An ovdet detector (native or ``hf:``) offers the trainer and the inference code one protocol:

- ``predict(images, texts) -> (DetectorOutput, text_mask)``: ``images`` ``[B, 3, S, S]`` uint8 or
  float in [0, 255] on ovdet's square canvas (``ovdet.data.letterbox``), ``texts`` the names of each
  image; boxes come back normalized cxcywh relative to the canvas. Training calls only this.
- ``processor_inputs(pil_images) -> dict`` and ``predict_processed(inputs, vocabulary_or_embeds)``:
  inference through the model's own ``transformers`` processor, so pixels are bit-identical to
  ``AutoProcessor``'s; ``boxes_to_pixels`` maps the boxes back to each original image.
- ``set_trainable``, ``set_grad_checkpointing``, ``parameter_groups_by_tower`` ("text", "image",
  "heads"), ``image_size``, ``spec``, and the ``pixel_mean`` buffer (its device is the model's).

The wrapped module is ``self.hf``; its state dict keys are the ``transformers`` keys under
``hf.``, so a trained ovdet model folder is also a ``save_pretrained`` folder (``write_hf_folder``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ovdet.errors import OvdetError

HF_PREFIX = "hf:"
# config.model_type -> (transformers class, ovdet detector kind)
ARCHITECTURES = {
    "owlvit": ("OwlViTForObjectDetection", "owl"),
    "owlv2": ("Owlv2ForObjectDetection", "owl"),
    "grounding-dino": ("GroundingDinoForObjectDetection", "grounding_dino"),
    "mm-grounding-dino": ("MMGroundingDinoForObjectDetection", "grounding_dino"),
}


def is_hf_name(name: str) -> bool:
    return isinstance(name, str) and name.startswith(HF_PREFIX)


def read_hf_config(source: str):
    """The ``transformers`` config of a folder (or a Hub id ``ORG/NAME`` where the network allows),
    checked; every failure is one line naming the model."""
    from transformers import AutoConfig

    name = f"model '{HF_PREFIX}{source}'"
    folder = Path(source).expanduser()
    if not source:
        raise OvdetError(f"{name}: name a save_pretrained folder (or a Hub repo id ORG/NAME) after '{HF_PREFIX}'")
    if folder.is_file():
        raise OvdetError(f"{name}: {source} is a file; give the folder save_pretrained wrote")
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise OvdetError(f"{name}: {source} has no config.json (not a save_pretrained folder)")
    if not folder.exists() and (source.count("/") != 1 or source.startswith((".", "/", "~"))):
        raise OvdetError(f"{name}: no such folder {source} (and not a Hub repo id ORG/NAME)")
    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        raise OvdetError(f"{name}: cannot read its transformers config: {reason}") from None
    if config.model_type not in ARCHITECTURES:
        raise OvdetError(f"model 'hf:{source}': model_type '{config.model_type}' is not a detector ovdet wraps "
                         f"({', '.join(ARCHITECTURES)})")
    return config


def hf_model_class(model_type: str):
    import transformers

    return getattr(transformers, ARCHITECTURES[model_type][0])


def load_processor(source: str | Path):
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(str(source))
    except (OSError, ValueError, TypeError) as exc:
        raise OvdetError(f"{source}: cannot load the model's processor (tokenizer and image processor "
                         f"files, as save_pretrained writes them): {exc}") from None


def hf_spec(name: str, input_size: int | None = None) -> dict[str, Any]:
    """The model spec of ``hf:SOURCE``: the config travels inside it, so a checkpoint rebuilds the
    module without the source; the processor is read from the model folder (``write_hf_folder``)."""
    source = name[len(HF_PREFIX):]
    config = read_hf_config(source)
    return {"kind": "hf", "name": name, "source": source, "model_type": config.model_type,
            "architecture": ARCHITECTURES[config.model_type][0], "hf_config": config.to_dict(),
            "input_size": input_size}  # fmt: skip


def build_hf_module(spec: dict[str, Any], load_weights: bool) -> nn.Module:
    """The ``transformers`` module: pretrained weights from ``spec['source']``, or random init
    from the config the spec carries (the caller then loads a checkpoint)."""
    from transformers.utils import logging as hf_logging

    model_class = hf_model_class(spec["model_type"])
    if load_weights:
        previous, had_progress_bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            return model_class.from_pretrained(spec["source"], use_safetensors=True)  # nothing unpickled
        except OSError as exc:
            reason = " ".join(str(exc).split())
            raise OvdetError(f"model '{spec['name']}': cannot load its weights (model.safetensors): {reason}") from None
        finally:
            hf_logging.set_verbosity(previous)
            if had_progress_bar:
                hf_logging.enable_progress_bar()
    return model_class(config_from_dict(spec["hf_config"]))


def config_from_dict(config_dict: dict[str, Any]):
    """The ``transformers`` config a spec's ``hf_config`` (``config.to_dict()``) describes."""
    from transformers import AutoConfig

    config_dict = dict(config_dict)
    return AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)


def create_hf_detector(spec: dict[str, Any], load_weights: bool = True, processor_source: str | Path | None = None):
    """An ovdet detector around the module ``spec`` names; the processor comes from
    ``processor_source`` (a model folder) or the spec's source."""
    kind = ARCHITECTURES[spec["model_type"]][1]
    module = build_hf_module(spec, load_weights)
    processor = load_processor(processor_source or spec["source"])
    if kind == "owl":
        from ovdet.models.hf.owl import OwlDetector

        return OwlDetector(module, processor, spec)
    from ovdet.models.hf.grounding_dino import GroundingDinoDetector

    return GroundingDinoDetector(module, processor, spec)


def write_hf_folder(out_dir: Path, spec: dict[str, Any], tensors: dict[str, torch.Tensor], detector) -> None:
    """Write ovdet's detector weights as a ``save_pretrained`` folder: ``config.json``,
    ``model.safetensors`` with the ``transformers`` keys, and the processor's files, all at the
    input size ovdet trained at (``detector.export_at_input_size``)."""
    from safetensors.torch import save_file

    tensors, config_dict, processor = detector.export_at_input_size(tensors, dict(spec["hf_config"]))
    config = config_from_dict(config_dict)
    config.architectures = [spec["architecture"]]
    config.save_pretrained(out_dir)
    # clones: transformers ties some weights (Grounding DINO's box heads), safetensors refuses shared memory
    hf_tensors = {k.removeprefix("hf."): v.clone() for k, v in tensors.items() if k.startswith("hf.")}
    if len(hf_tensors) != len(tensors):
        extra = sorted(set(tensors) - {"hf." + k for k in hf_tensors})
        raise OvdetError(f"{out_dir}: weights outside the transformers module: {extra[:3]}")
    save_file(hf_tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    processor.save_pretrained(out_dir)


def scalars_to_buffers(module: nn.Module) -> None:
    """0-dim parameters (CLIP's image-text ``logit_scale``) become buffers of the same name: no
    detection loss uses them, and DeepSpeed cannot broadcast a 0-dim tensor as bytes. The state
    dict keeps their keys, so ``save_pretrained`` folders still load without new weights."""
    for owner in module.modules():
        for name, param in list(owner.named_parameters(recurse=False)):
            if param.dim() == 0:
                delattr(owner, name)
                owner.register_buffer(name, param.detach().clone())


class HFDetectorBase(nn.Module):
    """The shared half of the ``transformers`` wrappers (see the module docstring)."""

    fuses_text = False  # True when the texts enter the image pathway (Grounding DINO)

    def __init__(self, module: nn.Module, processor, spec: dict[str, Any], native_size: int):
        super().__init__()
        scalars_to_buffers(module)
        self.hf = module
        self.processor = processor
        self.spec = spec
        self.image_size = int(spec.get("input_size") or native_size)
        image_processor = processor.image_processor
        mean = torch.tensor(image_processor.image_mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(image_processor.image_std, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("pixel_mean", mean, persistent=False)
        self.register_buffer("pixel_std", std, persistent=False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 255] pixels -> the processor's normalisation (rescale by 1/255, then mean and std)."""
        return (images.float() / 255.0 - self.pixel_mean) / self.pixel_std

    def text_parameter_prefixes(self) -> tuple[str, ...]:
        raise NotImplementedError

    def image_parameter_prefixes(self) -> tuple[str, ...]:
        raise NotImplementedError

    def tower_of(self, name: str) -> str:
        if name.startswith(self.text_parameter_prefixes()):
            return "text"
        return "image" if name.startswith(self.image_parameter_prefixes()) else "heads"

    def set_trainable(self, train_text: bool, train_image: bool) -> None:
        for name, param in self.named_parameters():
            tower = self.tower_of(name)
            param.requires_grad_(train_text if tower == "text" else train_image if tower == "image" else True)

    def set_grad_checkpointing(self, enabled: bool) -> None:
        if enabled and hasattr(self.hf, "activation_checkpointing_enable"):  # transformers 5's name
            self.hf.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        elif enabled:
            self.hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        elif getattr(self.hf, "is_activation_checkpointing", None) or getattr(self.hf, "is_gradient_checkpointing", False):
            (getattr(self.hf, "activation_checkpointing_disable", None) or self.hf.gradient_checkpointing_disable)()

    def parameter_groups_by_tower(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        groups: dict[str, list] = {"text": [], "image": [], "heads": []}
        for name, param in self.named_parameters():
            if param.requires_grad:
                groups[self.tower_of(name)].append((name, param))
        return groups

    def export_at_input_size(self, tensors: dict[str, torch.Tensor], config_dict: dict[str, Any]):
        """``(tensors, config dict, processor)`` of a folder that runs natively at ``image_size``
        (the size ovdet trained at), so ``transformers`` alone reproduces ovdet's inference."""
        return tensors, config_dict, self.processor

    def processor_inputs(self, images: list) -> dict[str, torch.Tensor]:
        """PIL images -> the processor's tensors (``pixel_values``, and ``pixel_mask`` where it has one)."""
        inputs = self.processor.image_processor(images=images, return_tensors="pt")
        return {k: v.to(self.pixel_mean.device) for k, v in inputs.items()}
