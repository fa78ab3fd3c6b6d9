"""Every check a run makes before any work, in one place: a composed config in, one line out.

:func:`check_run` checks one run; :func:`kdsweep.run.job.check` checks a job (one run, or the
runs an extension's job driver makes, e.g. ReduceNet's three stages) and that the tracking
server is reachable. Three callers make the same checks, so a value refused in one place is
refused in all:

* the pipeline (:func:`kdsweep.run.pipeline.run_cohort`), for each member of a cohort;
* ``run.py``, before Hydra starts: a refused single run writes nothing (no output folder, no
  MLflow store), and so does a sweep of Hydra's own sweepers (each value of each swept key);
* the kdsweep sweeper, for every value of every sweep before it creates its study, its MLflow
  parent run or any folder (:mod:`kdsweep.sweep.study`).

What is checked: keys and value ranges and the rules across keys (:func:`kdsweep.config.validate`),
model names, the data set's values and files, the method's hyper-parameters, teacher and student
checkpoint files, ``student.init``, the extensions' own checks (:meth:`kdsweep.run.hooks.RunHooks.check`),
the tracking URI (scheme, SQLite file, a server that accepts connections).
"""

from __future__ import annotations

import functools

import torch
from omegaconf import DictConfig

from kdsweep.config import validate
from kdsweep.data import check_dataset
from kdsweep.engine import check_checkpoint_file
from kdsweep.methods import BuildContext, Method, create_method
from kdsweep.models import FeatureTap, ModelOutput, create_model, get_spec
from kdsweep.run import hooks, student_init
from kdsweep.tracking import check_uri, sqlite_path
from kdsweep.tracking.store import check_sqlite_file


def check_run(cfg: DictConfig) -> Method:
    """The checks of one run (one stage); returns its method (its hyper-parameters checked)."""
    validate(cfg)
    check_dataset(cfg.dataset)
    method = create_method(cfg.method)
    check_pair(cfg, method)
    checkpoint = cfg.teacher.get("checkpoint") if cfg.get("teacher") else None
    if method.needs_teacher and checkpoint:
        check_checkpoint_file(checkpoint)
    student_init.check(cfg, method)
    for h in hooks.loaded():  # e.g. ReduceNet's student.adapt
        h.check(cfg, method)
    uri = str(cfg.tracking.uri)
    check_uri(uri)
    path = sqlite_path(uri)
    if path is not None:
        check_sqlite_file(path, uri)
    return method


@functools.cache
def _dry_outputs(arch: str) -> ModelOutput:
    """One image through a fresh ``arch`` (its feature shapes), built without touching the
    caller's random state."""
    with torch.random.fork_rng(devices=[]):
        size = min(get_spec(arch).input_size, 64)
        return FeatureTap(create_model(arch, num_classes=10), arch).dry_run(size)


def check_pair(cfg: DictConfig, method: Method) -> None:
    """A method that refuses some pairs (``checks_pair``) builds on dry runs of the two models
    here, so a pair it cannot serve is refused before any work, in its own words."""
    if not (method.checks_pair and method.needs_teacher and cfg.get("teacher")):
        return
    t, s = str(cfg.teacher.name), str(cfg.student.name)
    ctx = BuildContext(num_train=1, num_classes=10, epochs=1, steps_per_epoch=1, teacher_arch=t,
                       student_arch=s)
    create_method(cfg.method).build(_dry_outputs(s), _dry_outputs(t), ctx)


__all__ = ["check_pair", "check_run"]
