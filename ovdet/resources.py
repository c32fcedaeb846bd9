"""Files that ship inside the package: run configs, model configs and the Slurm templates.

The repository keeps them in its top-level ``configs/`` and ``slurm/`` folders; ``pyproject.toml``
installs those folders as the packages ``ovdet.configs`` and ``ovdet.slurm`` (setuptools
``package-dir``), so one copy serves the checkout, an editable install and a wheel, and they are
found with ``importlib.resources`` wherever ovdet is installed.

    config_file("demo")                    # the packaged demo run config
    config_file("my_run.yaml")             # a user's file: any existing path wins
    model_config_file("minilm-efficientnet-lite0")
    slurm_template_dir() / "pretrain.sbatch"
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from ovdet.errors import OvdetError

CONFIGS = "ovdet.configs"
SLURM = "ovdet.slurm"
MODELS = "models"


def packaged_dir(package: str, *parts: str) -> Path:
    """A packaged folder as a real path (pip installs unpacked, so every resource is a file on disk)."""
    folder = files(package).joinpath(*parts)
    if not isinstance(folder, Path):
        raise OvdetError(f"{package}: installed as {type(folder).__name__}, not as files on disk; "
                         "reinstall ovdet with pip (not as a zip)")
    return folder


def packaged_names(package: str, *parts: str, suffix: str) -> list[str]:
    return sorted(p.name.removesuffix(suffix) for p in packaged_dir(package, *parts).glob(f"*{suffix}"))


def config_file(name_or_path: str | Path) -> Path:
    """An existing path as given, else the packaged config of that name.

    ``demo``, ``demo.yaml``, ``configs/demo.yaml`` and ``data/synthetic`` name packaged configs, so a
    command written for the checkout also works from any folder once ovdet is installed.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    parts = path.with_suffix(".yaml").parts
    parts = parts[1:] if parts[:1] == ("configs",) else parts
    packaged = packaged_dir(CONFIGS, *parts) if parts and ".." not in parts and not path.is_absolute() else None
    if packaged is not None and packaged.is_file():
        return packaged
    known = ", ".join(packaged_names(CONFIGS, suffix=".yaml") + [f"data/{n}" for n in packaged_names(
        CONFIGS, "data", suffix=".yaml")])
    raise OvdetError(f"{name_or_path}: no such config file, and not a packaged config ({known})")


def model_config_file(name: str) -> Path | None:
    """The packaged model config ``NAME.yaml``, or None."""
    path = packaged_dir(CONFIGS, MODELS) / f"{name}.yaml"
    return path if path.is_file() else None


def model_config_names() -> list[str]:
    return packaged_names(CONFIGS, MODELS, suffix=".yaml")


def slurm_template_dir() -> Path:
    return packaged_dir(SLURM)
