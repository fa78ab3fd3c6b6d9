"""Tests of kdsweep.engine.device (precision policy) and kdsweep.engine.memory (glibc mallopt)."""

from __future__ import annotations

import math
import sys

import pytest
import torch
import torch.nn.functional as F

from kdsweep.engine import device as devmod
from kdsweep.engine.device import cpu_has_native_bf16, resolve_precision
from kdsweep.errors import ConfigError

CPU = torch.device("cpu")


# ---------------------------------------------------------------- precision


def test_auto_precision_on_cpu_follows_the_detection():
    """No assumption about this machine: whatever the probe says, ``auto`` follows it."""
    p = resolve_precision("auto", CPU)
    if cpu_has_native_bf16():
        assert (p.name, p.dtype) == ("bf16", torch.bfloat16)
    else:
        assert (p.name, p.dtype) == ("fp32", None)
    assert not p.needs_scaler and p.device_type == "cpu"


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_on_cpu_with_and_without_native_bf16(monkeypatch, native):
    monkeypatch.setattr(devmod, "cpu_has_native_bf16", lambda: native)
    p = resolve_precision("auto", CPU)
    assert p.name == ("bf16" if native else "fp32")
    assert p.dtype is (torch.bfloat16 if native else None)
    assert not p.needs_scaler  # bf16 keeps fp32's exponent range: no loss scaling on the CPU
    # the escape hatch: precision=fp32 turns autocast off whatever the CPU offers
    fp32 = resolve_precision("fp32", CPU)
    assert (fp32.name, fp32.dtype) == ("fp32", None)
    assert resolve_precision("bf16", CPU).dtype is torch.bfloat16  # forcing still works


def test_detection_reads_torch_cpu_probes(monkeypatch):
    for avx, amx, want in ((False, False, False), (True, False, True), (False, True, True)):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert cpu_has_native_bf16() is want
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert cpu_has_native_bf16() is False  # a torch without the probes: fp32, not an error


def test_auto_precision_on_cuda_unchanged(monkeypatch):
    cuda = torch.device("cuda")
    for supported, name in ((True, "bf16"), (False, "fp16")):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda s=supported: s)
        p = resolve_precision("auto", cuda)
        assert p.name == name and p.needs_scaler == (name == "fp16")


def test_bad_precision_values():
    with pytest.raises(ConfigError, match="not supported"):
        resolve_precision("fp8", CPU)
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        resolve_precision("fp16", CPU)


def test_bf16_autocast_step_keeps_losses_in_fp32():
    """A KD step under CPU bf16 autocast: finite, and the KD loss computed in float32."""
    from kdsweep.methods import create_method

    torch.manual_seed(0)
    p = resolve_precision("bf16", CPU)
    student = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                  torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                  torch.nn.Linear(8, 10))
    method = create_method({"name": "kd", "T": 4.0, "alpha": 0.9})
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    from kdsweep.methods import StepInfo
    from kdsweep.models import ModelOutput

    with p.autocast():
        s = ModelOutput(logits=student(x))
        t = ModelOutput(logits=student(x).detach() * 2)
        assert s.logits.dtype is torch.bfloat16
        terms = method(s, t, y, StepInfo(epoch=0, step=0, epochs=1, steps_per_epoch=1,
                                         indices=torch.arange(4)))
    assert all(v.dtype is torch.float32 and torch.isfinite(v) for v in terms.values())
    sum(terms.values()).backward()
    assert all(torch.isfinite(q.grad).all() for q in student.parameters())


# ---------------------------------------------------------------- memory (mallopt)


def test_keep_freed_memory_runs_is_idempotent_and_describes(monkeypatch):
    from kdsweep.engine import memory

    first = memory.keep_freed_memory(CPU)
    assert isinstance(first, str) and first
    assert memory.keep_freed_memory(CPU) == first  # idempotent: same answer, nothing redone
    if sys.platform.startswith("linux") and memory.glibc_version() is not None \
            and not memory.malloc_replaced():
        assert "M_MMAP_THRESHOLD" in first and "M_TRIM_THRESHOLD" in first, first
    else:
        assert first.startswith("not applied"), first


def test_keep_freed_memory_does_nothing_for_cuda(monkeypatch):
    from kdsweep.engine import memory

    calls = []
    monkeypatch.setattr(memory, "_mallopt", lambda *a: calls.append(a) or 1)
    monkeypatch.setattr(memory, "_applied", None)
    out = memory.keep_freed_memory(torch.device("cuda"))
    assert out.startswith("not applied") and "cuda" in out and calls == []


def test_keep_freed_memory_reports_a_refused_setting(monkeypatch):
    from kdsweep.engine import memory

    if memory.glibc_version() is None or memory.malloc_replaced():
        pytest.skip("needs glibc malloc (Linux, no LD_PRELOADed allocator)")
    monkeypatch.setattr(memory, "_applied", None)
    monkeypatch.setattr(memory, "_mallopt", lambda param, value: 0)  # glibc refuses everything
    out = memory.keep_freed_memory(CPU)
    assert "refused" in out and out.startswith("glibc")
    # a glibc that enforces the documented 32 MiB cap: fall back to the cap and no mmap at all
    monkeypatch.setattr(memory, "_applied", None)
    calls = []

    def capped(param, value):
        calls.append((param, value))
        return 0 if param == memory.M_MMAP_THRESHOLD and value > 32 << 20 else 1

    monkeypatch.setattr(memory, "_mallopt", capped)
    out = memory.keep_freed_memory(CPU)
    assert "1 GiB refused, 32 MiB, M_MMAP_MAX=0" in out and "M_TRIM_THRESHOLD=1 GiB" in out, out
    assert (memory.M_MMAP_MAX, 0) in calls


def test_keep_freed_memory_respects_user_settings(monkeypatch):
    from kdsweep.engine import memory

    monkeypatch.setattr(memory, "_applied", None)
    monkeypatch.setattr(memory, "_mallopt", lambda *a: pytest.fail("mallopt called"))
    monkeypatch.setenv("KDSWEEP_KEEP_FREED_MEMORY", "0")
    assert memory.keep_freed_memory(CPU) == "not applied: KDSWEEP_KEEP_FREED_MEMORY=0"
    monkeypatch.delenv("KDSWEEP_KEEP_FREED_MEMORY")
    if memory.glibc_version() is not None and not memory.malloc_replaced():
        monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "4096")
        assert "MALLOC_TRIM_THRESHOLD_" in memory.keep_freed_memory(CPU)


def test_training_step_after_keep_freed_memory():
    from kdsweep.engine.memory import keep_freed_memory
    from kdsweep.models import create_model

    keep_freed_memory(CPU)
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    big = [torch.ones(9 * 2**20) for _ in range(3)]  # > 32 MiB together: heap, not mmap, now
    del big
    losses = []
    for _ in range(3):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
