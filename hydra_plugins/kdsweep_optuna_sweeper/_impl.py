"""The kdsweep Optuna sweeper: ask/tell over Hydra launchers, resumable, shared, pruned, tracked.

One sweep = one Optuna study (in a storage that survives the process) + one MLflow parent run.
Each call of the sweep runs only what the study is missing:

* grid (``hydra/sweeper/sampler=grid`` or ``points``): every point is claimed once in the
  storage (``_claims``); a point whose trial completed, was pruned or is running is never run
  again; a point whose trial failed is retaken by the next sweep call.
* other samplers: ``n_trials`` minus the trials that completed, were pruned or are running.

Trials left RUNNING by a sweeper that died are failed first: at once when that process was on
this host and is gone, otherwise when its heartbeat is older than ``grace_period``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from . import _space
from ._claims import Claims
from ._space import Point, SearchSpaceError, format_override, format_value
from ._storage import (
    SweepError,
    _container,
    _Heartbeat,
    _job_url,
    _owner,
    _owner_alive,
    _short,
    _sqlite_kwargs,
    _Trial,
    make_storage,
)
from ._tracking import ParentRun, absolute_uri, mask_url
from .pruning import STUDY_ATTR as PRUNER_ATTR

log = logging.getLogger(__name__)

POINT_ATTR = "kdsweep:point"
OWNER_ATTR = "kdsweep:owner"
DEFINITION_ATTR = "kdsweep_definition"
ALIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
SAMPLERS = {"TPESampler", "RandomSampler", "GridSampler", "CmaEsSampler", "NSGAIISampler",
            "QMCSampler", "GPSampler", "BruteForceSampler"}


class KDSweepOptunaSweeperImpl:
    def __init__(self, *, sampler: Any, pruner: Any, direction: Any, storage: str | None,
                 study_name: str | None, study_dir: str | None, n_trials: int | None, n_jobs: int,
                 max_failure_rate: float, params: Any, points: Any, heartbeat_interval: int,
                 grace_period: int, report: Any) -> None:
        self.sampler_spec: dict[str, Any] = dict(_container(sampler) or {})
        self.pruner_spec: dict[str, Any] = dict(_container(pruner) or
                                                {"_target_": "optuna.pruners.NopPruner"})
        direction = _container(direction)
        if isinstance(direction, (list, tuple)):
            if len(direction) != 1:
                raise SweepError("hydra.sweeper.direction: kdsweep runs return one value; "
                                 "use a single direction (maximize or minimize)")
            direction = direction[0]
        self.direction = str(getattr(direction, "name", direction)).lower()
        if self.direction not in ("maximize", "minimize"):
            raise SweepError(f"hydra.sweeper.direction={direction!r} must be maximize or minimize")
        self.storage_url = storage
        self.study_name = study_name
        self.study_dir_cfg = study_dir
        self.n_trials = n_trials
        self.n_jobs = int(n_jobs)
        if self.n_jobs < 1:
            raise SweepError(f"hydra.sweeper.n_jobs={n_jobs} must be >= 1")
        self.max_failure_rate = float(max_failure_rate)
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise SweepError(f"hydra.sweeper.max_failure_rate={max_failure_rate} must be in [0, 1]")
        self.params = _container(params)
        self.points = _container(points)
        self.heartbeat_interval = int(heartbeat_interval)
        self.grace_period = int(grace_period)
        if self.heartbeat_interval < 1 or self.grace_period <= self.heartbeat_interval:
            raise SweepError("hydra.sweeper: need heartbeat_interval >= 1 and grace_period > "
                             "heartbeat_interval")
        self.report_cfg: dict[str, Any] = dict(_container(report) or {})
        self.job_idx = 0
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.hydra_context: HydraContext | None = None

    # ----------------------------------------------------------------------------- setup
    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)

    @property
    def is_grid(self) -> bool:
        return self.points is not None or _short(self.sampler_spec.get("_target_", "")) == "GridSampler"

    def _make_sampler(self) -> optuna.samplers.BaseSampler:
        target = str(self.sampler_spec.get("_target_", "optuna.samplers.TPESampler"))
        module, _, name = target.rpartition(".")
        kwargs = {k: v for k, v in self.sampler_spec.items() if k != "_target_"}
        if module != "optuna.samplers" or name not in SAMPLERS:
            raise SweepError(f"hydra.sweeper.sampler._target_={target!r}: use one of "
                             "tpe, random, grid, cmaes, nsgaii (optuna.samplers.*)")
        if name == "GridSampler":  # kdsweep enumerates the grid; the sampler only needs a seed
            return optuna.samplers.RandomSampler(seed=kwargs.get("seed"))
        if name == "CmaEsSampler":
            try:
                import cmaes  # noqa: F401
            except ImportError:
                raise SweepError("hydra/sweeper/sampler=cmaes needs the cmaes package: "
                                 "pip install cmaes") from None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return getattr(optuna.samplers, name)(**kwargs)

    # ----------------------------------------------------------------------------- sweep
    def sweep(self, arguments: list[str]) -> Any:
        """Run the missing trials of the study; a bad sweep config is one line and exit status 2."""
        try:
            return self._sweep(arguments)
        except SweepError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)

    def _sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None
        try:
            space = _space.build(self.params, arguments, grid=self.is_grid, points=self.points)
        except SearchSpaceError as e:
            raise SweepError(str(e)) from None
        if not self.is_grid and self.n_trials is None:
            raise SweepError("hydra.sweeper.n_trials=null is only allowed with a grid; set a number")
        if not self.is_grid and not space.distributions:
            raise SweepError("nothing to sweep: give hydra.sweeper.params or key=choice(...)/"
                             "interval(...) overrides")
        sampler = self._make_sampler()
        from .pruning import make_pruner

        try:
            make_pruner(self.pruner_spec)  # fail now on a bad pruner config, not in a trial
        except (TypeError, ValueError) as e:
            raise SweepError(f"hydra.sweeper.pruner: {e}") from None

        launch_dir = Path(str(self.config.hydra.runtime.cwd))
        study_name = self.study_name or f"sweep-{space.identity()}"
        study_dir = Path(self.study_dir_cfg) if self.study_dir_cfg else Path("multirun") / study_name
        if not study_dir.is_absolute():
            study_dir = launch_dir / study_dir
        study_dir.mkdir(parents=True, exist_ok=True)
        url = self.storage_url or f"sqlite:///{study_dir / 'optuna.db'}"
        url = absolute_uri(url, launch_dir) if url.startswith("sqlite") else url

        self.rdb = make_storage(url, self.heartbeat_interval, self.grace_period)
        study = optuna.create_study(study_name=study_name, storage=self.rdb, sampler=sampler,
                                    direction=self.direction, load_if_exists=True)
        if study.direction.name.lower() != self.direction:
            raise SweepError(f"study {study_name!r} in {mask_url(url)} was created to "
                             f"{study.direction.name.lower()}, not {self.direction}")
        definition = {"space": space.describe(), "sampler": self.sampler_spec,
                      "pruner": self.pruner_spec, "direction": self.direction}
        old = study.user_attrs.get(DEFINITION_ATTR)
        if old is not None and old.get("space") != definition["space"]:
            log.warning("study %s was run with another search space before; its trials stay in "
                        "the study (and count for samplers other than grid)", study_name)
        study.set_user_attr(DEFINITION_ATTR, definition)
        study.set_user_attr(PRUNER_ATTR, self.pruner_spec)
        self.study, self.space, self.url, self.study_dir = study, space, url, study_dir
        self.claims = Claims(url, _sqlite_kwargs(url))

        tracking_uri = absolute_uri(str(self.config.tracking.uri), launch_dir) \
            if "tracking" in self.config else absolute_uri(os.environ.get(
                "MLFLOW_TRACKING_URI", "sqlite:///mlflow.db"), launch_dir)
        experiment = str(self.config.tracking.experiment) if "tracking" in self.config else "kdsweep"
        self.parent = ParentRun(tracking_uri, experiment)
        n_total = self._n_total()
        self.parent.ensure(self.claims, study_name, url, params=self._parent_params(), tags={
            "kdsweep.n_trials": n_total, "kdsweep.n_jobs": self.n_jobs,
            "kdsweep.study_dir": str(study_dir), "kdsweep.launcher": _short(
                str(self.config.hydra.launcher.get("_target_", "?"))),
            "kdsweep.sampler": _short(self.sampler_spec.get("_target_", "")),
            "kdsweep.pruner": _short(self.pruner_spec.get("_target_", ""))})
        info = {"study_name": study_name, "storage": mask_url(url), "study_dir": str(study_dir),
                "tracking_uri": tracking_uri, "experiment": experiment,
                "parent_run_id": self.parent.run_id, "direction": self.direction,
                "sampler": self.sampler_spec, "pruner": self.pruner_spec,
                "space": space.describe(), "report": self.report_cfg}
        self._write_sweep_json(info)

        self.heartbeat = _Heartbeat(url, self.heartbeat_interval)
        self.in_flight: dict[int, _Trial] = {}
        self.attempted: set[str] = set()
        status = "FAILED"
        try:
            self._run(n_total)
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            self.heartbeat.stop()
            for t in list(self.in_flight.values()):  # interrupted: let the next call rerun them
                self._finish(t, TrialState.FAIL, reason="sweep interrupted")
            with contextlib.suppress(Exception):
                self._summarise(info)
            self.parent.end(status)
            self.claims.dispose()
        return None

    # ------------------------------------------------------------------------- bookkeeping
    def _n_total(self) -> int:
        if self.space.points is not None:
            n = len(self.space.points)
            return n if self.n_trials is None else min(int(self.n_trials), n)
        return int(self.n_trials)

    def _point_key(self, t: optuna.trial.FrozenTrial) -> str | None:
        key = t.system_attrs.get(POINT_ATTR)
        if key is None and self.space.points:
            names = self.space.points[0].values.keys()
            if all(n in t.params for n in names):
                key = Point({n: t.params[n] for n in names}).key
        return key

    def _done_points(self, trials: Sequence[optuna.trial.FrozenTrial]) -> set[str]:
        keys = {p.key for p in self.space.points or []}
        return {k for t in trials if t.state in ALIVE
                for k in [self._point_key(t)] if k in keys}

    def _missing(self, n_total: int) -> int:
        trials = self.study.get_trials(deepcopy=False)
        if self.space.points is not None:
            return max(0, n_total - len(self._done_points(trials)))
        return max(0, n_total - sum(t.state in ALIVE for t in trials))

    def _fail_stale(self) -> None:
        """Fail trials whose sweeper died (dead pid on this host, or a stale heartbeat)."""
        before = {t._trial_id for t in self.study.get_trials(deepcopy=False,
                                                             states=(TrialState.RUNNING,))}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            owner = t.system_attrs.get(OWNER_ATTR)
            if t._trial_id in self.in_flight or not owner or _owner_alive(owner) is not False:
                continue
            with contextlib.suppress(Exception):
                self.rdb.set_trial_user_attr(t._trial_id, "error", "its sweeper process died")
                self.rdb.set_trial_state_values(t._trial_id, TrialState.FAIL)
        # Trials that failed in a live sweeper carry its reason; these have none or ours.
        now_failed = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
                      if t._trial_id in before
                      and t.user_attrs.get("error") in (None, "its sweeper process died")]
        for t in now_failed:
            log.warning("trial %d was left RUNNING by a sweeper that died: marked FAILED, its "
                        "point will run again", t.number)
            with contextlib.suppress(Exception):
                self.parent.record_failure(t.number, self.study.study_name,
                                           "its sweeper process died (stale trial)",
                                           [format_override(k, v) for k, v in t.params.items()])

    # ------------------------------------------------------------------------------ loop
    def _run(self, n_total: int) -> None:
        self._fail_stale()
        budget = self._missing(n_total)
        done = n_total - budget
        log.info("kdsweep: study %s (%s): %d/%d trials done or running; running up to %d now",
                 self.study.study_name, mask_url(self.url), done, n_total, budget)
        if budget == 0:
            print(f"kdsweep: study {self.study.study_name} already has its {n_total} trials; "
                  "nothing to run (raise hydra.sweeper.n_trials or pick another study_name)",
                  flush=True)
        while budget > 0:
            self._fail_stale()
            k = min(self.n_jobs, budget, self._missing(n_total))
            if k <= 0:
                break
            batch = self._claim_points(k) if self.space.points is not None else self._ask(k)
            if not batch:
                log.info("kdsweep: no point left to run now (done, running in another sweeper, "
                         "or failed in this call: the next call retries those)")
                break
            overrides = [self._job_overrides(t) for t in batch]
            returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
            self.job_idx += len(returns)
            failures = self._tell(batch, returns)
            budget -= len(batch)
            if failures and failures / len(batch) > self.max_failure_rate:
                raise SweepError(f"{failures} of {len(batch)} trials failed, more than "
                                 f"hydra.sweeper.max_failure_rate={self.max_failure_rate}")

    def _new_trial_attrs(self, t: _Trial) -> None:
        self.rdb.set_trial_system_attr(t.trial_id, OWNER_ATTR, _owner())
        self.in_flight[t.trial_id] = t
        self.heartbeat.add(t.trial_id)

    def _claim_points(self, k: int) -> list[_Trial]:
        """Claim up to ``k`` points that have no live trial and create their trials."""
        study_name = self.study.study_name
        claims = self.claims.all(study_name)
        # Read after the claims: every trial id a claim names exists by now (fresh, not cached).
        trials = self.rdb.get_all_trials(self.study._study_id, deepcopy=False)
        by_id = {t._trial_id: t for t in trials}
        taken = self._done_points(trials)
        batch: list[_Trial] = []
        for p in self.space.points or []:
            if len(batch) >= k:
                break
            if p.key in taken or p.key in self.attempted:
                continue  # done/running, or it failed in this very call: retried by the next one
            current = claims.get(p.key)
            if current is not None and not self._claim_is_free(current, by_id):
                continue
            token = self.claims.claim(study_name, p.key, current)
            if token is None:
                continue  # another sweeper took it just now
            frozen = optuna.trial.create_trial(
                state=TrialState.RUNNING, params=dict(p.values),
                distributions={n: self.space.distributions[n] for n in p.values},
                user_attrs={"label": p.label} if p.label else None,
                system_attrs={POINT_ATTR: p.key, OWNER_ATTR: _owner()})
            trial_id = self.study._storage.create_new_trial(self.study._study_id,
                                                            template_trial=frozen)
            t = _Trial(trial_id, self.rdb.get_trial(trial_id).number, p.overrides(),
                       dict(p.values), p.label)
            self.in_flight[trial_id] = t
            self.heartbeat.add(trial_id)
            if not self.claims.swap(study_name, p.key, token, str(trial_id)):
                # Our pending claim was judged stale and retaken meanwhile: do not run it twice.
                self._finish(t, TrialState.FAIL, reason="claim lost to another sweeper")
                continue
            self.attempted.add(p.key)
            batch.append(t)
        return batch

    def _claim_is_free(self, claim: Any, by_id: Mapping[int, optuna.trial.FrozenTrial]) -> bool:
        """A claim can be retaken when its trial failed (or a pending claim is long stale)."""
        if claim.pending:
            return time.time() - claim.claimed_at > self.grace_period
        try:
            t = by_id.get(int(claim.value))
        except ValueError:
            return True
        return t is None or t.state == TrialState.FAIL  # None: the study was deleted and remade

    def _suggest(self, trial: optuna.Trial, name: str, d: Any) -> Any:
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if isinstance(d, CategoricalDistribution):
            return trial.suggest_categorical(name, d.choices)
        if isinstance(d, IntDistribution):
            return trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
        if isinstance(d, FloatDistribution):
            return trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)
        raise SweepError(f"unsupported distribution for {name}: {d}")

    def _ask(self, k: int) -> list[_Trial]:
        batch: list[_Trial] = []
        complete = {json.dumps(t.params, sort_keys=True, default=str): t
                    for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
        for _ in range(k):
            with warnings.catch_warnings():  # "heartbeat ... used with Study.optimize": we beat
                warnings.simplefilter("ignore", UserWarning)
                trial = self.study.ask()
            params = {n: self._suggest(trial, n, d) for n, d in self.space.distributions.items()}
            t = _Trial(trial._trial_id, trial.number,
                       [format_override(n, v) for n, v in params.items()], params)
            self._new_trial_attrs(t)
            twin = complete.get(json.dumps(params, sort_keys=True, default=str))
            if twin is not None:
                # The sampler proposed a point that already ran: reuse its value, do not rerun it.
                self.rdb.set_trial_user_attr(t.trial_id, "duplicate_of", twin.number)
                self._finish(t, TrialState.COMPLETE, value=twin.value)
                log.info("trial %d repeats trial %d: its value reused", t.number, twin.number)
                continue
            batch.append(t)
        return batch

    def _job_overrides(self, t: _Trial) -> list[str]:
        assert self.config is not None
        pre = "sweep." if "sweep" in self.config else "++sweep."
        ov = [*self.space.fixed, *t.overrides,
              f"{pre}parent_run_id={self.parent.run_id}",
              f"{pre}study_name={format_value(self.study.study_name)}",
              f"{pre}trial_number={t.number}"]
        if _short(self.pruner_spec.get("_target_", "NopPruner")) != "NopPruner":
            # The trial reports val_acc per epoch to the study and asks the pruner.
            ov += [f"{pre}storage={format_value(_job_url(self.url))}", f"{pre}trial_id={t.trial_id}"]
        if (self.n_jobs > 1 and self.config.get("cpu_threads", "absent") is None
                and not any(o.split("=", 1)[0].lstrip("+") == "cpu_threads" for o in ov)):
            # Parallel trials share the cores: oversubscribed OpenMP threads were measured 12x
            # slower in total here (docs/benchmarks.md).
            ov.append(f"cpu_threads={max(1, (os.cpu_count() or 1) // self.n_jobs)}")
        ov.append(f"hydra.sweep.subdir={t.number}")
        return ov

    def _finish(self, t: _Trial, state: TrialState, value: float | None = None,
                reason: str | None = None) -> None:
        self.heartbeat.remove(t.trial_id)
        self.in_flight.pop(t.trial_id, None)
        try:
            if reason:
                self.rdb.set_trial_user_attr(t.trial_id, "error", reason[:2000])
            self.study.tell(t.number, value if state == TrialState.COMPLETE else None,
                            state=state, skip_if_finished=True)
        except Exception as e:
            log.warning("could not record trial %d as %s: %s", t.number, state.name, e)

    def _tell(self, batch: Sequence[_Trial], returns: Sequence[JobReturn]) -> int:
        failures = 0
        for t, ret in zip(batch, returns, strict=True):
            if ret.status == JobStatus.COMPLETED:
                try:
                    value = float(ret.return_value)
                except (TypeError, ValueError):
                    value = math.nan
                if math.isfinite(value):
                    self._finish(t, TrialState.COMPLETE, value=value)
                    continue
                err: BaseException | str = f"the run returned {ret.return_value!r}, not a number"
            else:
                err = ret._return_value
                if isinstance(err, optuna.TrialPruned):
                    log.info("trial %d pruned: %s", t.number, err)
                    self._finish(t, TrialState.PRUNED)
                    continue
            failures += 1
            reason = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
            log.warning("trial %d failed (%s): %s; the sweep goes on", t.number,
                        " ".join(t.overrides), reason)
            self._finish(t, TrialState.FAIL, reason=reason)
            with contextlib.suppress(Exception):
                self.parent.record_failure(t.number, self.study.study_name, reason,
                                           [*self.space.fixed, *t.overrides])
        return failures

    # ---------------------------------------------------------------------------- results
    def _parent_params(self) -> dict[str, str]:
        p = {"sweep.study_name": self.study.study_name,
             "sweep.sampler": _short(self.sampler_spec.get("_target_", "")),
             "sweep.pruner": _short(self.pruner_spec.get("_target_", "")),
             "sweep.direction": self.direction,
             "sweep.fixed_overrides": " ".join(self.space.fixed) or "(none)"}
        p.update({f"sweep.sampler.{k}": str(v) for k, v in self.sampler_spec.items()
                  if k != "_target_"})
        p.update({f"sweep.pruner.{k}": str(v) for k, v in self.pruner_spec.items()
                  if k != "_target_"})
        for k, d in self.space.describe()["params"].items():
            p[f"sweep.space.{k}"] = json.dumps(d, default=str)
        if self.space.points is not None and self.points is not None:
            p["sweep.points"] = json.dumps([{"label": pt.label, **pt.values}
                                            for pt in self.space.points], default=str)
        return p

    def _write_sweep_json(self, info: Mapping[str, Any]) -> None:
        assert self.config is not None
        text = json.dumps(info, indent=2, default=str)
        dirs = {self.study_dir}
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        if not sweep_dir.is_absolute():
            sweep_dir = Path(str(self.config.hydra.runtime.cwd)) / sweep_dir
        dirs.add(sweep_dir)
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
            (d / "sweep.json").write_text(text + "\n")
        with contextlib.suppress(Exception):
            self.parent.client.log_text(self.parent.run_id, text, "sweep.json")

    def _summarise(self, info: Mapping[str, Any]) -> None:
        trials = self.study.get_trials(deepcopy=False)
        counts = {s: sum(t.state == s for t in trials) for s in TrialState}
        metrics = {"n_complete": counts[TrialState.COMPLETE], "n_pruned": counts[TrialState.PRUNED],
                   "n_failed": counts[TrialState.FAIL], "n_running": counts[TrialState.RUNNING]}
        best = None
        with contextlib.suppress(ValueError):
            best = self.study.best_trial
        tags: dict[str, Any] = {}
        if best is not None:
            metrics["best_value"] = float(best.value)
            tags["best.trial"] = best.number
            tags["best.overrides"] = " ".join(format_override(k, v) for k, v in best.params.items())
            tags.update({f"best.params.{k}": format_value(v) for k, v in best.params.items()})
            children = self.parent.child_of_trial(best.number)
            if children:
                tags["best.run_id"] = children[0].info.run_id
        self.parent.log_metrics(metrics)
        self.parent.set_tags(tags)
        results = {"name": self.study.study_name, "best_value": metrics.get("best_value"),
                   "best_params": {k: v for k, v in best.params.items()} if best else None}
        (self.study_dir / "optimization_results.yaml").write_text(
            OmegaConf.to_yaml(OmegaConf.create(results)))
        lines = [f"kdsweep: study {self.study.study_name}: {metrics['n_complete']} complete, "
                 f"{metrics['n_pruned']} pruned, {metrics['n_failed']} failed"
                 + (f", {metrics['n_running']} running" if metrics["n_running"] else "")]
        if best is not None:
            lines.append(f"  best {best.value:.4g} (trial {best.number}): {tags['best.overrides']}")
        lines.append(f"  MLflow parent run {self.parent.run_id} (experiment "
                     f"{info['experiment']}) at {info['tracking_uri']}")
        lines.append(f"  study {self.study.study_name} in {mask_url(self.url)}; "
                     f"study dir {self.study_dir}")
        print("\n".join(lines), flush=True)
        if self.report_cfg.get("enabled", True):
            try:
                from kdsweep.report import write_report

                rep = write_report(self.study_dir, metric=self.report_cfg.get("metric") or
                                   "best_val_acc", log_to_parent=True)
                print(rep.markdown, flush=True)
                print(f"  report: {rep.markdown_path}", flush=True)
            except Exception as e:  # a report problem must not lose the sweep's results
                log.warning("could not write the sweep report: %s: %s", type(e).__name__, e)
