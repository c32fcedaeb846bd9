"""Installed as ``ovdet.slurm`` (``pyproject.toml`` maps this folder there).

The sbatch templates ship inside the package: ``ovdet submit`` renders them from
``ovdet.resources.slurm_template_dir()`` in a wheel install as in the checkout.
"""
