"""Which run goes in which cell: the papers' layouts from a sweep's definition (``sweep.json``).

* **Points or a grid** (``hydra.sweeper.points`` / a grid sampler): every point is a cell. Runs
  are matched to points through the overrides they ran with, so the numbers are exactly those
  MLflow recorded. Points that differ only in a **replicate key** (``seed``) are one cell: its
  runs are the seeds, shown as mean ± std (n).
* **Rows and columns**: ``report.rows`` / ``report.cols`` name override keys; several keys are
  joined with a comma (``teacher,student`` gives rows ``wrn_40_2 -> wrn_16_2``) and ``_label_``
  is a point's label (a method column such as ``crd+kd``). A point that leaves a row key out
  (``vanilla``: the student alone, no teacher) fills every row that agrees on the keys it sets.
  Without them: the first two axes of a grid, or the two keys of unlabelled two-key points; else
  one row per point; points that share a label are told apart by columns of the values that
  differ among them. Keys that still differ within one row x column give one table per value.
* **A sampled search** (TPE, random, ...): one row per trial, best first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kdsweep.report.tables import Cell, Child, Table, format_value, higher_is_better, short

LABEL = "_label_"
REPLICATES = ("seed",)
MODEL_KEYS = ("teacher", "student")


def _bare(key: str | None) -> str | None:
    return key.lstrip("+~") if key else key


def normalised(space: Mapping[str, Any]) -> dict[str, Any]:
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


@dataclass
class Slot:
    """One cell of the sweep: a point without its replicate keys, and its runs."""

    label: str | None
    values: dict[str, str]          # formatted override values, replicate keys removed
    runs: list[Child]
    tagged: dict[str, str] = field(default_factory=dict)  # models the point left to the config

    def key(self, keys: Sequence[str]) -> tuple[str | None, ...]:
        return tuple(self.label if k == LABEL else self.values.get(k, self.tagged.get(k))
                     for k in keys)


def _slots(points: Sequence[Mapping[str, Any]], children: Sequence[Child],
           raw: bool = False) -> list[Slot]:
    """The cells of a points sweep, each with the children that ran one of its points."""
    keys = list(dict.fromkeys(k for p in points for k in p["values"] if k not in REPLICATES))
    slots: dict[tuple[Any, ...], Slot] = {}
    for p in points:
        vals = {k: (str(v) if raw else format_value(v)) for k, v in p["values"].items()
                if k not in REPLICATES}
        sig = tuple(vals.get(k) for k in keys)
        slots.setdefault(sig, Slot(p.get("label"), vals, []))
    for c in children:
        sig = tuple(c.coords.get(k) for k in keys)
        if sig in slots:
            slots[sig].runs.append(c)
    for slot in slots.values():  # teacher/student set by the preset, not the point: their tags
        for k in MODEL_KEYS:
            seen = {c.tags.get(k) for c in slot.runs} - {None, "", "none"}
            if k not in slot.values and len(seen) == 1:
                slot.tagged[k] = seen.pop()
    return list(slots.values())


def build_tables(info: Mapping[str, Any], children: Sequence[Child], metric: str) -> list[Table]:
    """The tables of a sweep (cells hold their runs; :mod:`kdsweep.report.frame` fills numbers)."""
    space = normalised(info.get("space") or {})
    rep = info.get("report") or {}
    title = rep.get("title") or ""
    rows, cols = _keys(rep.get("rows")), _keys(rep.get("cols"))
    points = space.get("points")
    if points is not None:
        slots = _slots(points, children)
        if not (rows and cols):
            rows, cols = _default_axes(space, points)
        if rows and cols:
            return _pivots(slots, rows, cols, title, rep)
        return [_list(slots, title, rep)]
    if rows and cols:  # a sampled search shown as a pivot of the values its trials drew
        pts = [{"values": {k: c.coords[k] for k in c.coords if k in (*rows, *cols)}}
               for c in children if all(k in c.coords for k in (*rows, *cols))]
        return _pivots(_slots(pts, children, raw=True), rows, cols, title, rep)
    return [_trials(space, children, metric, title, rep)]


def _keys(text: str | None) -> list[str]:
    return [_bare(k.strip()) for k in str(text).split(",") if k.strip()] if text else []


def _default_axes(space: Mapping[str, Any], points: Sequence[Mapping[str, Any]]
                  ) -> tuple[list[str], list[str]]:
    axes = [a for a in space.get("axes") or [] if a[0] not in REPLICATES]
    if len(axes) >= 2:
        return [axes[0][0]], [axes[1][0]]
    keys = list(dict.fromkeys(k for p in points for k in p["values"] if k not in REPLICATES))
    labelled = any(p.get("label") for p in points)
    sizes = {len([k for k in p["values"] if k not in REPLICATES]) for p in points}
    if len(keys) == 2 and not labelled and sizes == {2}:
        return [keys[0]], [keys[1]]
    return [], []


def axis_label(keys: Sequence[str], values: Sequence[str | None]) -> str:
    """``("teacher", "student")`` -> ``wrn_40_2 -> wrn_16_2``; other keys joined with ", "."""
    shown = [v if v is not None else "*" for v in values]
    if list(keys) == ["teacher", "student"]:
        return " -> ".join(shown)
    return ", ".join(shown)


def _axis_name(keys: Sequence[str], rep: Mapping[str, Any]) -> str:
    if list(keys) == ["teacher", "student"]:
        return "teacher -> student"
    return ", ".join((rep.get("label_header") or "point") if k == LABEL else short(k) for k in keys)


def axis_key(keys: Sequence[str], rep: Mapping[str, Any]) -> str:
    """An axis named by its swept keys (CSV headers, plot labels): ``method.alpha``,
    ``teacher,student``; a point's label is named by the header the table shows for it."""
    return ",".join((rep.get("label_header") or "point") if k == LABEL else k for k in keys)


def _fits(slot_key: tuple[str | None, ...], axis_key: tuple[str | None, ...]) -> bool:
    return all(s is None or s == a for s, a in zip(slot_key, axis_key, strict=True))


def _axis_values(slots: Sequence[Slot], keys: Sequence[str]) -> list[tuple[str | None, ...]]:
    """The axis entries in order: complete keys; a partial one only when nothing complete fits it."""
    full = list(dict.fromkeys(s.key(keys) for s in slots if None not in s.key(keys)))
    partial = [k for k in dict.fromkeys(s.key(keys) for s in slots if None in s.key(keys))
               if not any(_fits(k, f) for f in full)]
    return full + partial


def _pivots(slots: Sequence[Slot], rows: Sequence[str], cols: Sequence[str], title: str,
            rep: Mapping[str, Any]) -> list[Table]:
    """Rows x cols; keys that differ within one position give one table per combination."""
    row_vals, col_vals = _axis_values(slots, rows), _axis_values(slots, cols)
    by_pos: dict[tuple[Any, ...], list[Slot]] = {}
    for s in slots:
        by_pos.setdefault((s.key(rows), s.key(cols)), []).append(s)
    others = list(dict.fromkeys(k for ss in by_pos.values() if len(ss) > 1 for s in ss
                                for k in s.values if k not in (*rows, *cols)
                                and len({x.values.get(k) for x in ss}) > 1))
    groups = list(dict.fromkeys(tuple(s.values.get(k) for k in others) for s in slots))
    tables = []
    for g in groups:
        cells = [[Cell() for _ in col_vals] for _ in row_vals]
        for s in slots:
            if tuple(s.values.get(k) for k in others) != g:
                continue
            for i, r in enumerate(row_vals):
                for j, c in enumerate(col_vals):
                    if _fits(s.key(rows), r) and _fits(s.key(cols), c):
                        cells[i][j].runs.extend(s.runs)
        sub = ", ".join(f"{short(k)}={v}" for k, v in zip(others, g, strict=True) if v is not None)
        tables.append(Table(
            "pivot", " ".join(x for x in (title, f"({sub})" if sub else "") if x),
            ",".join(rows), ",".join(cols), [axis_label(rows, r) for r in row_vals],
            [axis_label(cols, c) for c in col_vals], cells,
            corner=f"{_axis_name(rows, rep)} \\ {_axis_name(cols, rep)}",
            per_row=bool(set(rows) & set(MODEL_KEYS)),
            row_name=axis_key(rows, rep), col_name=axis_key(cols, rep)))
    return tables


def _shared_label_keys(slots: Sequence[Slot]) -> list[str]:
    """The keys that tell apart points sharing one label (``kd`` at ``T`` 1, 2, 4...), in order
    of appearance: a list table shows them as columns. None when every label is its own."""
    groups: dict[str, list[Slot]] = {}
    for s in slots:
        if s.label:
            groups.setdefault(s.label, []).append(s)
    keys = dict.fromkeys(k for s in slots for k in s.values)
    return [k for k in keys if any(len({s.values.get(k) for s in g}) > 1
                                   for g in groups.values() if len(g) > 1)]


def _list(slots: Sequence[Slot], title: str, rep: Mapping[str, Any]) -> Table:
    labelled = any(s.label for s in slots)
    shared = _shared_label_keys(slots)
    table = Table("list", title, None, None, [], [""], [],
                  corner=rep.get("label_header") or ("" if labelled else "point"),
                  row_name=rep.get("label_header") or "point",
                  extra_cols=[short(k) for k in shared], extra_keys=shared)
    for s in slots:
        table.row_labels.append(s.label or ", ".join(f"{short(k)}={v}" for k, v in s.values.items()))
        table.cells.append([Cell(list(s.runs))])
        if shared:
            table.extra.append([s.values.get(k, "") for k in shared])
    return table


def _trials(space: Mapping[str, Any], children: Sequence[Child], metric: str, title: str,
            rep: Mapping[str, Any]) -> Table:
    """A sampled search (or a parent run without a sweep definition): one row per trial."""
    swept = list((space.get("params") or {}).keys()) or list(
        dict.fromkeys(k for c in children for k in c.coords))
    hib = higher_is_better(metric)

    def order(c: Child) -> tuple[bool, float, int]:
        v = c.value(metric) if c.finished else None
        return (v is None, -(v or 0.0) if hib else (v or 0.0),
                c.trial if c.trial is not None else 1 << 30)

    table = Table("list", title, None, None, [], [""], [], corner=rep.get("label_header") or "trial",
                  extra_cols=[short(k) for k in swept], extra_keys=list(swept),
                  row_name=rep.get("label_header") or "trial")
    for c in sorted(children, key=order):
        table.row_labels.append(str(c.trial) if c.trial is not None else c.run_id[:8])
        table.extra.append([_fmt_number(c.coords.get(k, "")) for k in swept])
        table.cells.append([Cell([c])])
    return table


def _fmt_number(text: str) -> str:
    try:
        v = float(text)
    except ValueError:
        return text
    return text if len(text) <= 8 else f"{v:.4g}"
