"""Writes the ``points`` of ``conf/experiment/crd_benchmark.yaml`` (and checks them: ``--check``).

The CRD / DKD CIFAR-100 benchmark is 3 seeds x (every student alone + 13 pairs x the methods the
papers print). Spelling out ~700 points by hand would drift; this script is where the list is
declared, and ``tests/test_presets.py`` fails when the YAML differs from what it writes.

    python tools/crd_benchmark_points.py            # rewrite the YAML's points
    python tools/crd_benchmark_points.py --check    # exit 1 when the YAML is out of date
"""

from __future__ import annotations

from pathlib import Path

from _points import main, point

YAML = Path(__file__).resolve().parents[1] / "conf" / "experiment" / "crd_benchmark.yaml"

#: The 13 pairs: 7 of one family, then 6 across families; each teacher's first pair has a student
#: trained at LR 0.05 (the teacher, trained by the first trial that needs it, gets that recipe).
PAIRS = [("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("resnet56", "resnet20"),
         ("resnet110", "resnet20"), ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"),
         ("vgg13", "vgg8"), ("vgg13", "MobileNetV2"), ("ResNet50", "vgg8"),
         ("ResNet50", "MobileNetV2"), ("resnet32x4", "ShuffleV1"), ("resnet32x4", "ShuffleV2"),
         ("wrn_40_2", "ShuffleV1")]
#: RepDistiller's rule: LR 0.01 for these students, 0.05 otherwise.
SMALL = ("MobileNetV2", "ShuffleV1", "ShuffleV2")
#: label -> the point's method overrides (in the order the report's columns take).
METHODS = {
    "kd": {"method": "kd"},
    "fitnet": {"method": "fitnet"},
    "at": {"method": "at"},
    "sp": {"method": "sp"},
    "cc": {"method": "cc"},
    "vid": {"method": "vid"},
    "rkd": {"method": "rkd"},
    "pkt": {"method": "pkt"},
    "ab": {"method": "ab"},
    "ft": {"method": "ft"},
    "fsp": {"method": "fsp"},
    "nst": {"method": "nst"},
    "crd": {"method": "crd"},
    "crd+kd": {"method": "crd", "method.kd_weight": 1},
    "dkd": {"method": "dkd"},
    "ofd": {"method": "ofd", "method.teacher_bn": "train"},
    "reviewkd": {"method": "reviewkd"},
    "kd+dot": {"method": "kd", "schedule.optimizer": "dot"},
}
#: FSP needs equal channel counts at every stage: RepDistiller prints it for these pairs only.
FSP_PAIRS = {("wrn_40_2", "wrn_16_2"), ("resnet56", "resnet20"), ("resnet110", "resnet20"),
             ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"), ("vgg13", "vgg8")}
SEEDS = (0, 1, 2)




def points() -> list[str]:
    students = list(dict.fromkeys(s for _, s in PAIRS))
    lines = []
    for seed in SEEDS:
        lines.append(f"      # seed={seed}: every student alone, then each pair's methods")
        for s in students:
            lr = {"schedule.lr": 0.01} if s in SMALL else {}
            lines.append(point("vanilla", {"student": s, "method": "ce", **lr, "seed": seed}))
        for t, s in PAIRS:
            lr = {"schedule.lr": 0.01} if s in SMALL else {}
            for label, over in METHODS.items():
                if label == "fsp" and (t, s) not in FSP_PAIRS:
                    continue
                if label == "ft" and s.startswith("vgg"):  # RepDistiller: the run's LR there
                    over = {**over, "method.init_lr": 0.05}
                lines.append(point(label, {"teacher": t, "student": s, **over, **lr,
                                            "seed": seed}))
    return lines


if __name__ == "__main__":
    raise SystemExit(main(YAML, points, "crd_benchmark_points.py", len(points()) - len(SEEDS)))
