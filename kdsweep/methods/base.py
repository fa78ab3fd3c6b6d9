"""The distillation-method interface and its registry.

A method is a small ``nn.Module`` (in the spirit of mdistiller's ``Distiller``): given the student's
and the teacher's outputs and the targets it returns *named, already weighted* loss terms; the engine
sums them, back-propagates the sum and logs each term. Whatever extra trainable parts a method needs
(regressors, embeddings, memory banks) are its submodules, so they go into the optimiser and the
checkpoint without the engine knowing about them. The engine never branches on a method's name.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from kdsweep.errors import ConfigError
from kdsweep.models import ModelOutput


@dataclass(frozen=True)
class StepInfo:
    """Where training is, for methods that schedule their loss (DKD warmup) or index samples (CRD)."""

    epoch: int  # 0-based epoch
    step: int  # 0-based global optimisation step
    epochs: int  # total epochs of the schedule
    steps_per_epoch: int
    indices: Tensor | None = None  # positions of the batch's samples in the training split

    @property
    def progress(self) -> float:
        """Fraction of training done, in [0, 1)."""
        return self.step / max(1, self.epochs * self.steps_per_epoch)


@dataclass(frozen=True)
class BuildContext:
    """What a method may need to know about the run when it builds its parts."""

    num_train: int  # size of the training split (CRD's memory bank)
    num_classes: int
    epochs: int
    steps_per_epoch: int
    train_labels: Tensor | None = None  # int64 on the CPU, position i = training index i
    batch_size: int | None = None  # training batch size (SemCKD's attention width)
    teacher_tap: Any = None  # the teacher's FeatureTap (OFD reads its BN-before-ReLU statistics)


class Method(nn.Module):
    """Base class of every training objective, plain cross-entropy included.

    Subclasses set the class attributes below, take their hyper-parameters as keyword arguments
    of ``__init__`` (the keys of ``conf/method/NAME.yaml`` other than ``name``), and implement
    :meth:`forward`. Methods with connectors whose shapes depend on the models override
    :meth:`build`, which runs once on a dry-run batch before the optimiser is created.
    """

    name: ClassVar[str] = ""
    #: False for plain training (``ce``): no teacher is resolved or run.
    needs_teacher: ClassVar[bool] = True
    #: True when the method reads stage features; otherwise the engine calls ``model(x)`` only.
    needs_features: ClassVar[bool] = False

    def build(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
              context: BuildContext) -> None:
        """Create shape-dependent submodules from one dry-run batch (default: nothing).

        Runs once before the optimiser is created, with the models in eval mode and no grad;
        submodules created here are moved to the student's device by the engine afterwards.
        """

    def forward(
        self,
        student_out: ModelOutput,
        teacher_out: ModelOutput | None,
        targets: Tensor,
        info: StepInfo,
    ) -> dict[str, Tensor]:
        raise NotImplementedError

    def extra_parameters(self) -> int:
        """Number of trainable parameters the method adds (connectors, embeddings, ...)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


_METHODS: dict[str, type[Method]] = {}


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator that makes a method selectable as ``method=NAME``."""

    def deco(cls: type[Method]) -> type[Method]:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is registered twice")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return deco


def list_methods() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> type[Method]:
    try:
        return _METHODS[name]
    except KeyError:
        raise ConfigError(
            f"method.name={name!r} is not a known method; valid: {', '.join(list_methods())}"
        ) from None


def create_method(cfg: Mapping[str, Any]) -> Method:
    """Instantiate ``cfg.name`` with the other keys as hyper-parameters; unknown keys are refused."""
    params = {k: v for k, v in dict(cfg).items() if k != "name"}
    cls = get_method(str(cfg["name"]))
    accepted = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(params) - set(accepted) - {"self"})
    if unknown:
        valid = sorted(k for k in accepted if k not in ("self", "args", "kwargs"))
        raise ConfigError(
            f"method {cls.name!r} has no option {', '.join(f'method.{k}' for k in unknown)}; "
            f"valid: {', '.join(f'method.{k}' for k in valid) or '(none)'}"
        )
    return cls(**params)


def check_range(key: str, value: float, lo: float | None = None, hi: float | None = None,
                *, lo_open: bool = False) -> float:
    """Refuse a hyper-parameter outside its range with a one-line :class:`ConfigError`."""
    value = float(value)
    bad = (lo is not None and (value <= lo if lo_open else value < lo)) or (
        hi is not None and value > hi
    ) or not math.isfinite(value)
    if bad:
        lo_s = "-inf" if lo is None else f"{lo:g}"
        hi_s = "inf" if hi is None else f"{hi:g}"
        interval = f"{'(' if lo_open else '['}{lo_s}, {hi_s}]"
        raise ConfigError(f"{key}={value:g} is out of range; allowed: {interval}")
    return value


__all__ = [
    "BuildContext",
    "Method",
    "StepInfo",
    "check_range",
    "create_method",
    "get_method",
    "list_methods",
    "register_method",
]
