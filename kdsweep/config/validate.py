"""Up-front checks of a composed run config: value ranges and rules across keys, one line each.

Types and unknown keys inside the typed groups are refused by Hydra at composition
(:mod:`kdsweep.config.schema`); what remains is checked here, before any work and before anything
is written: each failure is a :class:`ConfigError` naming the key, the value and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any

from kdsweep.config.schema import RunConfig
from kdsweep.engine.dot import check_settings as check_dot
from kdsweep.engine.optim import OPTIMIZERS, SCHEDULES
from kdsweep.errors import ConfigError, close_matches
from kdsweep.models import get_spec

#: Upper bounds that catch a typo of a few extra digits (and integers no tensor can hold).
MAX_EPOCHS = 100_000
MAX_BATCH = 1 << 20
MAX_THREADS = 4096


def _positive(key: str, value: Any, *, allow_zero: bool = False) -> None:
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{key}={value!r} is not a number") from None
    if not math.isfinite(v):
        raise ConfigError(f"{key}={value!r} must be a finite number")
    if not (v >= 0 if allow_zero else v > 0):
        raise ConfigError(f"{key}={value!r} must be {'>= 0' if allow_zero else '> 0'}")


def _int_in(key: str, value: Any, lo: int, hi: int, *, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        what = f"an integer in [{lo}, {hi}]" + (" or null" if nullable else "")
        raise ConfigError(f"{key}={value!r} must be {what}")


def _known_keys(cfg: Mapping[str, Any], schema: type = RunConfig, prefix: str = "") -> None:
    """Keys added with ``+key=`` that the schema does not declare (Hydra lets ``+`` add them)."""
    declared = {f.name: f.type for f in fields(schema)}
    unknown = sorted(set(cfg) - set(declared))
    if unknown:
        key = f"{prefix}{unknown[0]}"
        near = close_matches(unknown[0], declared)
        valid = ", ".join(f"{prefix}{k}" for k in sorted(declared))
        raise ConfigError(f"unknown config key {key!r} (added with +{key}=...); " + (
            f"did you mean {prefix}{near[0]}?" if near else f"valid: {valid}" if len(valid) < 100
            else "keys: python run.py --cfg job"))
    for f in fields(schema):
        sub = cfg.get(f.name)
        if is_dataclass(f.default_factory() if callable(f.default_factory) else None) and \
                isinstance(sub, Mapping):
            _known_keys(sub, type(f.default_factory()), f"{prefix}{f.name}.")


def validate(cfg: Mapping[str, Any]) -> None:
    """Check run-level values before any work starts; methods check their own hyper-parameters.

    Raises :class:`ConfigError` with one line naming the key, the value and what is allowed.
    """
    _known_keys(cfg)
    for role in ("student", "teacher"):
        node = cfg.get(role)
        if node and node.get("name"):
            try:
                get_spec(str(node["name"]))
            except ConfigError as e:
                raise ConfigError(f"{role}={node['name']}: {e}") from None
    s = cfg["schedule"]
    if str(s.get("optimizer", "sgd")).lower() not in OPTIMIZERS:
        raise ConfigError(f"schedule.optimizer={s.get('optimizer')!r} is not supported; valid: "
                          f"{', '.join(OPTIMIZERS)}")
    if str(s.get("name", "cosine")).lower() not in SCHEDULES:
        raise ConfigError(f"schedule.name={s.get('name')!r} is not a known schedule; valid: "
                          f"{', '.join(SCHEDULES)}")
    epochs = s.get("epochs")
    _int_in("schedule.epochs", epochs, 1, MAX_EPOCHS)
    _positive("schedule.lr", s.get("lr"))
    for key in ("batch_size", "eval_batch_size"):
        _int_in(f"schedule.{key}", s.get(key), 1, MAX_BATCH)
    for key in ("weight_decay", "momentum", "warmup_epochs", "gamma", "min_lr"):
        if s.get(key) is not None:
            _positive(f"schedule.{key}", s.get(key), allow_zero=True)
    if float(s.get("momentum") or 0) >= 1:
        raise ConfigError(f"schedule.momentum={s.get('momentum')!r} must be in [0, 1)")
    if float(s.get("weight_decay") or 0) > 1:
        raise ConfigError(f"schedule.weight_decay={s.get('weight_decay')!r} must be in [0, 1]")
    if s.get("gamma") is not None and not 0 < float(s["gamma"]) <= 1:
        raise ConfigError(f"schedule.gamma={s['gamma']!r} must be in (0, 1]: the LR's factor at "
                          "each milestone")
    if float(s.get("min_lr") or 0) > float(s["lr"]):
        raise ConfigError(f"schedule.min_lr={s['min_lr']!r} must not exceed schedule.lr="
                          f"{s['lr']!r}")
    for m in s.get("milestones") or []:  # epochs, or fractions of training (< 1)
        _positive("schedule.milestones", m, allow_zero=True)
    if float(s.get("warmup_epochs") or 0) >= epochs:
        raise ConfigError(
            f"schedule.warmup_epochs={float(s.get('warmup_epochs')):g} must be shorter than "
            f"schedule.epochs={epochs}"
        )
    if s.get("dot_delta") is not None:
        _positive("schedule.dot_delta", s.get("dot_delta"), allow_zero=True)
        if float(s["dot_delta"]) > 1:
            raise ConfigError(f"schedule.dot_delta={s['dot_delta']!r} must be in [0, 1]: DOT's "
                              "momenta are schedule.momentum -/+ dot_delta")
    if str(s.get("optimizer", "sgd")).lower() == "dot":
        check_dot(float(s["lr"]), float(s.get("momentum") or 0), float(s.get("dot_delta", 0.075)),
                  float(s.get("weight_decay") or 0))
        if s.get("nesterov"):
            raise ConfigError("schedule.nesterov=true is not supported by schedule.optimizer=dot "
                              "(mdistiller's DOT has no Nesterov variant); set it to false")
    wsf = s.get("warmup_start_factor")
    if wsf is not None and not 0 < float(wsf) <= 1:
        raise ConfigError(f"schedule.warmup_start_factor={wsf!r} must be in (0, 1]")
    teacher = cfg.get("teacher") or {}
    if teacher.get("min_val_acc") is not None:
        _positive("teacher.min_val_acc", teacher["min_val_acc"], allow_zero=True)
        if float(teacher["min_val_acc"]) > 100:
            raise ConfigError(f"teacher.min_val_acc={teacher['min_val_acc']!r} must be in "
                              "[0, 100] (a validation accuracy, %)")
    store = teacher.get("store", "auto")
    if not isinstance(store, str) or not store.strip() or (
            store not in ("auto", "off") and not ("/" in store or store.startswith(("~", ".")))):
        raise ConfigError(f"teacher.store={store!r}; valid: auto, off, or a directory path "
                          "(containing '/', e.g. ./teacher-store or /data/kd-store)")
    _positive("teacher.store_max_gb", teacher.get("store_max_gb", 20.0))
    _int_in("teacher.store_topk", teacher.get("store_topk"), 1, 2**31, nullable=True)
    _int_in("sweep.trial_number", (cfg.get("sweep") or {}).get("trial_number"), 0, 2**31,
            nullable=True)
    _int_in("cpu_threads", cfg.get("cpu_threads"), 1, MAX_THREADS, nullable=True)
    _int_in("seed", cfg.get("seed", 0), 0, 2**63 - 1)
    _int_in("train.checkpoint_every", cfg["train"].get("checkpoint_every", 1), 0, MAX_EPOCHS)
    if cfg["train"].get("fuse_memory", "split") not in ("split", "refuse"):
        raise ConfigError(f"train.fuse_memory={cfg['train'].get('fuse_memory')!r}; valid: split, "
                          "refuse")
    for key in ("limit_train_batches", "limit_val_batches"):
        _int_in(f"train.{key}", cfg["train"].get(key), 1, 2**31, nullable=True)
