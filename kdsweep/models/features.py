"""The feature contract: stage features, pre-activations, pooled embedding and BN-before-ReLU.

Models stay plain (``model(x)`` returns logits only). :class:`FeatureTap` registers forward hooks
on the module paths named by the model's :class:`~kdsweep.models.registry.FeatureSpec` (the
torchdistill approach) and, when called, runs the model once and collects::

    ModelOutput(logits, feats=[f0, f1, ..., fn], preact_feats=[f0, p1, ..., pn], pooled)

``feats`` is RepDistiller's ``is_feat=True`` list without the pooled vector (= mdistiller's
``"feats"``); ``preact_feats`` is the same list with each stage output replaced by its value
before the final activation (``f0`` unchanged). The hooks store tensors only while the tap is
being called, and store them as they are (no detach), so losses on features backpropagate into
the student. See ``docs/models.md`` for what "stage" and "pre-activation" mean per family.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from kdsweep.errors import ConfigError
from kdsweep.models.registry import FeatureSpec, ModelSpec, get_spec

__all__ = ["FeatureTap", "ModelOutput", "bn_margin", "resolve_module"]


@dataclass
class ModelOutput:
    """What a tapped forward pass returns."""

    logits: Tensor
    feats: list[Tensor] = field(default_factory=list)
    preact_feats: list[Tensor] = field(default_factory=list)
    pooled: Tensor | None = None
    #: The same model's outputs on other views of the batch (``"strong"``), for the methods that
    #: name them in ``Method.views`` (MLKD); the engine fills it, empty otherwise.
    views: dict[str, ModelOutput] = field(default_factory=dict)


def resolve_module(model: nn.Module, path: str) -> nn.Module:
    """``model.<path>`` where integer segments (possibly negative) index containers."""
    module = model
    for part in path.split(".") if path else []:
        if part.lstrip("-").isdigit() and isinstance(module, (nn.Sequential, nn.ModuleList)):
            module = module[int(part)]
        else:
            try:
                module = getattr(module, part)
            except AttributeError:
                raise ConfigError(
                    f"feature path {path!r}: {type(module).__name__} has no submodule {part!r}"
                ) from None
    if not isinstance(module, nn.Module):
        raise ConfigError(f"feature path {path!r} does not name a module")
    return module


class FeatureTap:
    """Hooks that collect the feature contract of ``model`` (built from ``spec``).

    Use ``tap(x)`` instead of ``model(x)`` where features are needed; ``model(x)`` keeps
    returning logits only. The hooks stay registered until :meth:`remove` (or the end of a
    ``with FeatureTap(...) as tap:`` block) but record nothing outside ``tap(x)``.
    """

    def __init__(self, model: nn.Module, spec: ModelSpec | str):
        if isinstance(spec, str):
            spec = get_spec(spec)
        if spec.features is None:
            raise ConfigError(f"model {spec.name!r} declares no features to tap")
        self.model = model
        self.spec = spec
        self._fs: FeatureSpec = spec.features
        self._store: dict[str, Tensor] = {}
        self._active = False
        self._handles: list = []
        self._shapes: tuple[list[int], int] | None = None
        fs = self._fs
        self._hook_out("f0", fs.stem)
        for i, path in enumerate(fs.stages, start=1):
            self._hook_out(f"f{i}", path)
        for i, path in enumerate(fs.preact, start=1):
            if path is not None:
                self._hook_out(f"p{i}", path)
        pooled_module = resolve_module(model, fs.pooled)
        self._handles.append(pooled_module.register_forward_pre_hook(self._pre_hook("pooled")))

    # -- hooks ----------------------------------------------------------------------------
    def _hook_out(self, key: str, path: str) -> None:
        module = resolve_module(self.model, path)

        def hook(_module, _inputs, output):
            if self._active:
                self._store[key] = output

        self._handles.append(module.register_forward_hook(hook))

    def _pre_hook(self, key: str):
        def hook(_module, inputs):
            if self._active:
                self._store[key] = inputs[0]

        return hook

    # -- public API -----------------------------------------------------------------------
    def __call__(self, x: Tensor) -> ModelOutput:
        self._store = {}
        self._active = True
        try:
            logits = self.model(x)
        finally:
            self._active = False
        store, self._store = self._store, {}
        n = len(self._fs.stages)
        missing = [
            k for k in ["f0", *(f"f{i}" for i in range(1, n + 1)), "pooled"] if k not in store
        ]
        if missing:
            raise RuntimeError(f"{self.spec.name}: hooks did not fire for {missing}")
        feats = [store[f"f{i}"] for i in range(n + 1)]
        preact = [feats[0]] + [store.get(f"p{i}", feats[i]) for i in range(1, n + 1)]
        pooled = store["pooled"]
        return ModelOutput(
            logits=logits, feats=feats, preact_feats=preact, pooled=pooled.flatten(1)
        )

    forward = __call__

    def _dry_shapes(self) -> tuple[list[int], int]:
        if self._shapes is None:
            # channel counts do not depend on the resolution: probe 224-px models at 64 px
            out = self.dry_run(min(self.spec.input_size, 64))
            self._shapes = ([f.shape[1] for f in out.feats], out.pooled.shape[1])
        return self._shapes

    @property
    def stage_channels(self) -> list[int]:
        """Channel counts of ``feats`` (f0 .. fn), from one dry run (cached)."""
        return list(self._dry_shapes()[0])

    @property
    def pooled_dim(self) -> int:
        """Size of the pooled embedding (the classifier's input), from the same dry run."""
        return self._dry_shapes()[1]

    def dry_run(self, input_size: int | None = None) -> ModelOutput:
        """One image through the model in eval mode without grad (train/eval modes restored)."""
        size = input_size or self.spec.input_size
        param = next(self.model.parameters())
        x = torch.zeros(1, 3, size, size, device=param.device, dtype=param.dtype)
        modes = {m: m.training for m in self.model.modules()}
        self.model.eval()
        try:
            with torch.no_grad():
                return self(x)
        finally:
            for m, mode in modes.items():
                m.training = mode

    def bn_before_relu(self) -> list[nn.BatchNorm2d]:
        """For each stage ``f1 .. fn``, the BatchNorm2d preceding its final activation.

        Each BN has ``num_features`` equal to that stage's channels. For ShuffleNetV2 the last
        block's BN covers only the branch half; the other half passes through untouched (it is
        already >= 0) and a channel shuffle interleaves the two. There this returns a frozen
        *snapshot* BatchNorm2d of the full stage width in output-channel order: the branch BN's
        parameters and statistics at odd channels, and weight 0, bias 0, mean 0, var 1 at the
        pass-through channels (margin 0 in :func:`bn_margin`). Call it again after the weights
        change.
        """
        fs = self._fs
        if not fs.bn_before_relu:
            raise ConfigError(f"model {self.spec.name!r} declares no BN-before-ReLU layers")
        bns = [resolve_module(self.model, p) for p in fs.bn_before_relu]
        for path, bn in zip(fs.bn_before_relu, bns, strict=True):
            if not isinstance(bn, nn.BatchNorm2d):
                raise RuntimeError(f"{self.spec.name}: {path} is {type(bn).__name__}, not BN")
        if fs.bn_layout == "shuffle_v2":
            bns = [_interleave_passthrough(bn) for bn in bns]
        return bns

    def remove(self) -> None:
        """Remove the hooks; the model is left exactly as it was."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> FeatureTap:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def _interleave_passthrough(bn: nn.BatchNorm2d) -> nn.BatchNorm2d:
    """Full-width BN for cat([passthrough, bn_branch]) followed by a 2-group channel shuffle."""
    c = bn.num_features
    p = bn.weight
    full = nn.BatchNorm2d(2 * c).to(device=p.device, dtype=p.dtype)
    with torch.no_grad():
        full.weight.zero_()
        full.bias.zero_()
        full.weight[1::2] = bn.weight
        full.bias[1::2] = bn.bias
        if bn.running_mean is not None:
            full.running_mean[1::2] = bn.running_mean
            full.running_var[1::2] = bn.running_var
    full.eps = bn.eps
    full.requires_grad_(False)
    return full.eval()


def bn_margin(bn: nn.BatchNorm2d) -> Tensor:
    """Per-channel OFD margin E[x | x < 0] for x ~ N(bias, |weight|) (Heo et al., ICCV 2019).

    Channels with weight 0 (pass-through channels, see :meth:`FeatureTap.bn_before_relu`) get
    margin 0; channels whose negative part is negligible (P(x<0) <= 0.001) get ``-3 * std``,
    as in the reference implementation.
    """
    s = bn.weight.detach().abs().double()
    m = bn.bias.detach().double()
    safe_s = torch.where(s > 0, s, torch.ones_like(s))
    z = -m / safe_s
    cdf = 0.5 * (1 + torch.erf(z / math.sqrt(2)))
    pdf = torch.exp(-(z**2) / 2) / math.sqrt(2 * math.pi)
    margin = torch.where(cdf > 0.001, -safe_s * pdf / cdf.clamp_min(1e-12) + m, -3 * safe_s)
    margin = torch.where(s > 0, margin, torch.zeros_like(margin))
    return margin.to(bn.weight.dtype)
