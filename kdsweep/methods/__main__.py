"""``python -m kdsweep.methods``: every method's hyper-parameters, types, defaults and ranges.

``--markdown`` prints the table kept in ``docs/methods.md`` (between the ``defaults`` markers);
``--write FILE`` replaces that block in FILE. ``tests/test_architecture.py`` fails when the file and
the declarations differ, so the documented defaults are always those of the code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kdsweep.methods import get_method, hparams, list_methods

BEGIN, END = "<!-- defaults:begin (python -m kdsweep.methods --write docs/methods.md) -->", \
    "<!-- defaults:end -->"


def _value(v: object) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return "null" if v is None else str(v)


def markdown() -> str:
    lines = ["| method | option | type | default | allowed |", "|---|---|---|---|---|"]
    for name in list_methods():
        for i, hp in enumerate(hparams(get_method(name))):
            typ = hp.type_name.replace("|", "\\|")  # "float | None" inside a Markdown cell
            lines.append(f"| {'`' + name + '`' if i == 0 else ''} | `method.{hp.name}` | "
                         f"{typ} | `{_value(hp.default)}` | {hp.allowed()} |")
    return "\n".join(lines)


def block() -> str:
    return f"{BEGIN}\n{markdown()}\n{END}"


def replace_block(text: str) -> str:
    if BEGIN not in text or END not in text:
        raise SystemExit(f"the file has no defaults block; add the two lines\n{BEGIN}\n{END}")
    head, rest = text.split(BEGIN, 1)
    return head + block() + rest.split(END, 1)[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kdsweep.methods", description=__doc__)
    ap.add_argument("--write", metavar="FILE", help="replace the defaults block of FILE")
    ap.add_argument("--markdown", action="store_true", help="print the Markdown table")
    args = ap.parse_args(argv)
    if args.write:
        path = Path(args.write)
        path.write_text(replace_block(path.read_text()))
        print(f"updated {path}")
        return 0
    print(markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
