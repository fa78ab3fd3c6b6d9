"""The sweep driver: one Optuna study + one MLflow parent run, resumable, shared, pruned, fused.

One sweep = one Optuna study (in a storage that survives the process) + one MLflow parent run.
Each call of the sweep runs only what the study is missing:

* grid (``sampler=grid`` or ``points``): every point is claimed once in the storage
  (:mod:`kdsweep.sweep.claims`); a point whose trial completed, was pruned or is running is never
  run again; a point whose trial failed is retaken by the next sweep call.
* other samplers: ``n_trials`` minus the trials that completed, were pruned or are running.

Trials left RUNNING by a sweeper that died are failed first: at once when that process was on
this host and is gone, otherwise when its heartbeat is older than ``grace_period``. With
``fuse=N``, up to N compatible trials run as one job (:mod:`kdsweep.sweep.jobs`).

Knows nothing of Hydra: the plugin under ``hydra_plugins/`` hands it a :class:`Context` (where
to write, how to compose a trial's config, how to launch jobs). Uses Optuna's public API only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from kdsweep import liveness
from kdsweep.errors import SweepError
from kdsweep.sweep import auto
from kdsweep.sweep import space as _space
from kdsweep.sweep.checks import preflight
from kdsweep.sweep.claims import Claims
from kdsweep.sweep.define import define_study
from kdsweep.sweep.jobs import JobContext, JobSpec, plan_jobs, trial_label
from kdsweep.sweep.parent import ParentRun
from kdsweep.sweep.pruning import make_pruner
from kdsweep.sweep.results import (
    Ending,
    TooManyFailures,
    parent_params,
    progress_line,
    summarise,
    tally,
    write_sweep_json,
)
from kdsweep.sweep.samplers import make_sampler
from kdsweep.sweep.settings import Context, Outcome, Settings, check_settings
from kdsweep.sweep.space import Point, SearchSpaceError, format_override, point_text, suggest
from kdsweep.sweep.storage import Heartbeat, TrialRef, job_url, make_storage, short, sqlite_kwargs
from kdsweep.sweep.trial import STORAGE_ENV
from kdsweep.tracking import check_reachable, mask_files, mask_url, open_store

log = logging.getLogger(__name__)

POINT_ATTR = "kdsweep:point"
OWNER_ATTR = "kdsweep:owner"
ALIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
DEAD = "its sweeper process died"


class Sweep:
    def __init__(self, settings: Settings):
        check_settings(settings)
        self.s = settings
        self.in_flight: dict[int, TrialRef] = {}  # by trial number
        self.attempted: set[str] = set()

    @property
    def is_grid(self) -> bool:
        return self.s.points is not None or short(self.s.sampler.get("_target_", "")) == "GridSampler"

    # ------------------------------------------------------------------------------ open
    def run(self, arguments: Sequence[str], ctx: Context) -> Ending:
        """Run the trials the study is missing; returns how many of its points (or trials) are
        still unfinished at the end. Bad settings raise :class:`SweepError`."""
        self.s, chosen = auto.resolve(self.s, arguments)
        self.started = time.time()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # kdsweep prints what happens
        try:
            space = _space.build(self.s.params, arguments, grid=self.is_grid, points=self.s.points)
        except SearchSpaceError as e:
            raise SweepError(str(e)) from None
        if not self.is_grid and not space.distributions:
            raise SweepError("nothing to sweep: give hydra.sweeper.params or key=choice(...)/"
                             "interval(...) overrides")
        sampler = make_sampler(self.s.sampler)
        try:
            make_pruner(self.s.pruner)  # fail now on a bad pruner config, not in a trial
        except (TypeError, ValueError) as e:
            raise SweepError(f"hydra.sweeper.pruner: {e}") from None
        if self.s.storage:
            check_reachable(self.s.storage)
        preflight(space, ctx)  # every value of every swept key, before anything is written
        self.space, self.ctx = space, ctx
        study_name = self.s.study_name or f"sweep-{space.identity()}"
        study_dir = Path(self.s.study_dir) if self.s.study_dir else Path("multirun") / study_name
        self.study_dir = study_dir if study_dir.is_absolute() else ctx.launch_dir / study_dir
        self.study_dir.mkdir(parents=True, exist_ok=True)
        url = self.s.storage or f"sqlite:///{self.study_dir / 'optuna.db'}"
        if url.split("?")[0] == ctx.tracking_uri.split("?")[0]:
            raise SweepError("hydra.sweeper.storage is the MLflow tracking database: Optuna and "
                             "MLflow both keep an alembic_version table, so they need two "
                             "databases (e.g. .../optuna and .../mlflow)")
        self.url = url
        self.storage = make_storage(url, self.s.heartbeat_interval, self.s.grace_period)
        self.study = optuna.create_study(study_name=study_name, storage=self.storage,
                                         sampler=sampler, direction=self.s.direction,
                                         load_if_exists=True)
        self.study_id = self.storage.get_study_id_from_name(study_name)
        define_study(self.study, self.s, self.space, self.url)
        self.claims = Claims(url, sqlite_kwargs(url))
        # The MLflow store is created once here, before any worker starts (concurrent first use
        # of a fresh store races in MLflow's schema migration).
        open_store(ctx.tracking_uri, ctx.experiment, ctx.lock_dir)
        self.parent = ParentRun(ctx.tracking_uri, ctx.experiment)
        self.n_total = auto.total(self.s, self.space)
        self.s = auto.with_fuse(self.s, self.n_total, self.is_grid, chosen)
        self.parent.ensure(self.claims, study_name, url, params=parent_params(self.s, self.space, study_name), tags={
            "kdsweep.n_trials": self.n_total, "kdsweep.n_jobs": self.s.n_jobs,
            "kdsweep.fuse": self.s.fuse, "kdsweep.study_dir": str(self.study_dir),
            "kdsweep.launcher": ctx.launcher, "kdsweep.sampler": short(self.s.sampler.get(
                "_target_", "")), "kdsweep.pruner": short(self.s.pruner.get("_target_", ""))})
        self.info = {"study_name": study_name, "storage": mask_url(url),
                     "study_dir": str(self.study_dir), "tracking_uri": mask_url(ctx.tracking_uri),
                     "experiment": ctx.experiment, "parent_run_id": self.parent.run_id,
                     "direction": self.s.direction, "sampler": self.s.sampler,
                     "pruner": self.s.pruner, "fuse": self.s.fuse, "space": space.describe(),
                     "report": asdict(self.s.report)}
        write_sweep_json(self.info, {self.study_dir, ctx.sweep_dir}, self.parent)
        mask_files(ctx.sweep_dir.glob("*.yaml"))  # Hydra's multirun.yaml holds the command line
        os.environ[STORAGE_ENV] = job_url(url)  # trials report here; never in an override
        self.heartbeat = Heartbeat(url, self.s.heartbeat_interval)
        status, stopped = "FAILED", None
        try:
            try:
                self._loop()
            except TooManyFailures as e:  # stop launching; the summary says what is left
                stopped = str(e)
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            self.heartbeat.stop()
            for t in list(self.in_flight.values()):  # interrupted: let the next call rerun them
                self._finish(t, TrialState.FAIL, reason="sweep interrupted")
            tally = self._tally()
            with contextlib.suppress(Exception):
                summarise(self.study, self.parent, self.info, self.study_dir, self.s.report, tally,
                          ctx.report)
            unfinished = max(0, self.n_total - tally["complete"] - tally["pruned"]
                             - tally["running"])
            self.parent.end("FAILED" if unfinished and status == "FINISHED" else status)
            self.claims.dispose()
        return Ending(unfinished, self.n_total, tally["failed"], stopped)

    # ------------------------------------------------------------------------- bookkeeping
    def _trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def _point_key(self, t: optuna.trial.FrozenTrial) -> str | None:
        key = t.system_attrs.get(POINT_ATTR)
        if key is None and self.space.points:
            names = self.space.points[0].values.keys()
            if all(n in t.params for n in names):
                key = Point({n: t.params[n] for n in names}).key
        return key

    def _done_points(self, trials: Sequence[optuna.trial.FrozenTrial]) -> set[str]:
        keys = {p.key for p in self.space.points or []}
        return {k for t in trials if t.state in ALIVE for k in [self._point_key(t)] if k in keys}

    def _missing(self) -> int:
        trials = self.study.get_trials(deepcopy=False)
        if self.space.points is not None:
            return max(0, self.n_total - len(self._done_points(trials)))
        return max(0, self.n_total - sum(t.state in ALIVE for t in trials))

    def _fail_stale(self) -> None:
        """Fail trials whose sweeper died (dead pid on this host, or a stale heartbeat)."""
        running = (TrialState.RUNNING,)
        before = {t.number for t in self.study.get_trials(deepcopy=False, states=running)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self.study)
        now = time.time()
        for t in self.study.get_trials(deepcopy=False, states=running):
            owner = t.system_attrs.get(OWNER_ATTR)
            if t.number in self.in_flight:
                continue
            if owner:
                if liveness.alive(owner) is not False:
                    continue
            elif t.datetime_start is None or \
                    now - t.datetime_start.timestamp() < self.s.grace_period:
                continue  # no owner yet: killed between ask() and naming its owner, or just made
            with contextlib.suppress(Exception):
                tid = self._trial_id(t.number)
                self.storage.set_trial_user_attr(tid, "error", DEAD)
                self.storage.set_trial_state_values(tid, TrialState.FAIL)
        # Trials that failed in a live sweeper carry its reason; these have none or ours.
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            if t.number in before and t.user_attrs.get("error") in (None, DEAD):
                log.warning("trial %d was left RUNNING by a sweeper that died: marked FAILED, its "
                            "point will run again", t.number)
                # Its runs are closed (the next attempt resumes them); a trial that died before
                # starting one gets no placeholder run: it did not fail, it was interrupted.
                with contextlib.suppress(Exception):
                    self.parent.record_failure(t.number, self.study.study_name, f"{DEAD} (stale "
                                               "trial)", [], create=False)

    def _tally(self) -> dict[str, int]:
        return tally(self.study.get_trials(deepcopy=False), self.space.points, self._point_key,
                     DEAD)

    # ------------------------------------------------------------------------------ loop
    def _loop(self) -> None:
        self._fail_stale()
        budget = self._missing()
        log.info("kdsweep: study %s (%s): %d/%d trials done or running; running up to %d now",
                 self.study.study_name, mask_url(self.url), self.n_total - budget, self.n_total,
                 budget)
        if budget == 0:
            print(f"kdsweep: study {self.study.study_name} already has its {self.n_total} trials; "
                  "nothing to run (raise hydra.sweeper.n_trials or pick another study_name)",
                  flush=True)
        job_ctx = JobContext(fixed=list(self.space.fixed), parent_run_id=self.parent.run_id,
                             study_name=self.study.study_name, prefix=self.ctx.prefix,
                             n_jobs=self.s.n_jobs, add_threads=self.ctx.add_threads and
                             self.s.n_jobs > 1, sweep_dir=self.ctx.sweep_dir)
        while budget > 0:
            self._fail_stale()
            k = min(self.s.n_jobs * self.s.fuse, budget, self._missing())
            if k <= 0:
                break
            batch = self._claim_points(k) if self.space.points is not None else self._ask(k)
            if not batch:
                log.info("kdsweep: no point left to run now (done, running in another sweeper, "
                         "or failed in this call: the next call retries those)")
                break
            jobs = plan_jobs(batch, self.s.fuse, job_ctx, self.ctx.compose)
            if any(j.fused for j in jobs):
                print(f"kdsweep: {len(batch)} trials in {len(jobs)} job(s): "
                      + ", ".join(f"{len(j.trials)} fused" if j.fused else "1" for j in jobs),
                      flush=True)
            else:
                for t in batch:
                    print(f"kdsweep: trial {trial_label(t)}", flush=True)
            outcomes = self.ctx.launch([j.overrides for j in jobs])
            failures = sum(self._tell(j, o) for j, o in zip(jobs, outcomes, strict=True))
            budget -= len(batch)
            print(progress_line(self.study, self.n_total, self.started, time.time()), flush=True)
            if failures and failures / len(batch) > self.s.max_failure_rate:
                raise TooManyFailures(f"{failures} of {len(batch)} trials failed, more than "
                                 f"hydra.sweeper.max_failure_rate={self.s.max_failure_rate}")

    def _track(self, t: TrialRef) -> None:
        self.in_flight[t.number] = t
        self.heartbeat.add(t.trial_id)

    def _claim_points(self, k: int) -> list[TrialRef]:
        """Claim up to ``k`` points that have no live trial and create their trials."""
        name = self.study.study_name
        claims = self.claims.all(name)
        # Read after the claims: every trial a claim names exists by now (fresh, not cached).
        trials = self.study.get_trials(deepcopy=False)
        by_number = {t.number: t for t in trials}
        taken = self._done_points(trials)
        batch: list[TrialRef] = []
        for p in self.space.points or []:
            if len(batch) >= k:
                break
            if p.key in taken or p.key in self.attempted:
                continue  # done/running, or it failed in this very call: retried by the next one
            current = claims.get(p.key)
            if current is not None and not current.free(by_number, self.s.grace_period):
                continue
            token = self.claims.claim(name, p.key, current, owner=liveness.owner_tag())
            if token is None:
                continue  # another sweeper took it just now
            frozen = optuna.trial.create_trial(
                state=TrialState.RUNNING, params=dict(p.values),
                distributions={n: self.space.distributions[n] for n in p.values},
                user_attrs={"point": point_text(p.values, p.label)},
                system_attrs={POINT_ATTR: p.key, OWNER_ATTR: liveness.owner()})
            trial_id = self.storage.create_new_trial(self.study_id, template_trial=frozen)
            t = TrialRef(trial_id, self.storage.get_trial_number_from_id(trial_id), p.overrides(),
                         dict(p.values), p.label)
            self._track(t)
            if not self.claims.swap(name, p.key, token, f"#{t.number}"):
                # Our pending claim was judged stale and retaken meanwhile: do not run it twice.
                self._finish(t, TrialState.FAIL, reason="claim lost to another sweeper")
                continue
            self.attempted.add(p.key)
            batch.append(t)
        return batch

    def _ask(self, k: int) -> list[TrialRef]:
        batch: list[TrialRef] = []
        complete = {json.dumps(t.params, sort_keys=True, default=str): t
                    for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
        for _ in range(k):
            with warnings.catch_warnings():  # "heartbeat ... used with Study.optimize": we beat
                warnings.simplefilter("ignore", UserWarning)
                trial = self.study.ask()
            params = {n: suggest(trial, n, d) for n, d in self.space.distributions.items()}
            t = TrialRef(self._trial_id(trial.number), trial.number,
                         [format_override(n, v) for n, v in params.items()], params)
            self.storage.set_trial_system_attr(t.trial_id, OWNER_ATTR, liveness.owner())
            self.storage.set_trial_user_attr(t.trial_id, "point", point_text(params))
            self._track(t)
            twin = complete.get(json.dumps(params, sort_keys=True, default=str))
            if twin is not None:
                # The sampler proposed a point that already ran: reuse its value, do not rerun it.
                self.storage.set_trial_user_attr(t.trial_id, "duplicate_of", twin.number)
                self._finish(t, TrialState.COMPLETE, value=twin.value)
                log.info("trial %d repeats trial %d: its value reused", t.number, twin.number)
                continue
            batch.append(t)
        return batch

    # ------------------------------------------------------------------------------ tell
    def _finish(self, t: TrialRef, state: TrialState, value: float | None = None,
                reason: str | None = None) -> None:
        self.heartbeat.remove(t.trial_id)
        self.in_flight.pop(t.number, None)
        try:
            if reason:
                self.storage.set_trial_user_attr(t.trial_id, "error", reason[:2000])
            self.study.tell(t.number, value if state == TrialState.COMPLETE else None,
                            state=state, skip_if_finished=True)
        except Exception as e:
            log.warning("could not record trial %d as %s: %s", t.number, state.name, e)

    def _tell(self, job: JobSpec, outcome: Outcome) -> int:
        """Record the trials of one job; returns how many failed."""
        if job.fused and outcome.error is None and isinstance(outcome.value, Mapping):
            return sum(self._tell_one(t, outcome.value.get(t.number, outcome.value.get(
                str(t.number)))) for t in job.trials)
        return sum(self._tell_one(t, outcome.value if outcome.error is None else outcome)
                   for t in job.trials)

    def _tell_one(self, t: TrialRef, result: Any) -> int:
        reason: str
        if isinstance(result, Outcome):  # the whole job raised
            err = result.error
            if isinstance(err, optuna.TrialPruned):
                log.info("trial %d pruned: %s", t.number, err)
                self._finish(t, TrialState.PRUNED)
                return 0
            reason = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
        elif isinstance(result, Mapping) and "pruned" in result:
            log.info("trial %d pruned at epoch %s", t.number, result["pruned"])
            self.parent.link_trial(self.storage, t.trial_id, t.number)
            self._finish(t, TrialState.PRUNED)
            return 0
        elif isinstance(result, Mapping) and "error" in result:
            reason = str(result["error"])
        else:
            try:
                value = float(result)
            except (TypeError, ValueError):
                value = math.nan
            if math.isfinite(value):
                self.parent.link_trial(self.storage, t.trial_id, t.number)
                self._finish(t, TrialState.COMPLETE, value=value)
                return 0
            reason = f"the run returned {result!r}, not a number"
        log.warning("trial %d failed (%s): %s; the sweep goes on", t.number,
                    " ".join(t.overrides), reason)
        self._finish(t, TrialState.FAIL, reason=reason)
        with contextlib.suppress(Exception):
            self.parent.record_failure(t.number, self.study.study_name, reason,
                                       [*self.space.fixed, *t.overrides])
        return 1


__all__ = ["Context", "Ending", "Outcome", "Settings", "Sweep", "check_settings"]
