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
               "train.channels_last", "train.progress", "train.compile", "train.fuse_memory",
               "train.batch_per_rank", "train.scale_lr", "train.sync_bn",
               "tracking", "resume")


def _get(cfg: Mapping[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def shared_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The values of :data:`SHARED_KEYS` in ``cfg`` (a plain, resolved config)."""
    return {k: _get(cfg, k) for k in SHARED_KEYS}


def cohort_key(cfg: Mapping[str, Any]) -> str:
    """Equal for two configs exactly when they may train in one cohort."""
    blob = json.dumps(shared_settings(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """The shared keys on which ``a`` and ``b`` differ (empty: they may share a cohort)."""
    sa, sb = shared_settings(a), shared_settings(b)
    return [k for k in SHARED_KEYS if sa[k] != sb[k]]
