"""Which settings members of one cohort must share, and which may differ.

A cohort trains several students on one batch stream with one teacher pass (a fused sweep job,
ModReduce's peers). Everything that shapes that stream or that teacher, or that the process
applies to all of its members, must be identical; everything else (method and its
hyper-parameters, student architecture, learning rate, weight decay, warmup, schedule shape,
validation limits, checkpoint interval) may differ per member.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

#: Dotted config keys (a whole subtree where the key is a node) members of a cohort share.
SHARED_KEYS = ("dataset", "teacher", "schedule.batch_size", "schedule.epochs", "seed",
               "deterministic", "device", "precision", "cpu_threads", "train.limit_train_batches",
               "train.channels_last", "train.progress", "train.compile", "train.horizontal",
               "train.fuse_memory",
               "train.batch_per_rank", "train.scale_lr", "train.sync_bn",
               "tracking", "resume", "method.teacher_bn", "method.init_epochs")


def _get(cfg: Mapping[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def shared_settings(cfg: Mapping[str, Any], teacher: bool = True) -> dict[str, Any]:
    """The values of :data:`SHARED_KEYS` in ``cfg`` (a plain config); without the teacher when
    ``teacher`` is false or the method runs none (``ce``: such a member joins any cohort)."""
    out = {k: _get(cfg, k) for k in SHARED_KEYS}
    if not teacher or not needs_teacher(cfg):
        out.pop("teacher")
    return out


def needs_teacher(cfg: Mapping[str, Any]) -> bool:
    return _needs_teacher(_get(cfg, "method.name"))


def _needs_teacher(name: Any) -> bool:
    from kdsweep.methods import get_method

    try:
        return bool(get_method(str(name)).needs_teacher)
    except Exception:  # unknown names are refused later, with their own message
        return True


def cohort_key(cfg: Mapping[str, Any], teacher: bool = True) -> str:
    """Equal for two configs that may train in one cohort (``teacher=False``: except for the
    teacher, which a member without one does not care about)."""
    blob = json.dumps(shared_settings(cfg, teacher), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """The shared keys on which ``a`` and ``b`` differ (empty: they may share a cohort)."""
    both = needs_teacher(a) and needs_teacher(b)
    sa, sb = shared_settings(a, both), shared_settings(b, both)
    return [k for k in sa if sa[k] != sb[k]]
