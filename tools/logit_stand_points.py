"""Writes the ``points`` of ``conf/experiment/logit_stand_cifar100.yaml`` (``--check``: checks them).

The logit-standardization README's CIFAR-100 tables (sunshangquan/logit-standardization-KD,
Sun et al., CVPR 2024) are 14 pairs x {KD, CTKD, DKD, MLKD} each without and with logit
standardization (LS): 112 trials whose settings differ per method and per pair (LS's base
temperature and KD weight, MLKD's own recipe and learning rate). This script is where they are
declared; ``tests/test_presets_logit.py`` fails when the YAML differs from what it writes.

    python tools/logit_stand_points.py            # rewrite the YAML's points
    python tools/logit_stand_points.py --check    # exit 1 when the YAML is out of date
"""

from __future__ import annotations

from pathlib import Path

from _points import main, point

YAML = Path(__file__).resolve().parents[1] / "conf" / "experiment" / "logit_stand_cifar100.yaml"

#: The README's two tables in its column order: 7 pairs of one family, then 7 across families.
#: Each teacher's first pair has a student at LR 0.05 (the teacher, trained by the first trial
#: that needs it, gets that recipe), except ResNet50, whose only student is MobileNetV2.
PAIRS = [("resnet32x4", "resnet8x4"), ("vgg13", "vgg8"), ("wrn_40_2", "wrn_40_1"),
         ("wrn_40_2", "wrn_16_2"), ("resnet56", "resnet20"), ("resnet110", "resnet32"),
         ("resnet110", "resnet20"),
         ("resnet32x4", "ShuffleV2"), ("resnet32x4", "wrn_16_2"), ("resnet32x4", "wrn_40_2"),
         ("wrn_40_2", "resnet8x4"), ("wrn_40_2", "MobileNetV2"), ("vgg13", "MobileNetV2"),
         ("ResNet50", "MobileNetV2")]
#: The CRD recipe's rule (mdistiller's configs, CTKD's script): LR 0.01 for these students.
SMALL = ("MobileNetV2", "ShuffleV1", "ShuffleV2")
#: LS's (base temperature, KD weight): the README's command (``--base-temp 2 --kd-weight 9``),
#: except where the log file a README cell links to names other values
#: (``KD_TYPE,TEACHER,STUDENT,BASE_TEMPERATURE,KD_WEIGHT.txt``); only KD+LS links such logs.
LS_DEFAULT = (2, 9)
LS_LINKED = {
    ("kd", "vgg13", "vgg8"): (3, 9), ("kd", "resnet32x4", "wrn_16_2"): (3, 9),
    ("kd", "resnet32x4", "wrn_40_2"): (3, 9), ("kd", "wrn_40_2", "MobileNetV2"): (3, 9),
    ("kd", "vgg13", "MobileNetV2"): (3, 9), ("kd", "ResNet50", "MobileNetV2"): (3, 1),
}
#: Logs in the repository's logs/ that no README cell links (other values per pair; not applied,
#: see the preset's header): KD+LS resnet110 -> resnet20 (4, 12); DKD+LS with weight 12-18 and a
#: sixth field (beta) for 12 pairs; MLKD+LS vgg13 -> vgg8, resnet32x4 -> ShuffleV2 and
#: vgg13 -> MobileNetV2 at (2, 6).
#: MLKD's recipe (conf/schedule/mlkd.yaml: 480 epochs, LR 0.025) and its per-pair LRs, from the
#: repository's configs/cifar100/mlkd/TEACHER_STUDENT.yaml.
MLKD_LR = {("vgg13", "MobileNetV2"): 0.01, ("ResNet50", "MobileNetV2"): 0.01,
           ("wrn_40_2", "MobileNetV2"): 0.005, ("resnet32x4", "ShuffleV2"): 0.01}
LABELS = ("kd", "kd+ls", "ctkd", "ctkd+ls", "dkd", "dkd+ls", "mlkd", "mlkd+ls")


def overrides(label: str, teacher: str, student: str) -> dict[str, object]:
    """The method and schedule overrides of one trial (``label`` is a column of the table)."""
    method, ls = label.split("+")[0], label.endswith("+ls")
    out: dict[str, object] = {"method": method}
    if method == "mlkd":
        out["schedule"] = "mlkd"
        if (teacher, student) in MLKD_LR:
            out["schedule.lr"] = MLKD_LR[teacher, student]
    elif student in SMALL:
        out["schedule.lr"] = 0.01
    if not ls:
        return out
    base, weight = LS_LINKED.get((method, teacher, student), LS_DEFAULT)
    out["method.logit_stand"] = True
    if method == "ctkd":   # CTKD/scripts/run_cifar_distill.sh: -r 0.1 -a 9; T is learned
        out.update({"method.ce_weight": 0.1, "method.kd_weight": weight})
    elif method == "dkd":  # --kd-weight multiplies DKD's alpha and beta (kdsweep: dkd_weight)
        out.update({"method.T": base, "method.dkd_weight": weight})
    else:                  # kd, mlkd: --base-temp, --kd-weight
        out.update({"method.T": base, "method.kd_weight": weight})
    return out




def points() -> list[str]:
    lines = []
    for t, s in PAIRS:
        for label in LABELS:
            over = overrides(label, t, s)
            lines.append(point(label, {"teacher": t, "student": s, **over}))
    return lines


if __name__ == "__main__":
    raise SystemExit(main(YAML, points, "logit_stand_points.py"))
