"""A KD training step: a RepDistiller-style reference loop vs kdsweep's default path, one run.

    python benchmarks/bench_kd_step.py [--steps 30] [--pairs wrn_40_2:wrn_16_2:64 wrn_28_4:wrn_16_2:128]

The reference loop is written the way RepDistiller's ``train_student.py`` does it: a
``torch.utils.data.DataLoader`` (2 workers) over PIL images with torchvision transforms
(RandomCrop(32, 4), RandomHorizontalFlip, ToTensor, Normalize), fp32, NCHW, the teacher's forward
pass computed live every step, ``DistillKL`` + CE, SGD. kdsweep's path is ``kdsweep.run.run`` with
its defaults (``precision=auto``, channels_last, device-side loader, kept malloc arenas). Both
read the embedded set (5,000 real CIFAR-10 images) and train the same pair at the same batch size.

Prints images/s of each (steady state, after warm-up) and the ratio, then a same-seed accuracy
check: each path trains the same few hundred steps and reports its validation accuracy (fp32 vs
kdsweep's precision: equal within noise, not bit for bit).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
ROOT = Path(__file__).resolve().parents[1]
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class PILDataset:
    """The embedded set as PIL images, transformed per sample (the reference's data path)."""

    def __init__(self, images, labels, train: bool):
        from torchvision import transforms

        self.images, self.labels = images, labels
        ops = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if train else []
        self.tf = transforms.Compose([*ops, transforms.ToTensor(), transforms.Normalize(MEAN, STD)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        img = Image.fromarray(self.images[i].permute(1, 2, 0).numpy())
        return self.tf(img), int(self.labels[i])


def reference(teacher_arch: str, student_arch: str, batch: int, steps: int, warmup: int,
              teacher_state: dict, seed: int = 0) -> tuple[float, float]:
    """(images/s, val acc) of the reference loop."""
    import torch
    import torch.nn.functional as F

    from kdsweep.data import load_embedded
    from kdsweep.models import create_model

    torch.manual_seed(seed)
    emb = load_embedded()
    train = torch.utils.data.DataLoader(PILDataset(emb.train_x, emb.train_y, True), batch_size=batch,
                                        shuffle=True, num_workers=2, drop_last=True,
                                        persistent_workers=True)
    teacher = create_model(teacher_arch, num_classes=10)
    teacher.load_state_dict(teacher_state)
    teacher.eval()
    student = create_model(student_arch, num_classes=10)
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    T, done, seen, start = 4.0, 0, 0, 0.0
    while done < steps + warmup:
        for x, y in train:
            if done == warmup:
                start, seen = time.perf_counter(), 0
            with torch.no_grad():
                t = teacher(x)
            s = student(x)
            kl = F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean") * T * T
            loss = 0.1 * F.cross_entropy(s, y) + 0.9 * kl
            opt.zero_grad()
            loss.backward()
            opt.step()
            done, seen = done + 1, seen + y.numel()
            if done >= steps + warmup:
                break
    rate = seen / (time.perf_counter() - start)
    student.eval()
    val = torch.utils.data.DataLoader(PILDataset(emb.test_x, emb.test_y, False), batch_size=250)
    correct = 0
    with torch.no_grad():
        for x, y in val:
            correct += int((student(x).argmax(1) == y).sum())
    return rate, 100.0 * correct / len(emb.test_y)


def kdsweep_path(teacher_arch: str, student_arch: str, batch: int, steps: int, teacher_ckpt: Path,
                 work: Path) -> tuple[float, float, str]:
    """(images/s of the last epoch, val acc, precision) of kdsweep's default path."""
    from hydra import compose, initialize_config_dir

    from kdsweep.config import register_configs
    from kdsweep.run import run

    register_configs()
    per_epoch = 5000 // batch
    epochs = max(2, -(-steps // per_epoch))
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=[
            "method=kd", f"teacher={teacher_arch}", f"student={student_arch}",
            f"teacher.checkpoint={teacher_ckpt}", f"schedule.batch_size={batch}",
            f"schedule.epochs={epochs}", f"train.limit_train_batches={min(per_epoch, steps)}",
            "schedule.warmup_epochs=0", "schedule.lr=0.05", "train.progress=false",
            f"tracking.uri=sqlite:///{work / 'mlflow.db'}", "resume=false",
            "schedule.eval_batch_size=250"])
    res = run(cfg, output_dir=work / f"{student_arch}-{batch}")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    hist = sorted(client.get_metric_history(res.run_id, "perf/images_per_s"), key=lambda m: m.step)
    return hist[-1].value, res.final_val_acc, client.get_run(res.run_id).data.tags["precision"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30, help="timed steps")
    ap.add_argument("--pairs", nargs="+", default=["wrn_40_2:wrn_16_2:64", "wrn_28_4:wrn_16_2:128"])
    args = ap.parse_args()
    import torch

    from kdsweep.engine import save_checkpoint
    from kdsweep.models import create_model

    work = Path(tempfile.mkdtemp(prefix="kdsweep-bench-kd-"))
    os.chdir(work)
    print(f"machine: {os.cpu_count()} CPUs ({torch.backends.cpu.get_cpu_capability()}), torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads")
    for spec in args.pairs:
        t_arch, s_arch, batch = spec.split(":")
        batch = int(batch)
        torch.manual_seed(0)
        teacher = create_model(t_arch, num_classes=10)
        ckpt = work / f"{t_arch}.pt"
        save_checkpoint(ckpt, {"arch": t_arch, "num_classes": 10, "model": teacher.state_dict()})
        ref_rate, ref_acc = reference(t_arch, s_arch, batch, args.steps, 3, teacher.state_dict())
        kd_rate, kd_acc, precision = kdsweep_path(t_arch, s_arch, batch, args.steps, ckpt, work)
        print(f"{t_arch} -> {s_arch}, batch {batch}: reference {ref_rate:6.1f} img/s   kdsweep "
              f"({precision}) {kd_rate:6.1f} img/s   ratio {kd_rate / ref_rate:.2f}x   "
              f"val acc after the same steps: reference {ref_acc:.1f}%, kdsweep {kd_acc:.1f}%",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
