"""One kdsweep run: validate, build data and models, resolve the teacher, train, track, summarise.

``run.py`` is a thin Hydra entry point around :func:`run`; tests call :func:`run` through Hydra's
compose API with the real ``conf/``. A crashed run is resumed in its own MLflow run (see
:mod:`kdsweep.resume`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch
from omegaconf import DictConfig, OmegaConf

from kdsweep import resume, sweeping, tracking
from kdsweep.config import validate
from kdsweep.data import DataBundle, build_data
from kdsweep.engine import (
    Trainer,
    describe_device,
    evaluate,
    load_checkpoint,
    resolve_device,
    resolve_precision,
    save_checkpoint,
    seed_everything,
)
from kdsweep.methods import create_method
from kdsweep.models import count_macs, count_parameters, create_model
from kdsweep.summary import summary
from kdsweep.teachers import CHECKPOINT_ARTIFACT, Teacher, load_recorded, resolve_teacher

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_id: str
    best_val_acc: float
    final_val_acc: float
    teacher_val_acc: float | None
    checkpoint: Path


def _teacher_cfg(cfg: DictConfig) -> DictConfig:
    """The ``ce`` run that trains ``cfg``'s teacher: same data, schedule and seed."""
    t = OmegaConf.to_container(cfg, resolve=True)
    t["method"] = {"name": "ce"}
    t["student"] = {"name": cfg.teacher.name, "pretrained": bool(cfg.teacher.get("pretrained", False))}
    t["teacher"] = None
    t["sweep"] = None  # an auto-trained teacher is not a trial of the sweep
    return OmegaConf.create(t)


def run(cfg: DictConfig, *, output_dir: str | Path, overrides: list[str] | None = None,
        data: DataBundle | None = None) -> RunResult:
    """Train (``method=ce``) or distil one student as configured; returns its MLflow run and metrics."""
    output_dir = Path(output_dir)
    validate(cfg)
    method = create_method(cfg.method)  # checks the method's hyper-parameters early
    device = resolve_device(cfg.device)
    if cfg.get("cpu_threads"):
        # Parallel runs on one machine must share the cores: oversubscribed OpenMP threads spin
        # and were measured 7-10x slower here (docs/benchmarks.md).
        torch.set_num_threads(int(cfg.cpu_threads))
    precision = resolve_precision(cfg.precision, device)
    seed_everything(int(cfg.seed), bool(cfg.deterministic))
    if data is None:
        data = build_data(cfg.dataset, batch_size=int(cfg.schedule.batch_size),
                          eval_batch_size=int(cfg.schedule.eval_batch_size), device=device,
                          seed=int(cfg.seed))
    experiment_id = tracking.setup(cfg.tracking.uri, cfg.tracking.experiment)
    composed = OmegaConf.to_container(cfg, resolve=True)
    if not method.needs_teacher:
        composed.pop("teacher", None)
    key = resume.run_key(composed)
    previous = resume.find_resumable(experiment_id, key) if cfg.get("resume", True) else None
    state = load_checkpoint(previous[1]) if previous else None

    teacher: Teacher | None = None
    if method.needs_teacher:
        if previous:
            teacher = load_recorded(previous[0].data.tags, cfg.teacher.name, data.num_classes)
        else:
            def train_teacher() -> str:
                return run(_teacher_cfg(cfg), output_dir=output_dir / "teacher", data=data).run_id

            teacher = resolve_teacher(
                arch=cfg.teacher.name, checkpoint=cfg.teacher.get("checkpoint"), dataset=data.name,
                num_classes=data.num_classes, experiment_id=experiment_id,
                lock_dir=Path(cfg.tracking.lock_dir), train=train_teacher,
            )
        teacher.model.to(device)
        seed_everything(int(cfg.seed), bool(cfg.deterministic))  # same student init either way

    student = create_model(cfg.student.name, num_classes=data.num_classes,
                           pretrained=bool(cfg.student.get("pretrained", False))).to(device)
    method.to(device)
    stats = {"student_params": count_parameters(student),
             "student_macs": count_macs(student, data.image_size, device=device)}
    if teacher is not None:
        stats["teacher_params"] = count_parameters(teacher.model)
        stats["teacher_macs"] = count_macs(teacher.model, data.image_size, device=device)
        stats["compression_ratio"] = stats["student_params"] / stats["teacher_params"]
    trainer = Trainer(
        student, method, data, OmegaConf.to_container(cfg.schedule, resolve=True),
        student_arch=cfg.student.name, teacher=teacher.model if teacher else None,
        teacher_arch=teacher.arch if teacher else None, precision=precision,
        limit_train_batches=cfg.train.limit_train_batches,
        limit_val_batches=cfg.train.limit_val_batches, progress=cfg.train.progress,
        channels_last=bool(cfg.train.channels_last),
    )
    stats["method_extra_params"] = method.extra_parameters()  # connectors exist only after build

    ckpt_dir = previous[1].parent if previous else output_dir / "checkpoints"
    start_epoch = 0
    if state is not None:
        trainer.load_state_dict(state["trainer"])
        start_epoch = int(state["epoch"])
        resume.restore_rng(state["rng"])
        print(f"kdsweep: resuming MLflow run {previous[0].info.run_id} after epoch {start_epoch} "
              f"from {previous[1]}", flush=True)

    tags = {
        "dataset": data.name, "num_classes": str(data.num_classes), "method": method.name,
        "student": cfg.student.name, "teacher": teacher.arch if teacher else "none",
        "device": describe_device(device), "precision": precision.name,
        resume.RUN_KEY_TAG: key, resume.RESUME_PATH_TAG: str((ckpt_dir / "last.pt").resolve()),
        resume.OWNER_TAG: resume.owner(),
        **sweeping.parent_tags(cfg.get("sweep")),
    }
    reporter = sweeping.TrialReporter.from_cfg(cfg.get("sweep"))
    run_name = (f"{method.name} {teacher.arch}->{cfg.student.name}" if teacher
                else f"{method.name} {cfg.student.name}")
    every = int(cfg.train.get("checkpoint_every", 1) or 0)

    with tracking.retry(mlflow.start_run, run_id=previous[0].info.run_id if previous else None,
                          run_name=None if previous else run_name, tags=tags) as active:
        try:
            run_id = active.info.run_id
            teacher_acc = None
            if previous is None:
                tracking.log_params(tracking.flatten(composed))
                tracking.set_tags({f"env.{k}": v for k, v in tracking.package_versions().items()})
                tracking.log_params({"overrides": " ".join(overrides or []) or "(none)"})
                mlflow.log_dict(composed, "config.yaml")
                tracking.log_metrics(stats)
                if (output_dir / ".hydra").is_dir():
                    mlflow.log_artifacts(str(output_dir / ".hydra"), "hydra")
                if teacher is not None:
                    tracking.set_tags({"teacher_source": teacher.source, "teacher_path": teacher.path,
                                     "teacher_run_id": teacher.run_id or ""})
                    _, teacher_acc = evaluate(trainer.teacher_fwd, data.val, precision,
                                              cfg.train.limit_val_batches)
                    tracking.log_metrics({"teacher_val_acc": teacher_acc})
            else:
                teacher_acc = previous[0].data.metrics.get("teacher_val_acc")
                # Epochs saved in last.pt whose metrics never reached MLflow (killed in between).
                logged = resume.logged_epochs(run_id)
                for h in trainer.result.history:
                    if h["epoch"] + 1 not in logged:
                        tracking.log_metrics({k: v for k, v in h.items() if k != "epoch"}, step=h["epoch"] + 1)

            def on_epoch_end(epoch: int, metrics: dict[str, float], is_best: bool) -> None:
                if is_best:
                    save_checkpoint(ckpt_dir / "best.pt", {
                        "arch": cfg.student.name, "num_classes": data.num_classes,
                        "model": student.state_dict(), "method": method.state_dict(),
                        "epoch": epoch + 1, "val_acc": metrics["val_acc"], "config": composed,
                    })
                if every and ((epoch + 1) % every == 0 or epoch + 1 == trainer.epochs):
                    # Saved before the metrics are logged: a crash in between is repaired on resume.
                    save_checkpoint(ckpt_dir / "last.pt", {
                        "arch": cfg.student.name, "num_classes": data.num_classes, "epoch": epoch + 1,
                        "trainer": trainer.state_dict(), "rng": resume.capture_rng(), "config": composed,
                    })
                tracking.log_metrics(metrics, step=epoch + 1)
                if reporter is not None:
                    try:
                        reporter.report(metrics["val_acc"], epoch + 1)
                    except Exception as e:
                        if type(e).__name__ == "TrialPruned":
                            mlflow.set_tag("pruned_at_epoch", str(epoch + 1))
                            mlflow.end_run(status="KILLED")
                        raise

            started = time.perf_counter()
            result = trainer.fit(on_epoch_end, start_epoch=start_epoch)
            trainer.close()
            final = {
                "best_val_acc": result.best_val_acc, "best_epoch": result.best_epoch + 1,
                "final_val_acc": result.final_val_acc, "final_train_acc": result.final_train_acc,
                "train_val_gap": result.train_val_gap, "wall_time_s": time.perf_counter() - started,
            }
            tracking.log_metrics(final)
            tracking.retry(mlflow.log_artifact, str(ckpt_dir / "best.pt"), Path(CHECKPOINT_ARTIFACT).parent.as_posix())
        except BaseException as err:  # record why the run failed, then let it propagate
            if not isinstance(err, KeyboardInterrupt) and type(err).__name__ != "TrialPruned":
                with contextlib.suppress(Exception):
                    mlflow.set_tag("kdsweep.error", f"{type(err).__name__}: {err}"[:5000])
            raise

    print(summary(method=method.name, data=data, device=describe_device(device),
                  student=cfg.student.name, teacher=teacher, teacher_acc=teacher_acc, stats=stats,
                  final=final, run_id=run_id, experiment=cfg.tracking.experiment,
                  experiment_id=experiment_id, uri=cfg.tracking.uri, ckpt_dir=ckpt_dir,
                  resumed_from=start_epoch or None), flush=True)
    return RunResult(run_id, result.best_val_acc, result.final_val_acc, teacher_acc,
                     ckpt_dir / "best.pt")
