"""The distillation-method interface, its hyper-parameter declarations and its registry.

A method is a small ``nn.Module`` (in the spirit of mdistiller's ``Distiller``): given the student's
and the teacher's outputs and the targets it returns *named, already weighted* loss terms; the engine
sums them, back-propagates the sum and logs each term. Whatever extra trainable parts a method needs
(regressors, embeddings, memory banks) are its submodules, so they go into the optimiser and the
checkpoint without the engine knowing about them. The engine never branches on a method's name.

**Hyper-parameters are declared once**, as the keyword arguments of the method's ``__init__``: name,
type, default and range (``Annotated`` metadata such as :data:`Weight` or ``Range(0, 1)``). From that
one declaration kdsweep checks every value before any work (one line naming the key, the value and
what is allowed), generates the ``method=NAME`` config node that Hydra type-checks
(:mod:`kdsweep.config.nodes`), and writes the defaults table of ``docs/methods.md``
(``python -m kdsweep.methods --markdown``; a test compares it with the file). The declaration
types live in :mod:`kdsweep.methods._declare` and are re-exported here.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from kdsweep.errors import ConfigError, close_matches
from kdsweep.methods._declare import (  # noqa: F401  (re-exported: methods import them here)
    Count,
    Fraction,
    HParam,
    Length,
    OneOf,
    Range,
    Temperature,
    Weight,
    hparams_of,
)
from kdsweep.methods.logits import logit_terms
from kdsweep.models import ModelOutput


def hparams(cls: type[Method]) -> tuple[HParam, ...]:
    """The hyper-parameters ``cls`` declares (its ``__init__`` keyword arguments)."""
    return hparams_of(inspect.unwrap(cls.__init__))


# ------------------------------------------------------------------------------- interface
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
    teacher_arch: str | None = None  # registry names of the pair (DKD's per-pair beta); None:
    student_arch: str | None = None  # an engine that does not pass them
    # The teacher BatchNorm modes the engine honours for a method's ``teacher_mode`` attribute
    # ("train": the teacher runs with batch statistics during training steps, as OFD's code does).
    teacher_modes: tuple[str, ...] = ("eval",)


class Method(nn.Module):
    """Base class of every training objective, plain cross-entropy included.

    Subclasses set the class attributes below, declare their hyper-parameters as typed keyword
    arguments of ``__init__`` with defaults (checked before ``__init__`` runs, see the module
    docstring), and implement :meth:`forward`. Methods with connectors whose shapes depend on the
    models override :meth:`build`, which runs once on a dry-run batch before the optimiser is created.
    """

    name: ClassVar[str] = ""
    #: False for plain training (``ce``): no teacher is resolved or run.
    needs_teacher: ClassVar[bool] = True
    #: True when the method reads stage features; otherwise the engine calls ``model(x)`` only.
    needs_features: ClassVar[bool] = False
    #: True when :meth:`build` refuses some teacher -> student pairs (FSP's and KD-SVD's equal
    #: channel counts): the checks before any work then build it on a dry run of the two models.
    checks_pair: ClassVar[bool] = False
    #: Other views of each batch the method reads (``("strong",)``: MLKD's strongly augmented
    #: copy, :mod:`kdsweep.data.views`). The engine runs the student, and the teacher once for
    #: the cohort, on each and puts the outputs in ``student_out.views[name]`` and
    #: ``teacher_out.views[name]``; the batch's own view stays ``student_out`` itself.
    views: ClassVar[tuple[str, ...]] = ()
    #: What the method reads of the teacher's output: ``logits``, ``pooled`` (the logits and the
    #: pooled embedding: CRD, RKD, PKT, CC) or ``features`` (stage maps). Empty: ``features``
    #: when ``needs_features``, else ``logits``. The teacher-output store (:mod:`kdsweep.store`)
    #: serves ``logits`` and ``pooled``; ``features`` runs the live teacher.
    teacher_reads: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        @functools.wraps(init)
        def checked_init(self: Method, *args: Any, **kw: Any) -> None:
            if type(self).__init__ is checked_init:  # check once, in the most derived class
                bound = inspect.signature(init).bind(self, *args, **kw)
                for hp in hparams_of(init):
                    if hp.name in bound.arguments:
                        bound.arguments[hp.name] = hp.check(bound.arguments[hp.name])
                args, kw = bound.args[1:], bound.kwargs
            init(self, *args, **kw)

        cls.__init__ = checked_init  # type: ignore[method-assign]

    def build(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
              context: BuildContext) -> None:
        """Create shape-dependent submodules from one dry-run batch (default: nothing).

        Runs once before the optimiser is created, with the models in eval mode and no grad;
        submodules created here are moved to the student's device by the engine afterwards.
        """

    def forward(self, student_out: ModelOutput, teacher_out: ModelOutput | None, targets: Tensor,
                info: StepInfo) -> dict[str, Tensor]:
        raise NotImplementedError

    def extra_parameters(self) -> int:
        """Number of trainable parameters the method adds (connectors, embeddings, ...)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def epoch_values(self) -> dict[str, float]:
        """Values of the method's own state to log at each epoch's end, as ``method/<name>``
        (e.g. CTKD's learned temperature ``{"T": 3.7}``); default: none."""
        return {}

    # -- pre-stage (RepDistiller's ``--init_epochs``: AB, FT, FSP) ------------------------------
    #: Epochs trained before the main schedule with :meth:`init_forward` as the loss; a method with
    #: a pre-stage declares an ``init_epochs`` hyper-parameter and stores it here.
    init_epochs: int = 0
    #: The pre-stage's learning rate; None: the schedule's ``lr`` (FT declares its own).
    init_lr: float | None = None
    #: Options the pre-stage does not read (the main stage's weights): members of a cohort that
    #: differ only in these, and start from the same state, train the pre-stage once.
    main_stage_options: ClassVar[tuple[str, ...]] = ("feat_weight", "ce_weight", "kd_weight", "T")

    def init_parameters(self, body: list[nn.Parameter]) -> list[nn.Parameter]:
        """What the pre-stage trains: some of the method's own parameters and/or ``body`` (the
        student's parameters except its classifier's, RepDistiller's ``get_feat_modules()``).
        The engine optimises them with SGD at ``init_lr`` (else the schedule's ``lr``), the
        schedule's ``momentum`` and ``weight_decay``, constant (RepDistiller's ``init()``); the
        student runs in train mode when some of ``body`` is returned, else in eval mode without
        gradients."""
        return []

    def init_forward(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
                     info: StepInfo) -> dict[str, Tensor]:
        """The pre-stage's named loss terms (summed, logged as ``loss/<name>``)."""
        raise NotImplementedError(f"{self.name}: init_epochs > 0 needs init_forward")


def teacher_reads_of(method: Method) -> str:
    """``method.teacher_reads``, or its default: ``features`` when it reads features, else
    ``logits``."""
    declared = getattr(method, "teacher_reads", "")
    return declared or ("features" if getattr(method, "needs_features", False) else "logits")


class FeatureMethod(Method):
    """Base of the feature methods: the optional ``ce`` and ``kd`` terms every one of them has.

    Subclasses declare ``ce_weight``, ``kd_weight`` and ``T`` among their hyper-parameters, call
    :meth:`_init_logits` in ``__init__`` and start ``forward`` from :meth:`_logit_terms`, which
    returns ``ce_weight * CE`` and ``kd_weight * T^2 * KL`` (each only when its weight is > 0), so
    ``alpha x T`` grids and "FEATURE + KD" combinations need no code.
    """

    needs_features = True

    def _init_logits(self, ce_weight: float, kd_weight: float, T: float) -> None:
        self.ce_weight, self.kd_weight, self.T = ce_weight, kd_weight, T

    def _logit_terms(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
                     targets: Tensor) -> dict[str, Tensor]:
        t_logits = teacher_out.logits.detach() if teacher_out is not None else None
        return logit_terms(student_out.logits, t_logits, targets, ce_weight=self.ce_weight,
                           kd_weight=self.kd_weight, T=self.T)


# -------------------------------------------------------------------------------- registry
_METHODS: dict[str, type[Method]] = {}


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator that makes a method selectable as ``method=NAME``."""

    def deco(cls: type[Method]) -> type[Method]:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is registered twice")
        cls.name = name
        _METHODS[name] = cls
        hparams(cls)  # a bad declaration fails at import, not in a user's run
        return cls

    return deco


def list_methods() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> type[Method]:
    try:
        return _METHODS[name]
    except KeyError:
        near = close_matches(name, _METHODS)
        raise ConfigError(f"method.name={name!r} is not a known method; " + (
            f"did you mean {' or '.join(near)}?" if near else f"valid: {', '.join(list_methods())}")
        ) from None


#: What an option is often called elsewhere -> its name here (when the method declares it).
ALIASES = {"temperature": "T", "temp": "T", "tau": "T"}


def option_matches(cls: type[Method], key: str) -> list[str]:
    """The declared options of ``cls`` that ``key`` (not one of them) probably meant."""
    declared = [hp.name for hp in hparams(cls)]
    known = declared + [a for a, name in ALIASES.items() if name in declared]
    return list(dict.fromkeys(ALIASES.get(k, k) for k in close_matches(key, known)))


def create_method(cfg: Mapping[str, Any]) -> Method:
    """Instantiate ``cfg.name`` with the other keys as hyper-parameters; unknown keys are refused."""
    params = {k: v for k, v in dict(cfg).items() if k != "name"}
    cls = get_method(str(cfg["name"]))
    declared = {hp.name for hp in hparams(cls)}
    unknown = sorted(set(params) - declared)
    if unknown:
        near = option_matches(cls, unknown[0]) if len(unknown) == 1 else []
        raise ConfigError(
            f"method {cls.name!r} has no option {', '.join(f'method.{k}' for k in unknown)}; " + (
                f"did you mean {' or '.join(f'method.{k}' for k in near)}?" if near else
                f"valid: {', '.join(f'method.{k}' for k in sorted(declared)) or '(none)'}"))
    return cls(**params)


def check_range(key: str, value: float, lo: float | None = None, hi: float | None = None,
                *, lo_open: bool = False) -> float:
    """Refuse a value outside ``[lo, hi]`` with a one-line :class:`ConfigError` (for values that
    are not declared hyper-parameters, e.g. derived from the data)."""
    return HParam(key, float, None, range=Range(lo, hi, lo_open)).check(value, prefix="")


__all__ = [
    "BuildContext",
    "Count",
    "FeatureMethod",
    "Fraction",
    "HParam",
    "Length",
    "Method",
    "OneOf",
    "Range",
    "StepInfo",
    "Temperature",
    "Weight",
    "check_range",
    "create_method",
    "get_method",
    "hparams",
    "list_methods",
    "option_matches",
    "register_method",
    "teacher_reads_of",
]
