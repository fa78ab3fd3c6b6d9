"""Data-parallel training across processes (``torchrun``): one run on several GPUs or nodes.

``torchrun --nproc_per_node=N run.py ...`` starts N processes; each reads ``RANK``, ``WORLD_SIZE``
and ``LOCAL_RANK`` from the environment, joins one process group (NCCL on GPUs, gloo on CPUs)
and trains on its part of every global batch (``schedule.batch_size`` is the global batch;
``train.batch_per_rank=true`` makes it per process, and ``train.scale_lr=true`` then scales the LR
with the global batch, Goyal et al. 2017). Gradients are averaged over the processes after each
backward pass, so every process takes the same step: what a single process would take on the
whole batch, up to BatchNorm's per-process batch statistics (``train.sync_bn=true`` on GPUs
removes that difference). Only rank 0 talks to MLflow and writes checkpoints; decisions it makes
(the teacher, resuming, pruning) are broadcast to the others.

Why not ``torch.nn.parallel.DistributedDataParallel`` around the student: kdsweep's feature taps
call the inner module, a method's trainable parts live outside the student, and a ModReduce
member has three students; averaging the gradients of everything a member optimises after its
backward pass (one flattened all-reduce, what DDP's buckets do) covers all of these with one
mechanism, and broadcasting rank 0's BatchNorm statistics each epoch keeps the copies identical.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistEnv()


def from_environment(device_type: str) -> DistEnv:
    """The process group of a ``torchrun`` launch (joined once), or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    env = DistEnv(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
        # Left to the interpreter's exit, gloo's threads can abort the process ("terminate
        # called without an active exception", seen once in 2 CI runs): close the group first.
        atexit.register(_leave)
    return env


def _leave() -> None:
    if dist.is_initialized():  # local: no collective, so a failed peer cannot make it hang
        dist.destroy_process_group()


def broadcast(obj: Any, env: DistEnv) -> Any:
    """Rank 0's ``obj`` on every process."""
    if not env.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def average_gradients(params: Iterable[nn.Parameter], env: DistEnv) -> None:
    """Average the gradients of ``params`` over the processes (one flattened all-reduce)."""
    if not env.active:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= env.world
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n


def any_true(flag: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """True on every process when ``flag`` is true on any."""
    if not env.active:
        return flag
    f = flag.float().clone()
    dist.all_reduce(f, op=dist.ReduceOp.MAX)
    return f > 0


def sum_(t: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if not env.active:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t


def sync_buffers(module: nn.Module, env: DistEnv) -> None:
    """Rank 0's buffers (BatchNorm statistics) on every process."""
    if not env.active:
        return
    for b in module.buffers():
        dist.broadcast(b, src=0)


def sync_parameters(module: nn.Module, env: DistEnv) -> None:
    """Rank 0's parameters on every process (at the start: identical copies)."""
    if not env.active:
        return
    with torch.no_grad():
        for p in module.parameters():
            dist.broadcast(p.data, src=0)
