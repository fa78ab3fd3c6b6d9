"""Sums of methods: ``method=multi`` combines any registered methods, each with its own config."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor, nn

from kdsweep.errors import ConfigError
from kdsweep.methods.base import (
    BuildContext,
    Method,
    StepInfo,
    create_method,
    get_method,
    register_method,
    teacher_reads_of,
)
from kdsweep.models import ModelOutput

_NAMESPACE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: ``method=multi``'s default: Hinton KD (RepDistiller -r 0.1 -a 0.9) + AT (-b 1000).
DEFAULT_METHODS: dict[str, dict[str, float]] = {
    "kd": {"alpha": 0.9, "T": 4.0},
    "at": {"feat_weight": 1000.0, "ce_weight": 0.0},
}
_EXAMPLE = "method.methods='{kd: {alpha: 0.9, T: 4}, at: {feat_weight: 1000, ce_weight: 0}}'"


def _ce_weight(method: Method) -> float | None:
    """The weight a method gives the labels' cross-entropy, when it can be read off its config."""
    if method.name == "multi":
        return None
    w = getattr(method, "ce_weight", None)
    if w is not None:
        return float(w)
    alpha = getattr(method, "alpha", None)  # Hinton KD: (1 - alpha) * CE
    if method.name == "kd" and alpha is not None:
        return 1.0 - float(alpha)
    return None


def _entries(methods: Any) -> list[tuple[str, dict[str, Any]]]:
    """``(namespace, config with 'name')`` pairs from the mapping or list form of ``methods``."""
    if isinstance(methods, (DictConfig, ListConfig)):
        methods = OmegaConf.to_container(methods, resolve=True)
    if methods is None:
        methods = DEFAULT_METHODS
    if not methods:
        raise ConfigError(f"method=multi needs at least one method in method.methods, e.g. {_EXAMPLE}")
    entries: list[tuple[str, dict[str, Any]]] = []
    if isinstance(methods, Mapping):
        for ns, cfg in methods.items():
            if cfg is not None and not isinstance(cfg, Mapping):
                raise ConfigError(f"method.methods.{ns} must be a mapping of options, got {cfg!r}")
            cfg = dict(cfg or {})
            cfg.setdefault("name", str(ns))
            entries.append((str(ns), cfg))
    elif isinstance(methods, (list, tuple)):
        seen: dict[str, int] = {}
        for i, cfg in enumerate(methods):
            if isinstance(cfg, str):
                cfg = {"name": cfg}
            if not isinstance(cfg, Mapping) or "name" not in cfg:
                raise ConfigError(f"method.methods[{i}] must be a method name or a mapping with a "
                                  f"'name' key, got {cfg!r}")
            name = str(cfg["name"])
            seen[name] = seen.get(name, 0) + 1
            entries.append((name if seen[name] == 1 else f"{name}{seen[name]}", dict(cfg)))
    else:
        raise ConfigError(f"method.methods must be a mapping or a list, e.g. {_EXAMPLE}")
    for ns, _ in entries:
        if not _NAMESPACE.match(ns):
            raise ConfigError(f"method.methods: {ns!r} is not a valid term namespace "
                              "(letters, digits and _, not starting with a digit)")
    return entries


@register_method("multi")
class Multi(Method):
    """A weighted sum of methods, e.g. KD + AT or CRD + KD, with no new code.

    ``methods`` maps a namespace to a method config, ``{NS: {name: METHOD, OPTION: VALUE, ...}}``,
    where ``name`` defaults to ``NS`` (so ``{kd: {alpha: 0.9}, at: {ce_weight: 0}}`` works, and the
    same method can appear twice under two namespaces). A list of configs with ``name`` keys is
    accepted too. Omitted options take the defaults of the method's class (those of its YAML but
    for interpolated values such as ``semckd``'s ``batch_size``);
    ``methods=None`` is :data:`DEFAULT_METHODS` (KD + AT, the YAML's default).
    ::

        loss = sum_NS sum_term  NS.term      (each term already weighted by its own method)

    Terms are logged as ``NS.TERM`` (``loss_kd.ce``, ``loss_at.at``). The labels' cross-entropy may
    be counted by one method only: a second one is refused (at construction when the weights are
    known, otherwise at the first step) -- set ``ce_weight: 0`` on the others (``alpha: 1`` for
    ``kd``). The sum needs a teacher if any part does, features if any part does, and the batch's
    other views (MLKD's strong view) that any part reads.
    """

    def __init__(self, methods: Any = None):
        super().__init__()
        parts: dict[str, Method] = {}
        for ns, cfg in _entries(methods):
            cls = get_method(str(cfg["name"]))
            if cls is Multi:
                raise ConfigError(f"method.methods.{ns}: multi cannot contain multi; list the "
                                  "methods directly")
            try:
                parts[ns] = create_method(cfg)
            except ConfigError as e:
                raise ConfigError(f"method.methods.{ns}: {e}") from None
            if parts[ns].init_epochs:  # the pre-stage is the run's, not a part's
                raise ConfigError(f"method.methods.{ns}: {cfg['name']}'s pre-stage does not run "
                                  f"inside multi; set method.methods.{ns}.init_epochs=0, or run "
                                  f"method={cfg['name']} alone")
        self.parts = nn.ModuleDict(parts)
        self.needs_teacher = any(m.needs_teacher for m in parts.values())
        self.needs_features = any(m.needs_features for m in parts.values())
        self.views = tuple(dict.fromkeys(v for m in parts.values() for v in m.views))
        reads = {teacher_reads_of(m) for m in parts.values()}
        self.teacher_reads = next(r for r in ("features", "pooled", "logits") if r in reads)
        ce = {ns: _ce_weight(m) for ns, m in parts.items()}
        counted = [ns for ns, w in ce.items() if w is not None and w > 0]
        if len(counted) > 1:
            raise ConfigError(self._double_ce_message(counted))
        self._checked = False

    @property
    def teacher_mode(self) -> str:
        """``train`` when any part runs the teacher's BatchNorm on batch statistics (OFD)."""
        modes = {getattr(m, "teacher_mode", "eval") for m in self.parts.values()}
        return "train" if "train" in modes else "eval"

    @staticmethod
    def _double_ce_message(namespaces: list[str]) -> str:
        return (f"method=multi counts the labels' cross-entropy in {' and '.join(namespaces)}: "
                "keep it in one method and set ce_weight: 0 in the others (alpha: 1 for kd)")

    def set_teacher(self, teacher: Any) -> None:
        """Pass the teacher (e.g. its FeatureTap) on to the parts that take it (OFD)."""
        for m in self.parts.values():
            if hasattr(m, "set_teacher"):
                m.set_teacher(teacher)

    def build(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
              context: BuildContext) -> None:
        for ns, m in self.parts.items():
            try:
                m.build(student_out, teacher_out, context)
            except ConfigError as e:
                raise ConfigError(f"method.methods.{ns}: {e}") from None

    def forward(self, student_out: ModelOutput, teacher_out: ModelOutput | None,
                targets: Tensor, info: StepInfo) -> dict[str, Tensor]:
        if teacher_out is not None:  # no part can backpropagate into the teacher
            teacher_out = ModelOutput(
                logits=teacher_out.logits.detach(),
                feats=[f.detach() for f in teacher_out.feats],
                preact_feats=[f.detach() for f in teacher_out.preact_feats],
                pooled=None if teacher_out.pooled is None else teacher_out.pooled.detach(),
                views=teacher_out.views,  # made under no_grad
            )
        terms: dict[str, Tensor] = {}
        for ns, m in self.parts.items():
            for k, v in m(student_out, teacher_out, targets, info).items():
                terms[f"{ns}.{k}"] = v
        if not self._checked:  # parts whose CE weight was not readable: check the real terms once
            self._checked = True
            with torch.no_grad():
                counted = [ns for ns in self.parts
                           if f"{ns}.ce" in terms and float(terms[f"{ns}.ce"]) != 0.0]
            if len(counted) > 1:
                raise ConfigError(self._double_ce_message(counted))
        return terms

    def epoch_values(self) -> dict[str, float]:
        """The parts' own values (CTKD's learned ``T``) as ``NS.NAME``."""
        return {f"{ns}.{k}": v for ns, m in self.parts.items() for k, v in m.epoch_values().items()}
