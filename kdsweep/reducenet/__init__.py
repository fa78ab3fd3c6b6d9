"""ReduceNet ("Grow, Shrink, Distill", public code ohmydroid/reducenet) as a kdsweep extension
(:mod:`kdsweep.extensions`); everything it adds lives in this folder (README.md):

- ``network.py``: the networks ``reduce8/20/56`` (``_e2``, ``_e4``), in the model registry;
- ``schema.py``: the config nodes ``reducenet`` and ``student.adapt``;
- ``lora.py``: LoRA branches with VanillaNet's LambdaReLU, and their fusion;
- ``adapt.py``: ``student.adapt`` for any run; ``stages.py``: the three stages as one command;
  ``hooks.py``: both, plugged into the pipeline;
- ``conf/experiment/``: the presets ``experiment=reducenet`` and ``reducenet_cifar10``;
- ``benchmark.py`` and ``tests/``.

This module imports only the config schemas: the lowest layers read ``EXTENSION``.
"""

from pathlib import Path

from kdsweep.extensions import Extension
from kdsweep.reducenet.schema import ReduceNetConf, StudentAdaptConf

EXTENSION = Extension(
    name="reducenet",
    nodes={"reducenet": ReduceNetConf, "student.adapt": StudentAdaptConf},
    models=("kdsweep.reducenet.network",),
    hooks="kdsweep.reducenet.hooks:ReduceNetHooks",
    presets=Path(__file__).parent / "conf",
)
