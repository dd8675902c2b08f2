"""Every method on the glyphs benchmark (unseen Han characters) at an equal budget, over seeds.

Each recipe ``configs/glyphs_<method>.yaml`` (or ``glyphs_effnet_<method>`` with ``--backbone effnet``) is
trained with the same data, image size, batch size, epochs and steps per epoch; best.pt is selected on the
validation characters (never the test ones) and evaluated on the test characters: R@1/2/4/8, MAP@R, NMI.
The table reports mean ± std over seeds and, for each seed method, the paired difference to its base
(same seed: same initialisation and batches) with a 95% t-interval over seeds (t_{0.975, n−1} · sd / √n).

The benchmark dataset is the first ``--chars`` characters of GB 2312 level 1 (first half train, its last 20%
validation, second half test), generated on first use under ``data/`` from the installed fonts (``make glyphs``).

    python benchmarks/bench_glyphs.py                      # the table (3 seeds, ~75 min on a quiet 2-core CPU; see SIZE)
    python benchmarks/bench_glyphs.py --seeds 0 --recipes proxy_anchor proxy_anchor_see --out runs/pilot

Results go to benchmarks/results/glyphs[_effnet].{md,json} with the machine, the date and the wall time.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

#: (method, recipe suffix, base recipe suffix or None). The recipe is configs/glyphs_<suffix>.yaml.
METHODS = [
    ("Proxy-Anchor", "proxy_anchor", None),
    ("Proxy-Anchor + SEE", "proxy_anchor_see", "proxy_anchor"),
    ("Proxy-Anchor + intra-variance", "proxy_anchor_intra_variance", "proxy_anchor"),
    ("Multi-Similarity", "multi_similarity", None),
    ("Multi-Similarity + EE", "multi_similarity_ee", "multi_similarity"),
    ("Multi-Similarity + SEE", "multi_similarity_see", "multi_similarity"),
    ("Triplet (batch-hard HPHN)", "triplet", None),
    ("Triplet + EE", "triplet_ee", "triplet"),
    ("Instance softmax (no labels)", "instance_softmax", None),
    ("Instance softmax + feature augmentation (no labels)", "instance_softmax_feataug", "instance_softmax"),
    ("Instance softmax + neighbour positives (no labels)", "instance_softmax_neighbours", "instance_softmax"),
    ("Category softmax", "category_softmax", None),
    ("NT-Xent (no labels, outside baseline)", "ntxent", None),
    ("SupCon (outside baseline)", "supcon", None),
]
METRICS = [("recall@1", "R@1"), ("recall@2", "R@2"), ("recall@4", "R@4"), ("recall@8", "R@8"), ("map@r", "MAP@R"), ("nmi", "NMI")]

#: The committed table's size, chosen so that 14 methods x 3 seeds fit in 90 minutes on a quiet 2-core CPU
#: with --jobs 2 (two runs at a time, one thread each). Every run takes the same number of optimiser steps
#: (epochs x steps) of the same number of images (batch_size): label-free two-view recipes draw
#: batch_size / 2 instances x 2 views, so that no method sees more images or gradients than another.
#: Pilot on a quiet machine (Proxy-Anchor, glyph_cnn, 600 characters at 32 px, 10 epochs of 28 steps): about
#: 250 CPU s per run including the 10 validation and 1 test evaluations; 42 runs of 8 x 28 steps ~ 8,600 CPU s.
#: The recipes warm the learning rate up linearly over the first epoch (optim.warmup_epochs: 1), decided on the
#: validation characters: without it the first epoch took the untrained network's validation R@1 from 58.8%
#: to 12-16%, recovery took 2 to 5 epochs depending on the seed, and test R@1 after 8 epochs was 42.8 / 69.0
#: for seeds 0 / 1; with it, validation R@1 after epoch 1 is 43% and test R@1 92.9 / 91.3.
SIZE = {"chars": 600, "image_size": 32, "epochs": 8, "steps": 28, "batch_size": 128, "samples_per_class": 4}

#: ImageNet features need room: at 32x32 EfficientNet-Lite0's last map is 1x1 and its pretrained features
#: retrieve validation characters worse than random weights (R@1 5.2% vs 24.6%; 83.8% at 64x64).
EFFNET_IMAGE_SIZE = 64


def dataset_root(chars: int, image_size: int) -> Path:
    """The benchmark's dataset folder; generated from the installed fonts on first use."""
    from deepmetric.data.glyphs import check, generate

    root = ROOT / "data" / f"glyphs_{chars}_{image_size}px"
    if not (root / "manifest.json").is_file():
        print(f"generating {root} (first {chars} characters, {image_size}x{image_size}) ...", flush=True)
        generate(root, size=image_size, limit=chars)
    check(root)
    return root


def run_one(job):
    recipe, seed, size, root, device, threads, dim, extra, before = job
    import torch

    torch.set_num_threads(threads)
    from deepmetric.config import load_config
    from deepmetric.train.loop import train

    overrides = [f"seed={seed}", f"device={device}", f"data.root={root}", f"data.image_size={size['image_size']}",
                 f"train.epochs={size['epochs']}", f"train.max_steps_per_epoch={size['steps']}",
                 f"data.batch_size={size['batch_size']}", "train.progress=false", "train.report=false"]
    if dim is not None:
        overrides.append(f"model.embedding_dim={dim}")
    overrides += list(extra)
    data = load_config(ROOT / "configs" / f"{recipe}.yaml").data
    if data.sampler == "m_per_class":  # label-free recipes draw instances
        overrides.append(f"data.samples_per_class={size['samples_per_class']}")
    if data.two_view:  # equal images per step: half as many instances, two views each
        overrides.append(f"data.batch_size={size['batch_size'] // 2}")
    cfg = load_config(ROOT / "configs" / f"{recipe}.yaml", overrides)
    t, cpu = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        res = train(cfg, Path(tmp) / "run", evaluate_before=before)
        recs = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    # The validation curve (what selection saw) and, with a synthesiser, the loss terms over the last epoch:
    # enough to ask why a method moved without looking at the test characters.
    val = [{k: r[k] for k in ("epoch", "recall@1", "map@r")} for r in recs if r.get("split") == "val"]
    last = [r for r in recs if r.get("split") == "train" and r["epoch"] == cfg.train.epochs]
    terms = {k: statistics.mean(r[k] for r in last) for k in ("loss", "loss_base", "loss_aux", "loss_aux_weight") if last and all(k in r for r in last)}
    # CPU seconds (all threads) size the table for a quiet machine: its wall time lies between cpu/threads and cpu.
    return {"recipe": recipe, "seed": seed, **{k: res["test"][k] for k, _ in METRICS},
            "train_seconds": res.get("train_seconds"), "wall_seconds": time.perf_counter() - t,
            "cpu_seconds": time.process_time() - cpu, "threads": threads,
            "selected_epoch": res.get("selected_epoch"), "val_curve": val, "last_epoch_loss_terms": terms,
            **({"before": {k: res["before"][k] for k, _ in METRICS}} if before else {})}


def t_interval(diffs):
    """(mean, half-width of the 95% t-interval) of paired differences; half-width nan for one seed."""
    from scipy import stats

    m = statistics.mean(diffs)
    if len(diffs) < 2:
        return m, math.nan
    return m, float(stats.t.ppf(0.975, len(diffs) - 1)) * statistics.stdev(diffs) / math.sqrt(len(diffs))


def table(results, methods, prefix):
    """Markdown rows: mean ± std per metric, then the paired difference to the base for R@1 and MAP@R."""
    head = "| method | recipe | " + " | ".join(h for _, h in METRICS) + " | ΔR@1 vs base (95% CI) | ΔMAP@R vs base (95% CI) |"
    lines = [head, "| --- | --- | " + " | ".join("---:" for _ in METRICS) + " | ---: | ---: |"]
    by = {}
    for r in results:
        by.setdefault(r["recipe"], {})[r["seed"]] = r
    # The untrained row: the first method's network at each seed's initialisation, evaluated before any step.
    first = by.get(prefix + methods[0][1], {}) if methods else {}
    if first and all("before" in r for r in first.values()):
        v = {k: [100 * r["before"][k] for r in first.values()] for k, _ in METRICS}
        lines.append("| untrained network | — | " + " | ".join(
            f"{statistics.mean(x):.2f} ± {statistics.stdev(x) if len(x) > 1 else 0:.2f}" for x in v.values()) + " | — | — |")
    for title, suffix, base in methods:
        rs = by.get(prefix + suffix, {})
        if not rs:
            continue
        cells = []
        for k, _ in METRICS:
            v = [100 * r[k] for r in rs.values()]
            cells.append(f"{statistics.mean(v):.2f} ± {statistics.stdev(v) if len(v) > 1 else 0:.2f}")
        deltas = []
        for k in ("recall@1", "map@r"):
            b = by.get(prefix + base, {}) if base else {}
            seeds = sorted(set(rs) & set(b))
            if not seeds:
                deltas.append("—")
                continue
            m, h = t_interval([100 * (rs[s][k] - b[s][k]) for s in seeds])
            deltas.append(f"{m:+.2f} [{m - h:+.2f}, {m + h:+.2f}]" if not math.isnan(h) else f"{m:+.2f} (1 seed)")
        lines.append(f"| {title} | {prefix}{suffix} | " + " | ".join(cells) + " | " + " | ".join(deltas) + " |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--backbone", choices=["small", "effnet"], default="small",
                    help="small: configs/glyphs_*.yaml (glyph_cnn from scratch, 64-d); effnet: configs/glyphs_effnet_*.yaml (EfficientNet-Lite0, 512-d)")
    ap.add_argument("--dim", type=int, default=None, help="override the recipes' embedding size (e.g. 512 with the small CNN)")
    for k, v in SIZE.items():
        ap.add_argument(f"--{k.replace('_', '-')}", type=int, default=None if k == "image_size" else v,
                        help=f"default {v}" + (f" ({EFFNET_IMAGE_SIZE} with --backbone effnet)" if k == "image_size" else ""))
    ap.add_argument("--recipes", nargs="*", default=None, help="method suffixes (e.g. proxy_anchor proxy_anchor_see); default all")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time; each uses cpu_count / jobs threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra config overrides for every run (e.g. model.backbone=small_cnn); recorded in the results")
    ap.add_argument("--out", default=None, help="output path without suffix (default benchmarks/results/glyphs[_effnet][_dN])")
    a = ap.parse_args()
    size = {k: getattr(a, k) for k in SIZE}
    if size["image_size"] is None:
        size["image_size"] = EFFNET_IMAGE_SIZE if a.backbone == "effnet" else SIZE["image_size"]
    prefix = "glyphs_" if a.backbone == "small" else "glyphs_effnet_"
    methods = [m for m in METHODS if a.recipes is None or m[1] in a.recipes]
    unknown = set(a.recipes or ()) - {m[1] for m in METHODS}
    if unknown:
        ap.error(f"unknown recipe suffix(es) {sorted(unknown)}; choose from {[m[1] for m in METHODS]}")
    default_out = "glyphs" + ("_effnet" if a.backbone == "effnet" else "") + (f"_d{a.dim}" if a.dim else "")
    out = Path(a.out) if a.out else ROOT / "benchmarks" / "results" / default_out
    out.parent.mkdir(parents=True, exist_ok=True)

    from deepmetric.data.glyphs import check

    root = dataset_root(size["chars"], size["image_size"])
    manifest = check(root)
    threads = max(1, (os.cpu_count() or 2) // a.jobs)
    jobs = [(prefix + suffix, s, size, str(root), a.device, threads, a.dim, tuple(a.overrides), suffix == methods[0][1])
            for _, suffix, _ in methods for s in a.seeds]
    started = time.perf_counter()
    results = []
    with ProcessPoolExecutor(a.jobs) as pool:
        for r in pool.map(run_one, jobs):
            results.append(r)
            print(f"[{len(results)}/{len(jobs)}] {r['recipe']} seed {r['seed']}: R@1 {100 * r['recall@1']:.2f}, MAP@R "
                  f"{100 * r['map@r']:.2f}, {r['wall_seconds']:.0f} s wall, {r['cpu_seconds']:.0f} CPU s", flush=True)
    wall = time.perf_counter() - started

    from common import cpu_model, machine

    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "wall_seconds": round(wall, 1),
            "machine": {**machine(), "processor": cpu_model(), "load_average_at_end": os.getloadavg()},
            "command": "python benchmarks/bench_glyphs.py " + " ".join(sys.argv[1:]), "size": size, "seeds": a.seeds,
            "backbone": a.backbone, "dim": a.dim, "dataset": {"root": str(root.relative_to(ROOT)) if root.is_relative_to(ROOT) else str(root),
                                                              "counts": manifest["counts"],
                                                              "typefaces": [t["key"] for t in manifest["typefaces"] if t["faces"]]}}
    Path(str(out) + ".json").write_text(json.dumps({**info, "runs": results}, indent=1, ensure_ascii=False) + "\n")
    c = manifest["counts"]
    lines = [
        f"# Glyphs benchmark ({'glyph_cnn' if a.backbone == 'small' else 'EfficientNet-Lite0'}"
        f"{f', {a.dim}-d' if a.dim else ''}): unseen Han characters",
        "",
        f"Command: `{info['command']}` on {info['date']}, {info['machine']['cpus']} CPUs ({info['machine']['processor']}), "
        f"device {a.device}; wall time {wall / 60:.1f} min (load average at the end {os.getloadavg()[0]:.1f}).",
        "",
        f"Data: the first {size['chars']} GB 2312 level-1 characters at {size['image_size']}×{size['image_size']}: train "
        f"{c['train']['classes']} characters ({c['train']['images']} images), validation {c['val']['classes']} ({c['val']['images']}), "
        f"test {c['test']['classes']} unseen characters ({c['test']['images']} images), {len(info['dataset']['typefaces'])} typefaces. "
        f"Equal budget for every method: {size['epochs']} epochs × {size['steps']} steps of {size['batch_size']} images "
        f"({size['batch_size'] // size['samples_per_class']} characters × {size['samples_per_class']}, or {size['batch_size'] // 2} "
        f"instances × 2 views for the two-view recipes); best.pt selected on validation MAP@R. Mean ± std over seeds {a.seeds}; "
        "Δ = paired difference to the method's base (same seed), 95% t-interval over seeds. Percentages.",
        "",
        *table(results, methods, prefix),
    ]
    Path(str(out) + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
