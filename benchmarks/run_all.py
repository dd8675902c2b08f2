"""Regenerate every benchmark and collect their tables into benchmarks/RESULTS.md (`make bench`).

The accuracy tables train every method × 3 seeds (the glyphs table about 80 minutes on this 2-core CPU, the
MNIST one about 10), so by default they are re-collected from their last committed results
(benchmarks/results/glyphs.md, accuracy.md); pass --glyphs / --accuracy to rerun them (on a GPU machine add
--device cuda --jobs 8).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PARTS = [
    ("Glyphs: unseen Han characters, every method at an equal budget", "glyphs.md", None),
    ("Evaluation engine vs PML AccuracyCalculator", "eval.md", ["bench_eval.py", "--sizes", "cub,sop"]),
    ("Losses and synthesisers: forward + backward", "losses.md", ["bench_losses.py"]),
    ("Training step throughput", "train_step.md", ["bench_train_step.py"]),
    ("Search service load test", "serve.md", ["bench_serve.py"]),
    ("Retrieval extensions: open-set, re-ranking, deployed-index quality", "retrieval.md", ["bench_retrieval.py"]),
    ("Intra-variance ranking: share of the gradient at the recipe defaults", "intra_variance.md", ["bench_intra_variance.py"]),
    ("Accuracy on the embedded MNIST split", "accuracy.md", None),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--accuracy", action="store_true", help="also rerun the MNIST accuracy benchmark")
    ap.add_argument("--glyphs", action="store_true", help="also rerun the glyphs benchmark (needs `make glyph-fonts`)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--collect-only", action="store_true")
    a = ap.parse_args()
    for _, _, cmd in PARTS:
        if cmd and not a.collect_only:
            subprocess.run([sys.executable, str(HERE / cmd[0]), *cmd[1:]], check=True, cwd=HERE.parent)
    if a.glyphs and not a.collect_only:
        subprocess.run([sys.executable, str(HERE / "bench_glyphs.py"), "--device", a.device, "--jobs", str(max(a.jobs, 2))], check=True, cwd=HERE.parent)
    if a.accuracy and not a.collect_only:
        subprocess.run([sys.executable, str(HERE / "bench_accuracy.py"), "--device", a.device, "--jobs", str(a.jobs)], check=True, cwd=HERE.parent)
    out = ["# deepmetric benchmark results", "", "Regenerate with `make bench` (see benchmarks/run_all.py). Each section is "
           "copied from benchmarks/results/ and states the command, date and machine that produced it.", ""]
    for title, name, _ in PARTS:
        p = HERE / "results" / name
        body = p.read_text().split("\n", 1)[1] if p.exists() else "\n(not yet measured)\n"
        out += [f"## {title}", body.strip(), ""]
    (HERE / "RESULTS.md").write_text("\n".join(out))
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
