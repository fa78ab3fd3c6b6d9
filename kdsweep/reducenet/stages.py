"""ReduceNet's three stages as one command: grow, shrink, distil (kdsweep/reducenet/README.md).

``python run.py experiment=reducenet [student=reduce56] [reducenet.expansion=2] [method=dkd]``
derives three ordinary kdsweep runs from the composed config, each its own MLflow run:

1. **small**: ``method=ce`` on ``resnetD``, ReduceNet-D without its bottleneck branches
   (skipped with ``reducenet.small=false``);
2. **grow**: ``method=ce`` on ``reduceD`` (``reduceD_eE`` for ``reducenet.expansion=E``), its
   ``resnetD`` tensors initialised from stage 1 (``student.init``), the bottlenecks fresh;
3. **shrink**: ``resnetD`` initialised from stage 2 with the bottlenecks dropped, the classifier
   frozen, a LoRA branch of ``reducenet.rank`` beside each convolution with an optional
   LambdaReLU, fused at the end (``student.adapt``, :mod:`kdsweep.reducenet.adapt`); trained with the
   config's method (``kd`` by default) and stage 2's network as its teacher.

Stages 1-2 use ``schedule`` with ``reducenet.teacher_schedule`` on top (and ``small_epochs`` /
``grow_epochs``); stage 3 uses ``schedule``. A stage whose exact config already has a FINISHED run
(tag ``kdsweep.run_key``) is reused, not retrained (stages 1-2 under a file lock, so parallel
sweep jobs train them once); an unfinished one is resumed by the pipeline as any run. Stage
checkpoints are kept at ``.kdsweep/reducenet/<run id>.pt`` (copied, or downloaded from MLflow),
a path that depends only on the run, so re-running the command finds the same configs. Runs are
linked by tags ``reducenet.stage``, ``reducenet.parent`` (the stage before),
``reducenet.small_run_id``, ``reducenet.grow_run_id``.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from filelock import FileLock
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from kdsweep.config.cohort import cohort_key
from kdsweep.config.validate import MAX_EPOCHS
from kdsweep.data import DataBundle, build_data
from kdsweep.data.build import launch_dir
from kdsweep.engine import DONE, resolve_device
from kdsweep.engine.optim import ScheduleConf
from kdsweep.errors import ConfigError
from kdsweep.models import get_spec, list_models
from kdsweep.reducenet.adapt import adapt_conf
from kdsweep.reducenet.network import EXPANSIONS, teacher_name
from kdsweep.reducenet.schema import ReduceNetConf, StudentAdaptConf, typed_node
from kdsweep.run.pipeline import plan_job, run, run_cohort
from kdsweep.run.plan import Job, RunResult
from kdsweep.run.record import fmt_count
from kdsweep.run.resume import RESUME_PATH_TAG, RUN_KEY_TAG
from kdsweep.run.teachers import CHECKPOINT_ARTIFACT
from kdsweep.tracking import RunRecorder, absolute_uri, open_store, retry

STAGES = ("small", "grow", "shrink")
STAGE_TAG, PARENT_TAG = "reducenet.stage", "reducenet.parent"
CKPT_DIR = Path(".kdsweep") / "reducenet"  # relative to the launch directory
SMALL = {8: "resnet8", 20: "resnet20", 56: "resnet56"}  # 8: the tiny variant (smoke, tests)


@dataclass
class Net:
    depth: int
    teacher: str  # reduceD[_eE]: stage 2's network
    student: str  # resnetD: stages 1 and 3
    conf: ReduceNetConf


@dataclass
class Stage:
    name: str
    run_id: str
    reused: bool
    result: RunResult | None = None


def reducenet_conf(node: Any) -> ReduceNetConf:
    """``reducenet`` checked and typed, one line per bad value."""
    c = typed_node(node, ReduceNetConf, "reducenet")
    if c.expansion not in EXPANSIONS:
        raise ConfigError(f"reducenet.expansion={c.expansion!r} is not available; valid: "
                          + ", ".join(map(str, EXPANSIONS)))
    for key in ("small_epochs", "grow_epochs"):
        v = getattr(c, key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)
                              or not 1 <= v <= MAX_EPOCHS):
            raise ConfigError(f"reducenet.{key}={v!r} must be an integer in [1, {MAX_EPOCHS}] "
                              "or null")
    if isinstance(c.rank, bool) or not isinstance(c.rank, int) or not 0 <= c.rank <= 4096:
        raise ConfigError(f"reducenet.rank={c.rank!r} must be an integer in [0, 4096] (0: no "
                          "LoRA)")
    if not (isinstance(c.anneal, (int, float)) and 0 < c.anneal <= 1):
        raise ConfigError(f"reducenet.anneal={c.anneal!r} must be in (0, 1]: lambda must reach 1 "
                          "by the end of stage 3")
    if c.lambda_relu and c.rank == 0:
        raise ConfigError("reducenet.lambda_relu=true needs LoRA branches: set reducenet.rank >= 1 "
                          "or reducenet.lambda_relu=false")
    bad = sorted(set(dict(c.teacher_schedule or {})) - {f.name for f in fields(ScheduleConf)})
    if bad:
        raise ConfigError(f"reducenet.teacher_schedule has no key {bad[0]!r}; valid: the keys of "
                          "schedule")
    return c


def _typed(overrides: Sequence[str], key: str) -> bool:
    """Whether the command line sets ``key`` (or a key below it)."""
    return any(o.lstrip("+~").split("=", 1)[0].split("@", 1)[0] in (key, f"{key}.name")
               for o in overrides)


def resolve_net(cfg: DictConfig, overrides: Sequence[str] = ()) -> Net:
    """Which ReduceNet the config asks for; refuses settings the stages would silently override.

    A ``teacher`` typed on the command line is refused; one set by a preset or overlay
    (``debug=smoke`` sets resnet14) is replaced by stage 2's network, with a note."""
    conf = reducenet_conf(cfg.reducenet)
    name = str(cfg.student.name)
    m = re.fullmatch(r"(?:reduce|resnet)(\d+)", name)
    if m is None or int(m.group(1)) not in SMALL:
        e = re.fullmatch(r"reduce(\d+)_e(\d+)", name)
        hint = (f"use student=reduce{e.group(1)} reducenet.expansion={e.group(2)}" if e else
                "valid: reduce20, reduce56 (or their small networks resnet20, resnet56); "
                "reduce8/resnet8 for smoke runs")
        raise ConfigError(f"experiment=reducenet: student={name} is not a ReduceNet; {hint}")
    depth = int(m.group(1))
    net = Net(depth, teacher_name(depth, conf.expansion), SMALL[depth], conf)
    t = cfg.get("teacher")
    if t is not None and not OmegaConf.is_missing(t, "name") and t.name != net.teacher:
        if _typed(overrides, "teacher"):
            raise ConfigError(f"experiment=reducenet: the teacher is stage 2's network, "
                              f"{net.teacher} (student={name}, reducenet.expansion="
                              f"{conf.expansion}); remove teacher={t.name}")
        print(f"kdsweep: experiment=reducenet: teacher {t.name} (set by a preset or overlay) is "
              f"replaced by stage 2's network, {net.teacher}", flush=True)
    if t is not None and t.get("checkpoint"):
        raise ConfigError("experiment=reducenet trains its teacher in stage 2; remove "
                          "teacher.checkpoint")
    adapt = adapt_conf(cfg.student.get("adapt"))
    for key, is_set in (("init", bool(cfg.student.get("init"))),
                        ("adapt", adapt is not None and adapt != StudentAdaptConf())):
        if is_set:
            raise ConfigError(f"experiment=reducenet sets student.{key} itself; remove it "
                              "(stage 3's LoRA: reducenet.rank, reducenet.lambda_relu, ...)")
    assert net.teacher in list_models() and net.student in list_models()
    return net


# ------------------------------------------------------------------------- stage configs
def _ckpt_rel(run_id: str) -> str:
    return str(CKPT_DIR / f"{run_id}.pt")


def stage_config(cfg: DictConfig, net: Net, stage: str, init_run: str | None = None) -> DictConfig:
    """The plain run config of one stage; ``init_run``: the run whose weights it starts from."""
    u = OmegaConf.to_container(cfg, resolve=True)
    u["reducenet"] = None
    c = net.conf
    init = _ckpt_rel(init_run) if init_run else None
    student = {**u["student"], "pretrained": False, "init": init,
               "adapt": asdict(StudentAdaptConf())}
    if stage in ("small", "grow"):
        sched = {**u["schedule"], **dict(c.teacher_schedule or {})}
        epochs = c.small_epochs if stage == "small" else c.grow_epochs
        sched["epochs"] = int(epochs or sched["epochs"])
        u.update(method={"name": "ce"}, teacher=None, schedule=sched, sweep={},
                 student={**student, "name": net.student if stage == "small" else net.teacher})
        return OmegaConf.create(u)
    teacher = dict(u.get("teacher") or {})
    teacher.update(name=net.teacher, checkpoint=init, pretrained=False)
    classifier = get_spec(net.student).features.pooled
    adapt = {"freeze": [classifier] if c.freeze_classifier else [], "lora_rank": c.rank,
             "lambda_relu": c.lambda_relu, "anneal": c.anneal}
    u.update(teacher=teacher, student={**student, "name": net.student, "adapt": adapt})
    return OmegaConf.create(u)


def _key(cfg: DictConfig, out: Path) -> str:
    return plan_job(Job(cfg, out)).key  # the pipeline's own check and identity of a run


def check(cfg: DictConfig, overrides: Sequence[str] = ()) -> Net:
    """Every stage's values checked before any work (nothing is written)."""
    net = resolve_net(cfg, overrides)
    for stage in STAGES:
        plan_job(Job(stage_config(cfg, net, stage), Path(".")))
    return net


# ------------------------------------------------------------------------------ running
class Driver:
    """Runs (or finds) the stages of one or more ReduceNet configs that share a store."""

    def __init__(self, cfg: DictConfig, data: DataBundle | None = None):
        self.uri = absolute_uri(str(cfg.tracking.uri), launch_dir())
        self.lock_dir = launch_dir() / cfg.tracking.lock_dir
        self.experiment_id = open_store(self.uri, str(cfg.tracking.experiment), self.lock_dir)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.device = resolve_device(cfg.device)
        self._data: dict[tuple[int, int], DataBundle] = {}
        if data is not None:  # built by the caller for cfg's batch sizes (tests share one)
            self._data[(int(cfg.schedule.batch_size), int(cfg.schedule.eval_batch_size))] = data
        self._stages: dict[str, Stage] = {}  # by run key: a fused job's members share stages 1-2

    def data(self, cfg: DictConfig) -> DataBundle:
        key = (int(cfg.schedule.batch_size), int(cfg.schedule.eval_batch_size))
        if key not in self._data:
            self._data[key] = build_data(cfg.dataset, batch_size=key[0], eval_batch_size=key[1],
                                         device=self.device, seed=int(cfg.seed))
        return self._data[key]

    def finished(self, key: str) -> Any:
        runs = retry(self.client.search_runs, [self.experiment_id],
                     f"tags.`{RUN_KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'",
                     order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0] if runs else None

    def stage(self, name: str, cfg: DictConfig, out: Path, label: str | None = None,
              overrides: Sequence[str] = (), reuse: bool = True) -> Stage:
        """Find the stage's finished run, or train it (under a lock), and keep its checkpoint."""
        key = _key(cfg, out)
        if reuse and key in self._stages:
            return self._stages[key]
        self.lock_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.lock_dir / f"reducenet-{key}.lock")):
            found = self.finished(key) if reuse else None
            if found is not None:
                print(f"kdsweep: ReduceNet stage '{name}' already finished: MLflow run "
                      f"{found.info.run_id} (reused)", flush=True)
                st = Stage(name, found.info.run_id, True, _result_of(found))
            else:
                print(f"kdsweep: ReduceNet stage '{name}': {cfg.method.name} {cfg.student.name}",
                      flush=True)
                res = run(cfg, output_dir=out, overrides=list(overrides), data=self.data(cfg),
                          label=label)
                st = Stage(name, res.run_id, False, res)
            if name != "shrink":
                self.keep_checkpoint(st)
        self._stages[key] = st
        return st

    def keep_checkpoint(self, st: Stage) -> Path:
        """The stage's best.pt at ``.kdsweep/reducenet/<run id>.pt`` (copied or downloaded)."""
        path = launch_dir() / _ckpt_rel(st.run_id)
        if path.is_file():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            local = st.result.checkpoint if st.result is not None else None
            if local is None or not Path(local).is_file():
                local = retry(self.client.download_artifacts, st.run_id, CHECKPOINT_ARTIFACT, tmp)
            shutil.copyfile(local, Path(tmp) / "best.pt")
            os.replace(Path(tmp) / "best.pt", path)
        return path

    def link_and_report(self, stages: Sequence[Stage], net: Net, sweep_trial: bool) -> str:
        """Tag the stage runs with their links and names; log the comparison on the shrink run
        (``reducenet.*`` metrics); return the per-stage table printed at the end."""
        runs = {s.name: retry(self.client.get_run, s.run_id) for s in stages}
        ids = {s.name: s.run_id for s in stages}
        for i, s in enumerate(stages):
            tags = {STAGE_TAG: s.name, "reducenet.teacher": net.teacher,
                    "reducenet.student": net.student, "reducenet.expansion": net.conf.expansion,
                    **{f"reducenet.{n}_run_id": ids[n] for n in STAGES[:STAGES.index(s.name)]
                       if n in ids}}
            if i:
                tags[PARENT_TAG] = stages[i - 1].run_id
            if not (s.name == "shrink" and sweep_trial):  # a sweep trial keeps its own name
                t = runs[s.name].data.tags
                arch = f"{t['teacher']}->{t['student']}" if t.get("teacher", "none") != "none" \
                    else t.get("student")
                tags["mlflow.runName"] = (f"reducenet {STAGES.index(s.name) + 1}/3 {s.name}: "
                                          f"{t.get('method')} {arch}")
            RunRecorder(self.client, s.run_id).set_tags(tags)
        m = {k: _numbers(r) for k, r in runs.items()}
        if "grow" in m and "shrink" in m:
            t, st = m["grow"], m["shrink"]
            RunRecorder(self.client, ids["shrink"]).log_metrics({
                "reducenet.teacher_params": t["student_params"],
                "reducenet.teacher_macs": t["student_macs"],
                "reducenet.teacher_val_acc": t["best_val_acc"],
                "reducenet.student_params": st["student_params"],
                "reducenet.student_macs": st["student_macs"],
                "reducenet.student_val_acc": st["best_val_acc"],
                "reducenet.student_minus_teacher": st["best_val_acc"] - t["best_val_acc"],
                **({"reducenet.small_val_acc": m["small"]["best_val_acc"]} if "small" in m else {})})
        return _table(stages, net, runs)


def _numbers(r: Any) -> dict[str, float]:
    """A run's metrics and its costs (params ``cost.*``; metrics in runs recorded before that)."""
    costs = {k.removeprefix("cost."): float(v) for k, v in r.data.params.items()
             if k.startswith("cost.")}
    return {**costs, **r.data.metrics}


def _table(stages: Sequence[Stage], net: Net, runs: dict[str, Any]) -> str:
    """Per stage: network, parameters, MACs, accuracy; the student against its teacher."""
    m = {k: _numbers(r) for k, r in runs.items()}
    lines = [f"kdsweep: ReduceNet-{net.depth} (expansion {net.conf.expansion}): teacher "
             f"{net.teacher}, student {net.student} (its subnetwork)"]
    for i, name in enumerate(STAGES):
        s = next((st for st in stages if st.name == name), None)
        head = f"  stage {i + 1} {name:<6}"
        if s is None:
            lines.append(f"{head} skipped (reducenet.small=false)")
            continue
        x, extra = m[name], ""
        if name == "shrink" and "grow" in m:
            extra = f"  {x['best_val_acc'] - m['grow']['best_val_acc']:+.2f} vs teacher"
            if "fused_val_acc" in x:
                extra += f", LoRA fused (max |diff| {x.get('fuse_max_abs_diff', 0):.1e})"
        lines.append(f"{head} {runs[name].data.tags.get('student', '?'):<12} "
                     f"{fmt_count(x['student_params']):>7} params {fmt_count(x['student_macs']):>8}"
                     f" MACs  val acc {x['best_val_acc']:6.2f}%{extra}  "
                     f"({'reused' if s.reused else 'trained'}, MLflow run {s.run_id})")
    return "\n".join(lines)


def _result_of(r: Any) -> RunResult:
    m = r.data.metrics
    folder = Path(r.data.tags.get(RESUME_PATH_TAG, "checkpoints/last.pt")).parent
    return RunResult(r.info.run_id, DONE, m.get("best_val_acc", 0.0), m.get("final_val_acc", 0.0),
                     m.get("teacher_val_acc"), folder / "best.pt")


def _teacher_stages(d: Driver, cfg: DictConfig, net: Net, out: Path,
                    overrides: Sequence[str]) -> list[Stage]:
    """Stages 1 and 2, found or trained; each records the command's overrides."""
    stages: list[Stage] = []
    if net.conf.small:
        stages.append(d.stage("small", stage_config(cfg, net, "small"), out / "small",
                              overrides=overrides))
    init = stages[-1].run_id if stages else None
    stages.append(d.stage("grow", stage_config(cfg, net, "grow", init), out / "grow",
                          overrides=overrides))
    return stages


def _in_sweep(cfg: DictConfig) -> bool:
    s = cfg.get("sweep") or {}
    return bool(s.get("parent_run_id") or s.get("trial_number") is not None)


def run_reducenet(cfg: DictConfig, *, output_dir: str | Path, overrides: Sequence[str] = (),
                  label: str | None = None, data: DataBundle | None = None) -> RunResult:
    """The three stages of ``cfg``; returns stage 3's result (its fused student's accuracy).
    ``data``: the data set built for ``cfg.schedule``'s batch sizes (as :func:`run` takes it)."""
    net = check(cfg, overrides)
    out = Path(output_dir)
    d = Driver(cfg, data)
    stages = _teacher_stages(d, cfg, net, out, overrides)
    sweep = _in_sweep(cfg)
    shrink = d.stage("shrink", stage_config(cfg, net, "shrink", stages[-1].run_id), out / "shrink",
                     label=label, overrides=overrides, reuse=not sweep)
    stages.append(shrink)
    print(d.link_and_report(stages, net, sweep), flush=True)
    return shrink.result


def run_reducenet_cohort(jobs: Sequence[Job]) -> list[RunResult]:
    """A fused sweep job of ReduceNet trials: stages 1-2 found or trained once, then every
    trial's stage 3 in cohorts of the trials that share a teacher (usually all of them)."""
    nets = [check(j.cfg, j.overrides) for j in jobs]
    d = Driver(jobs[0].cfg)
    shrinks, teachers = [], []
    for j, net in zip(jobs, nets, strict=True):
        st = _teacher_stages(d, j.cfg, net, j.output_dir, j.overrides)
        teachers.append(st)
        cfg3 = stage_config(j.cfg, net, "shrink", st[-1].run_id)
        shrinks.append(Job(cfg3, j.output_dir / "shrink", j.overrides, j.label))
    groups: dict[str, list[int]] = {}
    for i, job in enumerate(shrinks):
        groups.setdefault(cohort_key(OmegaConf.to_container(job.cfg, resolve=True)), []).append(i)
    results: list[RunResult | None] = [None] * len(jobs)
    for idx in groups.values():
        part = [shrinks[i] for i in idx]
        for i, r in zip(idx, run_cohort(part, data=d.data(part[0].cfg)), strict=True):
            results[i] = r
    for i, r in enumerate(results):
        if r is not None and r.status == DONE:
            stages = [*teachers[i], Stage("shrink", r.run_id, False, r)]
            print(d.link_and_report(stages, nets[i], True), flush=True)
    return [r for r in results if r is not None]


__all__ = ["STAGES", "check", "resolve_net", "run_reducenet", "run_reducenet_cohort",
           "stage_config"]
