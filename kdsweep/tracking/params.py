"""What a run records about itself: flat params in one canonical format, the software it ran on."""

from __future__ import annotations

import importlib.metadata
import math
import platform
from collections.abc import Mapping
from typing import Any

from kdsweep.tracking.secrets import mask_text

PACKAGES = ("kdsweep", "torch", "torchvision", "hydra-core", "omegaconf", "mlflow", "optuna", "numpy")


def canonical(value: Any) -> str:
    """One text form per value, so that an MLflow filter finds every run that used it.

    A float with an integral value is written as the integer (``4.0`` and ``4`` -> ``"4"``), other
    floats by ``repr`` (shortest round-trip: ``0.4``), booleans and None in YAML spelling.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
            return str(int(value))
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(canonical(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {canonical(v)}" for k, v in value.items()) + "}"
    return mask_text(str(value))


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"method.alpha": "0.9", ...}`` (lists kept whole), URLs masked."""
    out: dict[str, str] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = canonical(value)
    return out


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = "not installed"
    import torch  # the build string (+cu130, +cpu) and CUDA version matter for reproduction

    versions["torch"] = torch.__version__
    versions["cuda"] = str(torch.version.cuda)
    return versions


#: Per-epoch metric names as MLflow shows them. The UI makes one chart section per prefix and sorts
#: sections and charts by name, so the quantity comes first: ``acc`` (validation and training
#: accuracy side by side) is the top section, then ``loss``, ``opt``, ``peers``, ``perf``.
_PREFIXED = {"val_acc": "acc/val", "train_acc": "acc/train", "val_loss": "loss/val",
             "train_loss": "loss/train", "lr": "opt/lr", "images_per_s": "perf/images_per_s",
             "epoch_time_s": "perf/epoch_time_s", "val_deployed_peer": "peers/deployed"}

#: Names used before, oldest last: what readers of older stores also look for.
FORMER_NAMES = {"acc/val": ("val/acc", "val_acc"), "loss/train": ("train/loss", "train_loss")}


def epoch_metric_name(key: str) -> str:
    """``val_acc`` -> ``acc/val``, ``loss_kd`` -> ``loss/kd`` (a training loss term),
    ``val_acc_rel`` -> ``acc/val_rel``: the name a per-epoch value is logged under."""
    if key in _PREFIXED:
        return _PREFIXED[key]
    if key.startswith("loss_"):
        return f"loss/{key[len('loss_'):]}"
    if key.startswith("method_"):  # a method's own state (Method.epoch_values)
        return f"method/{key[len('method_'):]}"
    for split in ("train", "val"):
        for quantity in ("acc", "loss"):
            head = f"{split}_{quantity}_"
            if key.startswith(head):
                return f"{quantity}/{split}_{key[len(head):]}"
    return f"other/{key}"


def metric_names(name: str) -> tuple[str, ...]:
    """``acc/val`` -> ``("acc/val", "val/acc", "val_acc")``: a metric's name and its former ones."""
    return (name, *FORMER_NAMES.get(name, ()))


#: Per-epoch values that are the same every epoch: logged once, as params.
CONSTANT_PER_EPOCH = ("cohort_size",)
