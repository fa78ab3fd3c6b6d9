"""Sweep reports: the papers' tables from MLflow, beside the published numbers.

``python -m kdsweep.report SWEEP_DIR_OR_PARENT_RUN_ID [--metric final_val_acc] [--published ID]``
reads the sweep's MLflow parent run and its child runs (one per trial) and writes, into the sweep
directory:

* ``report.md``: Markdown tables in the papers' layout (:mod:`kdsweep.report.layout`). A cell
  shows the best and last-epoch accuracy (``best_val_acc`` / ``final_val_acc``, %); several runs
  of one cell (seeds) are mean ± std (n); the best cell in **bold**; a point not run is empty,
  unfinished runs read ``running``, ``pruned (epoch N)``, ``failed``. With a published table
  (``hydra.sweeper.report.published``, :mod:`kdsweep.report.published`) each row is followed by
  the published numbers and the difference. Then "Did distillation help?": the teacher and the
  student trained alone (:mod:`kdsweep.report.baselines`) beside the best distilled cell;
* ``report.csv`` (one row per cell), ``runs.csv`` (one row per run), ``report.tex`` (pandas);
* ``heatmap.png`` (pivot tables) or ``bars.png`` (one row per point or trial), ``curves.png``;

and logs them as artifacts (``report/``) of the parent run. The kdsweep Optuna sweeper calls
:func:`write_report` when a sweep ends; it can be run at any time during a sweep (partial tables).
A child's cell is found from the overrides it ran with (its ``overrides`` param), so the values
are exactly those MLflow recorded for that run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from kdsweep.errors import KDSweepError
from kdsweep.report import baselines, frame
from kdsweep.report import plots as report_plots
from kdsweep.report.layout import build_tables
from kdsweep.report.published import Published, get_published
from kdsweep.report.tables import (  # noqa: F401  (re-exported: the report's public names)
    BEST,
    BOOKKEEPING,
    Cell,
    Child,
    Table,
    format_value,
    higher_is_better,
    metric_label,
    parse_overrides,
    replicates,
    short,
)
from kdsweep.tracking.secrets import MASK

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class ReportError(KDSweepError, RuntimeError):
    """The report cannot be made (no sweep here, unknown run, unreadable sweep.json)."""


@dataclass
class Report:
    parent_run_id: str
    metric: str
    tables: list[Table]
    children: list[Child]
    markdown: str
    out_dir: Path
    files: list[Path]
    notes: list[str]     # what makes the numbers doubtful (a teacher weaker than its students)

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
    uri = tracking_uri or default_tracking_uri()
    client = MlflowClient(tracking_uri=uri)
    info: dict[str, Any] = {"parent_run_id": target, "tracking_uri": uri}
    try:
        text = client.download_artifacts(target, "sweep.json")
        info = {**json.loads(Path(text).read_text()), **info}
    except Exception:
        pass  # a parent run not made by the kdsweep sweeper: a plain list of its children
    d = info.get("study_dir")
    return info, Path(d) if d and Path(d).is_dir() else None


def default_tracking_uri() -> str:
    """The run config's ``tracking.uri`` (:class:`kdsweep.config.schema.TrackingConf`, where the
    default is declared): ``MLFLOW_TRACKING_URI``, else the default store."""
    from kdsweep.config.schema import TrackingConf  # imports torch: only when a run id is given

    return str(OmegaConf.structured(TrackingConf).uri)


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
                         dict(r.data.metrics), dict(tags), dict(r.data.params)))
    return out


# ------------------------------------------------------------------------------------- output
def _status_line(info: Mapping[str, Any], tables: Sequence[Table], children: Sequence[Child]) -> str:
    n = {s: sum(c.status == s for c in children) for s in ("FINISHED", "KILLED", "FAILED", "RUNNING")}
    pruned = sum("pruned_at_epoch" in c.tags for c in children)
    cells = [c for t in tables for row in t.cells for c in row]
    done = sum(1 for c in cells if c.n)
    line = (f"{len(children)} child runs: {n['FINISHED']} finished, {pruned} pruned, "
            f"{n['FAILED']} failed" + (f", {n['RUNNING']} running" if n["RUNNING"] else "") + "; "
            f"{done} of {len(cells)} cells have a result.")
    if n["RUNNING"] or done < len(cells):
        target = info.get("study_dir") or info.get("parent_run_id")
        line = (f"**Partial** (made {time.strftime('%Y-%m-%d %H:%M')}, before every cell has a "
                f"finished run; `python -m kdsweep.report {target}` makes it again at any time): "
                + line)
    return line


def render(info: Mapping[str, Any], tables: Sequence[Table], children: Sequence[Child],
           metric: str, pairs: Sequence[Any] = (), published: Published | None = None,
           why_not: str = "", maximize: bool | None = None, notes: Sequence[str] = ()) -> str:
    name = info.get("study_name") or info.get("parent_run_id")
    parts = [f"## Sweep {name}", ""]
    if published is not None:
        parts += [f"Published: **{published.title}**, {published.source}. {published.note}".rstrip(),
                  ""]
    elif why_not:
        parts += [why_not, ""]
    for t in tables:
        parts += [t.markdown(metric), ""]
    what = ("best / last = the `best_val_acc` / `final_val_acc` metrics (%, best and last epoch)"
            if metric == BEST else f"the `{metric}` metric")
    parts.append(
        f"Values: {what} of the child runs of MLflow run `{info.get('parent_run_id')}` "
        f"(experiment `{info.get('experiment', '?')}`); several runs of one cell (seeds) are "
        "mean ± sample std (n=runs); "
        f"**bold** = best{'' if _hib(metric, maximize) else ' (lowest)'}; "
        "an empty cell = a point not run"
        + ("; ↳ published = the source's number, Δ = measured - published, measured as the "
           "source reports it (best or last epoch)" if published is not None else "") + ".")
    parts += ["", _status_line(info, tables, children)]
    extra = baselines.markdown(pairs, metric, published)
    if extra:
        parts += ["", extra]
    parts += [x for n in notes for x in ("", f"**{n[:5]}**{n[5:]}" if n.startswith("note:") else n)]
    return "\n".join(parts) + "\n"


def _hib(metric: str, maximize: bool | None) -> bool:
    return higher_is_better(metric) if maximize is None else maximize


def maximize_of(info: Mapping[str, Any], metric: str) -> bool | None:
    """The sweep's direction for its objective (``best_val_acc``); None: by the metric's name."""
    direction = info.get("direction")
    if metric != BEST or direction not in ("maximize", "minimize"):
        return None
    return direction == "maximize"


def swept_keys(info: Mapping[str, Any]) -> list[str]:
    """The keys a sweep varies (grid axes, search parameters), without +/~ prefixes."""
    from kdsweep.report.layout import normalised

    space = normalised(info.get("space") or {})
    keys = [a[0] for a in space.get("axes") or []] + list((space.get("params") or {}).keys())
    return list(dict.fromkeys(keys))


def _published_of(info: Mapping[str, Any], override: str | None,
                  children: Sequence[Child]) -> tuple[Published | None, str]:
    """The published table to compare with, or None and why not (runs on another data set)."""
    pid = override or (info.get("report") or {}).get("published")
    pub = get_published(pid) if pid else None
    ran = sorted({c.tags["dataset"] for c in children if c.tags.get("dataset")})
    if pub is None or not pub.dataset or not ran or pub.dataset in ran:
        return pub, ""
    return None, (f"Published numbers ({pub.title}, {pub.source}) are not compared: these runs "
                  f"are on {', '.join(ran)}, the published table on {pub.dataset}.")


def _experiment_id(client: MlflowClient, parent_id: str) -> str:
    return client.get_run(parent_id).info.experiment_id


def write_report(target: str | Path, metric: str = BEST, out_dir: str | Path | None = None,
                 tracking_uri: str | None = None, log_to_parent: bool = True,
                 published: str | None = None) -> Report:
    """Build the tables and plots of a sweep; write them to its directory and its parent run.

    Works at any time: during a sweep, cells not run yet are empty and running or failed ones
    are named, so the report can be regenerated as often as wanted."""
    info, sweep_dir = resolve_target(str(target), tracking_uri)
    client = MlflowClient(tracking_uri=info["tracking_uri"])
    parent_id = info["parent_run_id"]
    try:
        experiment_id = _experiment_id(client, parent_id)
    except Exception as e:
        raise ReportError(f"MLflow run {parent_id} not found at {info['tracking_uri']}: {e}") from None
    children = fetch_children(client, parent_id)
    pub, why_not = _published_of(info, published, children)
    tables = build_tables(info, children, metric)
    maximize = maximize_of(info, metric)
    runs = frame.fill(tables, metric, pub, maximize)
    fixed = [str(x) for x in (info.get("space") or {}).get("fixed") or []]
    pairs = baselines.resolve(client, experiment_id, children, tables, metric, fixed,
                              swept_keys(info), maximize)
    notes = baselines.teacher_notes(pairs)
    text = render(info, tables, children, metric, pairs, pub, why_not, maximize, notes)
    out = Path(out_dir) if out_dir else sweep_dir or Path.cwd() / f"report-{parent_id[:8]}"
    out.mkdir(parents=True, exist_ok=True)
    suffix = "" if metric == BEST else f"-{metric}"
    md = out / f"report{suffix}.md"
    md.write_text(text)
    files = [md, *frame.write_csv(tables, runs, out, suffix),
             frame.write_latex(tables, out, suffix, metric, _hib(metric, maximize), notes)]
    plots = _plots(client, info, tables, pairs, out, metric, suffix, notes)
    files += plots
    if log_to_parent:
        for f in files:
            # The main plot (heatmap or bars) also at the top of the parent's artifacts, where
            # the MLflow UI shows it first; everything under report/.
            if plots and f == plots[0] and f.stem in ("heatmap", "bars"):
                client.log_artifact(parent_id, str(f))
            client.log_artifact(parent_id, str(f), "report")
    return Report(parent_id, metric, tables, children, text, out, files, notes)


def _plots(client: MlflowClient, info: Mapping[str, Any], tables: Sequence[Table],
           pairs: Sequence[Any], out: Path, metric: str, suffix: str,
           notes: Sequence[str] = ()) -> list[Path]:
    name = info.get("study_name") or info.get("parent_run_id")
    what = f"{metric_label(metric)}, {replicates(tables)}"
    if any(c.delta is not None for t in tables for row in t.cells for c in row):
        what += "; Δ = measured - published"
    files = []
    pivots = [t for t in tables if t.kind == "pivot"]
    if pivots:
        files.append(report_plots.heatmap(pivots, out / f"heatmap{suffix}.png", metric,
                                          f"{name}: {what}", notes))
    elif any(t.cells for t in tables):
        files.append(report_plots.bars(tables, out / f"bars{suffix}.png", metric,
                                       f"{name}: {what}", notes))
    seeds = replicates(tables)
    band = f", {seeds} (band: min-max)" if seeds.startswith("mean") else ""
    curves = report_plots.curves(client, tables, out / "curves.png",
                                 f"{name}: validation accuracy per epoch{band}",
                                 baselines.baseline_runs(pairs))
    return files + ([curves] if curves is not None else [])


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m kdsweep.report",
        description="Tables (Markdown), heatmap and accuracy curves of a kdsweep sweep, from MLflow.")
    ap.add_argument("target", nargs="?", help="the sweep directory (multirun/<study_name>, with sweep.json) "
                                   "or the MLflow run id of the sweep's parent run")
    ap.add_argument("--metric", default=BEST,
                    help="child-run metric in the cells (default best_val_acc; e.g. final_val_acc)")
    ap.add_argument("--tracking-uri", default=None,
                    help="MLflow store (default: the sweep's, else the run config's "
                         "tracking.uri: $MLFLOW_TRACKING_URI, else its default)")
    ap.add_argument("--out", default=None, help="output directory (default: the sweep directory)")
    ap.add_argument("--no-log", action="store_true", help="do not log the files to the parent run")
    ap.add_argument("--published", default=None,
                    help="compare with this published table (default: the sweep's "
                         "hydra.sweeper.report.published); --list-published shows the ids")
    ap.add_argument("--list-published", action="store_true", help="list the published tables")
    args = ap.parse_args(argv)
    if args.list_published:
        from kdsweep.report.published import table_ids

        for tid in table_ids():
            t = get_published(tid)
            print(f"{tid}: {t.title} ({t.source})")
        return 0
    if not args.target:
        ap.error("give the sweep directory or the parent run id")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        rep = write_report(args.target, args.metric, args.out, args.tracking_uri,
                           log_to_parent=not args.no_log, published=args.published)
    except KDSweepError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(rep.markdown)
    print("written: " + ", ".join(str(f) for f in rep.files))
    return 0


