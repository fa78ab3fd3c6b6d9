"""``student.init=PATH``: a student initialised, tensor by tensor, from a checkpoint.

After the student is built, every tensor of the checkpoint whose name and shape the student has is
copied into it; the student's other tensors keep their fresh initialisation ("grow": ReduceNet's
bottleneck branches) and the checkpoint's other tensors are dropped ("shrink"). A name with
another shape, another class count, or no name in common is refused with one line. The counts are
logged as params ``init.tensors_loaded``, ``_fresh``, ``_dropped`` when the run finishes.

The pipeline calls :func:`check` before any work, :func:`prepare` once the student is built
(before the extensions' hooks, :mod:`kdsweep.run.hooks`) and :func:`finish` after training.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdsweep.data.build import launch_dir
from kdsweep.engine import check_checkpoint_file, load_checkpoint
from kdsweep.engine.checkpoint import FORMAT
from kdsweep.errors import CheckpointError, ConfigError

__all__ = ["check", "finish", "init_path", "load_init", "prepare"]

#: What ``student.init`` loaded into each student, logged when its run finishes.
_INIT_COUNTS: weakref.WeakKeyDictionary[nn.Module, dict[str, int]] = weakref.WeakKeyDictionary()


def init_path(value: str) -> Path:
    """``student.init`` as a file: relative paths are relative to the launch directory."""
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else launch_dir() / path


def check(cfg: Mapping[str, Any], method: Any = None) -> None:
    """Refuse a bad ``student.init`` before any work."""
    student = cfg["student"]
    if not student.get("init"):
        return
    check_checkpoint_file(init_path(student["init"]))
    if hasattr(method, "peer_methods"):
        raise ConfigError(f"student.init does not apply to method={method.name}, which trains "
                          "several peer students; remove it")


def _patterns(names: set[str]) -> str:
    """A short description of tensor names: ``layer*.*.bottleneck.*`` instead of 108 names."""
    pats = sorted({re.sub(r"\d+", "*", n.rsplit(".", 1)[0]) + ".*" for n in names})
    return ", ".join(pats[:4]) + (f" (+{len(pats) - 4} more)" if len(pats) > 4 else "")


def load_init(student: nn.Module, path: Path, *, arch: str, num_classes: int) -> dict[str, int]:
    """Copy every tensor of ``path`` that ``student`` has (same name and shape) into it."""
    ckpt = load_checkpoint(path)
    if ckpt.get("format") == FORMAT and int(ckpt.get("num_classes", num_classes)) != num_classes:
        raise CheckpointError(f"student.init {str(path)!r} has {ckpt.get('num_classes')} classes "
                              f"but the data set has {num_classes}")
    state = next((ckpt[k] for k in ("model", "state_dict") if isinstance(ckpt.get(k), Mapping)),
                 ckpt)
    state = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    own = student.state_dict()
    common = own.keys() & state.keys()
    if not common:
        raise CheckpointError(f"student.init {str(path)!r} shares no tensor name with a {arch!r} "
                              "model")
    for k in sorted(common):
        if own[k].shape != state[k].shape:
            raise CheckpointError(
                f"student.init {str(path)!r} does not fit {arch!r}: {k} is "
                f"{tuple(state[k].shape)} there and {tuple(own[k].shape)} here")
    student.load_state_dict({k: state[k] for k in common}, strict=False)
    fresh, dropped = own.keys() - state.keys(), state.keys() - own.keys()
    source = ckpt.get("arch") or "checkpoint"
    print(f"kdsweep: student {arch} initialised from {source} ({path}): {len(common)} tensors "
          f"loaded" + (f", {len(fresh)} fresh ({_patterns(fresh)})" if fresh else "")
          + (f", {len(dropped)} dropped ({_patterns(dropped)})" if dropped else ""), flush=True)
    return {"init.tensors_loaded": len(common), "init.tensors_fresh": len(fresh),
            "init.tensors_dropped": len(dropped)}


def prepare(student: nn.Module, cfg: Mapping[str, Any], data: Any) -> dict[str, float]:
    """Initialise a freshly built student in place from ``student.init`` (if set)."""
    node = cfg["student"]
    if node.get("init"):
        _INIT_COUNTS[student] = load_init(student, init_path(node["init"]),
                                          arch=str(node["name"]), num_classes=data.num_classes)
    return {}


def finish(p: Any) -> None:
    """Log what ``student.init`` loaded into the member's student (the recording process)."""
    counts = _INIT_COUNTS.get(p.member.student) if p.member is not None else None
    if counts and p.recorder is not None:
        p.recorder.log_params(counts)
