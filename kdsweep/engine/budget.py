"""How much device memory a cohort needs, estimated before training, and how much there is.

Per member: its parameters, their gradients and the optimiser's state (SGD momentum: one copy;
AdamW: two), the method's extra parameters likewise, and the activations its backward pass keeps.
The activations are measured, not guessed: one training-mode forward pass of a two-image batch
under ``torch.autograd.graph.saved_tensors_hooks`` counts the bytes autograd saves, scaled to
the batch size. The teacher's weights and one inference pass are counted once for the cohort.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

#: Head-room kept free (allocator fragmentation, loaders, the evaluation pass).
SAFETY = 0.8


def saved_activation_bytes(forward: Callable[[Tensor], object], x: Tensor) -> int:
    """Bytes autograd saves for backward during ``forward(x)`` (each storage counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal total
        try:
            key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        except (RuntimeError, NotImplementedError):
            key = (id(t), t.numel() * t.element_size())
        if key not in seen:
            seen.add(key)
            total += key[1]
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward(x)
    del out
    return total


@contextlib.contextmanager
def _untouched(model: nn.Module, train: bool) -> Iterator[None]:
    """Run ``model`` in ``train`` mode and leave no trace: BatchNorm statistics and the RNG are
    restored, so that estimating never changes what a member then computes."""
    was = model.training
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    model.train(train)
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        model.train(was)
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(buffers[k])


def member_bytes(student: nn.Module, extra_params: int, optimizer: str, batch_size: int,
                 forward: Callable[[Tensor], object], sample: Tensor) -> int:
    """Estimated peak bytes of one member training with batches of ``batch_size``."""
    n = sum(p.numel() for p in student.parameters()) + int(extra_params)
    states = 2 if optimizer.lower() == "adamw" else 1
    weights = n * 4 * (2 + states)  # fp32 weights, gradients, optimiser state
    with _untouched(student, train=True):
        acts = saved_activation_bytes(forward, sample)
    return int(weights + acts * batch_size / max(1, sample.shape[0]))


def teacher_bytes(teacher: nn.Module, forward: Callable[[Tensor], object], sample: Tensor,
                  batch_size: int) -> int:
    """Weights plus the largest output of one inference pass (no activations are kept)."""
    weights = sum(p.numel() * p.element_size() for p in teacher.parameters())
    biggest = 0

    def hook(_m: nn.Module, _i: object, out: object) -> None:
        nonlocal biggest
        if isinstance(out, Tensor):
            biggest = max(biggest, out.numel() * out.element_size())

    handles = [m.register_forward_hook(hook) for m in teacher.modules()]
    try:
        with _untouched(teacher, train=False), torch.no_grad():
            forward(sample)
    finally:
        for h in handles:
            h.remove()
    return int(weights + 3 * biggest * batch_size / max(1, sample.shape[0]))


LIMIT_ENV = "KDSWEEP_MEMORY_LIMIT"


def _limit() -> int | None:
    """``KDSWEEP_MEMORY_LIMIT``: at most this much (``12G``, ``800M`` or bytes), e.g. on a shared
    GPU."""
    raw = os.environ.get(LIMIT_ENV, "").strip().upper()
    if not raw:
        return None
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(raw[-1], 1)
    return int(float(raw.rstrip("KMGTB") or 0) * scale)


def available_bytes(device: torch.device) -> int:
    """Free memory on ``device`` now (CUDA's free memory, or the host's MemAvailable), capped by
    ``KDSWEEP_MEMORY_LIMIT``."""
    free = _free(device)
    limit = _limit()
    return free if limit is None else min(free, limit)


def _free(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    pages, size = os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    return int(pages * size)


def fit_count(needs: list[int], budget: int) -> int:
    """How many members, in order, fit in ``budget`` bytes (at least 1: a single member always
    runs; if it does not fit, the device says so itself)."""
    used, n = 0, 0
    for b in needs:
        if used + b > budget:
            break
        used, n = used + b, n + 1
    return max(1, n)


def fmt_bytes(n: float) -> str:
    if n <= 0:
        return "0 B"
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    i = min(len(units) - 1, int(math.log(n, 1024)))
    return f"{n / 1024**i:.1f} {units[i]}"
