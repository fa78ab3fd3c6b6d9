"""Checkpoints: written atomically, read with ``weights_only=True``, checked against the config.

A kdsweep checkpoint is a plain dict (so ``torch.load(weights_only=True)`` can read it and no code
is ever unpickled): ``format``, ``arch``, ``num_classes``, ``model`` (state dict), ``method`` (the
method's own parameters and buffers), ``epoch``, ``val_acc`` and ``config`` (the composed config as
plain containers). State dicts of other tools (``{"model": ...}``, ``{"state_dict": ...}`` or a bare
state dict) are accepted for teachers, but then only the tensor shapes can be checked.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdsweep.errors import CheckpointError

FORMAT = "kdsweep-checkpoint/1"


def save_checkpoint(path: str | Path, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` (plus the format tag) to ``path`` atomically: a crash leaves the old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save({"format": FORMAT, **payload}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def check_checkpoint_file(path: str | Path) -> Path:
    """Refuse, before any work, a path that cannot hold a checkpoint: missing, empty, or not a
    file ``torch.save`` writes (a zip archive, or a legacy pickle)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: {e.strerror}") from None
    if not head:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty")
    if head[:2] != b"PK" and head[:1] != b"\x80":
        raise CheckpointError(f"checkpoint {str(path)!r} is not a PyTorch checkpoint (torch.save "
                              "writes a zip archive); pass a .pt/.pth file")
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint safely; any unreadable, truncated or code-carrying file -> CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {str(path)!r} is unreadable or truncated: {first}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a state dict")
    return obj


def _state_dict_of(ckpt: Mapping[str, Any]) -> Mapping[str, Any]:
    for key in ("model", "state_dict", "net"):
        if isinstance(ckpt.get(key), Mapping):
            return ckpt[key]
    return ckpt


def load_model_weights(model: nn.Module, ckpt: Mapping[str, Any], *, arch: str, num_classes: int,
                       source: str) -> None:
    """Load ``ckpt`` into ``model`` after checking its architecture and class count."""
    if ckpt.get("format") == FORMAT:
        if ckpt.get("arch") != arch:
            raise CheckpointError(
                f"checkpoint {source!r} is a {ckpt.get('arch')!r} model but the config asks for "
                f"{arch!r}; pass a checkpoint of {arch!r} or set the architecture to {ckpt.get('arch')!r}"
            )
        if int(ckpt.get("num_classes", -1)) != num_classes:
            raise CheckpointError(
                f"checkpoint {source!r} has {ckpt.get('num_classes')} classes but the data set has "
                f"{num_classes}"
            )
    state = {k.removeprefix("module."): v for k, v in _state_dict_of(ckpt).items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())
        raise CheckpointError(
            f"checkpoint {source!r} does not fit a {arch!r} model with {num_classes} classes: "
            f"{detail[:300]}"
        ) from None
