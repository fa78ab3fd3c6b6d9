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


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 natively (AVX512-BF16 or AMX), so CPU autocast pays off.

    Detection: ``torch.cpu._is_avx512_bf16_supported()`` and ``torch.cpu._is_amx_tile_supported()``
    (cpuinfo's view of the CPUID bits, the checks torch's own Inductor CPU backend uses). The public
    ``torch.backends.cpu.get_cpu_capability()`` cannot decide this: it names the vector ISA level
    ATen dispatches to (``"AVX2"``, ``"AVX512"``, ...), and AVX512 without the BF16 extension
    (Skylake-X, Ice Lake) converts bf16 in software, which is slower than fp32; it also follows the
    ``ATEN_CPU_CAPABILITY`` override rather than the hardware.
    The two functions are underscored in torch 2.14, so a torch without them reads as False (fp32),
    never as an error. Every AMX CPU shipped so far has AMX-BF16 along with AMX-TILE.
    """
    cpu = getattr(torch, "cpu", None)
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(cpu, name, None)
        try:
            if check is not None and bool(check()):
                return True
        except Exception:  # pragma: no cover - a broken probe means "do not rely on bf16"
            continue
    return False


def resolve_precision(spec: str, device: torch.device) -> Precision:
    """The autocast policy for ``precision=spec`` on ``device``.

    ``auto``: on CUDA, bf16 autocast where the GPU supports it, else fp16 with a grad scaler; on the
    CPU, bf16 autocast when :func:`cpu_has_native_bf16` (AVX512-BF16 or AMX: oneDNN runs bf16
    convolutions and matmuls with native bf16 instructions), else fp32 (on AVX2-only or plain
    AVX512 CPUs bf16 is emulated and slower than fp32). ``precision=fp32`` is the escape hatch that
    turns autocast off on any device; ``bf16`` forces it (also on CPUs without native support);
    ``fp16`` needs CUDA. Autocast covers the forward passes only: every method casts logits to
    float32 before its softmax/log-softmax and loss, so soft targets do not underflow, and bf16
    needs no grad scaler (fp32's exponent range).
    """
    spec = str(spec)
    if spec not in PRECISIONS:
        raise ConfigError(f"precision={spec!r} is not supported; valid: {', '.join(PRECISIONS)}")
    if spec == "auto":
        if device.type == "cuda":
            spec = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            spec = "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
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
