"""Installed as ``ovdet.configs`` (``pyproject.toml`` maps this folder there).

Run configs (``demo.yaml``) and model configs (``models/*.yaml``) ship inside the package and are
read through ``ovdet.resources`` with ``importlib.resources``, so ``--config demo`` and
``model.name: minilm-efficientnet-lite0`` resolve in a wheel install as in the checkout. ``data/``
holds checkout-only examples (their paths are relative to this folder) and is not installed.
"""
