"""Device, precision and seeding: one place that knows about CUDA."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from kdsweep.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` -> the first CUDA device when there is one, else the CPU; ``cpu``/``cuda[:N]`` as given."""
    spec = str(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"device={spec!r} is not a device; valid: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={spec!r} but CUDA is not available here; use device=auto or cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={spec!r} is not supported; valid: auto, cpu, cuda, cuda:N")
    return device


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return f"cpu ({torch.get_num_threads()} threads)"


@dataclass(frozen=True)
class Precision:
    """Mixed-precision policy: ``dtype`` for autocast (None = fp32) and whether a grad scaler is needed."""

    name: str
    dtype: torch.dtype | None
    device_type: str

    @property
    def needs_scaler(self) -> bool:
        return self.dtype is torch.float16

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device_type, enabled=self.needs_scaler)


def resolve_precision(spec: str, device: torch.device) -> Precision:
    """``auto``: bf16 autocast on CUDA GPUs that support it, fp16 + grad scaling on older ones,
    fp32 on the CPU (CPU autocast is slower than fp32 on most CPUs)."""
    spec = str(spec)
    if spec not in PRECISIONS:
        raise ConfigError(f"precision={spec!r} is not supported; valid: {', '.join(PRECISIONS)}")
    if spec == "auto":
        if device.type != "cuda":
            spec = "fp32"
        else:
            spec = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if spec == "fp16" and device.type != "cuda":
        raise ConfigError("precision='fp16' needs a CUDA device; valid on CPU: auto, fp32, bf16")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[spec]
    return Precision(spec, dtype, device.type)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices); optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
