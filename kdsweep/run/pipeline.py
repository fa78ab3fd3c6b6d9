"""One run, top to bottom: config -> data -> teacher -> students and methods -> trainer -> record.

:func:`run` trains (``method=ce``) or distils one student; :func:`run_cohort` trains several
members on one batch stream and one teacher pass (a fused sweep job). A single run is a cohort of
one, so both take the same path. ``run.py`` is a thin Hydra entry point around them; tests call
them through Hydra's compose API with the real ``conf/``. A crashed run is resumed in its own
MLflow run (:mod:`kdsweep.run.resume`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from kdsweep.config.cohort import differences
from kdsweep.data import DataBundle, build_data, derive_seed
from kdsweep.data.build import launch_dir
from kdsweep.engine import (
    DONE,
    PRUNED,
    Cohort,
    Member,
    RngStream,
    describe_device,
    distributed,
    evaluate,
    load_checkpoint,
    resolve_device,
    resolve_precision,
    seed_everything,
)
from kdsweep.engine.distributed import DistEnv
from kdsweep.engine.memory import keep_freed_memory
from kdsweep.engine.peers import PeerGroup
from kdsweep.errors import ConfigError
from kdsweep.models import count_macs, count_parameters, create_model
from kdsweep.run import hooks, preflight, record, student_init
from kdsweep.run.fit import fit_in_memory
from kdsweep.run.plan import Job, Plan, RunResult
from kdsweep.run.resume import Previous, find_finished, find_resumable, run_key
from kdsweep.run.teachers import (
    Teacher,
    TeacherRequirements,
    load_recorded,
    resolve_teacher,
    schedule_key,
    teacher_filters,
)
from kdsweep.store import default_root
from kdsweep.store.stream import open_teacher_store
from kdsweep.tracking import absolute_uri, find_best_run, open_store

log = logging.getLogger(__name__)


def run(cfg: DictConfig, *, output_dir: str | Path, overrides: list[str] | None = None,
        data: DataBundle | None = None, label: str | None = None) -> RunResult:
    """Train or distil one student as configured; raises the member's error if it did not finish
    (:class:`~kdsweep.errors.TrainingDiverged`, :class:`~kdsweep.errors.Pruned`, ...)."""
    [result] = run_cohort([Job(cfg, output_dir, list(overrides or []), label)], data=data)
    if result.error is not None:
        raise result.error
    return result


def run_cohort(jobs: Sequence[Job], *, data: DataBundle | None = None) -> list[RunResult]:
    """Train ``jobs`` as one cohort; one :class:`RunResult` per job, in order."""
    plans = [plan_job(job) for job in jobs]  # every value checked before any work
    check_shared(plans)
    cfg = plans[0].cfg
    rt = _runtime(cfg)
    if data is None:
        data = _data(cfg, rt)
    store = _store(cfg, plans, rt)
    if any(p.finished is not None for p in plans):  # ended before: reused, not trained again
        rest = [p.job for p in plans if p.finished is None]
        trained = iter(run_cohort(rest, data=data) if rest else [])
        return [record.reuse(p, store.client) if p.finished is not None else next(trained)
                for p in plans]
    teacher = _teacher(plans, data, store, rt)
    env = record.Env(uri=store.uri, experiment_id=store.experiment_id,
                     device=describe_device(rt.device), precision=rt.precision.name, data=data,
                     teacher=teacher, malloc=rt.malloc, main=rt.dist.is_main)
    if teacher is not None:  # counted before the cohort freezes it (frozen weights are not counted)
        teacher.model.to(rt.device)
        env.teacher_stats = {"teacher_params": count_parameters(teacher.model),
                             "teacher_macs": count_macs(teacher.model, data.image_size,
                                                        device=rt.device)}
    for p in plans:
        p.member = _member(p, data, rt)
    parts = fit_in_memory(plans, data, rt.device, rt.dist.is_main, teacher)
    if len(parts) > 1:  # too big for the device: train it in consecutive cohorts that fit
        return _in_parts(plans, parts, data, rt.dist.is_main)
    cohort = _cohort(plans, data, teacher, rt)
    if len(plans) > 1 and rt.dist.is_main:  # what the first minute is spent on
        print(f"kdsweep: {len(plans)} runs: evaluating the teacher, opening their MLflow runs, "
              "then epoch 1 (one line per epoch for all of them)", flush=True)
    if teacher is not None and any(p.previous is None for p in plans):
        def teacher_acc() -> float:
            return evaluate(cohort.teacher_fwd or teacher.model, data.val, rt.precision,
                            cfg.train.limit_val_batches)[1]
        env.teacher_acc = (cohort.teacher_store.teacher_accuracy(
            data.val, cfg.train.limit_val_batches, teacher_acc) if cohort.teacher_store
            else teacher_acc())
    return _train_and_record(plans, cohort, env)


@dataclass
class Runtime:
    """Where and how this process trains."""

    device: torch.device
    precision: Any
    malloc: str
    dist: DistEnv


def _runtime(cfg: DictConfig) -> Runtime:
    device = resolve_device(cfg.device)
    dist_env = distributed.from_environment(device.type)
    if dist_env.active and device.type == "cuda":
        device = torch.device("cuda", dist_env.local_rank)
        torch.cuda.set_device(device)
    if not dist_env.is_main:  # rank 0 speaks for a data-parallel run; the others only warn
        logging.getLogger("kdsweep").setLevel(logging.WARNING)
    if cfg.get("cpu_threads"):
        # Parallel runs on one machine must share the cores: oversubscribed OpenMP threads spin
        # and were measured 7-10x slower here (docs/benchmarks.md).
        torch.set_num_threads(int(cfg.cpu_threads))
    if cfg.train.get("sync_bn") and device.type != "cuda":
        raise ConfigError("train.sync_bn=true needs CUDA GPUs (torch's SyncBatchNorm); on CPUs "
                          "each process keeps its own BatchNorm statistics")
    precision = resolve_precision(cfg.precision, device)
    malloc = keep_freed_memory(device)  # CPU: glibc keeps activation buffers instead of re-faulting
    seed_everything(int(cfg.seed), bool(cfg.deterministic))
    return Runtime(device, precision, malloc, dist_env)


def _data(cfg: DictConfig, rt: Runtime) -> DataBundle:
    """The data; in a data-parallel run each process takes its part of every global batch."""
    data = build_data(cfg.dataset, batch_size=_global_batch(cfg, rt),
                      eval_batch_size=int(cfg.schedule.eval_batch_size), device=rt.device,
                      seed=int(cfg.seed))
    if rt.dist.active:
        data.train.shard(rt.dist.rank, rt.dist.world)
    return data


def _global_batch(cfg: DictConfig, rt: Runtime) -> int:
    """Images per step over all processes: ``schedule.batch_size``, or that many per process with
    ``train.batch_per_rank`` (each process trains on its 1/world part of it)."""
    per_rank = bool(cfg.train.get("batch_per_rank", False))
    return int(cfg.schedule.batch_size) * (rt.dist.world if per_rank else 1)


@dataclass
class Store:
    uri: str
    experiment_id: str
    client: MlflowClient


def _store(cfg: DictConfig, plans: Sequence[Plan], rt: Runtime) -> Store:
    """The MLflow store (opened by rank 0) and each member's run to resume, if any."""
    uri = absolute_uri(str(cfg.tracking.uri), launch_dir())
    experiment_id = None
    if rt.dist.is_main:
        experiment_id = open_store(uri, str(cfg.tracking.experiment),
                                   launch_dir() / cfg.tracking.lock_dir)
    experiment_id = distributed.broadcast(experiment_id, rt.dist)
    client = MlflowClient(tracking_uri=uri)
    if cfg.resume:
        if not rt.dist.active:  # (under torchrun every process would have to agree: not done)
            for p in plans:
                parent = (p.cfg.get("sweep") or {}).get("parent_run_id")
                p.finished = find_finished(client, experiment_id, p.key, parent)
        found = [find_resumable(client, experiment_id, p.key)
                 if rt.dist.is_main and p.finished is None else None for p in plans]
        paths = distributed.broadcast([f.checkpoint if f else None for f in found], rt.dist)
        for p, f, path in zip(plans, found, paths, strict=True):
            p.previous = f if rt.dist.is_main else (Previous(None, path) if path else None)
    return Store(uri, experiment_id, client)


def _cohort(plans: Sequence[Plan], data: DataBundle, teacher: Teacher | None,
            rt: Runtime) -> Cohort:
    cfg = plans[0].cfg
    tcfg = cfg.get("teacher") or {}
    stored = open_teacher_store(
        str(tcfg.get("store", "off")), members=[p.member for p in plans], teacher=teacher.model,
        teacher_arch=teacher.arch, data=data, precision=rt.precision.name, device=rt.device,
        channels_last=bool(cfg.train.channels_last), compile=bool(cfg.train.get("compile", False)),
        max_gb=float(tcfg.get("store_max_gb", 20.0)), topk=tcfg.get("store_topk"),
        root_default=default_root()) if teacher is not None else None
    return Cohort([p.member for p in plans], data, epochs=int(cfg.schedule.epochs),
                  batch_size=max(1, _global_batch(cfg, rt) // rt.dist.world),
                  precision=rt.precision,
                  teacher=teacher.model if teacher else None,
                  teacher_arch=teacher.arch if teacher else None,
                  limit_train_batches=cfg.train.limit_train_batches,
                  limit_val_batches=cfg.train.limit_val_batches,
                  progress=cfg.train.progress if rt.dist.is_main else False,
                  channels_last=bool(cfg.train.channels_last),
                  compile=bool(cfg.train.get("compile", False)),
                  horizontal=bool(cfg.train.get("horizontal", False)), dist_env=rt.dist,
                  teacher_store=stored)


def _in_parts(plans: Sequence[Plan], parts: list[list[Plan]], data: DataBundle,
              main: bool) -> list[RunResult]:
    if main:
        print(f"kdsweep: {len(plans)} members do not fit in memory at once: training them as "
              f"{len(parts)} cohorts of {', '.join(str(len(q)) for q in parts)}", flush=True)
    for p in plans:
        p.member = None  # the parts build their own students
    results: list[RunResult] = []
    for part in parts:
        results += run_cohort([q.job for q in part], data=data)
    return results


def _train_and_record(plans: Sequence[Plan], cohort: Cohort, env: record.Env) -> list[RunResult]:
    started = time.perf_counter()
    try:
        for p in plans:
            _resume_state(p, env.main)
            if env.main:  # only rank 0 of a data-parallel run records
                p.recorder = record.start(p, env)
        cohort.fit()
    except BaseException as err:
        record.abort(plans, err)
        raise
    finally:
        cohort.close()
    wall = time.perf_counter() - started
    for p in plans:  # the extensions' (ReduceNet's student.adapt: LoRA branches fused)
        student_init.finish(p)
        for h in hooks.loaded():
            h.finish(p, env.data, cohort.precision, p.cfg.train.limit_val_batches)
    results = [record.finish(p, env, wall) for p in plans]
    if env.main:
        print(record.summary(plans, env, results), flush=True)
    return results


def plan_job(job: Job) -> Plan:
    """Validate one member's config and create its method (checks its hyper-parameters)."""
    method = preflight.check_run(job.cfg)  # every value checked, nothing written
    composed = OmegaConf.to_container(job.cfg, resolve=True)
    if not method.needs_teacher:
        composed.pop("teacher", None)
    return Plan(job, method, composed, run_key(composed))


def check_shared(plans: Sequence[Plan]) -> None:
    """Members of one cohort must share the data stream and the teacher (kdsweep.config.cohort)."""
    first = OmegaConf.to_container(plans[0].cfg, resolve=True)
    for p in plans[1:]:
        diff = differences(first, OmegaConf.to_container(p.cfg, resolve=True))
        if diff:
            raise ConfigError(f"members of one cohort differ in {', '.join(diff)}; those keys must "
                              "be equal (see kdsweep/config/cohort.py)")


def _teacher(plans: Sequence[Plan], data: DataBundle, store: Store, rt: Runtime) -> Teacher | None:
    """The one teacher of the cohort: the one a resumed member recorded, else found or trained.

    In a data-parallel run rank 0 decides and the others load what it chose; a teacher that has
    to be trained first is trained by all of them together (its own data-parallel run).
    """
    users = [p for p in plans if p.method.needs_teacher]
    if not users:
        return None
    plans, cfg = users, users[0].cfg  # members without a teacher (ce) may have another in config

    def train_teacher() -> str:
        out = plans[0].job.output_dir / "teacher"
        rid = run(teacher_cfg(cfg), output_dir=out, data=data, label="teacher").run_id
        return distributed.broadcast(rid, rt.dist)

    if rt.dist.active:
        return _teacher_distributed(plans, data, store, rt, train_teacher)
    for p in plans:
        if p.previous is not None and p.previous.run.data.tags.get("teacher_source"):
            return load_recorded(store.client, p.previous.run.data.tags, cfg.teacher.name,
                                 data.num_classes)
    req = TeacherRequirements(schedule_key(cfg), int(cfg.schedule.epochs),
                              cfg.teacher.get("min_val_acc"), bool(cfg.teacher.get("same_schedule")))
    return resolve_teacher(store.client, arch=cfg.teacher.name,
                           checkpoint=cfg.teacher.get("checkpoint"), dataset=data.name,
                           num_classes=data.num_classes, experiment_id=store.experiment_id,
                           lock_dir=launch_dir() / cfg.tracking.lock_dir, train=train_teacher,
                           req=req)


def _teacher_distributed(plans: Sequence[Plan], data: DataBundle, store: Store, rt: Runtime,
                         train: Any) -> Teacher:
    cfg = plans[0].cfg  # a member that needs the teacher
    tags = None
    if rt.dist.is_main:  # what a single process would do, short of training
        recorded = [p.previous.run.data.tags for p in plans
                    if p.previous is not None and p.previous.run.data.tags.get("teacher_source")]
        if recorded:
            tags = recorded[0]
        elif cfg.teacher.get("checkpoint"):
            tags = {"teacher_source": "checkpoint", "teacher_path": str(cfg.teacher.checkpoint)}
        else:
            found = find_best_run(store.client, store.experiment_id,
                                  teacher_filters(cfg.teacher.name, data.name, data.num_classes),
                                  "best_val_acc")
            if found is not None:
                tags = {"teacher_source": "mlflow", "teacher_run_id": found.info.run_id}
    tags = distributed.broadcast(tags, rt.dist)
    if tags is None:
        tags = {"teacher_source": "trained", "teacher_run_id": train()}
    return load_recorded(store.client, tags, cfg.teacher.name, data.num_classes)


def teacher_cfg(cfg: DictConfig) -> DictConfig:
    """The ``ce`` run that trains ``cfg``'s teacher: same data, schedule and seed."""
    t = OmegaConf.to_container(cfg, resolve=True)
    t["method"] = {"name": "ce"}
    t["student"] = {"name": cfg.teacher.name, "pretrained": bool(cfg.teacher.get("pretrained"))}
    t["teacher"] = None
    t["sweep"] = {}  # an auto-trained teacher is not a trial of the sweep
    return OmegaConf.create(t)


def _member(p: Plan, data: DataBundle, rt: Runtime) -> Member:
    """The member's student, initialised exactly as in its solo run (seeded just before); a method
    that couples peers (``peer_methods``, e.g. ModReduce) gets a :class:`PeerGroup` of students
    created one after another from the same seed, as the published code does."""
    cfg, device = p.cfg, rt.device
    seed_everything(int(cfg.seed), bool(cfg.deterministic))
    schedule = OmegaConf.to_container(cfg.schedule, resolve=True)
    if rt.dist.active and cfg.train.get("scale_lr") and cfg.train.get("batch_per_rank"):
        schedule["lr"] = float(schedule["lr"]) * rt.dist.world  # linear scaling (Goyal et al.)
    peer_methods = p.method.peer_methods() if hasattr(p.method, "peer_methods") else None
    students = [create_model(cfg.student.name, num_classes=data.num_classes,
                             pretrained=bool(cfg.student.get("pretrained", False))).to(device)
                for _ in (peer_methods or [None])]
    if rt.dist.active and cfg.train.get("sync_bn"):
        students = [torch.nn.SyncBatchNorm.convert_sync_batchnorm(s) for s in students]
    p.method.to(device)
    p.stats = {"student_params": count_parameters(students[0]),
               "student_macs": count_macs(students[0], data.image_size, device=device)}
    student_init.prepare(students[0], cfg, data)  # student.init
    for h in hooks.loaded():  # the extensions' (ReduceNet's student.adapt)
        p.stats.update(h.prepare(students[0], cfg, data))
    if peer_methods is None:
        return Member(record.run_name(p), students[0], p.method, schedule, arch=cfg.student.name,
                      rng=RngStream(device))
    peers = []
    for k, (name, student, method) in enumerate(zip(p.method.peer_names, students, peer_methods,
                                                    strict=True)):
        method.to(device)
        torch.manual_seed(derive_seed(int(cfg.seed), k))  # each peer its own RNG stream
        peers.append(Member(f"{record.run_name(p)} [{name}]", student, method, schedule,
                            arch=cfg.student.name, rng=RngStream(device)))
    return PeerGroup(record.run_name(p), peers, p.method, arch=cfg.student.name,
                     rng=RngStream(device))


def _resume_state(p: Plan, main: bool = True) -> None:
    """Continue a resumed member from its ``last.pt`` (exactly: weights, optimiser, RNG, history)."""
    if p.previous is None:
        return
    if p.previous.checkpoint is None:
        if main:
            print(f"kdsweep: MLflow run {p.previous.run_id} died before its first checkpoint: "
                  "starting it again from epoch 1 as a new run (the old one is deleted)",
                  flush=True)
        return
    state = load_checkpoint(p.previous.checkpoint)
    p.member.load_state_dict(state["trainer"])
    if main:
        print(f"kdsweep: resuming MLflow run {p.previous.run_id} after epoch "
              f"{p.member.start_epoch} from {p.previous.checkpoint}", flush=True)


__all__ = ["DONE", "PRUNED", "Job", "RunResult", "check_shared", "run", "run_cohort", "teacher_cfg"]
