"""The tables of a sweep report: cells from child runs, in the papers' layouts (see kdsweep.report)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Overrides the sweeper adds to every trial: never table coordinates.
BOOKKEEPING = ("sweep.", "hydra.")


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


@dataclass
class Child:
    run_id: str
    status: str
    start_time: int
    trial: int | None
    coords: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]

    def value(self, metric: str) -> float | None:
        v = self.metrics.get(metric)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    def rank(self) -> tuple[int, int]:
        """Which of several runs of one cell to show: finished first, then the newest."""
        return (self.status == "FINISHED", self.start_time)


@dataclass
class Cell:
    child: Child | None
    value: float | None = None
    best: bool = False

    def text(self) -> str:
        if self.child is None:
            return ""
        if self.value is not None and self.child.status == "FINISHED":
            s = f"{self.value:.2f}"
            return f"**{s}**" if self.best else s
        if "pruned_at_epoch" in self.child.tags:
            return f"pruned (epoch {self.child.tags['pruned_at_epoch']})"
        return {"FAILED": "failed", "RUNNING": "running", "KILLED": "killed"}.get(
            self.child.status, self.child.status.lower())


@dataclass
class Table:
    """One Markdown table: a pivot (rows x cols) or a list (one row per label)."""

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

    def values(self) -> list[list[float | None]]:
        """The numbers of the table (None: missing, pruned, failed)."""
        return [[c.value if c.child is not None and c.child.status == "FINISHED" else None
                 for c in row] for row in self.cells]

    def markdown(self, metric: str) -> str:
        if self.kind == "pivot":
            head = [self.corner] + self.col_labels
            rows = [[lab] + [c.text() for c in row] for lab, row in zip(self.row_labels, self.cells,
                                                                        strict=True)]
        else:
            head = [self.corner, *self.extra_cols, metric]
            rows = [[lab, *ex, row[0].text()] for lab, ex, row in
                    zip(self.row_labels, self.extra or [[]] * len(self.row_labels), self.cells,
                        strict=True)]
        align = ["---"] + [":---:"] * (len(head) - 1)
        lines = ["| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return (f"### {self.title}\n\n" if self.title else "") + "\n".join(lines)


def _higher_is_better(metric: str) -> bool:
    return not any(w in metric for w in ("loss", "gap", "time", "error"))


def _pick(children: Sequence[Child], want: Mapping[str, str | None]) -> Child | None:
    """The run of one cell: its coords match ``want`` (None: the key was not overridden)."""
    match = [c for c in children
             if all(c.coords.get(k) == v if v is not None else k not in c.coords
                    for k, v in want.items())]
    return max(match, key=Child.rank) if match else None


def _mark_best(tables: Sequence[Table], metric: str) -> None:
    cells = [c for t in tables for row in t.cells for c in row
             if c.child is not None and c.child.status == "FINISHED" and c.value is not None]
    if cells:
        best = (max if _higher_is_better(metric) else min)(c.value for c in cells)
        for c in cells:
            c.best = c.value == best


def _unique(seq: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(seq))


def _bare(key: str | None) -> str | None:
    return key.lstrip("+~") if key else key


def _normalised(space: Mapping[str, Any]) -> dict[str, Any]:
    """The sweep definition with override keys stripped of +/++/~ (as in the children's coords)."""
    out = dict(space)
    if space.get("points") is not None:
        out["points"] = [{**p, "values": {_bare(k): v for k, v in p["values"].items()}}
                         for p in space["points"]]
    if space.get("axes") is not None:
        out["axes"] = [[_bare(k), v] for k, v in space["axes"]]
    if space.get("params") is not None:
        out["params"] = {_bare(k): v for k, v in space["params"].items()}
    return out


def build_tables(info: Mapping[str, Any], children: Sequence[Child], metric: str) -> list[Table]:
    """The tables of a sweep: a pivot for two swept keys, else one row per point or trial."""
    space = _normalised(info.get("space") or {})
    rep = info.get("report") or {}
    rows_key, cols_key = _bare(rep.get("rows")), _bare(rep.get("cols"))
    title = rep.get("title") or ""
    points = space.get("points")
    axes = space.get("axes")
    if points is not None:
        keys = _unique([k for p in points for k in p["values"]])
        labelled = any(p.get("label") for p in points)
        if not (rows_key and cols_key):
            if axes and len(axes) >= 2:
                rows_key, cols_key = axes[0][0], axes[1][0]
            elif len(keys) == 2 and not labelled and all(len(p["values"]) == 2 for p in points):
                rows_key, cols_key = keys
        if rows_key and cols_key:
            return _pivot_tables(points, children, metric, rows_key, cols_key, title)
        table = Table("list", title, None, None, [], [], [],
                      corner=rep.get("label_header") or ("point" if not labelled else ""))
        for p in points:
            want = {k: format_value(v) for k, v in p["values"].items()}
            child = _pick(children, want)
            table.row_labels.append(p.get("label") or ", ".join(f"{short(k)}={v}"
                                                                for k, v in want.items()))
            table.cells.append([Cell(child, child.value(metric) if child else None)])
        _mark_best([table], metric)
        return [table]
    # A sampled search (TPE, random, ...) or a parent run without a sweep definition.
    swept = list((space.get("params") or {}).keys()) or _unique(
        [k for c in children for k in c.coords])
    if rows_key and cols_key:
        pts = [{"values": {k: c.coords.get(k) for k in (rows_key, cols_key)}} for c in children]
        return _pivot_tables(pts, children, metric, rows_key, cols_key, title, raw=True)
    hib = _higher_is_better(metric)

    def order(c: Child) -> tuple[int, float]:
        v = c.value(metric) if c.status == "FINISHED" else None
        return (v is None, -(v or 0.0) if hib else (v or 0.0))

    ordered = sorted(children, key=lambda c: (order(c), c.trial if c.trial is not None else 1 << 30))
    table = Table("list", title, None, None, [], [], [], corner=rep.get("label_header") or "trial",
                  extra_cols=[short(k) for k in swept])
    for c in ordered:
        table.row_labels.append(str(c.trial) if c.trial is not None else c.run_id[:8])
        table.extra.append([_fmt_number(c.coords.get(k, "")) for k in swept])
        table.cells.append([Cell(c, c.value(metric))])
    _mark_best([table], metric)
    return [table]


def _fmt_number(text: str) -> str:
    try:
        v = float(text)
    except ValueError:
        return text
    return text if len(text) <= 8 else f"{v:.4g}"


def _pivot_tables(points: Sequence[Mapping[str, Any]], children: Sequence[Child], metric: str,
                  rows_key: str, cols_key: str, title: str, raw: bool = False) -> list[Table]:
    """Rows x cols tables; any other swept key gives one table per combination of its values."""
    def fmt(v: Any) -> str:
        return str(v) if raw else format_value(v)

    row_vals = _unique([fmt(p["values"][rows_key]) for p in points if rows_key in p["values"]])
    col_vals = _unique([fmt(p["values"][cols_key]) for p in points if cols_key in p["values"]])
    others = _unique([k for p in points for k in p["values"] if k not in (rows_key, cols_key)])
    groups = list(dict.fromkeys(
        tuple((k, fmt(p["values"][k]) if k in p["values"] else None) for k in others)
        for p in points))
    tables = []
    for g in groups:
        fixed = dict(g)
        cells = [[Cell(None) for _ in col_vals] for _ in row_vals]
        for i, r in enumerate(row_vals):
            for j, c in enumerate(col_vals):
                child = _pick(children, {rows_key: r, cols_key: c, **fixed})
                if child is not None:
                    cells[i][j] = Cell(child, child.value(metric))
        sub = ", ".join(f"{short(k)}={v}" for k, v in fixed.items() if v is not None)
        tables.append(Table("pivot", " ".join(x for x in (title, f"({sub})" if sub else "") if x),
                            rows_key, cols_key, row_vals, col_vals, cells,
                            corner=f"{short(rows_key)} \\ {short(cols_key)}"))
    _mark_best(tables, metric)
    return tables
