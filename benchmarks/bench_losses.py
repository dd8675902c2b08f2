"""Forward+backward time of every seed loss and synthesiser at B=256, d=512.

Each is reported against (a) the bound: one B×B×d similarity matmul forward plus its two backward
matmuls (6·B²·d FLOPs) at the machine's measured matmul rate, and (b) the closest PML loss in the same run.

    python benchmarks/bench_losses.py [--batch 256 --dim 512 --out benchmarks/results/losses.md]
"""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, matmul_peak, median_time  # noqa: E402

from deepmetric.losses.build import build_loss  # noqa: E402
from deepmetric.losses.synthesis_loss import SynthesisLoss  # noqa: E402
from deepmetric.registry import SYNTHESISERS  # noqa: E402


def cases(B: int, d: int, C: int):
    """(name, loss module, labels kind, PML peer name)."""
    def synth(base, name, **kw):
        return SynthesisLoss(build_loss(base, num_classes=C, embedding_dim=d), SYNTHESISERS.get(name)(**kw))

    return [
        ("instance_softmax (code form)", build_loss("instance_softmax", num_classes=C, embedding_dim=d), "instances", "ntxent"),
        ("instance_softmax + feature_interpolation", synth("instance_softmax", "feature_interpolation"), "instances", "ntxent"),
        ("instance_softmax + angular_perturbation", synth("instance_softmax", "angular_perturbation"), "instances", "ntxent"),
        ("category_softmax", build_loss("category_softmax", num_classes=C, embedding_dim=d), "classes", "supcon"),
        ("proxy_anchor + SEE", synth("proxy_anchor", "see"), "classes", "proxy_anchor"),
        # on embeddings alone (this benchmark has no backbone); bench_train_step times the default, before the head
        ("proxy_anchor + intra_variance (embedding space)", synth("proxy_anchor", "intra_variance", space="embedding"), "classes", "proxy_anchor"),
        ("multi_similarity + EE", synth("multi_similarity", "embedding_expansion"), "classes", "multi_similarity"),
        ("multi_similarity + SEE (centres)", synth("multi_similarity", "see"), "classes", "multi_similarity"),
        ("triplet + symmetrical", synth("triplet", "symmetrical"), "classes", "triplet"),
    ]


def step(loss_fn, z, y, progress=True):
    z = z.detach().requires_grad_()
    if isinstance(loss_fn, SynthesisLoss):
        out = loss_fn(z, y, generator=torch.Generator().manual_seed(0), progress=0.5, epoch=5, epochs=10)
    else:
        out = loss_fn(z, y)
    out.backward()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--out", default="benchmarks/results/losses.md")
    a = ap.parse_args()
    B, d = a.batch, a.dim
    C = B // 4  # 4 samples per class, as an m-per-class batch
    torch.manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(B, d), dim=1)
    labels = {"classes": torch.arange(B) % C, "instances": torch.arange(B // 2).repeat(2)}
    peak = matmul_peak()
    bound = 6 * B * B * d / peak
    rows = []
    peers = {}
    for name, fn, kind, peer in cases(B, d, C):
        y = labels[kind]
        if peer not in peers:
            pf = build_loss(peer, num_classes=C, embedding_dim=d)
            peers[peer] = median_time(lambda: step(pf, z, y), repeat=7)
        t = median_time(lambda: step(fn, z, y), repeat=7)
        rows.append((name, t, t / bound, peer, peers[peer], t / peers[peer]))
        print(f"{name:45s} {t * 1e3:8.2f} ms  {t / bound:6.1f}x bound   {t / peers[peer]:5.2f}x PML {peer}")
    lines = [
        "# Loss benchmark: forward + backward",
        "",
        f"Command: `python benchmarks/bench_losses.py --batch {B} --dim {d}` on {datetime.date.today()}; machine: {machine()}.",
        f"Bound: the batch's similarity matmul forward + backward, 6·B²·d = {6 * B * B * d / 1e9:.2f} GFLOP at the measured "
        f"float32 matmul peak {peak / 1e9:.1f} GFLOP/s = {bound * 1e3:.2f} ms. Peer: the closest PML loss on the same batch.",
        "",
        "| loss | ms | × bound | PML peer | peer ms | × peer |",
        "| --- | ---: | ---: | --- | ---: | ---: |",
    ]
    lines += [f"| {n} | {t * 1e3:.2f} | {r:.1f} | {p} | {pt * 1e3:.2f} | {rp:.2f} |" for n, t, r, p, pt, rp in rows]
    Path(a.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
