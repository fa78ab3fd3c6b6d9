"""Published numbers of the tables the presets reproduce, keyed like the report's cells.

Each :class:`Published` table holds top-1 accuracies (%) exactly as printed by its source, with
rows and columns named as the report names them: a model pair is ``"TEACHER -> STUDENT"`` in
kdsweep's model names (``python -m kdsweep.zoo``), a method column is the preset's point label
(``vanilla``, ``kd``, ``crd+kd``, ...), grid axes are the override values (``"0.2"``, ``"16"``),
and one-column tables (one row per point) use the column ``""``. A preset names its table with
``hydra.sweeper.report.published: ID``; the report prints each number beside the measured cell,
and the difference measured - published with the measure the source reports (``best`` epoch or
``last`` epoch, :attr:`Published.metric`). Missing numbers (``-`` in the source) are absent.

Sources: the public READMEs of PkuDavidGuan/Distillation, wangziren1/knowledge_distill_on_mini-imagenet,
Yahya-Abbas/ModReduce and a KETI KD study (ResNet152 -> EfficientNet-B0), RepDistiller
(Tian et al., CRD, ICLR 2020) + mdistiller (Zhao et al., DKD, CVPR 2022) for the CIFAR-100 benchmark,
sunshangquan/logit-standardization-KD (Sun et al., CVPR 2024: KD, CTKD, DKD, MLKD with and without
logit standardization) and hunto/DIST_KD (Huang et al., NeurIPS 2022) for the logit methods.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

METRIC = {"best": "best_val_acc", "last": "final_val_acc"}


@dataclass(frozen=True)
class Published:
    id: str
    source: str                     # repository / paper, as a reader would cite it
    title: str
    dataset: str                    # kdsweep's data set name
    rows: tuple[str, ...]
    cols: tuple[str, ...]
    values: Mapping[tuple[str, str], float]
    teacher: Mapping[str, float] = field(default_factory=dict)   # row -> teacher accuracy
    student: Mapping[str, float] = field(default_factory=dict)   # row -> student trained alone
    gaps: Mapping[tuple[str, str], float] = field(default_factory=dict)  # train - val accuracy
    measure: str = "best"           # what the source reports: "best" or "last" epoch
    col_measure: Mapping[str, str] = field(default_factory=dict)  # per-column exceptions
    note: str = ""

    def value(self, row: str, col: str) -> float | None:
        return self.values.get((row, col))

    def metric(self, col: str) -> str:
        """The measured metric the published number of ``col`` compares with."""
        return METRIC[self.col_measure.get(col, self.measure)]


def _grid(rows: Sequence[str], cols: Sequence[str],
          table: Sequence[Sequence[float | None]]) -> dict[tuple[str, str], float]:
    assert len(table) == len(rows) and all(len(r) == len(cols) for r in table)
    return {(r, c): v for r, row in zip(rows, table, strict=True)
            for c, v in zip(cols, row, strict=True) if v is not None}


def _column(rows: Sequence[str], values: Sequence[float]) -> dict[tuple[str, str], float]:
    return {(r, ""): v for r, v in zip(rows, values, strict=True)}


_TABLES: dict[str, Published] = {}


def _add(t: Published) -> None:
    assert t.id not in _TABLES and set(k for k, _ in t.values) <= set(t.rows), t.id
    _TABLES[t.id] = t


# ------------------------------------------------------------------ PkuDavidGuan/Distillation
_PKU_METHODS = ("vanilla", "kd", "at", "sp", "margin_relu")
_PKU_SRC = "PkuDavidGuan/Distillation (README, 'Expermental Results')"
_PKU_NOTE = ("200 epochs; LR schedule, kd alpha/T per row and best-or-last epoch are not stated "
             "(compared with the best epoch).")
_rows = ("wrn_16_2", "wrn_16_4", "wrn_28_2")
_vals = [[73.42, 74.02, 73.1, 74.12, 75.41],
         [77.24, 78.56, 77.43, 78.67, 79.39],
         [75.78, 76.14, 75.41, 77.0, 77.86]]
_add(Published(
    "pkudavidguan_cifar100", _PKU_SRC, "Results on CIFAR100, teacher WRN-28-4", "cifar100",
    _rows, _PKU_METHODS, _grid(_rows, _PKU_METHODS, _vals),
    teacher=dict.fromkeys(_rows, 79.17), student={r: v[0] for r, v in zip(_rows, _vals, strict=True)},
    note=_PKU_NOTE))
_rows = ("ShuffleV2_2_0 -> ShuffleV2", "ShuffleV2_2_0 -> ShuffleV2_0_5", "ShuffleV2 -> ShuffleV2_0_5")
_vals = [[78.11, 85.78, 84.71, 85.32, 85.29],
         [73.82, 80.34, 79.06, 79.15, 78.79],
         [73.82, 80.29, 78.42, 79.02, 79.69]]
_add(Published(
    "pkudavidguan_cinic10", _PKU_SRC, "Results on CINIC10 (ShuffleNetV2 widths 2.0, 1.0, 0.5)",
    "cinic10", _rows, _PKU_METHODS, _grid(_rows, _PKU_METHODS, _vals),
    teacher=dict(zip(_rows, (81.5, 81.5, 78.11), strict=True)),
    student={r: v[0] for r, v in zip(_rows, _vals, strict=True)}, note=_PKU_NOTE))
_alphas, _temps = ("0.2", "0.4", "0.6", "0.8"), ("2", "4", "8", "16")
_add(Published(
    "pkudavidguan_kd_grid", _PKU_SRC.replace("'Expermental Results'", "'Grid Search for KD'"),
    "Grid search for KD, WRN-28-4 -> WRN-16-2, CIFAR-100 (rows alpha = soft-loss weight, cols T)",
    "cifar100", _alphas, _temps, _grid(_alphas, _temps, [
        [74.65, 74.88, 74.74, 74.45],
        [74.2, 74.32, 74.79, 74.81],
        [73.77, 74.9, 74.5, 74.28],
        [73.27, 73.99, 74.31, 73.89]]),
    teacher=dict.fromkeys(_alphas, 79.17), student=dict.fromkeys(_alphas, 73.42), note=_PKU_NOTE))

# --------------------------------------------------- wangziren1/knowledge_distill_on_mini-imagenet
_WZ_SRC = "wangziren1/knowledge_distill_on_mini-imagenet (README, 'Results')"
_WZ_NOTE = ("mini-ImageNet, 100 epochs, batch 64; best-or-last epoch not stated (compared with "
            "the best epoch).")
_rows = ("steplr", "cosinlr", "cosinlr + warmup 1 epoch", "cosinlr + warmup 3 epoch")
_add(Published(
    "wangziren1_tricks", _WZ_SRC, "tricks, shufflenet_v2_x1_0 trained alone", "mini_imagenet",
    _rows, ("",), _column(_rows, (76.71, 77.72, 78.84, 77.76)),
    gaps={("cosinlr + warmup 1 epoch", ""): 7.62}, note=_WZ_NOTE))
_rows = ("tv_shufflenet_v2_x1_0", "tv_shufflenet_v2_x1_5", "tv_shufflenet_v2_x2_0")
_add(Published(
    "wangziren1_shufflenet", _WZ_SRC, "shufflenet: three widths trained alone "
    "(cosinlr + warmup 1 epoch)", "mini_imagenet", _rows, ("",),
    _column(_rows, (78.84, 79.1, 80.83)), gaps={("tv_shufflenet_v2_x1_0", ""): 7.62},
    note=_WZ_NOTE))
_alphas, _temps = ("0.9", "0.7", "0.6", "0.5"), ("1", "3", "5", "10")
_add(Published(
    "wangziren1_kd_grid", _WZ_SRC, "KD shufflenet_v2_x2_0 -> shufflenet_v2_x1_0 (rows alpha = "
    "soft-loss weight, cols T; sparse as published)", "mini_imagenet", _alphas, _temps,
    _grid(_alphas, _temps, [[79.64, 81.10, 80.65, 80.875], [None, 81.27, None, None],
                            [None, 81.28, None, None], [None, 80.78, None, None]]),
    teacher=dict.fromkeys(_alphas, 80.83), student=dict.fromkeys(_alphas, 78.84),
    gaps={("0.6", "3"): 6.0}, note=_WZ_NOTE))
_rows = ("tv_resnet18", "tv_resnet34", "tv_resnet50", "tv_resnet50 -> tv_resnet18 (kd)")
_add(Published(
    "wangziren1_resnet", _WZ_SRC, "resnet: three depths trained alone, and KD resnet50 -> "
    "resnet18 at alpha 0.6, T 3", "mini_imagenet", _rows, ("",),
    _column(_rows, (79.11, 81.0, 81.79, 82.45)),
    teacher={"tv_resnet50 -> tv_resnet18 (kd)": 81.79},
    student={"tv_resnet50 -> tv_resnet18 (kd)": 79.11},
    gaps={("tv_resnet18", ""): 14.17, ("tv_resnet50 -> tv_resnet18 (kd)", ""): 10.08},
    note=_WZ_NOTE))

# ------------------------------------------------------------------------ KETI KD study
_KETI_SRC = "KETI KD study, ResNet152 -> EfficientNet-B0 (README, 'Results on cifar10/ImageNet')"
_rows = ("ResNeXt29_32x8d -> EfficientNetB0", "ResNet152 -> EfficientNetB0",
         "densenet40 -> EfficientNetB0")
_add(Published(
    "keti_cifar10", _KETI_SRC, "CIFAR-10: three teachers -> EfficientNet-B0, the student "
    "trained alone first (90.67%) and then fine-tuned with KD", "cifar10", _rows,
    ("vanilla", "kd"), {**{(r, "kd"): v for r, v in zip(_rows, (92.20, 92.12, 91.63), strict=True)},
                        **{(r, "vanilla"): 90.67 for r in _rows}},
    teacher=dict(zip(_rows, (92.66, 92.41, 92.26), strict=True)), student=dict.fromkeys(_rows, 90.67),
    note="Schedule, T, weight and best-or-last epoch not stated (compared with the best epoch)."))
_row = "tv_resnet152 -> tv_efficientnet_b0"
_add(Published(
    "keti_imagenet", _KETI_SRC, "ImageNet: torchvision ResNet152 -> EfficientNet-B0 "
    "(lukemelas/EfficientNet-PyTorch), both pretrained", "imagenet", (_row,),
    ("vanilla", "kd"), {(_row, "vanilla"): 76.3, (_row, "kd"): 77.07},
    teacher={_row: 78.31}, student={_row: 76.3},
    note="The teacher is torchvision's ResNet152 V1 weights (78.31%); kdsweep's pretrained "
         "tv_resnet152 loads torchvision's DEFAULT (V2) weights."))
_add(Published(
    "keti_size", _KETI_SRC, "Size of ResNet152 and EfficientNet-B0 (units not stated) and "
    "the compression ratio", "", ("cifar10", "imagenet"), ("teacher", "student", "ratio %"),
    {("cifar10", "teacher"): 72.0, ("cifar10", "student"): 6.6, ("cifar10", "ratio %"): 9.16,
     ("imagenet", "teacher"): 104.4, ("imagenet", "student"): 20.7,
     ("imagenet", "ratio %"): 19.83}))

# ------------------------------------------------------ CRD / DKD CIFAR-100 benchmark
_CRD_SRC = ("RepDistiller README (Tian et al., CRD, ICLR 2020) and mdistiller README "
            "(Zhao et al., DKD, CVPR 2022; DOT, ICCV 2023)")
_CRD_COLS = ("vanilla", "kd", "fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "fsp",
             "nst", "crd", "crd+kd", "dkd", "ofd", "reviewkd", "kd+dot")
#             teacher, vanilla, KD, FitNet, AT, SP, RKD, CRD, DKD, PKT
_CRD = {
    "wrn_40_2 -> wrn_16_2": (75.61, 73.26, 74.92, 73.58, 74.08, 73.83, 73.35, 75.48, 76.23, 74.54),
    "wrn_40_2 -> wrn_40_1": (75.61, 71.98, 73.54, 72.24, 72.77, 72.43, 72.22, 74.14, 74.81, 73.45),
    "resnet56 -> resnet20": (72.34, 69.06, 70.66, 69.21, 70.55, 69.67, 69.61, 71.16, 71.97, 70.34),
    "resnet110 -> resnet20": (74.31, 69.06, 70.67, 68.99, 70.22, 70.04, 69.25, 71.46, None, 70.25),
    "resnet110 -> resnet32": (74.31, 71.14, 73.08, 71.06, 72.31, 72.69, 71.82, 73.48, 74.11, 72.61),
    "resnet32x4 -> resnet8x4": (79.42, 72.50, 73.33, 73.50, 73.44, 72.94, 71.90, 75.51, 76.32,
                                73.64),
    "vgg13 -> vgg8": (74.64, 70.36, 72.98, 71.02, 71.43, 72.68, 71.48, 73.94, 74.68, 72.88),
    "vgg13 -> MobileNetV2": (74.64, 64.60, 67.37, 64.14, 59.40, 66.30, 64.52, 69.73, 69.71, 67.13),
    "ResNet50 -> MobileNetV2": (79.34, 64.60, 67.35, 63.16, 58.58, 68.08, 64.43, 69.11, 70.35,
                                66.52),
    "ResNet50 -> vgg8": (79.34, 70.36, 73.81, 70.69, 71.84, 73.34, 71.50, 74.30, None, 73.01),
    "resnet32x4 -> ShuffleV1": (79.42, 70.50, 74.07, 73.59, 71.73, 73.48, 72.28, 75.11, 76.45,
                                74.10),
    "resnet32x4 -> ShuffleV2": (79.42, 71.82, 74.45, 73.54, 72.73, 74.56, 73.21, 75.65, 77.07,
                                74.69),
    "wrn_40_2 -> ShuffleV1": (75.61, 70.50, 74.83, 73.73, 73.32, 74.52, 72.21, 76.05, 76.70, 73.89),
}
_vals = {}
for _r, (_t, _v, _kd, _fit, _at, _sp, _rkd, _crd, _dkd, _pkt) in _CRD.items():
    _vals.update({(_r, c): x for c, x in zip(
        ("vanilla", "kd", "fitnet", "at", "sp", "rkd", "pkt", "crd", "dkd"),
        (_v, _kd, _fit, _at, _sp, _rkd, _pkt, _crd, _dkd), strict=True) if x is not None})
# RepDistiller README, its other methods, in the order of _CRD's rows (None: not printed).
_REPD_MORE = {
    "cc": (73.56, 72.21, 69.63, 69.48, 71.48, 72.97, 70.71, 64.86, 65.43, 70.25, 71.14, 71.29,
           71.38),
    "vid": (74.11, 73.30, 70.38, 70.16, 72.61, 73.09, 71.23, 65.56, 67.57, 70.30, 73.38, 73.40,
            73.61),
    "ab": (72.50, 72.38, 69.47, 69.53, 70.98, 73.17, 70.94, 66.06, 67.20, 70.65, 73.55, 74.31,
           73.34),
    "ft": (73.25, 71.59, 69.84, 70.22, 72.37, 72.86, 70.58, 61.78, 60.99, 70.29, 71.75, 72.50,
           72.03),
    "fsp": (72.91, None, 69.95, 70.11, 71.89, 72.62, 70.23, None, None, None, None, None, None),
    "nst": (73.68, 72.24, 69.60, 69.53, 71.96, 73.30, 71.53, 58.16, 64.96, 71.28, 74.12, 74.68,
            74.89),
}
for _c, _col in _REPD_MORE.items():
    _vals.update({(_r, _c): x for _r, x in zip(_CRD, _col, strict=True) if x is not None})
# ReviewKD (its paper's numbers, as other READMEs print them) and KD+DOT (mdistiller README).
_vals.update({("resnet32x4 -> resnet8x4", "reviewkd"): 75.63,
              ("wrn_40_2 -> wrn_16_2", "reviewkd"): 76.12,
              ("resnet32x4 -> resnet8x4", "kd+dot"): 75.12, ("vgg13 -> vgg8", "kd+dot"): 73.77,
              ("resnet32x4 -> ShuffleV2", "kd+dot"): 75.55})
_add(Published(
    "crd_dkd_cifar100", _CRD_SRC, "CIFAR-100 benchmark: 13 teacher -> student pairs", "cifar100",
    tuple(_CRD), _CRD_COLS, _vals, teacher={r: v[0] for r, v in _CRD.items()},
    student={r: v[1] for r, v in _CRD.items()}, measure="last",
    col_measure={"dkd": "best", "reviewkd": "best", "kd+dot": "best"},
    note="RepDistiller reports the last epoch of one run; mdistiller (DKD, KD+DOT) the mean of 5 "
         "runs of the best epoch. No CRD+KD, OFD or KD-SVD numbers in these READMEs; FSP only "
         "for pairs of equal widths; ReviewKD's two numbers are its paper's, as the ND "
         "repository's README quotes them (mdistiller's README prints none). mdistiller labels "
         "its DKD resnet32x4 -> ShuffleV2 column 'MobileNet-V2' (a typo: its config is "
         "res32x4_shuv2)."))

# ------------------------------------------------------------------ Yahya-Abbas/ModReduce
_MR = {  # teacher, student, Hinton KD, SemCKD, CRD, ModReduce (WAvg)
    "wrn_40_2 -> wrn_16_2": (75.61, 73.26, 75.39, 75.1, 76.12, 75.44),
    "wrn_40_2 -> wrn_40_1": (75.61, 71.98, 74.21, 73.11, 74.91, 74.84),
    "resnet56 -> resnet20": (72.34, 69.06, 71.7, 70.91, 71.72, 71.99),
    "resnet110 -> resnet20": (74.31, 69.06, 70.99, 70.95, 71.35, 72.01),
    "resnet110 -> resnet32": (74.31, 71.14, 73.66, 73.47, 73.65, 74.34),
    "vgg13 -> MobileNetV2": (74.64, 64.6, 68.72, 68.66, 69.66, 69.23),
    "resnet32x4 -> ShuffleV1": (79.42, 70.5, 74.59, 77.21, 75.77, 76.96),
    "wrn_40_2 -> ShuffleV1": (75.61, 70.5, 75.45, 76.93, 76.59, 77.14),
    "resnet32x4 -> resnet8x4": (79.42, 73.09, 74.32, 75.55, 74.97, 75.78),
    "vgg13 -> vgg8": (74.64, 70.46, 73.62, 74.08, 74.39, 74.64),
    "resnet32x4 -> ShuffleV2": (79.42, 72.6, 75.73, 78.07, 76.57, 78.23),
    "resnet32x4 -> vgg8": (79.42, 70.46, 72.48, 75.02, 73.68, 75.21),
    "resnet32x4 -> vgg13": (79.42, 74.82, 77.21, 79.14, 77.71, 79.51),
    "vgg13 -> ShuffleV2": (74.64, 72.6, 75.89, 76.24, 76.26, 76.76),
    "wrn_40_2 -> MobileNetV2": (75.61, 65.43, 69.02, 69.77, 70.13, 69.37),
}
_MR_COLS = ("vanilla", "kd", "semckd", "crd", "modreduce")
_add(Published(
    "modreduce_cifar100", "Yahya-Abbas/ModReduce (README, 'CIFAR-100 results')",
    "CIFAR-100: 15 teacher -> student pairs (Exp 1-15)", "cifar100", tuple(_MR), _MR_COLS,
    {(r, c): x for r, v in _MR.items() for c, x in zip(_MR_COLS, v[1:], strict=True)},
    teacher={r: v[0] for r, v in _MR.items()}, student={r: v[1] for r, v in _MR.items()},
    note="Exp 1-8 quote the CRD paper's baselines, Exp 9-15 SemCKD's; best-or-last epoch not "
         "stated (compared with the best epoch)."))

# ------------------------------------------------ sunshangquan/logit-standardization-KD
_LS_COLS = ("kd", "kd+ls", "ctkd", "ctkd+ls", "dkd", "dkd+ls", "mlkd", "mlkd+ls")
#   KD, KD+LS, CTKD, CTKD+LS, DKD, DKD+LS, MLKD, MLKD+LS (the README's rows, here per pair)
_LS = {
    "resnet32x4 -> resnet8x4": (73.33, 76.62, 73.39, 76.67, 76.32, 77.01, 77.08, 78.28),
    "vgg13 -> vgg8": (72.98, 74.36, 73.52, 74.47, 74.68, 74.81, 75.18, 75.22),
    "wrn_40_2 -> wrn_40_1": (73.54, 74.37, 73.93, 74.58, 74.81, 74.89, 75.35, 75.56),
    "wrn_40_2 -> wrn_16_2": (74.92, 76.11, 75.45, 76.08, 76.24, 76.39, 76.63, 76.95),
    "resnet56 -> resnet20": (70.66, 71.43, 71.19, 71.34, 71.97, 72.32, 72.19, 72.33),
    "resnet110 -> resnet32": (73.08, 74.17, 73.52, 74.01, 74.11, 74.29, 74.11, 74.32),
    "resnet110 -> resnet20": (70.67, 71.48, 70.99, 71.39, 71.06, 71.85, 71.89, 72.27),
    "resnet32x4 -> ShuffleV2": (74.45, 75.56, 75.37, 76.18, 77.07, 77.37, 78.44, 78.76),
    "resnet32x4 -> wrn_16_2": (74.90, 75.26, 74.57, 75.16, 75.70, 76.19, 76.52, 77.53),
    "resnet32x4 -> wrn_40_2": (77.70, 77.92, 77.66, 77.99, 78.46, 78.95, 79.26, 79.66),
    "wrn_40_2 -> resnet8x4": (73.97, 77.11, 74.61, 77.03, 75.56, 76.75, 77.33, 77.68),
    "wrn_40_2 -> MobileNetV2": (68.36, 69.23, 68.34, 69.53, 69.28, 70.01, 70.78, 71.61),
    "vgg13 -> MobileNetV2": (67.37, 68.61, 68.50, 68.98, 69.71, 69.98, 70.57, 70.94),
    "ResNet50 -> MobileNetV2": (67.35, 69.02, 68.67, 69.36, 70.35, 70.45, 71.04, 71.19),
}
# The teachers are mdistiller's CIFAR-100 checkpoints (the README downloads them), i.e. the CRD
# benchmark's: their accuracy and the students trained alone as RepDistiller's README prints them
# (wrn_40_2 alone is the wrn_40_2 teacher).
_LS_TEACHER = {"resnet32x4": 79.42, "vgg13": 74.64, "wrn_40_2": 75.61, "resnet56": 72.34,
               "resnet110": 74.31, "ResNet50": 79.34}
_LS_STUDENT = {"resnet8x4": 72.50, "vgg8": 70.36, "wrn_40_1": 71.98, "wrn_16_2": 73.26,
               "resnet20": 69.06, "resnet32": 71.14, "ShuffleV2": 71.82, "wrn_40_2": 75.61,
               "MobileNetV2": 64.60}
_add(Published(
    "logit_stand_cifar100", "sunshangquan/logit-standardization-KD (README, 'CIFAR-100', "
    "Sun et al., CVPR 2024)", "CIFAR-100: KD, CTKD, DKD and MLKD without and with logit "
    "standardization (+ls), 14 teacher -> student pairs", "cifar100", tuple(_LS), _LS_COLS,
    {(r, c): x for r, v in _LS.items() for c, x in zip(_LS_COLS, v, strict=True)},
    teacher={r: _LS_TEACHER[r.split(" -> ")[0]] for r in _LS},
    student={r: _LS_STUDENT[r.split(" -> ")[1]] for r in _LS},
    note="The README's two tables (identical and distinct structures) as one; its logs end with "
         "the best epoch's accuracy (compared with the best epoch), and it notes that averaging "
         "makes the printed numbers differ slightly from the logged ones. Its KD and DKD rows "
         "repeat the CRD/mdistiller numbers where the pairs coincide (RepDistiller's KD is a "
         "last epoch). Teacher and student-alone accuracies are RepDistiller's (the README "
         "prints none)."))

# ------------------------------------------------------------------------ hunto/DIST_KD
_DIST = {  # teacher, student alone, KD (RepDistiller README), DIST
    "wrn_40_2 -> wrn_40_1": (75.61, 71.98, 73.54, 74.43),
    "wrn_40_2 -> wrn_16_2": (75.61, 73.26, 74.92, 75.51),
    "resnet56 -> resnet20": (72.34, 69.06, 70.66, 71.75),
    "resnet32x4 -> resnet8x4": (79.42, 72.50, 73.33, 76.31),
    "resnet32x4 -> ShuffleV1": (79.42, 70.50, 74.07, 76.34),
    "resnet32x4 -> ShuffleV2": (79.42, 71.82, 74.45, 77.35),
    "ResNet50 -> MobileNetV2": (79.34, 64.60, 67.35, 68.66),
}
_add(Published(
    "dist_cifar100", "hunto/DIST_KD (README, 'CIFAR-100'; Huang et al., NeurIPS 2022)",
    "CIFAR-100: DIST beside KD, DIST's pairs", "cifar100", tuple(_DIST), ("kd", "dist"),
    {(r, c): x for r, v in _DIST.items() for c, x in zip(("kd", "dist"), v[2:], strict=True)},
    teacher={r: v[0] for r, v in _DIST.items()}, student={r: v[1] for r, v in _DIST.items()},
    measure="best", col_measure={"kd": "last"},
    note="DIST: mean ± std over runs as its README prints them (± 0.24, 0.30, 0.19, 0.18, 0.25, "
         "0.23 for wrn_40_2 -> wrn_40_1, resnet56 -> resnet20, resnet32x4 -> resnet8x4 / "
         "ShuffleV1 / ShuffleV2, ResNet50 -> MobileNetV2; best-or-last epoch not stated, compared "
         "with the best). Its README prints no wrn_40_2 -> wrn_16_2 row: that DIST number is the "
         "WTTM paper's (Zheng & Yang, ICLR 2024, Table 1). KD is RepDistiller's README (last "
         "epoch of one run), which DIST's README does not print for CIFAR-100; the teacher and "
         "student-alone numbers are those DIST's README prints in parentheses (RepDistiller's; "
         "wrn_16_2 alone from RepDistiller)."))


def table_ids() -> list[str]:
    return sorted(_TABLES)


def get_published(table_id: str) -> Published:
    """The published table ``table_id``; an unknown id is a one-line error naming the valid ones."""
    from kdsweep.errors import ConfigError

    try:
        return _TABLES[table_id]
    except KeyError:
        raise ConfigError(f"hydra.sweeper.report.published={table_id!r} is not a published table; "
                          f"valid: {', '.join(table_ids())}") from None


__all__ = ["METRIC", "Published", "get_published", "table_ids"]
