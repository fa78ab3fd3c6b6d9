"""The record of each member: its MLflow run from start to finish, and the summary printed at the end.

Every run records its composed config (credentials masked), overrides, package versions, device,
per-epoch metrics, costs, teacher link, checkpoints and the reason it failed, if it did.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.tracking import MlflowClient

from kdsweep import liveness
from kdsweep.data import DataBundle
from kdsweep.engine import DIVERGED, DONE, FAILED, PRUNED
from kdsweep.errors import Pruned
from kdsweep.run import artifacts
from kdsweep.run.callbacks import Checkpoints, EpochMetrics, PruningReports, epoch_metrics
from kdsweep.run.plan import Plan, RunResult
from kdsweep.run.resume import (
    LABEL_TAG,
    OWNER_TAG,
    PRUNED_TAG,
    RESUME_PATH_TAG,
    RUN_KEY_TAG,
    logged_epochs,
)
from kdsweep.run.teachers import CHECKPOINT_ARTIFACT, SCHEDULE_TAG, Teacher, schedule_key
from kdsweep.sweep.trial import TrialReporter, parent_tags
from kdsweep.tracking import (
    RunRecorder,
    flatten,
    mask_text,
    mask_url,
    package_versions,
    runs_link,
    ui_command,
)

log = logging.getLogger(__name__)
STATUS = {DONE: "FINISHED", PRUNED: "KILLED", DIVERGED: "FAILED", FAILED: "FAILED"}


@dataclass
class Env:
    """What the members of a cohort share, for their records."""

    uri: str
    experiment_id: str
    device: str
    precision: str
    data: DataBundle
    teacher: Teacher | None
    teacher_stats: dict[str, float] = field(default_factory=dict)
    teacher_acc: float | None = None
    malloc: str = ""
    main: bool = True  # rank 0 of a data-parallel run (or the only process): it records


def run_name(p: Plan) -> str:
    cfg = p.cfg
    if p.job.label == "teacher":
        return f"teacher {cfg.student.name}"
    base = (f"{p.method.name} {cfg.teacher.name}->{cfg.student.name}" if p.method.needs_teacher
            else f"{p.method.name} {cfg.student.name}")
    return f"{p.job.label} ({base})" if p.job.label else base


def mlflow_name(p: Plan) -> str:
    """The run's name in MLflow: a sweep trial's point first and short (``alpha=0.4 T=8``; its
    trial number, method and models are tags), else :func:`run_name`."""
    point = re.sub(r"^t\d+\s*", "", p.job.label or "") if p.job.label != "teacher" else ""
    return point or run_name(p)


def _checkpoint_dir(p: Plan) -> Path:
    if p.previous is not None and p.previous.checkpoint is not None:
        return p.previous.checkpoint.parent
    return p.job.output_dir / "checkpoints"


def start(p: Plan, env: Env) -> RunRecorder:
    """Open the member's MLflow run (or reopen it, resuming from ``last.pt``) and attach its
    callbacks.

    A run that died before its first checkpoint holds nothing to continue from: it is started
    again as a new run and the old one is deleted (tagged ``kdsweep.restarted_as``), so no step
    is logged twice and no param of the old attempt conflicts. A reopened run gets this attempt's
    name, trial tags and ``config.yaml``; per-trial bookkeeping (the ``sweep`` node: trial
    number, label) is kept out of the immutable params for that reason.
    """
    assert p.member is not None
    ckpt = Checkpoints(_checkpoint_dir(p), every=int(p.cfg.train.checkpoint_every),
                       epochs=int(p.cfg.schedule.epochs) + p.member.init_epochs,
                       header={"arch": p.cfg.student.name, "num_classes": env.data.num_classes,
                               "config": p.masked})
    tags = {"dataset": env.data.name, "num_classes": str(env.data.num_classes),
            "method": p.method.name, "student": p.cfg.student.name,
            "teacher": env.teacher.arch if env.teacher and p.method.needs_teacher else "none",
            "device": env.device, "precision": env.precision, "malloc": env.malloc,
            RUN_KEY_TAG: p.key, SCHEDULE_TAG: schedule_key(p.cfg),
            RESUME_PATH_TAG: str(ckpt.last.resolve()), OWNER_TAG: liveness.owner_tag(),
            **parent_tags(p.cfg.get("sweep"))}
    if p.job.label and p.job.label != "teacher":
        tags[LABEL_TAG] = p.job.label
    resumed = p.previous is not None and p.previous.checkpoint is not None
    rec = RunRecorder.start(env.uri, env.experiment_id, run_name=mlflow_name(p), tags=tags,
                            resume_run_id=p.previous.run_id if resumed else None,
                            description=_description(p))
    logged: set[int] = set()
    if not resumed:
        if p.previous is not None:  # died before its first checkpoint: this run replaces it
            supersede(rec, p.previous.run_id)
        _log_setup(rec, p, env)
        artifacts.log_dataset(rec, env.data, artifacts.dataset_source(p.cfg.dataset))
        resolved = getattr(p.method, "resolved", None)  # values a method chose at build (DKD's beta)
        if resolved:
            rec.log_params({f"method.resolved.{k}": v for k, v in dict(resolved).items()})
    else:  # epochs saved in last.pt whose metrics never reached MLflow (killed in between)
        logged = logged_epochs(rec.client, rec.run_id)
        for h in p.member.result.history:
            if h["epoch"] + 1 not in logged:
                rec.log_metrics(epoch_metrics(h), step=h["epoch"] + 1)
                logged.add(h["epoch"] + 1)
    _log_record(rec, p)
    p.member.callbacks = [ckpt, EpochMetrics(rec, logged=logged,
                                             params=set(rec.run().data.params) if resumed else None)]
    reporter = TrialReporter.from_cfg(p.cfg.get("sweep"))
    if reporter is not None:
        p.member.callbacks.append(PruningReports(reporter, rec))
    return rec


def supersede(rec: RunRecorder, old_run_id: str) -> None:
    """Delete the run that ``rec``'s run replaces (MLflow keeps it, restorable, until ``mlflow gc``)."""
    client = rec.client
    with contextlib.suppress(Exception):
        client.set_tag(old_run_id, "kdsweep.restarted_as", rec.run_id)
        client.set_terminated(old_run_id, "KILLED")
        client.delete_run(old_run_id)
        log.info("MLflow run %s died before its first checkpoint: replaced by run %s",
                 old_run_id, rec.run_id)


def _description(p: Plan) -> str:
    what = "trains a teacher" if p.job.label == "teacher" else (
        f"distils {p.cfg.teacher.name} into {p.cfg.student.name}" if p.method.needs_teacher
        else f"trains {p.cfg.student.name} alone")
    varied = f" Trial of a sweep: {p.job.label}." if p.job.label and p.job.label != "teacher" else ""
    return f"kdsweep {p.method.name} run: {what} on {p.cfg.dataset.name}.{varied}"


def _log_setup(rec: RunRecorder, p: Plan, env: Env) -> None:
    # The sweep node is per attempt (the trial number changes when a killed trial is retried):
    # it is in the run's tags and config.yaml, which are rewritten on every attempt, not params.
    config = {k: v for k, v in p.masked.items() if k != "sweep"}
    overrides = [o for o in p.job.overrides if not o.lstrip("+~").startswith("sweep.")]
    rec.log_params({**flatten(config), "overrides": mask_text(" ".join(overrides)) or "(none)"})
    rec.set_tags({f"env.{k}": v for k, v in package_versions().items()})
    costs = {**p.stats, **(env.teacher_stats if p.method.needs_teacher else {}),
             "method_extra_params": p.method.extra_parameters()}
    if env.teacher_stats and p.method.needs_teacher:
        costs["compression_ratio"] = round(p.stats["student_params"]
                                           / env.teacher_stats["teacher_params"], 6)
    rec.log_params({f"cost.{k}": int(v) if float(v).is_integer() else v for k, v in costs.items()})
    t = env.teacher
    if t is not None and p.method.needs_teacher:
        rec.set_tags({"teacher_source": t.source, "teacher_path": mask_url(t.path),
                      "teacher_run_id": t.run_id or ""})
        if env.teacher_acc is not None:
            rec.log_params({"teacher.val_acc": round(env.teacher_acc, 4)})


def _log_record(rec: RunRecorder, p: Plan) -> None:
    """What describes this attempt: the composed config (with its sweep node) and Hydra's files."""
    rec.log_dict(p.masked, "config.yaml")
    hydra_dir = p.job.output_dir / ".hydra"
    if hydra_dir.is_dir():
        rec.set_tags(preset_tags(hydra_dir))
        rec.log_artifacts(hydra_dir, "hydra")


def preset_tags(hydra_dir: Path) -> dict[str, str]:
    """``preset.<group>`` tags: which option of each config group the run was composed from
    (Hydra's ``runtime.choices``), e.g. ``preset.schedule=quick``, whose node only says
    ``name: cosine``. Empty when the job was not launched by Hydra."""
    from omegaconf import OmegaConf

    try:
        choices = OmegaConf.load(hydra_dir / "hydra.yaml").hydra.runtime.choices
    except Exception:  # no hydra.yaml (a fused member's own directory), or not Hydra's layout
        return {}
    return {f"preset.{group}": str(value) for group, value in choices.items()
            if value is not None and not str(group).startswith("hydra")}


def reuse(p: Plan, client: MlflowClient) -> RunResult:
    """A sweep trial whose point ended before (its job was killed after its run ended, before the
    sweeper recorded the trial): the run is relabelled as this trial's, its result returned."""
    r = p.finished
    tags = {**parent_tags(p.cfg.get("sweep")), OWNER_TAG: liveness.owner_tag()}
    if p.job.label:
        tags[LABEL_TAG] = p.job.label
    rec = RunRecorder(client, r.info.run_id)
    rec.set_tags(tags)
    rec.client.update_run(r.info.run_id, name=mlflow_name(p))
    _log_record(rec, p)
    print(f"kdsweep: {run_name(p)} ended before, in MLflow run {r.info.run_id}: its result is "
          "reused", flush=True)
    ckpt = Path(r.data.tags.get(RESUME_PATH_TAG, "")).with_name("best.pt")
    m = r.data.metrics
    if PRUNED_TAG in r.data.tags:
        epoch = int(r.data.tags[PRUNED_TAG])
        return RunResult(r.info.run_id, PRUNED, m.get("best_val_acc", float("nan")),
                         m.get("final_val_acc", float("nan")), None, ckpt,
                         Pruned(f"pruned at epoch {epoch} (before)", epoch))
    return RunResult(r.info.run_id, DONE, m["best_val_acc"], m.get("final_val_acc", float("nan")),
                     None, ckpt)


def abort(plans: Sequence[Plan], err: BaseException) -> None:
    """The cohort died: every open run is marked FAILED with the reason (not on Ctrl-C / kill,
    where the run stays resumable as it is)."""
    if isinstance(err, KeyboardInterrupt):
        return
    for p in plans:
        if p.recorder is None:
            continue
        with contextlib.suppress(Exception):
            p.recorder.set_tags({"kdsweep.error": f"{type(err).__name__}: {err}"[:5000]})
            p.recorder.end("FAILED")


def finish(p: Plan, env: Env, wall: float) -> RunResult:
    """Final metrics and the best checkpoint of a finished member; status and reason otherwise."""
    m, rec = p.member, p.recorder
    assert m is not None
    r = m.result
    ckpt = _checkpoint_dir(p) / "best.pt"
    if rec is None:  # a data-parallel process other than rank 0: rank 0 recorded the run
        return RunResult("", m.status, r.best_val_acc, r.final_val_acc, env.teacher_acc, ckpt,
                         m.error)
    if m.status == DONE:
        rec.log_metrics({"best_val_acc": r.best_val_acc, "best_epoch": r.best_epoch + 1,
                         "final_val_acc": r.final_val_acc, "final_train_acc": r.final_train_acc,
                         # derived: rounded, so the UI shows -2.1, not -2.1000000000000014
                         "train_val_gap": round(r.train_val_gap, 4), "wall_time_s": round(wall, 1)})
        if ckpt.is_file():
            rec.log_artifact(ckpt, Path(CHECKPOINT_ARTIFACT).parent.as_posix())
            if p.cfg.tracking.get("log_model", True):
                try:
                    artifacts.log_best_model(rec, env.uri, ckpt, env.data)
                except Exception as e:  # the checkpoint is logged; the model view is a bonus
                    log.warning("could not log the MLflow model: %s: %s", type(e).__name__, e)
    elif m.error is not None and m.status != PRUNED:
        rec.set_tags({"kdsweep.error": f"{type(m.error).__name__}: {m.error}"[:5000]})
    rec.end(STATUS[m.status])
    return RunResult(rec.run_id, m.status, r.best_val_acc, r.final_val_acc, env.teacher_acc,
                     ckpt, m.error)


# ---------------------------------------------------------------------------------- summary
def fmt_count(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}K"


def summary(plans: Sequence[Plan], env: Env, results: Sequence[RunResult]) -> str:
    """What a user reads when the run ends: data, device, accuracies, costs, where to look; a
    cohort's runs as one table, one row per run, what it varies first. Lines other than paths
    and commands fit 80 columns."""
    d, first = env.data, plans[0]
    resumed = first.member.start_epoch if first.previous and first.previous.checkpoint else 0
    what = f"cohort of {len(plans)} runs" if len(plans) > 1 else (
        "teacher run" if first.job.label == "teacher" else f"{first.method.name} run")
    lines = [f"kdsweep: {what} finished on {d.name}"
             + (f", resumed after epoch {resumed}" if resumed else ""),
             f"  data: {d.num_train} train / {d.num_val} val images, {d.num_classes} classes; "
             f"{env.device}"]
    t = env.teacher
    if t is not None and env.teacher_stats:
        where = {"checkpoint": f"from {mask_url(t.path)}",
                 "mlflow": f"found in MLflow: run {t.run_id}",
                 "trained": f"trained first: MLflow run {t.run_id}"}[t.source]
        acc = f"{env.teacher_acc:.2f}%" if env.teacher_acc is not None else "n/a"
        lines += [f"  teacher {t.arch:<14} {fmt_count(env.teacher_stats['teacher_params']):>7} "
                  f"params {fmt_count(env.teacher_stats['teacher_macs']):>8} MACs  val {acc}",
                  f"          {where}"]
    if len(plans) == 1:
        lines += _member_lines(first, results[0],
                               role="teacher" if first.job.label == "teacher" else "student")
        folder = str(_checkpoint_dir(first))
    else:
        lines += _cohort_table(plans, results)
        dirs = [_checkpoint_dir(p) for p in plans]
        folder = (f"{dirs[0].parent.parent}/<trial>/checkpoints" if len({x.parent.parent
                  for x in dirs}) == 1 and all(x.name == "checkpoints" for x in dirs)
                  else ", ".join(map(str, dirs)))
    lines += [f"  MLflow: {'run ' + results[0].run_id if len(plans) == 1 else 'the runs above'}, "
              f"experiment '{first.cfg.tracking.experiment}' (id {env.experiment_id})",
              f"          at {mask_url(env.uri)}",
              f"  checkpoints: {folder}",
              f"  open the MLflow UI: {ui_command(env.uri)}",
              f"  then: {runs_link(env.experiment_id, results[0].run_id if len(plans) == 1 else None)}"]
    return "\n".join(lines)


def _member_lines(p: Plan, res: RunResult, role: str) -> list[str]:
    m = p.member
    head = (f"  {role} {p.cfg.student.name:<14} {fmt_count(p.stats['student_params']):>7} params "
            f"{fmt_count(p.stats['student_macs']):>8} MACs")
    plain = f"{role} {p.cfg.student.name}"
    name = f"          {m.name}" if p.job.label and m.name != plain else None
    if res.status != DONE:
        return [head, f"          {res.status}: {res.error}"]
    r = m.result
    peer = (f", deployed peer {m.peers[m.best_peer].name}" if hasattr(m, "peers") else "")
    return [f"{head}  val {r.best_val_acc:.2f}%",
            f"          best at epoch {r.best_epoch + 1}, {r.final_val_acc:.2f}% final, "
            f"train-val gap {r.train_val_gap:+.2f}{peer}", *([name] if name else [])]


def _cohort_table(plans: Sequence[Plan], results: Sequence[RunResult]) -> list[str]:
    """The students' costs once per architecture, then one row per run: what it varies (its
    sweep label, else its method and student), best and final val acc, best epoch, gap, run."""
    out, seen = [], set()
    for p in plans:
        if p.cfg.student.name not in seen:
            seen.add(p.cfg.student.name)
            out.append(f"  student {p.cfg.student.name:<14} {fmt_count(p.stats['student_params']):>7}"
                       f" params {fmt_count(p.stats['student_macs']):>8} MACs")
    names = [p.member.name.split(" (", 1)[0] if p.job.label else p.member.name for p in plans]
    w = max(5, *map(len, names))
    out.append(f"  {'run':<{w}}  val best  epoch  final    gap  MLflow run")
    for p, res, name in zip(plans, results, names, strict=True):
        r = p.member.result
        if res.status != DONE or not r.history:
            out.append(f"  {name:<{w}}  {res.status}: {res.error}"[:160])
            continue
        out.append(f"  {name:<{w}}  {r.best_val_acc:8.2f}  {r.best_epoch + 1:5d}  "
                   f"{r.final_val_acc:5.2f}  {r.train_val_gap:+5.2f}  {res.run_id[:8]}")
    return out


__all__ = ["Env", "abort", "finish", "run_name", "start", "summary"]


