"""Sweep reports from MLflow: the papers' tables, a heatmap and accuracy curves.

``python -m kdsweep.report SWEEP_DIR_OR_PARENT_RUN_ID`` (see :mod:`kdsweep.report.build`).
"""

from kdsweep.report.build import Report, ReportError, main, resolve_target, write_report

__all__ = ["Report", "ReportError", "main", "resolve_target", "write_report"]
