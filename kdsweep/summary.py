"""The short summary a run prints when it ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kdsweep.tracking import mask_secrets, ui_command


def fmt_count(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


def summary(*, method: str, data: Any, device: str, student: str, teacher: Any, teacher_acc: float | None,
            stats: dict[str, float], final: dict[str, float], run_id: str, experiment: str,
            experiment_id: str, uri: str, ckpt_dir: Path, resumed_from: int | None) -> str:
    uri = mask_secrets(uri)
    lines = [f"kdsweep: {method} run finished on {data.name} ({data.num_train} train / {data.num_val} "
             f"val images, {data.num_classes} classes) on {device}"
             + (f", resumed after epoch {resumed_from}" if resumed_from else "")]
    if teacher is not None:
        where = {"checkpoint": teacher.path, "mlflow": f"MLflow run {teacher.run_id}",
                 "trained": f"trained now, MLflow run {teacher.run_id}"}[teacher.source]
        acc = f"{teacher_acc:6.2f}%" if teacher_acc is not None else "   n/a"
        lines.append(f"  teacher {teacher.arch:<12} {fmt_count(stats['teacher_params']):>7} params "
                     f"{fmt_count(stats['teacher_macs']):>8} MACs  val acc {acc}  ({where})")
    lines.append(f"  student {student:<12} {fmt_count(stats['student_params']):>7} params "
                 f"{fmt_count(stats['student_macs']):>8} MACs  val acc {final['best_val_acc']:6.2f}% "
                 f"best (epoch {final['best_epoch']}), {final['final_val_acc']:.2f}% final, "
                 f"train-val gap {final['train_val_gap']:+.2f}")
    lines += [
        f"  MLflow: run {run_id} in experiment '{experiment}' (id {experiment_id}) at {uri}",
        f"  checkpoints: {ckpt_dir}  (best.pt, last.pt)",
        f"  open the MLflow UI: {ui_command(uri)}",
    ]
    return "\n".join(lines)
