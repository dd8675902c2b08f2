"""Accuracy of every method on the embedded MNIST unseen-class split at equal budgets, over seeds.

Every recipe in RECIPES is trained for the same number of epochs with the same batch size, model and
optimiser; the test split (unseen digits 5–9) is evaluated with the checkpoint selected on the validation
digits. Reports mean ± std over seeds of R@1, MAP@R, NMI, weighted-kNN accuracy (leave-one-out on the
test split), the intra-class spread of the test embeddings, and the training time per step.

    python benchmarks/bench_accuracy.py [--seeds 0 1 2] [--epochs 6] [--jobs 2] [--device cpu]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

RECIPES = [
    ("proxy_anchor", "mnist_proxy_anchor"),
    ("proxy_anchor + SEE", "mnist_proxy_anchor_see"),
    ("proxy_anchor + intra-variance ranking", "mnist_proxy_anchor_intra_variance"),
    ("multi_similarity", "mnist_multi_similarity"),
    ("multi_similarity + EE", "mnist_multi_similarity_ee"),
    ("multi_similarity + SEE (centres)", "mnist_multi_similarity_see"),
    ("triplet", "mnist_triplet"),
    ("triplet (HPHN)", "mnist_hphn_triplet"),
    ("triplet (HPHN) + EE", "mnist_triplet_ee"),
    ("category_softmax (supervised)", "mnist_category_softmax"),
    ("instance_softmax (unsupervised)", "mnist_instance_softmax"),
    ("instance_softmax + feature interpolation (unsupervised)", "mnist_instance_softmax_feataug"),
    ("ntxent (unsupervised)", "mnist_ntxent"),
]


def intra_class_spread(emb, labels):
    """Mean over classes of the variance of cos(z_i, class mean direction) and of 1 − cos, and that
    mean 1 − cos divided by the mean 1 − cos to the mean direction of ALL embeddings.

    The ratio tells tight classes from a collapsed space: a network that squeezes every embedding into a
    narrow cone has a tiny intra-class variance too, but not a smaller ratio.
    """
    import torch

    z_all = torch.nn.functional.normalize(emb, dim=1)
    var, dist = [], []
    for c in labels.unique():
        z = z_all[labels == c]
        mu = torch.nn.functional.normalize(z.mean(0), dim=0)
        cos = z @ mu
        var.append(cos.var().item())
        dist.append((1 - cos).mean().item())
    global_dist = (1 - z_all @ torch.nn.functional.normalize(z_all.mean(0), dim=0)).mean().item()
    return statistics.mean(var), statistics.mean(dist), statistics.mean(dist) / global_dist


def run_one(job):
    recipe, seed, epochs, device, threads = job
    import torch

    torch.set_num_threads(threads)
    from deepmetric.config import load_config
    from deepmetric.inference import embed_checkpoint
    from deepmetric.train.loop import train

    overrides = [f"seed={seed}", f"train.epochs={epochs}", f"device={device}", "train.progress=false", "train.report=false",
                 "eval.knn_accuracy=true"]
    cfg = load_config(ROOT / "configs" / f"{recipe}.yaml", overrides)
    with tempfile.TemporaryDirectory() as tmp:
        res = train(cfg, Path(tmp) / "run", evaluate_before=True)
        steps = sum(1 for line in open(Path(tmp) / "run" / "metrics.jsonl") if '"split": "train"' in line) * cfg.train.log_every
        emb, labels = embed_checkpoint(Path(tmp) / "run" / "best.pt", split="test")
    var, dist, ratio = intra_class_spread(emb, labels)
    return {"recipe": recipe, "seed": seed, **res["test"], "spread_var": var, "spread_dist": dist, "spread_ratio": ratio,
            "s_per_step": res["train_seconds"] / max(1, steps), "selected_epoch": res.get("selected_epoch"),
            "before": res["before"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--recipes", nargs="*", default=None)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "accuracy"))
    a = ap.parse_args()
    chosen = [r for r in RECIPES if a.recipes is None or r[1] in a.recipes]
    threads = max(1, (os.cpu_count() or 2) // a.jobs)
    jobs = [(recipe, s, a.epochs, a.device, threads) for _, recipe in chosen for s in a.seeds]
    with ProcessPoolExecutor(a.jobs) as pool:
        results = list(pool.map(run_one, jobs))
    Path(a.out + ".json").write_text(json.dumps(results, indent=1))
    keys = [("recall@1", "R@1"), ("map@r", "MAP@R"), ("nmi", "NMI"), ("knn_accuracy", "kNN acc"),
            ("spread_var", "intra-class cos var ×1e3"), ("spread_ratio", "intra / global spread"),
            ("s_per_step", "ms/step (incl. validation)")]
    scale = {"recall@1": 100, "map@r": 100, "nmi": 100, "knn_accuracy": 100, "spread_var": 1000, "spread_ratio": 1,
             "s_per_step": 1000}
    lines = [
        "# Accuracy on the embedded MNIST unseen-class split",
        "",
        f"Command: `python benchmarks/bench_accuracy.py --seeds {' '.join(map(str, a.seeds))} --epochs {a.epochs} "
        f"--jobs {a.jobs} --device {a.device}` on {datetime.date.today()} ({os.cpu_count()} CPUs, device {a.device}). Train digits 0–2, select on 3–4, test on unseen 5–9; "
        f"small_cnn 64-d, batches of 3 classes × 16 (supervised) or 64 instances × 2 views (unsupervised), AdamW 1e-3 cosine, {a.epochs} epochs for every method (equal budgets). Mean ± std over "
        f"{len(a.seeds)} seeds; best.pt selected on validation MAP@R. kNN acc: weighted kNN (k=200, τ=0.1) leave-one-out on the test split. "
        "Unsupervised rows never see a training label. Spread, on the test embeddings of best.pt: the variance of each item's cosine to its "
        "class's mean direction (mean over classes), and the mean 1 − cos to the class mean over the mean 1 − cos to the mean of all "
        "embeddings (below 1: classes tighter than the whole; a collapsed space shrinks the first number, not the second). "
        "ms/step: training wall time (validation included) over the steps, on this machine.",
        "",
        "| method | recipe | " + " | ".join(k[1] for k in keys) + " |",
        "| --- | --- | " + " | ".join("---:" for _ in keys) + " |",
    ]
    # The untrained network: every recipe builds the same small_cnn 64-d from the seed, so the first
    # recipe's "before" evaluation of each seed is the untrained row (no spread/time: nothing trained).
    untrained = [dict(r["before"]) for r in results if r["recipe"] == chosen[0][1]]
    rows = [("untrained network (same init)", "—", untrained)]
    rows += [(title, recipe, [r for r in results if r["recipe"] == recipe]) for title, recipe in chosen]
    for title, recipe, rs in rows:
        cells = []
        for k, _ in keys:
            vals = [scale[k] * r[k] for r in rs if k in r]
            cells.append(f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals) if len(vals) > 1 else 0:.2f}" if vals else "-")
        lines.append(f"| {title} | {recipe} | " + " | ".join(cells) + " |")
    Path(a.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
