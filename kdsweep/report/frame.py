"""The report's numbers with pandas: one row per run, cell statistics, published numbers, CSV, LaTeX.

:func:`runs_frame` is the long table (one row per child run and table position); :func:`fill`
aggregates it per cell with ``groupby`` (mean, sample std, count of the FINISHED runs) and writes
the statistics and the published numbers into the tables' cells; :func:`write_csv` and
:func:`write_latex` write ``report.csv`` (one row per cell), ``runs.csv`` (one row per run) and
``report.tex`` (each table as a pivot, ``DataFrame.to_latex``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from kdsweep.report.published import Published
from kdsweep.report.tables import (
    BEST,
    LAST,
    LEARNED,
    Cell,
    Table,
    mark_best,
    metric_label,
    replicates,
    signed,
)

GAP = "train_val_gap"
NUMBERS = (BEST, LAST, GAP)


def _axes(t: Table, i: int, j: int) -> dict[str, str]:
    """A position named by the swept keys: ``{"method.alpha": "0.2", "method.T": "4"}``, a list
    table's row header (``trial``, ``point``, the label header) and its swept values."""
    out = {t.row_name or "row": t.row_labels[i]}
    if t.col_name:
        out[t.col_name] = t.col_labels[j]
    if t.extra:   # a trial's values as it ran them (the table shows them rounded)
        run = t.cells[i][j].runs[0].coords if t.cells[i][j].runs else {}
        out.update({k: run.get(k, shown) for k, shown in
                    zip(t.extra_keys or t.extra_cols, t.extra[i], strict=True)})
    return out


_RUN_COLS = ("run_id", "trial", "seed", "status", "state")


def learned_metrics(tables: Sequence[Table]) -> list[str]:
    """The ``method/<name>`` metrics the tables' runs logged (a learned temperature:
    ``method/T``), in order of appearance; a run's value is its last epoch's."""
    return list(dict.fromkeys(k for t in tables for row in t.cells for cell in row
                              for c in cell.runs for k in c.metrics if k.startswith(LEARNED)))


def runs_frame(tables: Sequence[Table], metric: str) -> pd.DataFrame:
    """One row per (table position, run): where it is, its state and its final metrics (and the
    last value of each learned ``method/<name>``)."""
    rows, axes = [], {}
    learned = learned_metrics(tables)
    for t_i, t in enumerate(tables):
        for i, row in enumerate(t.cells):
            for j, cell in enumerate(row):
                pos = {k: v for k, v in _axes(t, i, j).items() if k not in _RUN_COLS}
                axes.update(dict.fromkeys(pos))
                for c in cell.runs:
                    rec = {"table": t_i, "i": i, "j": j, **pos, "run_id": c.run_id,
                           "trial": c.trial, "seed": c.seed,
                           "status": c.status, "state": "finished" if c.finished else c.state()}
                    for m in dict.fromkeys((*NUMBERS, metric, *learned)):
                        rec[m] = c.value(m) if c.finished else None
                    rows.append(rec)
    cols = ["table", "i", "j", *axes, *_RUN_COLS, *dict.fromkeys((*NUMBERS, metric, *learned))]
    return pd.DataFrame(rows, columns=cols)


def _stat(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def fill(tables: Sequence[Table], metric: str, published: Published | None = None,
         maximize: bool | None = None) -> pd.DataFrame:
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
            _learned(cell, runs)
    if published is not None:
        _published(tables, published, done)
    mark_best(tables, metric, maximize)
    return df


def _learned(cell: Cell, runs: pd.DataFrame) -> None:
    """The cell's learned values: mean (and sample std) of its finished runs' last values."""
    cell.learned, cell.learned_std = {}, {}
    for m in (c for c in runs.columns if str(c).startswith(LEARNED)):
        vals = runs[m].dropna().astype(float)
        if len(vals):
            name = m[len(LEARNED):]
            cell.learned[name] = float(vals.iloc[0]) if len(vals) == 1 else float(vals.mean())
            cell.learned_std[name] = None if len(vals) == 1 else _stat(vals.std())


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
        for i, row in enumerate(t.cells):
            for j, cell in enumerate(row):
                rows.append({
                    "table": t.title, **_axes(t, i, j), "n": cell.n,
                    f"{cell.metric}_mean": cell.value, f"{cell.metric}_std": cell.std,
                    f"{LAST}_mean": cell.last, f"{LAST}_std": cell.last_std,
                    "train_val_gap_mean": cell.gap, "published_train_val_gap": cell.published_gap,
                    "pending": cell.pending(), "published": cell.published,
                    "published_metric": cell.published_metric, "delta": cell.delta,
                    **{f"{LEARNED}{n}_{what}": (cell.learned if what == "mean" else
                                                cell.learned_std).get(n)
                       for n in t.learned_names() for what in ("mean", "std")},
                    "run_ids": " ".join(x.run_id for x in cell.runs)})
    return pd.DataFrame(rows)


def write_csv(tables: Sequence[Table], runs: pd.DataFrame, out: Path, suffix: str) -> list[Path]:
    cells, per_run = out / f"report{suffix}.csv", out / f"runs{suffix}.csv"
    cells_frame(tables).to_csv(cells, index=False, float_format="%.4f")
    runs.drop(columns=["table", "i", "j"]).to_csv(per_run, index=False, float_format="%.4f")
    return [cells, per_run]


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
_SYMBOLS = ((" ± ", r" $\pm$ "), ("Δ", r"$\Delta$"), (" -> ", r" $\rightarrow$ "))


def tex(text: str) -> str:
    """Cell text as LaTeX: special characters escaped, ``**best**`` as ``\\textbf{best}``."""
    out = "".join(_TEX.get(ch, ch) for ch in str(text))
    for a, b in _SYMBOLS:
        out = out.replace(a, b)
    return re.sub(r"\*\*(.+?)\*\*", r"\\textbf{\1}", out)


def _latex_frame(t: Table, metric: str = BEST) -> pd.DataFrame:
    """The table with one header row: the corner names both axes (``alpha \\ T``)."""
    data = {t.corner or t.row_name or "": t.row_labels}
    if t.kind == "list":
        extra = [t.extra_row(i) for i in range(len(t.row_labels))]
        for k, name in enumerate(t.extra_header()):
            data[name] = [e[k] for e in extra]
    for j, col in enumerate(t.col_labels):
        data[col or ("best / last" if metric == BEST else metric)] = [row[j].text()
                                                                     for row in t.cells]
        for n in t.learned_names() if t.kind == "pivot" else ():
            if any(n in row[j].learned for row in t.cells):
                data[f"{col} learned {n}"] = [row[j].learned_text(n)[len("learned "):]
                                              for row in t.cells]
        if any(row[j].published is not None for row in t.cells):
            data[f"{col} published".strip()] = ["" if row[j].published is None else
                                                f"{row[j].published:g}" for row in t.cells]
            data[f"{col} Δ".strip()] = [signed(row[j].delta) for row in t.cells]
    df = pd.DataFrame(data)
    return df.rename(columns=tex).map(tex)


def _caption(t: Table, metric: str, maximize: bool) -> str:
    what = ("best / last epoch validation accuracy (\\%)" if metric == BEST
            else tex(metric_label(metric)))
    seeds = replicates([t])
    seeds = f", {tex(seeds)}" + (" ($\\pm$ std, n)" if seeds.startswith("mean") else "")
    best = "highest" if maximize else "lowest"
    scope = "per row" if t.per_row else "overall"
    return (f"{tex(t.title) + ': ' if t.title else ''}{what}{seeds}; "
            f"\\textbf{{bold}}: the {best} {scope}.")


def write_latex(tables: Sequence[Table], out: Path, suffix: str, metric: str = BEST,
                maximize: bool = True, notes: Sequence[str] = ()) -> Path:
    """Each table as a LaTeX table (booktabs): one header row, the best cell in bold, a
    caption saying what the numbers are; notes (a weak teacher) as comments."""
    parts = []
    for t in tables:
        df = _latex_frame(t, metric)
        n_extra = len(t.extra_header()) if t.kind == "list" else 0
        parts.append(df.to_latex(index=False, escape=False, position="htbp",
                                 column_format="l" * (1 + n_extra)
                                 + "c" * (df.shape[1] - 1 - n_extra),
                                 caption=_caption(t, metric, maximize)))
    head = ["% kdsweep report (needs \\usepackage{booktabs})",
            *(f"% {n}" for n in notes)]
    path = out / f"report{suffix}.tex"
    path.write_text("\n".join(head) + "\n" + "\n".join(parts))
    return path
