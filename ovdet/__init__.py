"""ovdet: distributed open-vocabulary detection pretraining."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy so that `ovdet eval` on precomputed detections never imports torch.
    if name == "Detector":
        from ovdet.infer import Detector

        return Detector
    raise AttributeError(name)
