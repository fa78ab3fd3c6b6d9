"""What the preset point generators share (``crd_benchmark_points.py``, ``logit_stand_points.py``):
one YAML flow mapping per point, and rewriting or checking a preset's ``points:`` block."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path


def value(v: object) -> str:
    """A YAML scalar: booleans as ``true``/``false``, strings quoted unless plain names."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return f'"{v}"' if isinstance(v, str) and not v.replace("_", "").isalnum() else str(v)


def point(label: str, values: dict[str, object]) -> str:
    """One point, ``      - {_label_: LABEL, key: value, ...}``."""
    body = ", ".join(f"{k}: {value(v)}" for k, v in values.items())
    return f"      - {{_label_: {value(label)}, {body}}}"


def render(text: str, lines: list[str]) -> str:
    """``text`` (a preset) with everything after its ``    points:`` line replaced by ``lines``."""
    head = text[:text.index("    points:\n") + len("    points:\n")]
    return head + "\n".join(lines) + "\n"


def main(yaml: Path, points: Callable[[], list[str]], script: str, count: int | None = None) -> int:
    """Rewrite ``yaml``'s points, or with ``--check`` exit 1 when they are out of date."""
    text = yaml.read_text()
    new = render(text, points())
    if "--check" in sys.argv:
        if new != text:
            print(f"{yaml} is out of date: run python tools/{script}")
            return 1
        return 0
    yaml.write_text(new)
    print(f"wrote {len(points()) if count is None else count} points to {yaml}")
    return 0
