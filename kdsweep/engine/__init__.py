"""Training engine: device and precision, optimiser and schedule, loop, checkpoints."""

from kdsweep.engine.checkpoint import load_checkpoint, load_model_weights, save_checkpoint
from kdsweep.engine.device import (
    Precision,
    describe_device,
    resolve_device,
    resolve_precision,
    seed_everything,
)
from kdsweep.engine.loop import FitResult, Trainer, evaluate
from kdsweep.engine.optim import build_optimizer, build_scheduler

__all__ = [
    "FitResult",
    "Precision",
    "Trainer",
    "build_optimizer",
    "build_scheduler",
    "describe_device",
    "evaluate",
    "load_checkpoint",
    "load_model_weights",
    "resolve_device",
    "resolve_precision",
    "save_checkpoint",
    "seed_everything",
]
