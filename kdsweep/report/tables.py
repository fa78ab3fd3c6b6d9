"""The report's data model: child runs, cells (every run of one point), tables and their Markdown.

A :class:`Cell` holds every MLflow run of one table position: several seeds of a point, or a failed
attempt and its rerun. Its numbers are the mean, sample standard deviation and count of its
FINISHED runs (computed with pandas in :mod:`kdsweep.report.frame`); unfinished runs are counted
and named (``running``, ``failed``, ``pruned (epoch N)``), so a report made during a sweep shows
what is done and what is not. Layouts are made in :mod:`kdsweep.report.layout`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kdsweep.tracking import metric_names

# Overrides the sweeper adds to every trial: never table coordinates.
BOOKKEEPING = ("sweep.", "hydra.")
# Per-epoch validation accuracy: its MLflow name, then the names older stores hold.
VAL_ACC = metric_names("acc/val")
BEST, LAST = "best_val_acc", "final_val_acc"
# A method's own per-epoch state (Method.epoch_values: CTKD's learned temperature is method/T);
# a run's value of it is the last epoch's, shown as "learned" beside the swept values.
LEARNED = "method/"


def format_value(value: Any) -> str:
    """The override text of a value, as the sweeper writes it (so cells match exactly)."""
    from kdsweep.sweep.space import format_value as fmt

    return fmt(value)


def short(key: str) -> str:
    """``method.alpha`` -> ``alpha`` (a table header)."""
    return key.lstrip("+~").rsplit(".", 1)[-1]


def parse_overrides(text: str) -> dict[str, str]:
    """``"a=1 +b='x y'"`` -> ``{"a": "1", "b": "'x y'"}`` (keys without +/++/~ prefixes)."""
    out: dict[str, str] = {}
    tokens, cur, quote, esc = [], "", None, False
    for ch in text:  # split on spaces outside quotes, as the overrides were joined
        if esc:
            cur, esc = cur + ch, False
        elif ch == "\\" and quote:
            cur, esc = cur + ch, True
        elif quote:
            cur += ch
            quote = None if ch == quote else quote
        elif ch in "'\"":
            cur, quote = cur + ch, ch
        elif ch.isspace():
            tokens, cur = (tokens + [cur] if cur else tokens), ""
        else:
            cur += ch
    tokens += [cur] if cur else []
    for tok in tokens:
        key, sep, value = tok.partition("=")
        if sep:
            out[key.lstrip("+~")] = value
    return out


def higher_is_better(metric: str) -> bool:
    return not any(w in metric for w in ("loss", "gap", "time", "error"))


_METRIC_NAMES = {BEST: "best val acc (%)", LAST: "final val acc (%)",
                 "train_val_gap": "train - val acc gap (points)"}


def metric_label(metric: str) -> str:
    """``best_val_acc`` -> ``best val acc (%)`` (axis and colour-bar labels, titles)."""
    if metric in _METRIC_NAMES:
        return _METRIC_NAMES[metric]
    return metric + (" (%)" if "acc" in metric else "")


@dataclass
class Child:
    run_id: str
    status: str
    start_time: int
    trial: int | None
    coords: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]
    params: dict[str, str] = field(default_factory=dict)

    @property
    def seed(self) -> str | None:
        """The seed the run trained with: its override, tag, else its logged config param."""
        return self.coords.get("seed", self.tags.get("seed", self.params.get("seed")))

    def value(self, metric: str) -> float | None:
        names = VAL_ACC if metric in VAL_ACC else (metric,)
        for name in names:
            v = self.metrics.get(name)
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                return float(v)
        return None

    @property
    def finished(self) -> bool:
        return self.status == "FINISHED"

    def rank(self) -> tuple[int, int]:
        """Which of several runs of one cell stands for it: finished first, then the newest."""
        return (self.finished, self.start_time)

    def state(self) -> str:
        """What an unfinished run is doing: ``running (last val 71.20)``, ``pruned (epoch 3)``..."""
        if "pruned_at_epoch" in self.tags:
            return f"pruned (epoch {self.tags['pruned_at_epoch']})"
        if self.status == "RUNNING":
            v = self.value(VAL_ACC[0])
            return "running" + (f" (last val {v:.2f})" if v is not None else "")
        return {"FAILED": "failed", "KILLED": "killed", "SCHEDULED": "scheduled"}.get(
            self.status, self.status.lower())


@dataclass
class Cell:
    """Every run of one table position and their statistics (set by kdsweep.report.frame)."""

    runs: list[Child] = field(default_factory=list)
    metric: str = BEST
    value: float | None = None      # mean of ``metric`` over the finished runs
    std: float | None = None        # sample std (n > 1)
    n: int = 0                      # finished runs with a value
    last: float | None = None       # mean final_val_acc (shown beside best_val_acc)
    last_std: float | None = None
    published: float | None = None
    published_metric: str | None = None
    delta: float | None = None      # mean of published_metric - published
    gap: float | None = None        # mean train_val_gap (train - val accuracy, last epoch)
    published_gap: float | None = None
    best: bool = False
    # name -> mean / sample std (n > 1) over the finished runs of their last ``method/<name>``
    learned: dict[str, float] = field(default_factory=dict)
    learned_std: dict[str, float | None] = field(default_factory=dict)

    @property
    def child(self) -> Child | None:
        """The run that stands for the cell (curves, bars): finished first, then the newest."""
        return max(self.runs, key=Child.rank) if self.runs else None

    def learned_text(self, name: str) -> str:
        """``learned 7.31`` (``± std`` over several runs), or "" when no finished run logged it."""
        if name not in self.learned:
            return ""
        return "learned " + _pm(self.learned[name], self.learned_std.get(name))

    def pending(self) -> str:
        """The unfinished runs: ``failed``, ``2 running``, ``pruned (epoch 1)``..."""
        by_seed: dict[str | None, list[Child]] = {}
        for c in self.runs:  # a rerun of a failed point (same seed) supersedes the failure
            by_seed.setdefault(c.coords.get("seed"), []).append(c)
        rest = [max(g, key=Child.rank) for g in by_seed.values()
                if not any(c.finished and c.value(self.metric) is not None for c in g)]
        if not rest:
            return ""
        if len(rest) == 1:
            return rest[0].state()
        counts: dict[str, int] = {}
        for c in rest:
            s = c.state().split(" (")[0]
            counts[s] = counts.get(s, 0) + 1
        return ", ".join(f"{k} {s}" for s, k in counts.items())

    def text(self) -> str:
        """``74.12 / 73.90`` (best / last), ``74.12 ± 0.20 / 73.90 ± 0.25 (n=3)``, ``failed``..."""
        if self.n == 0:
            return self.pending()
        main = _pm(self.value, self.std)
        main = f"**{main}**" if self.best else main
        if self.metric == BEST and self.last is not None:
            main += " / " + _pm(self.last, self.last_std)
        if self.n > 1:
            main += f" (n={self.n})"
        more = self.pending()
        return main + (f" + {more}" if more else "")


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None and not math.isnan(std) else "")


def signed(x: float | None) -> str:
    return "" if x is None else f"{x:+.2f}"


@dataclass
class Table:
    """One table: a pivot (rows x cols) or a list (one row per point or trial)."""

    kind: str                         # "pivot" or "list"
    title: str
    row_key: str | None
    col_key: str | None
    row_labels: list[str]
    col_labels: list[str]
    cells: list[list[Cell]]
    corner: str = ""
    extra_cols: list[str] = field(default_factory=list)   # list tables: params shown per row
    extra: list[list[str]] = field(default_factory=list)
    published_id: str | None = None
    per_row: bool = False             # rows are model pairs: the best cell of each row is bold
    row_name: str = ""                # the row axis by its swept keys (CSV header, plot label):
    col_name: str = ""                # method.alpha, teacher,student, or the label header
    extra_keys: list[str] = field(default_factory=list)   # extra_cols' full override keys

    def values(self) -> list[list[float | None]]:
        """The numbers of the table (the mean of each cell; None: missing, pruned, failed)."""
        return [[c.value if c.n else None for c in row] for row in self.cells]

    def has_published(self) -> bool:
        return any(c.published is not None for row in self.cells for c in row)

    def has_gaps(self) -> bool:
        return any(c.published_gap is not None for row in self.cells for c in row)

    def learned_names(self) -> list[str]:
        """The ``method/<name>`` values some finished run of the table logged (``["T"]``)."""
        return list(dict.fromkeys(n for row in self.cells for c in row for n in c.learned))

    def _merged(self, name: str) -> int | None:
        """The extra column of the swept ``method.<name>`` a learned ``name`` shares, if any."""
        keys = self.extra_keys or self.extra_cols
        return keys.index(f"method.{name}") if f"method.{name}" in keys else None

    def extra_header(self) -> list[str]:
        """A list table's value columns: the swept ones, then ``learned NAME`` for each learned
        value that no swept column of the same option shows."""
        return [*self.extra_cols, *(f"learned {n}" for n in self.learned_names()
                                    if self._merged(n) is None)]

    def extra_row(self, i: int) -> list[str]:
        """Row ``i``'s value columns (:meth:`extra_header`): a learned value goes in the column
        of the option it replaces (``T``: ``4`` for a swept KD point, ``learned 7.31`` for CTKD)."""
        values = list(self.extra[i]) if self.extra else [""] * len(self.extra_cols)
        more = []
        for n in self.learned_names():
            text = self.cells[i][0].learned_text(n) if self.cells[i] else ""
            k = self._merged(n)
            if k is None:
                more.append(text)
            elif text:
                values[k] = f"{values[k]}; {text}" if values[k] else text
        return values + more

    def markdown(self, metric: str) -> str:
        head_metric = "best / last" if metric == BEST else metric
        if self.kind == "pivot":
            head = [self.corner] + self.col_labels
            rows = []
            learned = self.learned_names()
            for lab, row in zip(self.row_labels, self.cells, strict=True):
                rows.append([lab] + [c.text() for c in row])
                for n in learned:
                    if any(n in c.learned for c in row):
                        rows.append([f"↳ learned {n}"] + [c.learned_text(n)[len("learned "):]
                                                          for c in row])
                if any(c.published is not None for c in row):
                    rows.append(["↳ published"] + [_num(c.published) for c in row])
                    rows.append(["↳ Δ"] + [signed(c.delta) for c in row])
                if any(c.published_gap is not None for c in row):
                    rows.append(["↳ train-val gap (published)"] + [_gap(c) for c in row])
        else:
            pub, gaps = self.has_published(), self.has_gaps()
            head = [self.corner, *self.extra_header(), head_metric]
            head += (["published", "Δ"] if pub else []) + (["train-val gap (published)"] if gaps else [])
            rows = [[lab, *self.extra_row(i), row[0].text()]
                    + ([_num(row[0].published), signed(row[0].delta)] if pub else [])
                    + ([_gap(row[0])] if gaps else [])
                    for i, (lab, row) in enumerate(zip(self.row_labels, self.cells, strict=True))]
        align = ["---"] + [":---:"] * (len(head) - 1)
        lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return (f"### {self.title}\n\n" if self.title else "") + "\n".join(lines)


def replicates(tables: Sequence[Table]) -> str:
    """How many runs a cell's number is made of, honestly: ``1 seed``, ``mean over 3 seeds``,
    ``mean over 1-3 seeds`` (cells differ), or ``runs`` when a cell repeats a seed."""
    cells = [c for t in tables for row in t.cells for c in row if c.n]
    if not cells:
        return "no finished run yet"
    lo, hi = min(c.n for c in cells), max(c.n for c in cells)
    if hi == 1:
        return "1 seed"
    seeds = all(len({r.seed for r in c.runs if r.finished}) == c.n for c in cells if c.n > 1)
    return f"mean over {lo if lo == hi else f'{lo}-{hi}'} {'seeds' if seeds else 'runs'}"


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:g}"


def _gap(c: Cell) -> str:
    """``5.10 (6)``: the measured train - val accuracy gap and the published one."""
    if c.gap is None and c.published_gap is None:
        return ""
    measured = "-" if c.gap is None else f"{c.gap:.2f}"
    return measured + ("" if c.published_gap is None else f" ({c.published_gap:g})")


def _alone(cell: Cell) -> bool:
    return bool(cell.runs) and all(c.tags.get("method") == "ce" for c in cell.runs)


def mark_best(tables: Sequence[Table], metric: str, maximize: bool | None = None) -> None:
    """Bold the best cell: per row in tables of model pairs (as the papers), else overall; a
    student trained alone competes only when the table has no distilled cell. ``maximize``:
    the sweep's direction; None: by the metric's name (:func:`higher_is_better`)."""
    hib = higher_is_better(metric) if maximize is None else maximize
    for t in tables:
        for row in t.cells:
            for c in row:
                c.best = False
    per_row = [[row] for t in tables if t.per_row for row in t.cells]
    whole = [[row for t in tables if not t.per_row for row in t.cells]]
    for group in per_row + whole:
        cells = [c for row in group for c in row if c.n and c.value is not None]
        if any(not _alone(c) for c in cells):
            cells = [c for c in cells if not _alone(c)]
        if cells:
            best = (max if hib else min)(c.value for c in cells)
            for c in cells:
                c.best = c.value == best
