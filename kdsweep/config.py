"""Config composition helpers: the ``teacher``/``student`` groups and up-front validation.

The ``teacher`` and ``student`` config groups are generated from the one model registry
(:mod:`kdsweep.models`), so an architecture is defined exactly once, in Python, and every
registered name is a valid ``teacher=NAME`` and ``student=NAME`` choice (Hydra lists them when a
name is misspelt). YAML files dropped into ``conf/teacher/`` or ``conf/student/`` are merged in too,
e.g. a teacher with a fixed checkpoint path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hydra.core.config_store import ConfigStore

from kdsweep.errors import ConfigError
from kdsweep.models import list_models


def register_configs() -> None:
    """Put one ``teacher/NAME`` and one ``student/NAME`` node per registered model in Hydra's store."""
    cs = ConfigStore.instance()
    for name in list_models():
        cs.store(group="teacher", name=name,
                 node={"name": name, "checkpoint": None, "pretrained": False})
        cs.store(group="student", name=name, node={"name": name, "pretrained": False})


def _positive(key: str, value: Any, *, allow_zero: bool = False) -> None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} is not a number") from None
    if not (v >= 0 if allow_zero else v > 0):
        raise ConfigError(f"{key}={value!r} must be {'>= 0' if allow_zero else '> 0'}")


def validate(cfg: Mapping[str, Any]) -> None:
    """Check run-level values before any work starts; methods check their own hyper-parameters.

    Raises :class:`ConfigError` with one line naming the key, the value and what is allowed.
    """
    s = cfg["schedule"]
    epochs = s.get("epochs")
    if not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"schedule.epochs={epochs!r} must be an integer >= 1")
    for key in ("lr", "batch_size", "eval_batch_size"):
        _positive(f"schedule.{key}", s.get(key))
    for key in ("batch_size", "eval_batch_size"):
        if int(s[key]) != float(s[key]):
            raise ConfigError(f"schedule.{key}={s[key]!r} must be an integer")
    for key in ("weight_decay", "momentum", "warmup_epochs"):
        if s.get(key) is not None:
            _positive(f"schedule.{key}", s.get(key), allow_zero=True)
    if float(s.get("warmup_epochs") or 0) >= epochs:
        raise ConfigError(
            f"schedule.warmup_epochs={s.get('warmup_epochs')} must be shorter than "
            f"schedule.epochs={epochs}"
        )
    wsf = s.get("warmup_start_factor")
    if wsf is not None and not 0 < float(wsf) <= 1:
        raise ConfigError(f"schedule.warmup_start_factor={wsf!r} must be in (0, 1]")
    threads = cfg.get("cpu_threads")
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"cpu_threads={threads!r} must be null or an integer >= 1")
    every = cfg["train"].get("checkpoint_every", 1)
    if not isinstance(every, int) or every < 0:
        raise ConfigError(f"train.checkpoint_every={every!r} must be an integer >= 0 (0 = never)")
    for key in ("limit_train_batches", "limit_val_batches"):
        v = cfg["train"].get(key)
        if v is not None and (not isinstance(v, int) or v < 1):
            raise ConfigError(f"train.{key}={v!r} must be null or an integer >= 1")
