"""The open-vocabulary detector: open_clip towers, OWL-ViT-style heads (single-device code)."""

from ovdet.models.detector import DetectorOutput, OpenVocabDetector
from ovdet.models.factory import create_detector, resolve_model_spec, resolve_package_path

__all__ = ["DetectorOutput", "OpenVocabDetector", "create_detector", "resolve_model_spec", "resolve_package_path"]
