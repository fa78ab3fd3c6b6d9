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

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from kdsweep.data.build import DatasetConf
from kdsweep.engine.optim import ScheduleConf
from kdsweep.reducenet.conf import ReduceNetConf, StudentAdaptConf


@dataclass
class TeacherConf:
    name: str = MISSING
    checkpoint: str | None = None   # a file; null: the best finished ce run in MLflow, or train one
    pretrained: bool = False        # torchvision (tv_*) models: published ImageNet weights
    min_val_acc: float | None = None  # a teacher found in MLflow must have at least this val acc
    same_schedule: bool = False     # ... and have been trained on this run's schedule


@dataclass
class StudentConf:
    name: str = MISSING
    pretrained: bool = False
    init: str | None = None         # a checkpoint whose tensors initialise the student by name
    adapt: StudentAdaptConf = field(default_factory=StudentAdaptConf)  # frozen modules, LoRA
                                    # branches fused at the end (kdsweep/run/adapt.py)


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
    reducenet: ReduceNetConf | None = None  # experiment=reducenet: three stages (run/stages.py)
