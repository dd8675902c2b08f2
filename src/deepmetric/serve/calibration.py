"""Calibrate an index folder's match threshold on a class-disjoint labelled split (``deepmetric calibrate``).

The index's own model embeds the split (by default the recipe's validation split, whose classes the model
did not train on, like the classes a deployed gallery meets); every pair of its items is scored, and the
threshold is chosen for a target false-match rate or precision (:mod:`deepmetric.retrieval.openset`). The
threshold, with the rates measured at it, is written into the folder's ``index.json`` (atomically) and the
ROC into ``ROC_FILE``; searching the folder then answers "no match" below it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch

from deepmetric.inference import Embedder
from deepmetric.retrieval.index import SearchIndex
from deepmetric.retrieval.openset import DEFAULT_FMRS, fnmr_at_fmr, pair_scores, plot_roc, threshold_at_fmr, threshold_at_precision
from deepmetric.serve.indexing import MODEL_FILE

ROC_FILE = "roc.png"


@torch.no_grad()
def calibrate_index(
    index_dir: str | os.PathLike,
    *,
    fmr: Optional[float] = None,
    precision: Optional[float] = None,
    split: Optional[str] = None,
    overrides: Sequence[str] = (),
    device: str = "auto",
    max_impostor_pairs: int = 20_000_000,
    seed: int = 0,
) -> Dict[str, Any]:
    """Choose and store the match threshold of an index folder.

    Args:
        index_dir: a folder written by ``deepmetric index build``.
        fmr: target false-match rate (e.g. 1e-3): the smallest threshold whose FMR is at most this.
        precision: target precision of the declared matches instead (exclusive with ``fmr``).
            Neither given: ``fmr=1e-3``.
        split: labelled split of the index's dataset to calibrate on; default the recipe's validation
            split (``data.val_split``: class-disjoint from training with ``holdout``). The training split is
            refused: its pairs are what the model was fitted to, so its threshold would be optimistic.
        overrides: config overrides, e.g. ``data.root=/data/CUB``.
        device: where the model embeds the split.
        max_impostor_pairs / seed: see :func:`~deepmetric.retrieval.openset.pair_scores`.

    Returns:
        ``{"threshold": Threshold.to_dict(), "fnmr_at_fmr": {...}, "roc": path, "items": n, "sampled": bool}``.
    """
    if fmr is not None and precision is not None:
        raise ValueError(f"give a target FMR ({fmr}) or a target precision ({precision}), not both")
    if fmr is None and precision is None:
        fmr = 1e-3
    index_dir = Path(index_dir)
    index = SearchIndex.load(index_dir)
    embedder = Embedder.from_checkpoint(index_dir / MODEL_FILE, overrides, device=device)
    index.check_model(embedder.signature, source=str(index_dir / MODEL_FILE))
    cfg = embedder.cfg
    split = split or cfg.data.val_split
    if split is None:
        raise ValueError("the index's recipe has no validation split (data.val_split: null); pass --split NAME of a "
                         "labelled split whose classes the model did not train on")
    if split == cfg.data.train_split:
        raise ValueError(f"split {split!r} is the training split: a threshold fitted there is optimistic for new classes; "
                         "calibrate on the validation split (the default) or another class-disjoint split")
    emb, labels = embedder.embed_dataset(embedder.dataset(split))
    scores = pair_scores(emb, labels, max_impostor_pairs=max_impostor_pairs, seed=seed)
    th = threshold_at_fmr(scores, fmr) if fmr is not None else threshold_at_precision(scores, precision)
    th.split = split
    roc = plot_roc(scores, index_dir / ROC_FILE, marked=th, title=f"ROC on split '{split}' ({len(labels)} items)")
    index.set_threshold(th.to_dict())
    index.save_metadata(index_dir)
    return {"threshold": th.to_dict(), "fnmr_at_fmr": fnmr_at_fmr(scores, DEFAULT_FMRS), "roc": str(roc),
            "items": int(len(labels)), "sampled": scores.sampled}
