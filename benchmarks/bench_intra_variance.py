"""Is intra-variance ranking active? Its share of the gradient at the recipe defaults (issue 13, item 1).

Trains the runnable recipe ``configs/mnist_proxy_anchor_intra_variance.yaml`` (its defaults: J = 3,
α = 0.2, band (0.2, 0.9), margin 0.05, class margin 0.1, γ = the synthesiser's weight) for a short budget
and, on P×K training batches of the checkpoints along the way, splits the gradient of
``Proxy-Anchor + γ·ranking`` into the base part and the ranking part:

* on the real embeddings z (B, d): share = ‖g_rank‖ / (‖g_base‖ + ‖g_rank‖);
* on the pooled backbone features f (B, F), which is where the ranking reaches the network.

Three variants run on the same batches and checkpoints: the defaults (graded points made before the
head and mapped by it), the same parameters on the unit sphere of the embedding, and the old
construction (embedding sphere, α 0.2, margin 0.05, γ 1) that issue 13 measured as a no-op.
A checkpoint "after n steps" is the recipe trained for n / every epochs of ``every`` steps each.

    python benchmarks/bench_intra_variance.py [--steps 120 --every 40 --out benchmarks/results/intra_variance.md]
"""
from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine  # noqa: E402

from deepmetric.config import load_config  # noqa: E402
from deepmetric.losses.synthesis_loss import SynthesisLoss  # noqa: E402
from deepmetric.synthesis.intra_variance import IntraVarianceSynthesis  # noqa: E402
from deepmetric.checkpoint import load_checkpoint  # noqa: E402
from deepmetric.data.build import build_dataset  # noqa: E402
from deepmetric.inference import build_embedding_model  # noqa: E402
from deepmetric.train.loop import build_training_loss, train  # noqa: E402

RECIPE = Path(__file__).resolve().parent.parent / "configs" / "mnist_proxy_anchor_intra_variance.yaml"


def pk_batches(dataset, per_class: int, count: int):
    """``count`` P×K batches (every class, ``per_class`` images each), disjoint, in dataset order."""
    labels = torch.as_tensor(dataset.labels)
    by_class = [torch.nonzero(labels == c).flatten() for c in range(int(labels.max()) + 1)]
    for b in range(count):
        idx = torch.cat([rows[b * per_class:(b + 1) * per_class] for rows in by_class])
        yield torch.stack([dataset[int(i)][0] for i in idx]), labels[idx]


VARIANTS = {
    "defaults (before the head)": {},
    "embedding sphere, same parameters": {"space": "embedding"},
    "old: embedding sphere, α 0.2, margin 0.05, γ 1": {"space": "embedding", "alpha": 0.2, "margin": 0.05, "weight": 1.0},
}


def shares(model, base_loss, synth_params, images, labels):
    """(share on z, share on f, ranking term, fraction of the batch synthesised from, γ)."""
    synth = IntraVarianceSynthesis(**synth_params)
    loss = SynthesisLoss(base_loss, synth, weight=None)
    model.train()
    feats = model.backbone(images).detach().requires_grad_(True)
    z = model.head(feats)
    terms = loss(z, labels, generator=torch.Generator().manual_seed(0), features=feats, head=model.head, return_terms=True)
    g_tot = torch.autograd.grad(terms.loss, [z, feats], retain_graph=True)
    g_base = torch.autograd.grad(base_loss(z, labels), [z, feats])
    out = []
    for gt, gb in zip(g_tot, g_base):
        ga = gt - gb
        out.append(float(ga.norm() / (ga.norm() + gb.norm())))
    with torch.no_grad():
        batch = synth(z, labels, generator=torch.Generator().manual_seed(0), proxies=base_loss.proxies, features=feats, head=model.head)
        sources = batch.owner[batch.is_synthetic, 0].unique().numel()
    return out[0], out[1], float(terms.aux), sources / len(labels), synth.weight


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=120, help="training steps of the last checkpoint measured")
    ap.add_argument("--every", type=int, default=40, help="measure every this many steps (= steps per epoch here)")
    ap.add_argument("--batches", type=int, default=4, help="P×K batches averaged per measurement")
    ap.add_argument("--out", default="benchmarks/results/intra_variance.md")
    a = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base_cfg = load_config(RECIPE, ["device=cpu", "train.progress=false", "train.report=false", "eval.nmi=false"])
        synth_params = dict(base_cfg.synthesis.params)
        dataset = build_dataset(base_cfg, base_cfg.data.train_split, train=True)
        data = list(pk_batches(dataset, base_cfg.data.samples_per_class, a.batches))
        for steps in range(0, a.steps + 1, a.every):
            cfg = load_config(RECIPE, ["device=cpu", "train.progress=false", "train.report=false", "eval.nmi=false",
                                       f"train.epochs={max(steps // a.every, 1)}", f"train.max_steps_per_epoch={a.every}", "data.val_split=null"])
            model = build_embedding_model(cfg, in_chans=int(data[0][0].shape[1]))
            loss = build_training_loss(cfg, num_classes=dataset.num_classes, embedding_dim=cfg.model.embedding_dim)
            if steps:
                run = Path(tmp) / f"run{steps}"
                train(cfg, run)
                ckpt = load_checkpoint(run / "last.pt")
                model.load_state_dict(ckpt["model"])
                loss.load_state_dict(ckpt["loss"])
            for variant, params in VARIANTS.items():
                vals = [shares(model, loss.base_loss, {**synth_params, **params}, x, y) for x, y in data]
                mean = [sum(v[i] for v in vals) / len(vals) for i in range(4)]
                rows.append((steps, variant, *mean, vals[0][4]))
                print(rows[-1], flush=True)
    lines = [
        "# Intra-variance ranking: share of the gradient at the recipe defaults",
        "",
        f"Command: `python benchmarks/bench_intra_variance.py --steps {a.steps} --every {a.every} --batches {a.batches}`  ",
        f"Date: {datetime.datetime.now().isoformat(timespec='seconds')}  ",
        f"Machine: {machine()}  ",
        f"Recipe: `configs/{RECIPE.name}` (synthesis params {synth_params or 'all defaults'}), trained for the given number of steps from its seed; "
        f"{a.batches} P×K training batches per row (mean). share = ‖g_rank‖ / (‖g_base‖ + ‖g_rank‖) of the gradient of "
        "Proxy-Anchor + γ·ranking, on the real embeddings z and on the pooled backbone features f.",
        "",
        "| steps trained | variant | share on z | share on f | ranking term (before γ) | gated fraction of batch | γ |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for steps, space, sz, sf, aux, frac, gamma in rows:
        lines.append(f"| {steps} | {space} | {100 * sz:.2f}% | {100 * sf:.2f}% | {aux:.4g} | {frac:.2f} | {gamma:g} |")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
