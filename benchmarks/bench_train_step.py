"""Training-step throughput: images/s and achieved FLOP/s over the measured matmul peak, plus the share
of the step spent in the data loader, for the CIFAR ResNet-18 and the EfficientNet-Lite0 recipes.

FLOPs are counted per layer with forward hooks (2·MACs of every Conv2d, including grouped/depthwise ones
counted correctly as k·k·(C_in/groups)·C_out·H·W, and Linear), times 3 for forward + backward; this is
the work the step must do, not what FlopCounterMode reports for depthwise convolutions.

    python benchmarks/bench_train_step.py [--steps 3] [--device cpu|cuda] [--out benchmarks/results/train_step.md]
"""
from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, matmul_peak, median_time  # noqa: E402

from deepmetric.data.transforms import build_transform  # noqa: E402
from deepmetric.models import build_model  # noqa: E402
from deepmetric.train.data import EpochBatches, SeededItems  # noqa: E402
from deepmetric.data.samplers import RandomBatchSampler  # noqa: E402


def forward_flops(model: nn.Module, x: torch.Tensor) -> float:
    total = [0.0]

    def conv_hook(m, inp, out):
        k = m.kernel_size[0] * m.kernel_size[1]
        total[0] += 2.0 * out.numel() * k * (m.in_channels // m.groups)

    def lin_hook(m, inp, out):
        total[0] += 2.0 * out.numel() * m.in_features

    hooks = [m.register_forward_hook(conv_hook) for m in model.modules() if isinstance(m, nn.Conv2d)]
    hooks += [m.register_forward_hook(lin_hook) for m in model.modules() if isinstance(m, nn.Linear)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return total[0]


class RandomImages(torch.utils.data.Dataset):
    """In-memory RGB images (what a decoded CIFAR/ImageNet-style dataset hands the transform)."""

    def __init__(self, n: int, size: int, transform) -> None:
        rng = np.random.default_rng(0)
        self.images = [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), 0


def bench(name, backbone, *, recipe, size, batch, steps, device, channels_last, peak):
    model = build_model(backbone, embedding_dim=128, in_chans=3).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    flops = 3 * forward_flops(model, x)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        z = model(x)
        (z @ z.t()).mean().backward()  # a loss-shaped reduction; the loss itself is benchmarked elsewhere
        opt.step()

    sync = device == "cuda"
    t_step = median_time(step, repeat=steps, warmup=1, sync=sync)
    ds = RandomImages(batch * 3, size, build_transform(recipe, train=True, image_size=size, resize=None))
    batches = EpochBatches(RandomBatchSampler(len(ds), batch_size=batch, seed=0), seed=0)
    batches.set_epoch(0)
    loader = torch.utils.data.DataLoader(SeededItems(ds), batch_sampler=batches, num_workers=0)

    def load_all():
        for _ in loader:
            pass

    t_load = median_time(load_all, repeat=2, warmup=0) / len(batches)
    return {
        "name": name, "batch": batch, "size": size, "step_s": t_step, "img_s": batch / t_step,
        "gflop_step": flops / 1e9, "achieved": flops / t_step, "ratio": flops / t_step / peak,
        "load_s": t_load, "load_share": t_load / (t_load + t_step),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="benchmarks/results/train_step.md")
    a = ap.parse_args()
    torch.manual_seed(0)
    peak = matmul_peak(device=a.device) if a.device == "cpu" else matmul_peak(n=8192, device=a.device)
    rows = []
    for cl in (False, True):
        rows.append(bench(f"cifar_resnet18 (CIFAR recipe){' channels_last' if cl else ''}", "cifar_resnet18", recipe="cifar",
                          size=32, batch=128, steps=a.steps, device=a.device, channels_last=cl, peak=peak))
    rows.append(bench("efficientnet_lite0 224 channels_last", "efficientnet_lite0", recipe="fine_grained", size=224, batch=32,
                      steps=a.steps, device=a.device, channels_last=True, peak=peak))
    lines = [
        "# Training step benchmark",
        "",
        f"Command: `python benchmarks/bench_train_step.py --device {a.device} --steps {a.steps}` on {datetime.date.today()}; machine: {machine()}.",
        f"Measured float32 matmul peak: {peak / 1e9:.1f} GFLOP/s. FLOPs counted per layer (grouped convolutions counted "
        "exactly), ×3 for forward + backward. Loader: the real pipeline (PIL images → recipe transform → seeded items), "
        "num_workers=0, time per batch; share = load / (load + step) when not overlapped.",
        "",
        "| model | batch | images/s | GFLOP/step | achieved GFLOP/s | × peak | loader ms/batch | loader share |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['name']} | {r['batch']} | {r['img_s']:.1f} | {r['gflop_step']:.1f} | {r['achieved'] / 1e9:.1f} | "
                     f"{100 * r['ratio']:.0f}% | {1e3 * r['load_s']:.1f} | {100 * r['load_share']:.0f}% |")
        print(lines[-1])
    Path(a.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
