"""Training engine: device and precision, optimiser and schedule, the cohort loop, checkpoints.

The unit of training is a :class:`Cohort` of :class:`Member` s (a single run is a cohort of one);
per-epoch behaviours are :class:`Callback` s that the caller supplies. The engine knows methods
only through :class:`kdsweep.methods.Method`, and nothing of tracking or sweeps.
"""

from kdsweep.engine.checkpoint import (
    check_checkpoint_file,
    load_checkpoint,
    load_model_weights,
    save_checkpoint,
)
from kdsweep.engine.cohort import Cohort
from kdsweep.engine.device import (
    Precision,
    describe_device,
    resolve_device,
    resolve_precision,
    seed_everything,
)
from kdsweep.engine.forward import Forward, evaluate
from kdsweep.engine.member import (
    ACTIVE,
    DIVERGED,
    DONE,
    FAILED,
    PRUNED,
    Callback,
    FitResult,
    Member,
    RngStream,
)
from kdsweep.engine.optim import build_optimizer, build_scheduler

__all__ = [
    "ACTIVE",
    "DIVERGED",
    "DONE",
    "FAILED",
    "PRUNED",
    "Callback",
    "Cohort",
    "FitResult",
    "Forward",
    "Member",
    "Precision",
    "RngStream",
    "build_optimizer",
    "build_scheduler",
    "check_checkpoint_file",
    "describe_device",
    "evaluate",
    "load_checkpoint",
    "load_model_weights",
    "resolve_device",
    "resolve_precision",
    "save_checkpoint",
    "seed_everything",
]
