"""Typed schemas of the run config, registered in Hydra's ConfigStore.

``conf/config.yaml`` starts its defaults list with ``kdsweep_schema`` (:class:`RunConfig`), so
every group option and command-line override is merged into typed, closed nodes: Hydra itself
refuses ``schedule.epochs=abc`` or ``+unknown_key=1`` at composition, naming the key. Value ranges
and rules across keys are checked afterwards by :func:`kdsweep.config.validate` (one line each).

Every run-level default is declared here once; group defaults live with the code that uses them
(:class:`kdsweep.engine.optim.ScheduleConf`, :class:`kdsweep.data.build.DatasetConf`, each
method's ``__init__``), and the YAML files under ``conf/`` are presets that differ from them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, make_dataclass
from typing import Any

from omegaconf import MISSING

from kdsweep import extensions
from kdsweep.data.build import DatasetConf
from kdsweep.engine.optim import ScheduleConf


@dataclass
class TeacherConf:
    name: str = MISSING
    checkpoint: str | None = None   # a file; null: the best finished ce run in MLflow, or train one
    pretrained: bool = False        # torchvision (tv_*) models: published ImageNet weights
    min_val_acc: float | None = None  # a teacher found in MLflow must have at least this val acc
    same_schedule: bool = False     # ... and have been trained on this run's schedule
    store: str = "auto"             # its outputs stored and reused across trials (kdsweep.store):
                                    # auto (the cache dir, where it pays) | off | a directory
    store_max_gb: float = 20.0      # the store's size limit: least recently used entries go first
    store_topk: int | None = None   # keep only the top-k logits (ImageNet-sized heads; not exact)


@dataclass
class StudentConf:
    name: str = MISSING
    pretrained: bool = False
    init: str | None = None         # a checkpoint whose tensors initialise the student by name
                                    # (kdsweep/run/student_init.py)


@dataclass
class TrainConf:
    limit_train_batches: int | None = None  # cap batches per epoch (smoke tests); null = all
    limit_val_batches: int | None = None
    checkpoint_every: int = 1       # epochs between full checkpoints (last.pt) for resume; 0 = never
    channels_last: bool = True      # NHWC memory format for conv nets (faster on CPU and with AMP)
    progress: bool | None = None    # null: a progress bar on a terminal, quiet otherwise
    compile: bool = False           # torch.compile the models (logit-only forwards; measured in
                                    # docs/benchmarks.md: off by default where it does not pay)
    horizontal: bool = False        # members of one architecture step as one vmapped model (HFTA;
                                    # kdsweep/engine/horizontal.py): for GPUs, slower on a CPU
    batch_per_rank: bool = False    # torchrun: schedule.batch_size per process (else the global batch)
    scale_lr: bool = False          # ... and then the LR times the number of processes (Goyal et al.)
    sync_bn: bool = False           # torchrun on GPUs: BatchNorm statistics over the global batch
    fuse_memory: str = "split"      # a cohort too big for the device: split (train it in parts
                                    # that fit) | refuse (one line with the largest count that fits)


@dataclass
class TrackingConf:
    uri: str = "${oc.env:MLFLOW_TRACKING_URI,sqlite:///mlflow.db}"  # relative to the launch dir
    experiment: str = "kdsweep"
    # The best checkpoint also as an MLflow logged model (a few seconds per run; the test suite
    # sets KDSWEEP_LOG_MODEL=false except where it checks it).
    log_model: bool = "${oc.env:KDSWEEP_LOG_MODEL,true}"  # type: ignore[assignment]
    lock_dir: str = ".kdsweep/locks"  # file locks: a shared teacher is trained once, a store
                                      # is created once


@dataclass
class SweepConf:
    """Set by the kdsweep Optuna sweeper for each job; leave null."""

    parent_run_id: str | None = None  # MLflow run id of the sweep's parent run
    study_name: str | None = None
    trial_number: int | None = None
    members_file: str | None = None   # a fused job: the file listing its member trials
    label: str | None = None          # what the trial varies ("t05 alpha=0.4 T=4"): its run name


@dataclass
class RunConfig:
    dataset: DatasetConf = field(default_factory=DatasetConf)
    teacher: TeacherConf | None = field(default_factory=TeacherConf)
    student: StudentConf = field(default_factory=StudentConf)
    method: Any = MISSING            # generated nodes, one per method (kdsweep.config.nodes)
    schedule: ScheduleConf = field(default_factory=ScheduleConf)
    seed: int = 0
    deterministic: bool = False      # true: deterministic kernels (slower on GPU)
    device: str = "auto"             # auto (CUDA if available, else CPU) | cpu | cuda | cuda:N
    cpu_threads: int | None = None   # torch CPU threads; null: torch's default (all cores)
    resume: bool = True              # re-running a crashed run's command continues it
    precision: str = "auto"          # auto | fp32 | bf16 | fp16 (see docs/benchmarks.md)
    train: TrainConf = field(default_factory=TrainConf)
    tracking: TrackingConf = field(default_factory=TrackingConf)
    sweep: SweepConf = field(default_factory=SweepConf)


def _with_extensions(schema: type, prefix: str = "") -> type:
    """``schema`` with the config nodes the extensions add below ``prefix`` (kdsweep/extensions.py):
    a node of this level is a new field (a top-level one null unless set, a nested one with its
    defaults); a node deeper down extends the field's own schema. The class keeps its name and
    module, so a composed config still pickles (launchers send configs to other processes)."""
    added = {k.removeprefix(prefix): v for k, v in extensions.nodes().items()
             if k.startswith(prefix)}
    if not added:
        return schema
    own = {f.name for f in dataclasses.fields(schema)}
    for key in added:  # a node must extend, not replace or miss, the schema
        head = key.split(".", 1)[0]
        if ("." in key) != (head in own):
            raise ValueError(f"extensions: config node {prefix}{key} "
                             + ("is below no node" if "." in key else "exists already"))
    new: list[tuple[str, Any, Any]] = []
    for f in dataclasses.fields(schema):
        if any(k.startswith(f"{f.name}.") for k in added):
            sub = _with_extensions(type(f.default_factory()), f"{prefix}{f.name}.")
            new.append((f.name, sub, field(default_factory=sub)))
    for key, node in added.items():
        if "." not in key:
            new.append((key, node | None, field(default=None)) if not prefix else
                       (key, node, field(default_factory=node)))
    cls = make_dataclass(schema.__name__, new, bases=(schema,))
    cls.__module__, cls.__qualname__ = schema.__module__, schema.__qualname__
    globals()[schema.__name__] = cls  # what pickle finds under the class's name
    return cls


# The schemas with the extensions' nodes (``reducenet``, ``student.adapt``) replace these names
# (RunConfig, and StudentConf below it).
_with_extensions(RunConfig)
