"""One run or one cohort of runs, as a pipeline: config -> data -> teacher -> students -> trainer
-> record. :func:`run` is what ``python run.py`` calls; :func:`run_cohort` trains several members
at once (fused sweep jobs)."""

from kdsweep.run.pipeline import check_shared, run, run_cohort, teacher_cfg
from kdsweep.run.plan import Job, RunResult

__all__ = ["Job", "RunResult", "check_shared", "run", "run_cohort", "teacher_cfg"]
