"""Schemas of the two config nodes ReduceNet adds (``EXTENSION.nodes``, made part of the run
config by :mod:`kdsweep.config.schema`).

- ``student.adapt`` (:class:`StudentAdaptConf`): what is done to a student after it is built and
  initialised (``student.init``): frozen modules, LoRA branches with an optional LambdaReLU, fused
  at the end (:mod:`kdsweep.reducenet.adapt`). Usable with any student; ReduceNet's stage 3 sets it.
- ``reducenet`` (:class:`ReduceNetConf`): the three-stage pipeline (:mod:`kdsweep.reducenet.stages`),
  set by ``experiment=reducenet``; null for every other run.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from kdsweep.errors import ConfigError

C = TypeVar("C")


def typed_node(node: Any, schema: type[C], key: str) -> C:
    """``node`` (a mapping) as ``schema``, refusing an undeclared key in one line naming it."""
    node = dict(node or {})
    declared = {f.name for f in fields(schema)}
    unknown = sorted(set(node) - declared)
    if unknown:
        raise ConfigError(f"{key} has no option {unknown[0]!r}; valid: " + ", ".join(sorted(declared)))
    return schema(**node)


@dataclass
class StudentAdaptConf:
    freeze: list[str] = field(default_factory=list)  # module paths whose parameters stay fixed
    lora_rank: int = 0            # a LoRA branch of this rank beside every convolution; 0 = none
    lambda_relu: bool = False     # VanillaNet's LambdaReLU between the branch's two convolutions
    anneal: float = 0.5           # fraction of the training steps over which lambda goes 0 -> 1


@dataclass
class ReduceNetConf:
    expansion: int = 1            # stage 2 (teacher): bottleneck width = expansion x block width
    small: bool = True            # stage 1: train the small network, and grow stage 2 from it
    small_epochs: int | None = None   # stage 1's epochs; null: teacher_schedule's / schedule's
    grow_epochs: int | None = None    # stage 2's epochs; null: teacher_schedule's / schedule's
    teacher_schedule: dict[str, Any] = field(default_factory=dict)  # stages 1-2: overrides of
                                  # `schedule` (stage 3 uses `schedule` as it is)
    rank: int = 4                 # stage 3: LoRA rank beside each kept convolution; 0 = no LoRA
    lambda_relu: bool = True      # stage 3: LambdaReLU in the LoRA branch, ReLU -> identity
    anneal: float = 0.5           # stage 3: fraction of training over which lambda goes 0 -> 1
    freeze_classifier: bool = True  # stage 3: the classifier keeps the teacher's weights


__all__ = ["ReduceNetConf", "StudentAdaptConf"]
