"""Command line: thin commands that parse, build a config and call one library function.

Expected problems (a config typo, a missing dataset root, a checkpoint from another model, a diverged
run) end with one red line that says what to do, and exit status 2; anything else is a bug and shows
its traceback.
"""
from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable, List, Optional

import typer
from rich.console import Console
from rich.table import Table

# rich_markup_mode=None: click's plain help layout; typer's rich panels label every flag "<bool>"
# (including --help itself), which reads as if the flag took a value.
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="deepmetric: deep metric learning — train, evaluate, search.")
console = Console()
err_console = Console(stderr=True)

#: Metrics shown in tables, in this order, when present, with their column headers (short enough that
#: a table of all of them fits an 80-column terminal).
TABLE_METRICS = {"recall@1": "R@1", "recall@2": "R@2", "recall@4": "R@4", "recall@8": "R@8", "map@r": "MAP@R",
                 "r_precision": "R-prec", "nmi": "NMI", "knn_accuracy": "kNN acc"}


def _expected_errors() -> tuple:
    from deepmetric.config import ConfigError
    from deepmetric.checkpoint import CheckpointError
    from deepmetric.train.loop import TrainingDiverged

    # OSError: unreadable or unwritable paths (permissions, a file where a folder is expected, a full disk)
    return (ConfigError, CheckpointError, TrainingDiverged, OSError, KeyError, ValueError)


def friendly(fn: Callable) -> Callable:
    """Turn expected errors into one line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130)
        except _expected_errors() as exc:
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            err_console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
            raise typer.Exit(2)

    return wrapper


def metrics_table(title: str, rows: dict) -> Table:
    """A table with one row per named metrics dict (e.g. before / after)."""
    keys = [k for k in TABLE_METRICS if any(k in r for r in rows.values())]
    table = Table(title=title)
    table.add_column("")
    for k in keys:
        table.add_column(TABLE_METRICS[k], justify="right")
    for name, r in rows.items():
        table.add_row(name, *(f"{100 * r[k]:.2f}" if k in r else "-" for k in keys))
    return table


#: The glyphs demo: Multi-Similarity on 32x32 glyphs with the layout-keeping glyph_cnn, 50 steps of 32 characters
#: x 4 typefaces per epoch.
GLYPHS_DEMO = {
    "name": "demo_glyphs",
    "model": {"backbone": "glyph_cnn"},
    "data": {"dataset": "glyphs", "transform": "glyphs", "image_size": 32, "batch_size": 128, "samples_per_class": 4},
    "loss": {"name": "multi_similarity"},
    "optim": {"warmup_epochs": 1},
    "train": {"max_steps_per_epoch": 50},
}


def _report_after_training(cfg, out: Path) -> None:
    """``train.report``: the visual report of a finished run (a failed plot never costs the run)."""
    if not cfg.train.report:
        return
    from deepmetric.report import write_report

    try:
        write_report(out)
    except Exception as exc:  # noqa: BLE001 - the run is saved; the report can be retried
        err_console.print(f"[yellow]warning[/]: the visual report failed ({type(exc).__name__}: {exc}); retry with deepmetric report {out}")


@app.command()
@friendly
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="run folder (replaced if it holds an earlier demo)"),
    epochs: int = typer.Option(8, help="training epochs"),
    data: str = typer.Option("mnist", "--data", help="mnist (embedded, nothing to install) | glyphs (Han characters; needs `make glyphs`)"),
    root: Optional[Path] = typer.Option(None, "--root", help="glyphs dataset folder (default data/glyphs, where `make glyphs` writes it)"),
) -> None:
    """Train briefly on an unseen-class split and print test metrics before and after."""
    import shutil

    from deepmetric.config import build_config
    from deepmetric.train.loop import train

    if data not in ("mnist", "glyphs"):
        raise ValueError(f"--data {data!r} is not a demo dataset; choose mnist or glyphs")
    if data == "glyphs":
        from deepmetric.data.glyphs import DEFAULT_ROOT, check

        glyph_root = root or DEFAULT_ROOT
        if not (glyph_root / "df.csv").is_file():
            raise FileNotFoundError(f"no glyphs dataset at {glyph_root}; run `make glyphs` first (installs Debian's Han fonts and generates it)")
        manifest = check(glyph_root)
    if (out / "last.pt").exists() and (out / "config.yaml").exists():
        shutil.rmtree(out)  # the demo folder is ours to recreate
    if data == "glyphs":
        raw = {**GLYPHS_DEMO, "data": {**GLYPHS_DEMO["data"], "root": str(glyph_root)}, "train": {**GLYPHS_DEMO["train"], "epochs": epochs}}
        cfg = build_config(raw, source="glyphs demo defaults")
        c = manifest["counts"]
        console.print(f"[bold]deepmetric demo[/]: {cfg.loss.name} on glyphs (train {c['train']['classes']} characters, validate "
                      f"{c['val']['classes']}, test {c['test']['classes']} unseen characters)")
        what, sel = "unseen characters", "validation characters"
    else:
        # Multi-Similarity: with only 3 training classes, proxy losses collapse each class to a point and
        # transfer less to unseen digits (benchmarks/results/accuracy.md).
        cfg = build_config({"name": "demo", "loss": {"name": "multi_similarity"}, "train": {"epochs": epochs}}, source="demo defaults")
        console.print(f"[bold]deepmetric demo[/]: {cfg.loss.name} on embedded MNIST (train digits 0-2, validate 3-4, test unseen 5-9)")
        what, sel = "unseen digits 5-9", "validation digits 3-4"
    res = train(cfg, out, evaluate_before=True, console=console)
    _report_after_training(cfg, out)
    console.print(metrics_table(f"test split ({what}), %", {"before training": res["before"], "after training": res["test"]}))
    console.print(f"after training = best.pt, epoch {res.get('selected_epoch')} of {epochs}, selected on the {sel} "
                  f"by {cfg.train.select_metric} (the test classes are never used for selection)")
    console.print(f"run folder: {out} (config.yaml, best.pt, last.pt, metrics.jsonl, results.json, tb/, report/)")


@app.command("train")
@friendly
def train_cmd(
    config: Path = typer.Option(..., "--config", "-c", help="YAML recipe (see configs/)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="override, e.g. --set train.epochs=5 (repeatable)"),
    out: Optional[Path] = typer.Option(None, help="run folder (default runs/<name>)"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its last checkpoint"),
) -> None:
    """Train from a recipe; the run folder receives config, checkpoints, metrics and TensorBoard logs."""
    from deepmetric.config import load_config
    from deepmetric.train.loop import train

    cfg = load_config(config, set_ or [])
    out = out or Path("runs") / cfg.name
    res = train(cfg, out, resume=resume, console=console)
    _report_after_training(cfg, out)
    console.print(metrics_table(f"{cfg.name}: test split '{cfg.data.test_split}', %", {"test": res["test"]}))


@app.command("eval")
@friendly
def eval_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="a checkpoint written by deepmetric train"),
    split: str = typer.Option("test", help="split to evaluate"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="override, e.g. --set data.root=/data/CUB"),
    detail: bool = typer.Option(False, "--detail", help="also P@k, mAP@k (tie-neutral), FNMR@FMR and a per-class table"),
    per_class: Optional[Path] = typer.Option(None, "--per-class", help="with --detail: write the per-class metrics to this JSON file"),
    rerank: Optional[str] = typer.Option(None, "--rerank", help="also score after re-ranking: qe | dba | dba+qe | k_reciprocal"),
    index: Optional[str] = typer.Option(None, "--index", help="also score through deployed indexes, e.g. hnsw,ivfpq,float16,int8,pca32 (with size and latency)"),
) -> None:
    """Evaluate a checkpoint on a split with the config stored inside it."""
    from deepmetric.inference import embed_checkpoint, evaluate_checkpoint

    if rerank is not None:
        from deepmetric.retrieval.rerank import METHODS

        if rerank not in METHODS:
            raise ValueError(f"--rerank {rerank!r} is not one of {', '.join(METHODS)}")
    metrics = evaluate_checkpoint(checkpoint, split=split, overrides=set_ or [])
    rows = {split: metrics}
    # --rerank, --index and --detail share one embedding of the split (the metrics above embed it as training does)
    embedded = embed_checkpoint(checkpoint, split=split, overrides=set_ or []) if rerank or index or detail else None
    if rerank is not None:
        from deepmetric.retrieval.rerank import rerank_metrics

        ks = tuple(int(k[len("recall@"):]) for k in metrics if k.startswith("recall@"))
        rows[f"{split}, {rerank}"] = rerank_metrics(*embedded, method=rerank, ks=ks or (1, 2, 4, 8))
    console.print(metrics_table(f"{checkpoint} on '{split}', %", rows))
    if index is not None:
        _print_deployed(*embedded, split, [v.strip() for v in index.split(",") if v.strip()])
    if detail:
        _print_detail(*embedded, split, per_class)


def _print_deployed(emb, labels, split: str, variants: List[str]) -> None:
    """R@K / MAP@R through each deployed index variant next to exact search, with size and latency."""
    from deepmetric.retrieval.deployed import deployed_quality

    rows = deployed_quality(emb, labels, variants=variants)
    table = Table(title=f"'{split}' through deployed indexes (self-search), %")
    for col in ("index", "R@1", "R@8", "MAP@R", "MiB", "bytes/item", "ms/query"):
        table.add_column(col, justify="left" if col == "index" else "right")
    for r in rows:
        table.add_row(r["variant"] + (" (exact)" if r["variant"] == "flat" else ""), f"{100 * r['recall@1']:.2f}", f"{100 * r['recall@8']:.2f}",
                      f"{100 * r['map@r']:.2f}", f"{r['bytes'] / 2**20:.2f}", f"{r['bytes_per_item']:.0f}", f"{r['latency_ms']:.3f}")
    console.print(table)


def _print_detail(emb, labels, split: str, per_class_out: Optional[Path]) -> None:
    """P@k / Recall@k / mAP@k (expected over tie orders), FNMR@FMR and the worst classes of one split."""
    import json

    from deepmetric.retrieval.openset import fnmr_at_fmr, pair_scores
    from deepmetric.retrieval.topk_metrics import topk_metrics

    ks = tuple(k for k in (1, 5, 10, 20) if k < len(labels))
    top = topk_metrics(emb, labels, ks=ks, per_class=True)
    rates = fnmr_at_fmr(pair_scores(emb, labels))
    table = Table(title=f"'{split}': top-k metrics (expected over tie orders), %")
    table.add_column("k", justify="right")
    for c in ("P@k", "R@k", "mAP@k"):
        table.add_column(c, justify="right")
    for k in ks:
        table.add_row(str(k), *(f"{100 * top[f'{m}@{k}']:.2f}" for m in ("precision", "recall", "map")))
    console.print(table)
    console.print("FNMR at FMR (all pairs of the split): " + ", ".join(f"FNMR@{k.split('=')[1]} = {100 * v:.2f}%" for k, v in rates.items()))
    worst = sorted(top["per_class"].items(), key=lambda kv: kv[1][f"map@{ks[-1]}"])[:10]
    pc = Table(title=f"per class (the {len(worst)} lowest mAP@{ks[-1]} of {len(top['per_class'])}), %")
    for c in ("class", "queries", f"P@{ks[0]}", f"mAP@{ks[-1]}"):
        pc.add_column(c, justify="right")
    for c, row in worst:
        pc.add_row(str(c), str(row["queries"]), f"{100 * row[f'precision@{ks[0]}']:.2f}", f"{100 * row[f'map@{ks[-1]}']:.2f}")
    console.print(pc)
    if per_class_out is not None:
        per_class_out.parent.mkdir(parents=True, exist_ok=True)
        per_class_out.write_text(json.dumps({str(c): v for c, v in top["per_class"].items()}, indent=1))
        console.print(f"per-class metrics of all classes: {per_class_out}")


@app.command("embed")
@friendly
def embed_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint"),
    split: str = typer.Option("test"),
    out: Path = typer.Option(..., help="output .npz with arrays embeddings and labels"),
    set_: Optional[List[str]] = typer.Option(None, "--set"),
) -> None:
    """Write the embeddings of a split to an .npz file (embeddings float32 (N, d), labels int64 (N,))."""
    import numpy as np

    from deepmetric.inference import embed_checkpoint

    emb, labels = embed_checkpoint(checkpoint, split=split, overrides=set_ or [])
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, embeddings=emb.numpy(), labels=labels.numpy())
    console.print(f"wrote {len(emb)} embeddings of dimension {emb.shape[1]} to {out}")


@app.command("list")
def list_cmd() -> None:
    """What can be named in a config: losses, synthesisers, datasets, backbones, recipes."""
    from deepmetric.registry import BACKBONES, DATASETS, LOSSES, SAMPLERS, SYNTHESISERS

    for reg in (LOSSES, SYNTHESISERS, DATASETS, BACKBONES, SAMPLERS):
        plural = reg.kind + ("es" if reg.kind.endswith("s") else "s")
        console.print(f"[bold]{plural}[/]: {', '.join(reg.names())}")
    recipes = sorted(p.name for p in Path("configs").glob("*.yaml")) if Path("configs").is_dir() else []
    if recipes:
        console.print(f"[bold]recipes[/] (configs/): {', '.join(recipes)}")



# ------------------------------------------------------------------ glyphs dataset
glyphs_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="The glyphs benchmark dataset: Han characters drawn by Debian's fonts.")
app.add_typer(glyphs_app, name="glyphs")


@glyphs_app.command("generate")
@friendly
def glyphs_generate_cmd(
    out: Path = typer.Option(Path("data/glyphs"), "--out", help="dataset folder (new, empty, or an earlier glyphs dataset)"),
    size: int = typer.Option(64, "--size", help="image side in pixels"),
    limit: Optional[int] = typer.Option(None, "--limit", help="only the first N characters of GB 2312 level 1 (default all 3,755)"),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="share of the training half held out as the val split"),
    min_typefaces: int = typer.Option(4, "--min-typefaces", help="leave out characters drawn by fewer typefaces"),
    font_dir: Optional[List[Path]] = typer.Option(None, "--font-dir", help="font folder to scan (repeatable; default /usr/share/fonts)"),
) -> None:
    """Render the dataset (CSV format + manifest.json); run `make glyphs` to install the fonts first."""
    from deepmetric.data.glyphs import DEFAULT_FONT_DIRS, generate

    with console.status("rendering glyphs") as status:
        m = generate(out, size=size, limit=limit, val_fraction=val_fraction, min_typefaces=min_typefaces,
                     font_dirs=font_dir or DEFAULT_FONT_DIRS,
                     progress=lambda d, n: status.update(f"rendering glyphs: {d}/{n} characters") if d % 50 == 0 else None)
    _print_glyph_counts(out, m)


@glyphs_app.command("check")
@friendly
def glyphs_check_cmd(root: Path = typer.Argument(Path("data/glyphs"), help="a glyphs dataset folder")) -> None:
    """Verify a generated dataset against the counts in its manifest."""
    from deepmetric.data.glyphs import check

    _print_glyph_counts(root, check(root))


def _print_glyph_counts(root: Path, m: dict) -> None:
    table = Table(title=f"glyphs dataset {root} ({m['size']}x{m['size']}, {m['n_characters']} characters listed)")
    for col in ("split", "characters", "images", "images per character"):
        table.add_column(col, justify="right")
    for s in ("train", "val", "test"):
        c = m["counts"][s]
        table.add_row(s, str(c["classes"]), str(c["images"]), f"{c['images'] / max(1, c['classes']):.1f}")
    console.print(table)
    used = [t["key"] for t in m["typefaces"] if t["faces"]]
    console.print(f"{len(used)} typefaces: {', '.join(used)}; {len(m['dropped_characters'])} characters left out "
                  f"(fewer than {m['min_typefaces']} typefaces)")
    if m["missing_typefaces"]:
        console.print(f"not installed: {', '.join(m['missing_typefaces'])} (make glyphs installs them)")


# ------------------------------------------------------------------ index, search, serve, report, export
index_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Gallery indexes for search: build one from a checkpoint.")
app.add_typer(index_app, name="index")


@index_app.command("build")
@friendly
def index_build_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="a checkpoint written by deepmetric train"),
    split: Optional[str] = typer.Option(None, "--split", help="gallery = this split of the checkpoint's dataset (default: its test split)"),
    images: Optional[Path] = typer.Option(None, "--images", help="gallery = this folder of images instead (class sub-folders give labels)"),
    out: Path = typer.Option(..., "--out", help="index folder to write (new, empty, or an earlier index)"),
    kind: str = typer.Option("flat", "--kind", help="flat (exact) | hnsw | ivfpq"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="config override, e.g. data.root=/data/CUB"),
) -> None:
    """Embed a gallery with a checkpoint's model and write a searchable index folder."""
    from deepmetric.serve.indexing import build_index_from_checkpoint

    index = build_index_from_checkpoint(checkpoint, split=split, image_dir=images, out=out, kind=kind, overrides=set_ or [])
    src = index.metadata["source"]
    what = f"folder {src['image_dir']}" if "image_dir" in src else f"{src['dataset']} split '{src['split']}'"
    console.print(f"indexed {len(index)} items of {what} ({index.dim}-d, {index.kind}) into {out}", soft_wrap=True)


@index_app.command("add")
@friendly
def index_add_cmd(
    images: List[Path] = typer.Argument(..., help="image file(s) to add"),
    index: Path = typer.Option(..., "--index", help="an index folder (deepmetric index build)"),
    class_name: Optional[str] = typer.Option(None, "--class", help="their class name (a new name becomes a new class)"),
) -> None:
    """Embed images with the index's own model and add them; the other items are not re-embedded."""
    from deepmetric.serve.indexing import add_to_index

    ids = add_to_index(index, images, class_name=class_name)
    console.print(f"added {len(ids)} item(s) to {index}: ids {', '.join(map(str, ids))}", soft_wrap=True)


@index_app.command("remove")
@friendly
def index_remove_cmd(
    ids: List[int] = typer.Argument(..., help="item id(s) to remove"),
    index: Path = typer.Option(..., "--index", help="an index folder (deepmetric index build)"),
) -> None:
    """Remove items by id (HNSW: tombstones, the graph is rebuilt when they reach a quarter of it)."""
    from deepmetric.serve.indexing import remove_from_index

    left = remove_from_index(index, ids)
    console.print(f"removed {len(ids)} item(s) from {index}; {left} left", soft_wrap=True)


@index_app.command("update")
@friendly
def index_update_cmd(
    item_id: int = typer.Argument(..., help="id of the item to replace"),
    image: Path = typer.Argument(..., help="its new image file"),
    index: Path = typer.Option(..., "--index", help="an index folder (deepmetric index build)"),
    class_name: Optional[str] = typer.Option(None, "--class", help="its new class name (default: keep)"),
) -> None:
    """Re-embed one item from a new image, keeping its id."""
    from deepmetric.serve.indexing import update_in_index

    update_in_index(index, item_id, image, class_name=class_name)
    console.print(f"updated item {item_id} of {index} from {image}", soft_wrap=True)


@app.command("search")
@friendly
def search_cmd(
    images: List[Path] = typer.Argument(..., help="query image file(s)"),
    index: Path = typer.Option(..., "--index", help="an index folder (deepmetric index build)"),
    k: int = typer.Option(10, "-k", "--k", min=1, help="neighbours per query"),
    qe: int = typer.Option(0, "--qe", min=0, help="re-rank by alpha-query expansion over this many neighbours (0 = off)"),
) -> None:
    """Print the k most similar gallery items of each query image."""
    from deepmetric.serve.indexing import search_images

    results = search_images(index, images, k, qe=qe)  # a bad index folder is a SearchIndexError (ValueError): one red line
    for path, rows in zip(images, results):
        table = Table(title=f"{path}: top {len(rows)}")
        for col, justify in (("rank", "right"), ("id", "right"), ("score", "right"), ("class", "left"), ("item", "left")):
            table.add_column(col, justify=justify)
        for r in rows:
            table.add_row(str(r["rank"]), str(r["id"]), f"{r['score']:.4f}", str(r["class_name"] if r["class_name"] is not None else "-"), r["name"])
        console.print(table)
        if rows and rows[0].get("match") is not None:
            n_match = sum(bool(r["match"]) for r in rows)
            verdict = f"{n_match} match(es)" if n_match else "[bold]no match[/]"
            console.print(f"{path}: {verdict} at the calibrated threshold (cosine >= {_index_threshold(index):.4f})")


def _index_threshold(index_dir: Path) -> float:
    import json

    from deepmetric.retrieval.index import META_FILE

    return float(json.loads((index_dir / META_FILE).read_text())["threshold"]["value"])


@app.command("calibrate")
@friendly
def calibrate_cmd(
    index: Path = typer.Option(..., "--index", help="an index folder (deepmetric index build)"),
    fmr: Optional[float] = typer.Option(None, "--fmr", help="target false-match rate, e.g. 1e-3 (the default)"),
    precision: Optional[float] = typer.Option(None, "--precision", help="target precision of the matches instead of --fmr"),
    split: Optional[str] = typer.Option(None, "--split", help="labelled class-disjoint split (default: the recipe's validation split)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="config override, e.g. data.root=/data/CUB"),
) -> None:
    """Choose the similarity threshold of a match on a class-disjoint split and store it with the index."""
    from deepmetric.serve.calibration import calibrate_index

    res = calibrate_index(index, fmr=fmr, precision=precision, split=split, overrides=set_ or [])
    th = res["threshold"]
    target = f"FMR <= {th['target']:g}" if th["criterion"] == "fmr" else f"precision >= {th['target']:g}"
    console.print(f"threshold {th['value']:.4f} for {target} on split '{th['split']}' ({res['items']} items, "
                  f"{th['genuine_pairs']:,} genuine / {th['impostor_pairs']:,} impostor pairs"
                  f"{', impostors sampled' if res['sampled'] else ''}): FMR {th['fmr']:.2e}, FNMR {th['fnmr']:.4f}, "
                  f"precision {th['precision']:.4f}")
    console.print("FNMR@FMR: " + ", ".join(f"{k.split('=')[1]}: {v:.4f}" for k, v in res["fnmr_at_fmr"].items()))
    console.print(f"stored in {index}/index.json; ROC: {res['roc']}. search, the API and the web page now answer 'no match' below it")


@app.command("serve")
@friendly
def serve_cmd(
    index: Path = typer.Option(..., "--index", help="an index folder (deepmetric index build)"),
    host: str = typer.Option("127.0.0.1", help="interface to listen on (0.0.0.0 exposes the service to the network)"),
    port: int = typer.Option(8000, help="TCP port"),
    max_upload_mb: float = typer.Option(10.0, help="largest accepted image file, in MB"),
    max_k: int = typer.Option(100, help="largest k a request may ask for"),
    allow_edits: bool = typer.Option(False, "--allow-edits", help="enable POST/PUT/DELETE /items (adding, replacing, removing gallery items)"),
) -> None:
    """Serve the index over HTTP: a web page at /, POST /search, GET /items/{id}, GET /health."""
    import uvicorn

    from deepmetric.serve.app import create_app

    web = create_app(index, max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_k=max_k, allow_edits=allow_edits)
    console.print(f"serving {index} on http://{host}:{port}/ (Ctrl+C stops)")
    uvicorn.run(web, host=host, port=port, log_level="warning")


@app.command("report")
@friendly
def report_cmd(
    run_dir: Path = typer.Argument(..., help="a run folder written by deepmetric train"),
    split: Optional[str] = typer.Option(None, help="split shown in the retrieval grid and map (default: test split)"),
    max_points: int = typer.Option(2000, "--max-points", min=10, help="t-SNE sample size"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="config override, e.g. data.root=/data/CUB"),
) -> None:
    """Write training curves, a retrieval grid and a t-SNE map of the test embeddings into RUN_DIR/report/."""
    from deepmetric.report import write_report

    for name, path in write_report(run_dir, split=split, overrides=set_ or [], max_points=max_points).items():
        console.print(f"{name}: {path}")


@app.command("export")
@friendly
def export_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="a checkpoint written by deepmetric train"),
    format: str = typer.Option("onnx", "--format", help="onnx | torchscript"),
    out: Path = typer.Option(..., "--out", help="output file (.onnx or .pt)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="config override, e.g. data.root=/data/CUB"),
) -> None:
    """Export the checkpoint's model (images -> embeddings) and check the file reproduces it."""
    import torch

    from deepmetric.export import export_model, preprocessing_metadata
    from deepmetric.inference import Embedder

    embedder = Embedder.from_checkpoint(checkpoint, set_ or [], device="cpu")
    size = embedder.cfg.data.image_size
    example = torch.rand(2, embedder.in_chans, size, size, generator=torch.Generator().manual_seed(0))
    meta = preprocessing_metadata(embedder.transform, image_size=size, resize=embedder.cfg.data.resize, channels=embedder.in_chans)
    path = export_model(embedder.model, out, format=format, example_input=example, metadata=meta if format == "onnx" else None)
    console.print(f"wrote {format} model to {path} (images (B, {example.shape[1]}, {size}, {size}) -> embeddings (B, {embedder.cfg.model.embedding_dim}))")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
