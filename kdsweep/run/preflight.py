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

from omegaconf import DictConfig

from kdsweep.config import validate
from kdsweep.data import check_dataset
from kdsweep.engine import check_checkpoint_file
from kdsweep.methods import Method, create_method
from kdsweep.run import hooks, student_init
from kdsweep.tracking import check_uri, sqlite_path
from kdsweep.tracking.store import check_sqlite_file


def check_run(cfg: DictConfig) -> Method:
    """The checks of one run (one stage); returns its method (its hyper-parameters checked)."""
    validate(cfg)
    check_dataset(cfg.dataset)
    method = create_method(cfg.method)
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


__all__ = ["check_run"]
