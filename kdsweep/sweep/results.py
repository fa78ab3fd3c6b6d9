"""What a sweep leaves behind: ``sweep.json``, the parent run's summary metrics, the report."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from omegaconf import OmegaConf
from optuna.trial import TrialState

from kdsweep.errors import SweepError
from kdsweep.sweep.parent import ParentRun
from kdsweep.sweep.settings import ReportSettings
from kdsweep.sweep.space import format_override, format_value, point_text
from kdsweep.sweep.storage import short
from kdsweep.tracking import mask_tree, mask_url, runs_link

log = logging.getLogger(__name__)


class TooManyFailures(SweepError):
    """More trials of one batch failed than ``hydra.sweeper.max_failure_rate`` allows."""


@dataclass
class Ending:
    """How a sweep call ended: ``unfinished`` of its ``total`` points (or trials) did not finish
    (``failed`` of them failed; the rest were not run), and why it stopped early, if it did."""

    unfinished: int
    total: int
    failed: int
    stopped: str | None = None

    def message(self, command: str) -> str:
        """What a user reads when points are left: how many, why, and the command that retries."""
        why = f" (stopped early: {self.stopped})" if self.stopped else ""
        return (f"kdsweep: {self.unfinished} of {self.total} points did not finish: {self.failed} "
                f"failed, {self.unfinished - self.failed} not run{why}. The reasons are in the "
                f"log above and on each failed MLflow run (tag kdsweep.error). Re-run the same "
                f"command to retry them (finished points are kept): {command}")


def tally(trials: Sequence[optuna.trial.FrozenTrial], points: Sequence[Any] | None,
          point_key: Callable[[optuna.trial.FrozenTrial], str | None], dead: str) -> dict[str, int]:
    """Where a sweep stands: per point for a grid (a point counts as its best attempt: complete,
    pruned, running elsewhere, failed, or not run), per trial otherwise. Attempts whose sweeper
    died (user attribute ``error`` starting with ``dead``) are counted apart as ``interrupted``:
    they are retried, not failures."""
    interrupted = sum(t.state == TrialState.FAIL
                      and str(t.user_attrs.get("error", "")).startswith(dead) for t in trials)
    if points is None:
        n = {s: sum(t.state == s for t in trials) for s in TrialState}
        return {"complete": n[TrialState.COMPLETE], "pruned": n[TrialState.PRUNED],
                "failed": n[TrialState.FAIL] - interrupted, "running": n[TrialState.RUNNING],
                "interrupted": interrupted, "points": 0}
    rank = {TrialState.COMPLETE: 4, TrialState.PRUNED: 3, TrialState.RUNNING: 2,
            TrialState.WAITING: 2, TrialState.FAIL: 1}
    best: dict[str, int] = {}
    for t in trials:
        key = point_key(t)
        if key is not None:
            best[key] = max(best.get(key, 0), rank.get(t.state, 0))
    states = [best.get(p.key, 0) for p in points]
    return {"complete": states.count(4), "pruned": states.count(3), "running": states.count(2),
            "failed": states.count(1), "not_run": states.count(0), "interrupted": interrupted,
            "points": len(states)}


def write_sweep_json(info: Mapping[str, Any], folders: Iterable[Path], parent: ParentRun) -> None:
    """The sweep's definition (credentials masked) in each folder and as a parent artifact."""
    text = json.dumps(mask_tree(dict(info)), indent=2, default=str)
    for d in folders:
        d.mkdir(parents=True, exist_ok=True)
        (d / "sweep.json").write_text(text + "\n")
    with contextlib.suppress(Exception):
        parent.client.log_text(parent.run_id, text, "sweep.json")


def summarise(study: optuna.Study, parent: ParentRun, info: Mapping[str, Any], study_dir: Path,
              report: ReportSettings, tally: Mapping[str, int],
              write_report: Callable[..., Any] | None = None) -> None:
    """Counts and the best trial on the parent run and stdout, then the report's tables
    (``write_report``: :func:`kdsweep.report.write_report`, handed in by the plugin: the report
    package reads sweeps, so the sweep package does not import it).

    ``tally``: what the sweep's points (a grid) or trials (a sampler) came to: ``complete``,
    ``pruned``, ``failed``, ``running`` and ``interrupted`` (attempts whose sweeper was killed,
    retried since or pending).
    """
    metrics = {f"n_{k}": int(v) for k, v in tally.items() if k != "points"}
    best = None
    with contextlib.suppress(ValueError):
        best = study.best_trial
    tags: dict[str, Any] = {}
    if best is not None:
        metrics["best_val_acc"] = float(best.value)
        tags["best.trial"] = best.number
        tags["best.overrides"] = " ".join(format_override(k, v) for k, v in best.params.items())
        tags.update({f"best.params.{k}": format_value(v) for k, v in best.params.items()})
        children = parent.child_of_trial(best.number)
        if children:
            tags["best.run_id"] = children[0].info.run_id
    parent.log_metrics(metrics)
    parent.set_tags(tags)
    results = {"name": study.study_name, "best_value": metrics.get("best_val_acc"),
               "best_params": dict(best.params) if best else None}
    (study_dir / "optimization_results.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(results)))
    unit = "points" if tally.get("points") else "trials"
    lines = [f"kdsweep: study {study.study_name}: {metrics['n_complete']} complete, "
             f"{metrics['n_pruned']} pruned, {metrics['n_failed']} failed"
             + (f", {metrics['n_running']} running elsewhere" if metrics["n_running"] else "")
             + (f", {metrics['n_not_run']} not run" if metrics.get("n_not_run") else "")
             + f" ({unit})"
             + (f"; {metrics['n_interrupted']} attempts were interrupted by a killed sweeper "
                "and retried" if metrics.get("n_interrupted") else "")]
    if best is not None:
        lines.append(f"  best {best.value:.4g} (trial {best.number}): {tags['best.overrides']}")
    lines.append(f"  MLflow parent run {parent.run_id} (experiment {info['experiment']}) at "
                 f"{mask_url(str(info['tracking_uri']))}: {runs_link(parent.experiment_id)}")
    lines.append(f"  study {study.study_name} in {mask_url(str(info['storage']))}; "
                 f"study dir {study_dir}")
    lines.append(f"  in the browser: optuna-dashboard {mask_url(str(info['storage']))} "
                 "(pip install 'kdsweep[dashboard]')")
    print("\n".join(lines), flush=True)
    table = None
    if report.enabled and write_report is not None:
        try:
            rep = write_report(study_dir, metric=report.metric, log_to_parent=True)
            print(rep.markdown, flush=True)
            print(f"  report: {rep.markdown_path}", flush=True)
            table = rep.markdown
        except Exception as e:  # a report problem must not lose the sweep's results
            log.warning("could not write the sweep report: %s: %s", type(e).__name__, e)
    parent.set_tags({"mlflow.note.content": description(study, best, lines[0], table)})


def description(study: optuna.Study, best: Any, counts: str, table: str | None) -> str:
    """The parent run's description in the MLflow UI (its Overview page): the best point, the
    counts, and the report's tables (Markdown)."""
    head = [f"**Sweep {study.study_name}**", ""]
    if best is not None:
        head += [f"Best: **{best.value:.2f}** at `{_point(best)}` (trial {best.number}).", ""]
    head.append(counts.removeprefix("kdsweep: ") + ".")
    return "\n".join([*head, *(["", table] if table else [])])[:20000]


def progress_line(study: optuna.Study, n_total: int, started: float, now: float) -> str:
    """``kdsweep: sweep 8/16 trials done (1 pruned), best 26.50 alpha=0.4 T=2 | 2:31 elapsed,
    ETA 2:31``: the whole sweep, printed after each batch of jobs."""
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    finished = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    pruned = sum(t.state == TrialState.PRUNED for t in done)
    failed = sum(t.state == TrialState.FAIL for t in trials)
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    best = (max if maximize else min)(finished, key=lambda t: t.value, default=None)
    n = min(len(done), n_total)
    took = now - started
    left = took / n * (n_total - n) if n else None
    line = f"kdsweep: sweep {n}/{n_total} trials done"
    extra = [f"{k} {w}" for k, w in ((pruned, "pruned"), (failed, "failed attempts")) if k]
    line += f" ({', '.join(extra)})" if extra else ""
    if best is not None:
        line += f", best {best.value:.2f} {_point(best)}"
    clock = f"{int(took // 60)}:{int(took % 60):02d} elapsed"
    if left is not None and n < n_total:
        clock += f", ETA {int(left // 60)}:{int(left % 60):02d}"
    return f"{line} | {clock}"


def _point(t: optuna.trial.FrozenTrial) -> str:
    """What a trial varies (its ``point`` user attribute; trials of older sweeps: its params)."""
    return t.user_attrs.get("point") or point_text(t.params)


def parent_params(s: Any, space: Any, study_name: str) -> dict[str, str]:
    """The sweep's definition as the parent's params: only the parent carries the space."""
    p = {"sweep.study_name": study_name,
         "sweep.sampler": short(s.sampler.get("_target_", "")),
         "sweep.pruner": short(s.pruner.get("_target_", "")),
         "sweep.direction": s.direction, "sweep.fuse": str(s.fuse),
         "sweep.fixed_overrides": " ".join(space.fixed) or "(none)"}
    p.update({f"sweep.sampler.{k}": str(v) for k, v in s.sampler.items()
              if k != "_target_"})
    p.update({f"sweep.pruner.{k}": str(v) for k, v in s.pruner.items()
              if k != "_target_"})
    # Numbered, not named after the swept key: a search for "method.alpha" in the UI finds the
    # trials' own params, never the sweep's description of them.
    for i, (k, d) in enumerate(space.describe()["params"].items(), 1):
        p[f"sweep.axis{i}"] = f"{k}: {json.dumps(d, default=str)}"
    if space.points is not None and s.points is not None:
        p["sweep.points"] = json.dumps([{"label": pt.label, **pt.values}
                                        for pt in space.points], default=str)
    return p
