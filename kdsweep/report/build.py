"""Sweep reports: the papers' tables (rows alpha, columns T; one row per trick) from MLflow.

``python -m kdsweep.report SWEEP_DIR_OR_PARENT_RUN_ID [--metric final_val_acc]`` reads the sweep's
MLflow parent run and its child runs (one per trial) and writes, into the sweep directory:

* ``report.md``: Markdown tables in the papers' layout. Each cell is the child run's
  ``best_val_acc`` metric (``--metric`` picks another one, e.g. ``final_val_acc``), in %, the best
  cell in **bold**; a point that was not run is an empty cell (a sparse grid), a pruned trial reads
  ``pruned (epoch N)``, a failed one ``failed``;
* ``heatmap.png`` (two swept keys) or ``bars.png`` (one row per point or trial);
* ``curves.png``: ``val_acc`` per epoch of every child run;

and logs them as artifacts (``report/``) of the parent run. The kdsweep Optuna sweeper calls
:func:`write_report` when a sweep ends. A child's cell is found from the overrides it ran with
(its ``overrides`` param), so the values are exactly those MLflow recorded for that run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from kdsweep.report.tables import (  # noqa: F401  (re-exported: the report's public names)
    BOOKKEEPING,
    Cell,
    Child,
    Table,
    _higher_is_better,
    build_tables,
    format_value,
    parse_overrides,
    short,
)
from kdsweep.tracking.secrets import MASK

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class ReportError(RuntimeError):
    pass


@dataclass
class Report:
    parent_run_id: str
    metric: str
    tables: list[Table]
    children: list[Child]
    markdown: str
    out_dir: Path
    files: list[Path]

    @property
    def markdown_path(self) -> Path:
        return self.files[0]


# ------------------------------------------------------------------------------------ sources
def _load_sweep_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ReportError(f"{path}: not a readable sweep.json ({e})") from None


def resolve_target(target: str, tracking_uri: str | None = None) -> tuple[dict[str, Any], Path | None]:
    """``SWEEP_DIR`` (with a sweep.json) or a parent run id -> (sweep info, sweep dir or None)."""
    p = Path(target)
    if p.is_dir() or p.name == "sweep.json":
        f = p if p.name == "sweep.json" else p / "sweep.json"
        if not f.is_file():
            raise ReportError(f"{p}: no sweep.json here; give the directory of a kdsweep sweep "
                              "(multirun/<study_name>) or the MLflow run id of its parent run")
        info = _load_sweep_json(f)
        if tracking_uri:
            info["tracking_uri"] = tracking_uri
        elif MASK in str(info.get("tracking_uri", "")):  # sweep.json never holds the password
            env = os.environ.get("MLFLOW_TRACKING_URI")
            if not env:
                raise ReportError(f"{f} names a tracking store with a masked password; pass "
                                  "--tracking-uri or set MLFLOW_TRACKING_URI")
            info["tracking_uri"] = env
        return info, f.parent
    if not RUN_ID.match(target):
        raise ReportError(f"{target!r} is neither a sweep directory nor an MLflow run id")
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    info: dict[str, Any] = {"parent_run_id": target, "tracking_uri": uri}
    try:
        text = client.download_artifacts(target, "sweep.json")
        info = {**json.loads(Path(text).read_text()), **info}
    except Exception:
        pass  # a parent run not made by the kdsweep sweeper: a plain list of its children
    d = info.get("study_dir")
    return info, Path(d) if d and Path(d).is_dir() else None


def fetch_children(client: MlflowClient, parent_run_id: str) -> list[Child]:
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id],
                              f"tags.`mlflow.parentRunId` = '{parent_run_id}'", max_results=50000)
    out = []
    for r in runs:
        tags = r.data.tags
        coords = {k: v for k, v in parse_overrides(r.data.params.get("overrides", "")).items()
                  if not k.startswith(BOOKKEEPING)}
        trial = tags.get("optuna.trial")
        out.append(Child(r.info.run_id, r.info.status, r.info.start_time or 0,
                         int(trial) if trial and trial.isdigit() else None, coords,
                         dict(r.data.metrics), dict(tags)))
    return out


# ------------------------------------------------------------------------------------- layout
# ------------------------------------------------------------------------------------- output
def render(info: Mapping[str, Any], tables: Sequence[Table], children: Sequence[Child],
           metric: str) -> str:
    name = info.get("study_name") or info.get("parent_run_id")
    n = {s: sum(c.status == s for c in children) for s in ("FINISHED", "KILLED", "FAILED", "RUNNING")}
    pruned = sum("pruned_at_epoch" in c.tags for c in children)
    parts = [f"## Sweep {name}", ""]
    for t in tables:
        parts += [t.markdown(metric), ""]
    parts.append(
        f"Values: the `{metric}` metric (%) of each child run of MLflow run "
        f"`{info.get('parent_run_id')}` (experiment `{info.get('experiment', '?')}`); "
        f"**bold** = best{'' if _higher_is_better(metric) else ' (lowest)'}; "
        "an empty cell = a point not run. "
        f"{len(children)} child runs: {n['FINISHED']} finished, {pruned} pruned, "
        f"{n['FAILED']} failed" + (f", {n['RUNNING']} running" if n["RUNNING"] else "") + ".")
    return "\n".join(parts) + "\n"


def write_report(target: str | Path, metric: str = "best_val_acc", out_dir: str | Path | None = None,
                 tracking_uri: str | None = None, log_to_parent: bool = True) -> Report:
    """Build the tables and plots of a sweep; write them to its directory and its parent run."""
    info, sweep_dir = resolve_target(str(target), tracking_uri)
    client = MlflowClient(tracking_uri=info["tracking_uri"])
    parent_id = info["parent_run_id"]
    try:
        client.get_run(parent_id)
    except Exception as e:
        raise ReportError(f"MLflow run {parent_id} not found at {info['tracking_uri']}: {e}") from None
    children = fetch_children(client, parent_id)
    tables = build_tables(info, children, metric)
    text = render(info, tables, children, metric)
    out = Path(out_dir) if out_dir else sweep_dir or Path.cwd() / f"report-{parent_id[:8]}"
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if metric == "best_val_acc" else f"-{metric}"
    md = out / f"report{suffix}.md"
    md.write_text(text)
    files = [md]
    from kdsweep.report import plots as report_plots

    pivots = [t for t in tables if t.kind == "pivot"]
    if pivots:
        files.append(report_plots.heatmap(pivots, out / f"heatmap{suffix}.png", metric))
    elif any(t.cells for t in tables):
        files.append(report_plots.bars(tables, out / f"bars{suffix}.png", metric))
    curves = report_plots.curves(client, tables, out / "curves.png")
    if curves is not None:
        files.append(curves)
    if log_to_parent:
        for f in files:
            client.log_artifact(parent_id, str(f), "report")
    return Report(parent_id, metric, tables, children, text, out, files)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m kdsweep.report",
        description="Tables (Markdown), heatmap and accuracy curves of a kdsweep sweep, from MLflow.")
    ap.add_argument("target", help="the sweep directory (multirun/<study_name>, with sweep.json) "
                                   "or the MLflow run id of the sweep's parent run")
    ap.add_argument("--metric", default="best_val_acc",
                    help="child-run metric in the cells (default best_val_acc; e.g. final_val_acc)")
    ap.add_argument("--tracking-uri", default=None,
                    help="MLflow store (default: the sweep's, else $MLFLOW_TRACKING_URI, else "
                         "sqlite:///mlflow.db)")
    ap.add_argument("--out", default=None, help="output directory (default: the sweep directory)")
    ap.add_argument("--no-log", action="store_true", help="do not log the files to the parent run")
    args = ap.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        rep = write_report(args.target, args.metric, args.out, args.tracking_uri,
                           log_to_parent=not args.no_log)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(rep.markdown)
    print("written: " + ", ".join(str(f) for f in rep.files))
    return 0


