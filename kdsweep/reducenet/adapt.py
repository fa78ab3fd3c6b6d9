"""``student.adapt``: frozen modules and LoRA branches fused at the end, for any student
(ReduceNet's stage 3 sets it; :mod:`kdsweep.reducenet.stages`).

``freeze`` (module paths whose parameters are not trained, e.g. ``[fc]``), ``lora_rank`` (a LoRA
branch beside every convolution, :mod:`kdsweep.reducenet.lora`), ``lambda_relu`` and ``anneal``
(VanillaNet's LambdaReLU in the branch, ReLU -> identity over that fraction of the steps). When
the run finishes, the branches are fused into their convolutions: the student is then exactly the
plain architecture (same tensors, parameters and MACs, checked), ``checkpoints/best.pt`` holds the
fused final weights, and ``best_val_acc`` is the fused student's validation accuracy (the
training-time best is ``unfused_best_val_acc``).

The run hooks (:class:`kdsweep.reducenet.hooks.ReduceNetHooks`) call :func:`check` before any
work, :func:`prepare` once the student is built and :func:`finish` after training, before the
run's record is closed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from kdsweep.engine import DONE, FAILED, evaluate, save_checkpoint
from kdsweep.errors import ConfigError, KDSweepError
from kdsweep.models import count_macs, count_parameters, create_model, resolve_module
from kdsweep.reducenet.lora import attach_lora, fuse_lora, lora_of
from kdsweep.reducenet.schema import StudentAdaptConf, typed_node
from kdsweep.run.callbacks import Checkpoints

__all__ = ["adapt_conf", "check", "finish", "prepare"]


def adapt_conf(node: Any) -> StudentAdaptConf | None:
    """``student.adapt`` checked and typed (one line per bad value), or None."""
    if node is None:
        return None
    conf = typed_node(node, StudentAdaptConf, "student.adapt")
    conf.freeze = [str(p) for p in (conf.freeze or [])]
    rank = conf.lora_rank
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank <= 4096:
        raise ConfigError(f"student.adapt.lora_rank={rank!r} must be an integer in [0, 4096]")
    if not isinstance(conf.lambda_relu, bool):
        raise ConfigError(f"student.adapt.lambda_relu={conf.lambda_relu!r} must be true or false")
    if conf.lambda_relu and rank == 0:
        raise ConfigError("student.adapt.lambda_relu=true needs LoRA branches: set "
                          "student.adapt.lora_rank >= 1")
    try:
        anneal = float(conf.anneal)
    except (TypeError, ValueError):
        raise ConfigError(f"student.adapt.anneal={conf.anneal!r} is not a number") from None
    if not 0 < anneal <= 1:
        raise ConfigError(f"student.adapt.anneal={conf.anneal!r} must be in (0, 1]: lambda must "
                          "reach 1 (a linear, fusable branch) by the end of training")
    conf.anneal = anneal
    return conf


def check(cfg: Mapping[str, Any], method: Any = None) -> None:
    """Refuse a bad ``student.adapt`` before any work."""
    student = cfg["student"]
    conf = adapt_conf(student.get("adapt"))
    if conf is None or conf == StudentAdaptConf():
        return
    if hasattr(method, "peer_methods"):
        raise ConfigError(f"student.adapt does not apply to method={method.name}, which trains "
                          "several peer students; remove it")
    if conf.lora_rank and cfg["train"].get("compile"):
        raise ConfigError("student.adapt.lora_rank needs train.compile=false: the LoRA branches "
                          "are forward hooks that keep Python state, which compiled graphs break")
    if conf.freeze:
        with torch.device("meta"):
            model = create_model(str(student["name"]), num_classes=2)
        for path in conf.freeze:
            try:
                resolve_module(model, path)
            except ConfigError:
                raise ConfigError(f"student.adapt.freeze: {student['name']} has no module "
                                  f"{path!r}") from None


def prepare(student: nn.Module, cfg: Mapping[str, Any], data: Any) -> dict[str, float]:
    """Freeze modules and attach LoRA branches to a freshly built student; metrics to log."""
    stats: dict[str, float] = {}
    conf = adapt_conf(cfg["student"].get("adapt"))
    if conf is None or conf == StudentAdaptConf():  # the default: nothing to do
        return stats
    for path in conf.freeze:
        resolve_module(student, path).requires_grad_(False)
    if conf.lora_rank:
        limit = cfg["train"].get("limit_train_batches")
        steps = min(len(data.train), limit or len(data.train)) * int(cfg["schedule"]["epochs"])
        lora = attach_lora(student, conf.lora_rank, lambda_relu=conf.lambda_relu,
                           anneal_steps=math.ceil(conf.anneal * steps))
        stats["lora_params"] = lora.extra_parameters()
    stats["trainable_params"] = count_parameters(student)
    return stats


def finish(p: Any, data: Any, precision: Any, limit_val_batches: int | None) -> None:
    """Fuse a finished student's LoRA branches; a failure fails the member (one line). Every
    process of a data-parallel run fuses; the one that records (``p.recorder``) saves and logs."""
    m = p.member
    if m is None or m.status != DONE or lora_of(m.student) is None:
        return
    try:
        _fuse(p, data, precision, limit_val_batches)
    except KDSweepError as e:
        m.stop(FAILED, e)


def _fuse(p: Any, data: Any, precision: Any, limit_val_batches: int | None) -> None:
    m, student = p.member, p.member.student
    conf = adapt_conf(p.cfg.student.get("adapt"))
    x = next(iter(data.val))[0][:64]
    student.eval()
    with torch.no_grad():
        before = student(x).float()
        convs = fuse_lora(student)
        diff = float((student(x).float() - before).abs().max())
    for path in conf.freeze:  # the deployed student is a plain model again
        resolve_module(student, path).requires_grad_(True)
    params, macs = count_parameters(student), count_macs(student, data.image_size)
    if (params, macs) != (p.stats["student_params"], p.stats["student_macs"]):
        raise RuntimeError(f"fused student: {params} params / {macs} MACs, plain "
                           f"{p.stats['student_params']} / {p.stats['student_macs']}")
    val_loss, val_acc = evaluate(student, data.val, precision, limit_val_batches)
    r = m.result
    unfused_best, unfused_epoch = r.best_val_acc, r.best_epoch
    r.best_val_acc, r.best_epoch = val_acc, len(r.history) - 1
    if p.recorder is None:  # not the recording process of a data-parallel run
        return
    ckpt = next(cb for cb in m.callbacks if isinstance(cb, Checkpoints))
    weights = m.best_weights() if hasattr(m, "best_weights") else {
        "model": student.state_dict(), "method": m.method.state_dict()}
    save_checkpoint(ckpt.best, {**ckpt.header, **weights, "epoch": len(r.history),
                                "val_acc": val_acc, "fused": True})
    print(f"kdsweep: {m.name}: {convs} LoRA branches fused into their convolutions (max |logit "
          f"difference| {diff:.2e}); fused student val acc {val_acc:.2f}%", flush=True)
    p.recorder.log_metrics({"fused_val_acc": val_acc, "fused_val_loss": val_loss,
                            "fuse_max_abs_diff": diff, "fused_convs": convs,
                            "unfused_best_val_acc": unfused_best,
                            "unfused_best_epoch": unfused_epoch + 1})
    p.recorder.set_tags({"student_fused": "true"})
