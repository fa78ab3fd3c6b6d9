"""Extra views of a training batch: the *strong* view that MLKD (and FixMatch-style methods) train on.

A method that reads a second view of each batch names it in ``Method.views`` (``("strong",)``);
the cohort then asks the batch stream for it (``loader.view("strong")``) once per batch and hands
it to every member that asked, with the teacher's output on it computed once. The view is made
on the device from the same samples as the batch (the same indices, in the same order):

* an **independent** crop and flip, drawn like the batch's own augmentation (``dataset.augment``),
* **RandAugment** as MLKD's code uses it (Jin et al., CVPR 2023, code Jin-Ying/Multi-Level-Logit-
  Distillation and sunshangquan/logit-standardization-KD, ``mdistiller/dataset/cifar100.py``,
  the FixMatch variant: ``RandAugment(2, 10)``): 2 operations per image drawn with replacement
  from 14, each at a magnitude drawn uniformly from the operation's range (:data:`STRONG_OPS`),
* **Cutout** of a square of side ``v * size``, ``v ~ U[0, 0.5)``, centred uniformly in the image
  its corner moved into the image, filled with the grey (125, 123, 114).

Its random numbers come from their own generator, seeded by ``(data seed, epoch, "strong")``,
drawn for the whole epoch at its first request, position ``j`` for the ``j``-th sample served:
the strong view of a batch depends on nothing else, so it is the same for every member, the
same after a resume at any epoch, the same for each process's part of a batch under
``torchrun``, and making it changes nothing in the batch stream (members that do not ask for it
get the same batches as without it, and pay nothing: it is made only when a member asks).

The operations are torchvision's (``torchvision.transforms.v2.functional``) on uint8 images,
one image at a time: torchvision's ``RandAugment`` draws one operation and magnitude per call
(per batch), and MLKD's draws them per image. Measured cost: about 0.3 ms per image on one CPU
core (docs/benchmarks.md), small beside the two forward passes per view it feeds.
"""

from __future__ import annotations

import math

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor

#: MLKD's RandAugment list (name, lowest, highest magnitude), in its order.
STRONG_OPS: tuple[tuple[str, float, float], ...] = (
    ("autocontrast", 0.0, 1.0), ("brightness", 0.05, 0.95), ("color", 0.05, 0.95),
    ("contrast", 0.05, 0.95), ("equalize", 0.0, 1.0), ("identity", 0.0, 1.0),
    ("posterize", 4.0, 8.0), ("rotate", -30.0, 30.0), ("sharpness", 0.05, 0.95),
    ("shear_x", -0.3, 0.3), ("shear_y", -0.3, 0.3), ("solarize", 0.0, 256.0),
    ("translate_x", -0.3, 0.3), ("translate_y", -0.3, 0.3),
)
NUM_OPS = 2            # operations per image (RandAugment's n)
CUTOUT_MAX = 0.5       # Cutout's side, as a fraction of the image side, is U[0, CUTOUT_MAX)
CUTOUT_FILL = (125, 123, 114)
VIEWS = ("strong",)    # the views a batch stream can make
STRONG_TAG = 0x57_52_4F_4E_47  # "STRONG": mixed into the view's seed


def draw_strong(g: torch.Generator, n: int) -> dict[str, Tensor]:
    """The RandAugment and Cutout parameters of ``n`` images (CPU tensors, row ``j`` = image
    ``j``): ``ops`` (n, 2) operation indices, ``mags`` (n, 2) magnitudes, ``cut`` (n, 3) the
    Cutout side fraction and its centre (x, y) as fractions of the width and height."""
    ops = torch.randint(0, len(STRONG_OPS), (n, NUM_OPS), generator=g)
    u = torch.rand(n, NUM_OPS, generator=g, dtype=torch.float64)
    lo = torch.tensor([op[1] for op in STRONG_OPS], dtype=torch.float64)[ops]
    hi = torch.tensor([op[2] for op in STRONG_OPS], dtype=torch.float64)[ops]
    cut = torch.rand(n, 3, generator=g, dtype=torch.float64)
    cut[:, 0] *= CUTOUT_MAX
    return {"ops": ops, "mags": lo + (hi - lo) * u, "cut": cut}


def _apply(img: Tensor, name: str, v: float) -> Tensor:
    """One operation on one uint8 CHW image, with PIL's conventions as MLKD's code uses them."""
    h, w = img.shape[-2:]
    if name == "autocontrast":
        return TF.autocontrast(img)
    if name == "brightness":
        return TF.adjust_brightness(img, v)
    if name == "color":
        return TF.adjust_saturation(img, v) if img.shape[0] == 3 else img
    if name == "contrast":
        return TF.adjust_contrast(img, v) if img.shape[0] in (1, 3) else img
    if name == "equalize":
        return TF.equalize(img)
    if name == "posterize":
        return TF.posterize(img, max(1, int(v)))
    if name == "rotate":
        return TF.rotate(img, v)
    if name == "sharpness":
        return TF.adjust_sharpness(img, v)
    if name in ("shear_x", "shear_y"):  # PIL's affine (1, v, 0, 0, 1, 0): about the top-left
        shear = [math.degrees(math.atan(v)), 0.0]
        return TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0,
                         shear=shear if name == "shear_x" else shear[::-1], center=[0, 0])
    if name == "solarize":  # pixels >= v inverted (v > 255: none)
        return TF.solarize(img, v) if v <= 255 else img
    if name in ("translate_x", "translate_y"):  # a fraction v of the side; PIL's sign
        t = [-v * w, 0.0] if name == "translate_x" else [0.0, -v * h]
        return TF.affine(img, angle=0.0, translate=t, scale=1.0, shear=[0.0, 0.0])
    return img  # identity


def cutout(img: Tensor, side: float, cx: float, cy: float) -> Tensor:
    """Fill with grey the square of side ``side`` pixels centred at (cx, cy), its top-left corner
    moved into the image, as the authors' ``CutoutAbs`` (PIL's rectangle includes both corners)."""
    if side <= 0:
        return img
    h, w = img.shape[-2:]
    x0, y0 = int(max(0.0, cx - side / 2.0)), int(max(0.0, cy - side / 2.0))
    x1, y1 = int(min(w, x0 + side)) + 1, int(min(h, y0 + side)) + 1  # PIL: corners inclusive
    fill = torch.tensor(CUTOUT_FILL[:img.shape[0]] if img.shape[0] <= 3 else [127] * img.shape[0],
                        dtype=img.dtype, device=img.device)
    img = img.clone()
    img[:, y0:y1, x0:x1] = fill.view(-1, 1, 1)
    return img


def strong_augment(x: Tensor, params: dict[str, Tensor]) -> Tensor:
    """RandAugment(2) then Cutout on a uint8 NCHW batch, image ``i`` with row ``i`` of ``params``."""
    if x.dtype != torch.uint8:
        x = x.round().clamp(0, 255).to(torch.uint8)
    ops, mags, cut = params["ops"].tolist(), params["mags"].tolist(), params["cut"].tolist()
    h, w = x.shape[-2:]
    out = []
    for i, img in enumerate(x):
        for k in range(NUM_OPS):
            img = _apply(img, STRONG_OPS[ops[i][k]][0], mags[i][k])
        frac, fx, fy = cut[i]
        out.append(cutout(img, frac * w, fx * w, fy * h))
    return torch.stack(out) if out else x


__all__ = ["STRONG_OPS", "VIEWS", "cutout", "draw_strong", "strong_augment"]
