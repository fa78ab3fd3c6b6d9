"""``python -m kdsweep.zoo``: the cost table of every model."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kdsweep.models import count_macs, create_model, get_spec, list_models
from kdsweep.zoo import main, model_cost, zoo_table


def _docs_zoo() -> list[list[str]]:
    """The rows of docs/models.md's table "The zoo" (name, family, input, params, ..., MACs)."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()
    section = text.split("## The zoo", 1)[1]
    table = re.search(r"^\| name \| family .*\n\|[-|]+\|\n((?:\|.*\n)+)", section, re.M).group(1)
    return [[c.strip().strip("`") for c in row.strip("|").split("|")] for row in table.splitlines()]


def test_table_has_every_model_with_published_numbers():
    table = zoo_table()
    rows = {r.name: r for r in table}
    assert set(rows) == set(list_models())
    # docs/models.md's copy of the table: the core models, in this order, with these numbers
    # (an extension's models are described in its own README).
    core = [r for r in table
            if get_spec(r.name).constructor.__module__.startswith("kdsweep.models.")]
    doc = _docs_zoo()
    assert [d[0] for d in doc] == [r.name for r in core]
    for d, r in zip(doc, core, strict=True):
        assert (d[1], int(d[2]), int(d[3].replace(",", ""))) == (r.family, r.input_size, r.params), d
        value, unit = float(d[5][:-1].replace(",", "")), d[5][-1]  # "264.9M", "11.51G"
        scale = {"M": 1e6, "G": 1e9}[unit]
        assert abs(value * scale - r.macs) <= 0.5 * scale * 10 ** -(len(d[5].split(".")[1]) - 1), d
    assert rows["resnet56"].params == 861_620 and rows["resnet56"].macs == 125_753_600
    assert rows["resnet32x4"].params == 7_433_860
    # torchvision models at 224 px with 1000 classes: torchvision's documented figures
    assert rows["tv_resnet18"].params == 11_689_512 and rows["tv_resnet18"].input_size == 224
    assert round(rows["tv_resnet18"].macs / 1e9, 2) == 1.81  # torchvision: 1.81 GFLOPS (MACs)
    assert round(rows["tv_resnet50"].macs / 1e9, 2) == 4.09
    assert round(rows["tv_mobilenet_v2"].macs / 1e9, 2) == 0.30
    assert rows["ResNet50"].num_classes == 100 and rows["tv_resnet50"].num_classes == 1000


def test_meta_device_count_equals_a_real_forward():
    real = create_model("ShuffleV2", 10)
    cost = model_cost("ShuffleV2", 10)
    assert cost.macs == count_macs(real, 32) and cost.params == sum(
        p.numel() for p in real.parameters()
    )
    assert next(real.parameters()).device == torch.device("cpu")


def test_teacher_ratio_and_family_filter(capsys):
    assert main(["--teacher", "resnet32x4", "--family", "resnet"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "params / resnet32x4" in lines[0]
    row = next(line for line in lines if line.startswith("resnet8x4 "))
    assert row.split()[-1] == f"{100 * 1_233_540 / 7_433_860:.2f}%" == "16.59%"
    assert "wrn_40_2" not in out
    # natural order inside a family
    names = [line.split()[0] for line in lines[2:]]
    assert names.index("resnet8") < names.index("resnet14") < names.index("resnet110")


def test_num_classes_override(capsys):
    assert main(["--family", "wrn", "--num-classes", "10"]) == 0
    out = capsys.readouterr().out
    assert "691,674" in out and "2,243,546" in out  # wrn_16_2, wrn_40_2 on CIFAR-10


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--teacher", "resnet9000"], "unknown model 'resnet9000'"),
        (["--teacher", "resnet50"], "model 'resnet50' was renamed: use 'tv_resnet50'"),
        (["--family", "transformers"], "unknown family 'transformers'"),
        (["--num-classes", "0"], "--num-classes must be positive"),
    ],
)
def test_bad_arguments_are_one_line_errors(capsys, argv, needle):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needle in err and err.count("\n") == 1


def test_runs_as_a_module():
    proc = subprocess.run(
        [sys.executable, "-m", "kdsweep.zoo", "--family", "vgg", "--teacher", "vgg13"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "vgg8" in proc.stdout and "41.90%" in proc.stdout  # 3,965,028 / 9,462,180
