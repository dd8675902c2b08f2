"""Visual report of a run: ``write_report(run_dir)`` writes PNGs into ``RUN_DIR/report/``.

* ``curves.png``: training loss (raw and smoothed) and learning rate against the step, and the
  validation metrics against the epoch, read from ``metrics.jsonl``.
* ``retrieval.png``: a few test queries (one per class in turn) with their top-k neighbours in the rest
  of the split (the query itself excluded), each neighbour framed green (same class) or red (another).
* ``embedding_map.png``: a 2-D t-SNE map (scikit-learn) of the test embeddings coloured by class.

The retrieval grid and the map use the run's ``best.pt`` (else ``last.pt``) and its stored config; plots
are drawn with matplotlib's Agg backend (no display needed), through a private figure object rather than
pyplot's global state.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits

from deepmetric.inference import Embedder
from deepmetric.retrieval.index import SearchIndex

REPORT_DIR = "report"
#: Metrics drawn in the validation panel, when logged.
VAL_METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "r_precision", "nmi", "knn_accuracy")
OK, BAD = "#1a9641", "#d7191c"


#: Families tried after matplotlib's default for characters it lacks (class names of the glyphs dataset and
#: of any CJK-labelled data are Han characters): the first one installed is used.
CJK_FAMILIES = ("Noto Sans CJK SC", "Noto Sans CJK JP", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback",
                "AR PL UMing CN", "IPAGothic", "IPAexGothic")


@functools.lru_cache(maxsize=1)
def font_families() -> List[str]:
    """matplotlib's default sans-serif family, then the first installed of :data:`CJK_FAMILIES` as a fallback.

    matplotlib's font cache is built once; fonts installed later (``make glyph-fonts`` after a first plot)
    are missing from it, so when it knows no CJK family the system's font files it has not seen are added
    (half a second for the 62 files of the glyphs fonts)."""
    from matplotlib import font_manager

    fm = font_manager.fontManager
    if not any(f.name in CJK_FAMILIES for f in fm.ttflist):
        known = {f.fname for f in fm.ttflist}
        for path in font_manager.findSystemFonts():
            if path not in known:
                try:
                    fm.addfont(path)
                except Exception:  # noqa: BLE001 - an unreadable font file only loses that font
                    continue
    installed = {f.name for f in fm.ttflist}
    return ["DejaVu Sans", *[f for f in CJK_FAMILIES if f in installed][:1]]


def _with_fonts(plot):
    """Draw ``plot`` with :func:`font_families` (text objects take their family when created)."""

    @functools.wraps(plot)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context({"font.family": font_families()}):
            return plot(*args, **kwargs)

    return wrapper


def _figure(width: float, height: float):
    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def read_metrics(path: str | os.PathLike) -> List[Dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (one JSON object per line; a torn last line is ignored)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a run killed mid-write leaves a partial last line
    return records


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    head = np.array([values[: i + 1].mean() for i in range(window - 1)])
    return np.concatenate([head, np.convolve(values, kernel, mode="valid")])


def _metric_panel(ax, records: Sequence[Dict[str, Any]], title: str) -> None:
    """Every VAL_METRICS entry of per-epoch evaluation records against the epoch, in %."""
    epochs = [r["epoch"] for r in records]
    for name in VAL_METRICS:
        if any(name in r for r in records):
            ax.plot(epochs, [100 * r.get(name, np.nan) for r in records], marker="o", lw=2, label=name)
    ax.set_title(title)
    ax.set_xlabel("epoch")
    ax.legend(frameon=False, fontsize=8)
    if len(set(epochs)) <= 12:
        ax.set_xticks(sorted(set(epochs)))


@_with_fonts
def plot_curves(records: Sequence[Dict[str, Any]], path: str | os.PathLike, title: str = "") -> Path:
    """Loss and lr against the step, validation metrics against the epoch (see the module docstring)."""
    train = [r for r in records if r.get("split") == "train" and "loss" in r]
    val = [r for r in records if r.get("split") == "val"]
    # train.monitor_split: a split logged every few epochs for its curve only (e.g. the test kNN accuracy)
    monitor = [r for r in records if r.get("when") == "monitor"]
    panels = ["loss", "lr"] + (["val"] if val else []) + (["monitor"] if monitor else [])
    fig = _figure(4.6 * len(panels), 3.6)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    steps = np.array([r["step"] for r in train], dtype=float)
    if train:
        loss = np.array([r["loss"] for r in train], dtype=float)
        ax = axes[0]
        window = max(1, len(loss) // 20)
        ax.plot(steps, loss, color="#9ecae1", lw=1, label="loss")
        if window > 1:
            ax.plot(steps, _smooth(loss, window), color="#08519c", lw=2, label=f"mean of {window}")
            ax.legend(frameon=False)
        ax.set_title("training loss")
        ax.set_xlabel("step")
        lr = [r.get("lr") for r in train]
        if all(v is not None for v in lr):
            axes[1].plot(steps, lr, color="#e6550d", lw=2)
        axes[1].set_title("learning rate")
        axes[1].set_xlabel("step")
        axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    else:
        for ax in axes[:2]:
            ax.text(0.5, 0.5, "no training records", ha="center", va="center", transform=ax.transAxes)
    if val:
        _metric_panel(axes[2], val, "validation (%)")
    if monitor:
        _metric_panel(axes[-1], monitor, f"{monitor[0]['split']} split, monitored only (%)")
    for ax in axes:
        ax.grid(alpha=0.3)
    final = [r for r in records if r.get("split") == "test" and r.get("when") == "final"]
    if final:
        shown = [f"{name} {100 * final[-1][name]:.1f}%" for name in ("recall@1", "map@r", "r_precision", "nmi", "knn_accuracy") if name in final[-1]]
        title = (title + " — " if title else "") + "final test: " + ", ".join(shown)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def pick_queries(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` query indices covering the classes in turn (random member of each, private RNG), sorted by class."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    picked: List[int] = []
    pools = {int(c): list(rng.permutation(np.flatnonzero(labels == c))) for c in classes}
    while len(picked) < min(n, len(labels)):
        for c in classes:
            if pools[int(c)] and len(picked) < n:
                picked.append(int(pools[int(c)].pop()))
    return np.array(sorted(picked, key=lambda i: (labels[i], i)), dtype=np.int64)


def _hex_rgb(colour: str) -> tuple:
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))


def _tile(image: Any, side: int, border: int, colour: str) -> np.ndarray:
    """(side, side, 3) uint8: ``image`` fitted inside a ``border``-pixel frame of ``colour`` on black."""
    inner = side - 2 * border
    im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    im = im.convert("RGB")
    scale = inner / max(im.size)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    # Tiny images (8×8 digits) are enlarged with visible pixels; photos are resampled smoothly.
    im = im.resize(size, Image.Resampling.NEAREST if max(im.size) < 64 else Image.Resampling.LANCZOS)
    out = np.zeros((side, side, 3), np.uint8)
    out[:] = _hex_rgb(colour)
    out[border:side - border, border:side - border] = 0
    top, left = border + (inner - size[1]) // 2, border + (inner - size[0]) // 2
    out[top:top + size[1], left:left + size[0]] = np.asarray(im)
    return out


@_with_fonts
def plot_retrieval_grid(images: Any, embeddings: np.ndarray, labels: np.ndarray, class_names: Sequence[str], path: str | os.PathLike,
                        *, num_queries: int = 8, k: int = 8, seed: int = 0, title: str = "", cell: int = 110) -> Path:
    """Queries (left column, grey frame) and their top-k neighbours among the other items (the query itself
    excluded), framed green (same class) or red (another class), with class and cosine score above each.

    The grid is composed as one pixel mosaic and drawn in a single axes (dozens of matplotlib axes cost
    seconds to lay out and render).

    Args:
        images: indexable, ``images[i]`` a PIL image (or array) of item i.
        embeddings: (n, d) embeddings. labels: (n,) ints. class_names: names by label.
        num_queries / k: rows and neighbours per row. seed: query choice. cell: tile side in pixels.
    """
    labels = np.asarray(labels)
    queries = pick_queries(labels, num_queries, seed)
    k = min(k, len(labels) - 1)
    scores, ids = SearchIndex.build(embeddings, kind="flat").search(embeddings[queries], k + 1)
    gap, text_h, head = 10, 18, 30 * (2 if title else 1) + 10
    width, height = (k + 1) * (cell + gap) + gap + 14, head + len(queries) * (cell + text_h + gap)
    canvas = np.full((height, width, 3), 255, np.uint8)
    labels_at = []  # (x, y, text, colour, bold) in canvas pixels
    hits = 0
    for row, q in enumerate(queries):
        keep = [(s, i) for s, i in zip(scores[row], ids[row]) if i != q][:k]
        y = head + row * (cell + text_h + gap) + text_h
        tiles = [(q, None, "#333333", f"query: {class_names[labels[q]]}")]
        for s, i in keep:
            ok = labels[i] == labels[q]
            hits += int(ok)
            tiles.append((i, s, OK if ok else BAD, f"{class_names[labels[i]]} · {s:.3f}"))
        for col, (i, s, colour, text) in enumerate(tiles):
            x = gap + col * (cell + gap) + (14 if col else 0)  # a wider gap after the query column
            canvas[y:y + cell, x:x + cell] = _tile(images[i], cell, 5, colour)
            labels_at.append((x + cell / 2, y - 4, text, colour, s is None))
    dpi = 110
    fig = _figure(width / dpi, height / dpi)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()
    for x, y, text, colour, bold in labels_at:
        ax.text(x, y, text, ha="center", va="bottom", fontsize=8, color=colour, fontweight="bold" if bold else "normal")
    summary = f"top-{k} retrieval: {hits} of {len(queries) * k} neighbours share the query's class (green frame)"
    ax.text(width / 2, 8, (title + "\n" if title else "") + summary, ha="center", va="top", fontsize=10)
    fig.savefig(path, dpi=dpi)
    return Path(path)


@_with_fonts
def plot_embedding_map(embeddings: np.ndarray, labels: np.ndarray, class_names: Sequence[str], path: str | os.PathLike,
                       *, max_points: int = 2000, seed: int = 0, title: str = "") -> Path:
    """t-SNE of (up to ``max_points``, sampled with a private RNG) embeddings, one colour per class."""

    labels = np.asarray(labels)
    n = len(labels)
    keep = np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False)) if n > max_points else np.arange(n)
    x = np.asarray(embeddings, dtype=np.float32)[keep]
    y = labels[keep]
    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    # One OpenMP thread, restored on exit: t-SNE's spin-waiting threads slow it down 4x on a shared 2-core
    # machine (measured: 300 points 8.9 s with 2 threads vs 2.1 s with 1 while other processes run).
    with threadpool_limits(limits=1, user_api="openmp"):
        xy = TSNE(n_components=2, perplexity=perplexity, init="pca", metric="cosine", random_state=seed).fit_transform(x)
    classes = np.unique(y)
    fig = _figure(7.2, 6.2)
    ax = fig.subplots()

    cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20" if len(classes) <= 20 else "turbo"]
    for j, c in enumerate(classes):
        m = y == c
        colour = cmap(j if len(classes) <= 20 else j / max(1, len(classes) - 1))
        ax.scatter(xy[m, 0], xy[m, 1], s=9, alpha=0.8, color=colour, label=str(class_names[c]) if c < len(class_names) else str(c), linewidths=0)
    if len(classes) <= 20:
        ax.legend(title="class", markerscale=2.5, frameon=False, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title((title + "\n" if title else "") + f"t-SNE of {len(x)} embeddings ({len(classes)} classes, cosine, perplexity {perplexity:.0f})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def write_report(run_dir: str | os.PathLike, *, checkpoint: Optional[str | os.PathLike] = None, split: Optional[str] = None,
                 overrides: Sequence[str] = (), num_queries: int = 8, k: int = 8, max_points: int = 2000, seed: int = 0,
                 device: str = "auto") -> Dict[str, Path]:
    """Write the run's report PNGs into ``RUN_DIR/report/`` (see the module docstring).

    Args:
        run_dir: a run folder written by ``deepmetric train``.
        checkpoint: model for the retrieval grid and map (default best.pt, else last.pt of the run).
        split: split to show (default: the config's test split).
        overrides: config overrides, e.g. ``data.root=/data/CUB`` when the data moved.
        num_queries / k: rows and neighbours of the retrieval grid.
        max_points: t-SNE sample size (t-SNE is quadratic-ish; 2,000 points take seconds).
        seed: seed of the query choice, the t-SNE sample and t-SNE itself.
        device: where the model embeds the split.

    Returns:
        {"curves": path, "retrieval": path, "embedding_map": path} for the files written.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {str(run)!r} does not exist; pass a folder written by `deepmetric train`")
    out = run / REPORT_DIR
    out.mkdir(exist_ok=True)
    written: Dict[str, Path] = {}
    metrics = run / "metrics.jsonl"
    if metrics.is_file():
        written["curves"] = plot_curves(read_metrics(metrics), out / "curves.png", title=run.name)
    if checkpoint is None:
        checkpoint = next((run / n for n in ("best.pt", "last.pt") if (run / n).is_file()), None)
    if checkpoint is None:
        if not written:
            raise FileNotFoundError(f"{run} holds neither metrics.jsonl nor a checkpoint (best.pt / last.pt); nothing to report")
        return written
    emb, labels, images, names, split = _embed_split(checkpoint, split, overrides, device)
    label = f"{run.name}: split '{split}' ({Path(checkpoint).name})"
    written["retrieval"] = plot_retrieval_grid(images, emb, labels, names, out / "retrieval.png", num_queries=num_queries, k=k, seed=seed, title=label)
    written["embedding_map"] = plot_embedding_map(emb, labels, names, out / "embedding_map.png", max_points=max_points, seed=seed, title=label)
    return written


def _embed_split(checkpoint: Any, split: Optional[str], overrides: Sequence[str], device: str):
    embedder = Embedder.from_checkpoint(checkpoint, overrides, device=device)
    split = split or embedder.cfg.data.test_split
    dataset = embedder.dataset(split)
    emb, labels = embedder.embed_dataset(dataset)
    raw = embedder.dataset(split, transform=None)

    class _Images:  # lazy: only the shown items are decoded
        def __getitem__(self, i: int) -> Any:
            return raw[int(i)][0]

    names = [str(c) for c in getattr(dataset, "class_names", range(int(labels.max()) + 1))]
    return emb.numpy(), labels.numpy(), _Images(), names, split
