"""The model zoo's cost table: ``python -m kdsweep.zoo [--teacher NAME] [--num-classes N] [--family F]``.

For every registered model: trainable parameters, MACs of one image at the model's native input
size (32 px for CIFAR models, 224 px for ImageNet ones), and with ``--teacher`` the compression
ratio ``student params / teacher params``. MACs come from ``torch.utils.flop_counter`` (see
:mod:`kdsweep.models.profile`). Models are built on PyTorch's ``meta`` device, so the whole table
takes seconds and no memory: only shapes are propagated.

``--num-classes`` defaults to each model's native benchmark (100 for 32-px models, CIFAR-100;
1000 for 224-px models, ImageNet).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import asdict, dataclass

import torch

from kdsweep.errors import ConfigError, KDSweepError
from kdsweep.models import count_macs, count_parameters, create_model, get_spec, list_models
from kdsweep.models.registry import list_families

__all__ = ["ModelCost", "model_cost", "zoo_table", "format_table", "main"]


@dataclass(frozen=True)
class ModelCost:
    name: str
    family: str
    input_size: int
    num_classes: int
    params: int
    macs: int
    ratio: float | None = None  # params / teacher params, when a teacher is given

    def as_dict(self) -> dict:
        return asdict(self)


def native_num_classes(name: str) -> int:
    return 1000 if get_spec(name).input_size >= 224 else 100


def _table_order(name: str) -> tuple:
    """Group by input size and family, then natural order (resnet8 before resnet14)."""
    spec = get_spec(name)
    natural = tuple(int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name))
    return (spec.input_size, spec.family, natural)


def model_cost(name: str, num_classes: int | None = None) -> ModelCost:
    """Parameters and MACs of ``name`` at its native input size (built on the meta device)."""
    spec = get_spec(name)
    n = num_classes or native_num_classes(name)
    with torch.device("meta"):
        model = create_model(name, n)
    return ModelCost(
        name=name,
        family=spec.family,
        input_size=spec.input_size,
        num_classes=n,
        params=count_parameters(model),
        macs=count_macs(model, spec.input_size, device="meta"),
    )


def zoo_table(
    num_classes: int | None = None, family: str | None = None, teacher: str | None = None
) -> list[ModelCost]:
    """One :class:`ModelCost` per model (of ``family``), with ratios against ``teacher``."""
    if family is not None and family not in list_families():
        raise ConfigError(f"unknown family {family!r}; valid: {', '.join(list_families())}")
    names = sorted(list_models(family=family), key=_table_order)
    teacher_params = None
    if teacher is not None:
        teacher_params = model_cost(teacher, num_classes).params
    rows = []
    for name in names:
        cost = model_cost(name, num_classes)
        if teacher_params:
            cost = ModelCost(**{**cost.as_dict(), "ratio": cost.params / teacher_params})
        rows.append(cost)
    return rows


def format_table(rows: list[ModelCost], teacher: str | None = None) -> str:
    header = ["model", "family", "input", "classes", "params", "params (M)", "MACs (M)"]
    if teacher:
        header.append(f"params / {teacher}")
    lines = [header]
    for r in rows:
        line = [
            r.name,
            r.family,
            str(r.input_size),
            str(r.num_classes),
            f"{r.params:,}",
            f"{r.params / 1e6:.2f}",
            f"{r.macs / 1e6:,.1f}",
        ]
        if teacher:
            line.append(f"{100 * r.ratio:.2f}%")
        lines.append(line)
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    left = {0, 1}
    out = []
    for j, row in enumerate(lines):
        cells = [
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kdsweep.zoo",
        description="Parameters and MACs of every kdsweep model "
        "(MACs of one image at the model's native input size).",
    )
    parser.add_argument("--teacher", help="add the compression ratio params / teacher params")
    parser.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="classifier size (default: 100 for 32-px models, 1000 for 224-px models)",
    )
    parser.add_argument("--family", help=f"only this family ({', '.join(list_families())})")
    args = parser.parse_args(argv)
    try:
        if args.num_classes is not None and args.num_classes < 1:
            raise ConfigError(f"--num-classes must be positive, got {args.num_classes}")
        rows = zoo_table(args.num_classes, args.family, args.teacher)
    except KDSweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(rows, args.teacher))
    return 0


if __name__ == "__main__":
    sys.exit(main())
