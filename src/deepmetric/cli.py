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

app = typer.Typer(add_completion=False, no_args_is_help=True, help="deepmetric: deep metric learning — train, evaluate, search.")
console = Console()
err_console = Console(stderr=True)

#: Metrics shown in tables, in this order, when present.
TABLE_METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision", "nmi", "knn_accuracy")


def _expected_errors() -> tuple:
    from deepmetric.config import ConfigError
    from deepmetric.train.checkpoint import CheckpointError
    from deepmetric.train.loop import TrainingDiverged

    return (ConfigError, CheckpointError, TrainingDiverged, FileNotFoundError, FileExistsError, KeyError, ValueError)


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
        table.add_column(k, justify="right")
    for name, r in rows.items():
        table.add_row(name, *(f"{100 * r[k]:.2f}" if k in r else "-" for k in keys))
    return table


@app.command()
@friendly
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="run folder (replaced if it holds an earlier demo)"),
    epochs: int = typer.Option(6, help="training epochs"),
) -> None:
    """Train briefly on the embedded MNIST unseen-class split and print test metrics before and after."""
    import shutil

    from deepmetric.config import build_config
    from deepmetric.train.loop import train

    if (out / "last.pt").exists() and (out / "config.yaml").exists():
        shutil.rmtree(out)  # the demo folder is ours to recreate
    cfg = build_config({"name": "demo", "train": {"epochs": epochs}}, source="demo defaults")
    console.print(f"[bold]deepmetric demo[/]: {cfg.loss.name} on embedded MNIST (train digits 0-2, validate 3-4, test unseen 5-9)")
    res = train(cfg, out, evaluate_before=True, console=console)
    console.print(metrics_table("test split (unseen digits 5-9), %", {"before training": res["before"], "after training": res["test"]}))
    console.print(f"run folder: {out} (config.yaml, best.pt, last.pt, metrics.jsonl, results.json, tb/)")


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
    console.print(metrics_table(f"{cfg.name}: test split '{cfg.data.test_split}', %", {"test": res["test"]}))


@app.command("eval")
@friendly
def eval_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="a checkpoint written by deepmetric train"),
    split: str = typer.Option("test", help="split to evaluate"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="override, e.g. --set data.root=/data/CUB"),
) -> None:
    """Evaluate a checkpoint on a split with the config stored inside it."""
    from deepmetric.train.evaluate import evaluate_checkpoint

    metrics = evaluate_checkpoint(checkpoint, split=split, overrides=set_ or [])
    console.print(metrics_table(f"{checkpoint} on '{split}', %", {split: metrics}))


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

    from deepmetric.train.evaluate import embed_checkpoint

    emb, labels = embed_checkpoint(checkpoint, split=split, overrides=set_ or [])
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, embeddings=emb.numpy(), labels=labels.numpy())
    console.print(f"wrote {len(emb)} embeddings of dimension {emb.shape[1]} to {out}")


@app.command("list")
def list_cmd() -> None:
    """What can be named in a config: losses, synthesisers, datasets, backbones, recipes."""
    from deepmetric.registry import BACKBONES, DATASETS, LOSSES, SAMPLERS, SYNTHESISERS

    for reg in (LOSSES, SYNTHESISERS, DATASETS, BACKBONES, SAMPLERS):
        console.print(f"[bold]{reg.kind}s[/]: {', '.join(reg.names())}")
    recipes = sorted(p.name for p in Path("configs").glob("*.yaml")) if Path("configs").is_dir() else []
    if recipes:
        console.print(f"[bold]recipes[/] (configs/): {', '.join(recipes)}")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
