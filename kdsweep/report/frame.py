"""The report's numbers with pandas: one row per run, cell statistics, published numbers, CSV, LaTeX.

:func:`runs_frame` is the long table (one row per child run and table position); :func:`fill`
aggregates it per cell with ``groupby`` (mean, sample std, count of the FINISHED runs) and writes
the statistics and the published numbers into the tables' cells; :func:`write_csv` and
:func:`write_latex` write ``report.csv`` (one row per cell), ``runs.csv`` (one row per run) and
``report.tex`` (each table as a pivot, ``DataFrame.to_latex``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from kdsweep.report.published import Published
from kdsweep.report.tables import BEST, LAST, Table, mark_best, signed

GAP = "train_val_gap"
NUMBERS = (BEST, LAST, GAP)


def runs_frame(tables: Sequence[Table], metric: str) -> pd.DataFrame:
    """One row per (table position, run): where it is, its state and its final metrics."""
    rows = []
    for t_i, t in enumerate(tables):
        for i, row in enumerate(t.cells):
            for j, cell in enumerate(row):
                for c in cell.runs:
                    rec = {"table": t_i, "i": i, "j": j, "row": t.row_labels[i],
                           "col": t.col_labels[j], "run_id": c.run_id, "trial": c.trial,
                           "seed": c.coords.get("seed", c.tags.get("seed")),
                           "status": c.status, "state": "finished" if c.finished else c.state()}
                    for m in dict.fromkeys((*NUMBERS, metric)):
                        rec[m] = c.value(m) if c.finished else None
                    rows.append(rec)
    cols = ["table", "i", "j", "row", "col", "run_id", "trial", "seed", "status", "state",
            *dict.fromkeys((*NUMBERS, metric))]
    return pd.DataFrame(rows, columns=cols)


def _stat(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def fill(tables: Sequence[Table], metric: str, published: Published | None = None) -> pd.DataFrame:
    """Cell statistics (pandas groupby) written into the cells; returns the runs' frame."""
    df = runs_frame(tables, metric)
    need = list(dict.fromkeys((metric, LAST)))
    for t in tables:
        for row in t.cells:
            for cell in row:
                cell.metric = metric
    done = df[df["status"] == "FINISHED"].dropna(subset=[metric])
    if not done.empty:
        stats = done.groupby(["table", "i", "j"])[need].agg(["mean", "std", "count"])
        for (t_i, i, j), s in stats.iterrows():
            cell = tables[t_i].cells[i][j]
            runs = done[(done["table"] == t_i) & (done["i"] == i) & (done["j"] == j)]
            one = len(runs) == 1  # a single run shows its own value, bit for bit
            cell.n = int(s[(metric, "count")])
            cell.value = float(runs[metric].iloc[0]) if one else _stat(s[(metric, "mean")])
            cell.std = None if one else _stat(s[(metric, "std")])
            cell.last = _stat(s[(LAST, "mean")])
            cell.last_std = None if one else _stat(s[(LAST, "std")])
            cell.gap = _stat(runs[GAP].mean()) if runs[GAP].notna().any() else None
    if published is not None:
        _published(tables, published, done)
    mark_best(tables, metric)
    return df


def _published(tables: Sequence[Table], pub: Published, done: pd.DataFrame) -> None:
    for t_i, t in enumerate(tables):
        t.published_id = pub.id
        for i, r in enumerate(t.row_labels):
            for j, c in enumerate(t.col_labels):
                cell = t.cells[i][j]
                cell.published = pub.value(r, c)
                cell.published_gap = pub.gaps.get((r, c))
                if cell.published is None:
                    continue
                cell.published_metric = pub.metric(c)
                vals = done[(done["table"] == t_i) & (done["i"] == i) & (done["j"] == j)]
                vals = vals[cell.published_metric].dropna()
                if len(vals):
                    cell.delta = float(vals.mean()) - cell.published


def cells_frame(tables: Sequence[Table]) -> pd.DataFrame:
    """One row per cell (``report.csv``): position, statistics, published number, difference."""
    rows = []
    for t in tables:
        for r, row in zip(t.row_labels, t.cells, strict=True):
            for c, cell in zip(t.col_labels, row, strict=True):
                rows.append({
                    "table": t.title, "row": r, "col": c, "n": cell.n,
                    f"{cell.metric}_mean": cell.value, f"{cell.metric}_std": cell.std,
                    f"{LAST}_mean": cell.last, f"{LAST}_std": cell.last_std,
                    "train_val_gap_mean": cell.gap, "published_train_val_gap": cell.published_gap,
                    "pending": cell.pending(), "published": cell.published,
                    "published_metric": cell.published_metric, "delta": cell.delta,
                    "run_ids": " ".join(x.run_id for x in cell.runs)})
    return pd.DataFrame(rows)


def write_csv(tables: Sequence[Table], runs: pd.DataFrame, out: Path, suffix: str) -> list[Path]:
    cells, per_run = out / f"report{suffix}.csv", out / f"runs{suffix}.csv"
    cells_frame(tables).to_csv(cells, index=False, float_format="%.4f")
    runs.drop(columns=["table", "i", "j"]).to_csv(per_run, index=False, float_format="%.4f")
    return [cells, per_run]


def _latex_frame(t: Table) -> pd.DataFrame:
    data = {}
    for j, col in enumerate(t.col_labels):
        data[col or "best / last"] = [row[j].text().replace("**", "") for row in t.cells]
        if any(row[j].published is not None for row in t.cells):
            data[f"{col} published".strip()] = ["" if row[j].published is None else
                                                f"{row[j].published:g}" for row in t.cells]
            data[f"{col} Δ".strip()] = [signed(row[j].delta) for row in t.cells]
    df = pd.DataFrame(data, index=pd.Index(t.row_labels, name=t.corner or None))
    if t.extra_cols:
        for k, name in enumerate(t.extra_cols):
            df.insert(k, name, [e[k] for e in t.extra])
    return df


def write_latex(tables: Sequence[Table], out: Path, suffix: str) -> Path:
    """Each table as a LaTeX tabular (booktabs), with its title as a comment."""
    parts = []
    for t in tables:
        tex = _latex_frame(t).to_latex(escape=True, column_format=None)
        parts.append(f"% {t.title}\n{tex}" if t.title else tex)
    path = out / f"report{suffix}.tex"
    path.write_text("% kdsweep report (needs \\usepackage{booktabs})\n" + "\n".join(parts))
    return path
