"""One kdsweep run: validate, build data and models, resolve the teacher, train, track, summarise.

``run.py`` is a thin Hydra entry point around :func:`run`; tests call :func:`run` through Hydra's
compose API with the real ``conf/``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import torch
from omegaconf import DictConfig, OmegaConf

from kdsweep import sweeping, tracking
from kdsweep.config import validate
from kdsweep.data import DataBundle, build_data
from kdsweep.engine import (
    Trainer,
    describe_device,
    evaluate,
    resolve_device,
    resolve_precision,
    save_checkpoint,
    seed_everything,
)
from kdsweep.methods import create_method
from kdsweep.models import count_macs, count_parameters, create_model
from kdsweep.teachers import CHECKPOINT_ARTIFACT, Teacher, resolve_teacher

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_id: str
    best_val_acc: float
    final_val_acc: float
    teacher_val_acc: float | None
    checkpoint: Path


def _fmt_count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


def _teacher_cfg(cfg: DictConfig) -> DictConfig:
    """The ``ce`` run that trains ``cfg``'s teacher: same data, schedule and seed."""
    t = OmegaConf.to_container(cfg, resolve=True)
    t["method"] = {"name": "ce"}
    t["student"] = {"name": cfg.teacher.name, "pretrained": bool(cfg.teacher.get("pretrained", False))}
    t["teacher"] = None
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

    teacher: Teacher | None = None
    if method.needs_teacher:
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
    stats = {
        "student_params": count_parameters(student),
        "student_macs": count_macs(student, data.image_size, device=device),
    }
    if teacher is not None:
        stats["teacher_params"] = count_parameters(teacher.model)
        stats["teacher_macs"] = count_macs(teacher.model, data.image_size, device=device)
        stats["compression_ratio"] = stats["student_params"] / stats["teacher_params"]

    ckpt_path = output_dir / "checkpoints" / "best.pt"
    trainer = Trainer(
        student, method, data, OmegaConf.to_container(cfg.schedule, resolve=True),
        student_arch=cfg.student.name, teacher=teacher.model if teacher else None,
        teacher_arch=teacher.arch if teacher else None, precision=precision,
        limit_train_batches=cfg.train.limit_train_batches,
        limit_val_batches=cfg.train.limit_val_batches, progress=cfg.train.progress,
        channels_last=bool(cfg.train.channels_last),
    )
    stats["method_extra_params"] = method.extra_parameters()  # connectors exist only now

    composed = OmegaConf.to_container(cfg, resolve=True)
    if not method.needs_teacher:
        composed.pop("teacher", None)
    tags = {
        "dataset": data.name, "num_classes": str(data.num_classes), "method": method.name,
        "student": cfg.student.name, "teacher": teacher.arch if teacher else "none",
        "device": describe_device(device), "precision": precision.name,
    }
    tags.update(sweeping.parent_tags(cfg.get("sweep")))
    reporter = sweeping.TrialReporter.from_cfg(cfg.get("sweep"))
    run_name = (f"{method.name} {teacher.arch}->{cfg.student.name}" if teacher
                else f"{method.name} {cfg.student.name}")
    with mlflow.start_run(run_name=run_name, tags=tags) as active:
        run_id = active.info.run_id
        tracking.log_params(tracking.flatten(composed))
        env = {f"env.{k}": v for k, v in tracking.package_versions().items()}
        mlflow.set_tags(env)
        mlflow.log_params({"overrides": " ".join(overrides or []) or "(none)"})
        mlflow.log_dict(composed, "config.yaml")
        mlflow.log_metrics({k: float(v) for k, v in stats.items()})
        hydra_dir = output_dir / ".hydra"
        if hydra_dir.is_dir():
            mlflow.log_artifacts(str(hydra_dir), "hydra")
        teacher_acc = None
        if teacher is not None:
            mlflow.set_tags({"teacher_source": teacher.source, "teacher_path": teacher.path,
                             "teacher_run_id": teacher.run_id or ""})
            _, teacher_acc = evaluate(trainer.teacher_fwd, data.val, precision, cfg.train.limit_val_batches)
            mlflow.log_metric("teacher_val_acc", teacher_acc)

        def on_epoch_end(epoch: int, metrics: dict[str, float], is_best: bool) -> None:
            mlflow.log_metrics(metrics, step=epoch + 1)
            if is_best:
                save_checkpoint(ckpt_path, {
                    "arch": cfg.student.name, "num_classes": data.num_classes,
                    "model": student.state_dict(), "method": method.state_dict(),
                    "epoch": epoch + 1, "val_acc": metrics["val_acc"], "config": composed,
                })
            if reporter is not None:
                try:
                    reporter.report(metrics["val_acc"], epoch + 1)
                except Exception as e:
                    if type(e).__name__ == "TrialPruned":
                        mlflow.set_tag("pruned_at_epoch", str(epoch + 1))
                        mlflow.end_run(status="KILLED")
                    raise

        started = time.perf_counter()
        result = trainer.fit(on_epoch_end)
        trainer.close()
        final = {
            "best_val_acc": result.best_val_acc, "best_epoch": result.best_epoch + 1,
            "final_val_acc": result.final_val_acc, "final_train_acc": result.final_train_acc,
            "train_val_gap": result.train_val_gap, "wall_time_s": time.perf_counter() - started,
        }
        mlflow.log_metrics(final)
        mlflow.log_artifact(str(ckpt_path), Path(CHECKPOINT_ARTIFACT).parent.as_posix())

    _print_summary(cfg, data, device, method.name, teacher, teacher_acc, stats, final, run_id,
                   experiment_id, output_dir)
    return RunResult(run_id, result.best_val_acc, result.final_val_acc, teacher_acc, ckpt_path)


def _print_summary(cfg: DictConfig, data: DataBundle, device: torch.device, method: str,
                   teacher: Teacher | None, teacher_acc: float | None, stats: dict[str, Any],
                   final: dict[str, float], run_id: str, experiment_id: str, output_dir: Path) -> None:
    lines = [f"kdsweep: {method} run finished on {data.name} ({data.num_train} train / {data.num_val} "
             f"val images, {data.num_classes} classes) on {describe_device(device)}"]
    if teacher is not None:
        where = {"checkpoint": teacher.path, "mlflow": f"MLflow run {teacher.run_id}",
                 "trained": f"trained now, MLflow run {teacher.run_id}"}[teacher.source]
        lines.append(f"  teacher {teacher.arch:<12} {_fmt_count(stats['teacher_params']):>7} params "
                     f"{_fmt_count(stats['teacher_macs']):>8} MACs  val acc {teacher_acc:6.2f}%  ({where})")
    lines.append(f"  student {cfg.student.name:<12} {_fmt_count(stats['student_params']):>7} params "
                 f"{_fmt_count(stats['student_macs']):>8} MACs  val acc {final['best_val_acc']:6.2f}% "
                 f"best (epoch {final['best_epoch']}), {final['final_val_acc']:.2f}% final, "
                 f"train-val gap {final['train_val_gap']:+.2f}")
    lines += [
        f"  MLflow: run {run_id} in experiment '{cfg.tracking.experiment}' (id {experiment_id}) "
        f"at {cfg.tracking.uri}",
        f"  outputs: {output_dir}  (best checkpoint: {output_dir / 'checkpoints' / 'best.pt'})",
        f"  open the MLflow UI: {tracking.ui_command(cfg.tracking.uri)}",
    ]
    print("\n".join(lines), flush=True)
