"""ReduceNet: training throughput of each stage, and what the CIFAR-10 preset costs on this machine.

    python -m kdsweep.reducenet.benchmark [--steps 20] [--batch 128] [--device cuda]

Measures images/s of the fastest of ``--steps`` training steps (the one least disturbed by other
processes on a shared machine; a GPU step is synchronised) (forward, backward, SGD) of each stage's network as
kdsweep runs it (channels_last; bf16 autocast on a GPU that has it, fp32 on the CPU):

1. small: resnet20;
2. grow: reduce20 (expansion 1, 2, 4);
3. shrink: resnet20 with rank-4 LoRA branches and LambdaReLU, plus the reduce20 teacher's
   forward pass (KD), and without the teacher (``method=ce``, the published recipe);

plus evaluation images/s, and projects the wall time of ``experiment=reducenet_cifar10`` (stages
2 and 3, 200 epochs each, 50,000 train + 10,000 test images per epoch) and of the same with
stage 1 and KD + LoRA. Data loading is not included (kdsweep's tensor loader is far faster than
these steps, docs/data.md).
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
import torch.nn.functional as F

from kdsweep.models import create_model
from kdsweep.reducenet.lora import attach_lora

TRAIN, TEST, EPOCHS = 50_000, 10_000, 200


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device):
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_rate(student: str, device: torch.device, batch: int, steps: int, *, lora: bool = False,
               teacher: str | None = None) -> float:
    torch.manual_seed(0)
    fmt = torch.channels_last
    model = create_model(student, 10).to(device, memory_format=fmt)
    if lora:
        attach_lora(model, 4, lambda_relu=True, anneal_steps=steps * 2)
        model.fc.requires_grad_(False)
    t = create_model(teacher, 10).to(device, memory_format=fmt).eval() if teacher else None
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9,
                          nesterov=True, weight_decay=1e-4)
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=device)
    model.train()
    best = float("inf")
    for i in range(steps + 3):
        _sync(device)
        start = time.perf_counter()
        with _autocast(device):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            if t is not None:
                with torch.no_grad():
                    tl = t(x).float()
                loss = loss + 16 * F.kl_div(F.log_softmax(logits.float() / 4, 1),
                                            F.softmax(tl / 4, 1), reduction="batchmean")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        if i >= 3:  # after warmup: the fastest step is the least disturbed by other processes
            best = min(best, time.perf_counter() - start)
    return batch / best


@torch.no_grad()
def eval_rate(name: str, device: torch.device, batch: int, steps: int) -> float:
    model = create_model(name, 10).to(device, memory_format=torch.channels_last).eval()
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    best = float("inf")
    for i in range(steps + 3):
        _sync(device)
        start = time.perf_counter()
        with _autocast(device):
            model(x)
        _sync(device)
        if i >= 3:
            best = min(best, time.perf_counter() - start)
    return batch / best


def hours(train_ips: float, eval_ips: float) -> float:
    return EPOCHS * (TRAIN / train_ips + TEST / eval_ips) / 3600


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best is kept")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.set_flush_denormal(True)  # untrained nets make denormals, very slow on CPUs
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"cpu, {torch.get_num_threads()} threads"
    print(f"ReduceNet stages on {name}, batch {args.batch}, {args.steps} timed steps, torch "
          f"{torch.__version__}")
    rows = [("1 small", "resnet20", {}), ("2 grow", "reduce20", {}),
            ("2 grow e2", "reduce20_e2", {}), ("2 grow e4", "reduce20_e4", {}),
            ("3 shrink ce", "resnet20", {"lora": False}),
            ("3 shrink ce+LoRA", "resnet20", {"lora": True}),
            ("3 shrink kd+LoRA", "resnet20", {"lora": True, "teacher": "reduce20"})]
    ev: dict[str, float] = {}
    rates: dict[str, float] = {}
    for _ in range(args.rounds):  # interleaved, so that machine noise hits every row alike
        for n in ("resnet20", "reduce20"):
            ev[n] = max(ev.get(n, 0.0), eval_rate(n, device, 2 * args.batch, args.steps))
        for stage, net, kw in rows:
            rates[stage] = max(rates.get(stage, 0.0),
                               train_rate(net, device, args.batch, args.steps, **kw))
    print(f"{'stage':<18} {'network':<12} {'train img/s':>11} {'200 epochs (h)':>15}")
    for stage, net, _ in rows:
        e = ev["reduce20"] if net.startswith("reduce") else ev["resnet20"]
        print(f"{stage:<18} {net:<12} {rates[stage]:>11,.0f} {hours(rates[stage], e):>15.2f}")
    print(f"eval img/s: resnet20 {ev['resnet20']:,.0f}, reduce20 {ev['reduce20']:,.0f}")
    preset = hours(rates["2 grow"], ev["reduce20"]) + hours(rates["3 shrink ce"], ev["resnet20"])
    full = preset + hours(rates["1 small"], ev["resnet20"]) + hours(
        rates["3 shrink kd+LoRA"], ev["resnet20"]) - hours(rates["3 shrink ce"], ev["resnet20"])
    print(f"experiment=reducenet_cifar10 (stages 2 + 3, 200 epochs each): {preset:.2f} h")
    print(f"  with stage 1 and stage 3 = kd + LoRA (reducenet.small=true method=kd "
          f"reducenet.rank=4 reducenet.lambda_relu=true): {full:.2f} h")


if __name__ == "__main__":
    main()
