"""Evaluate or embed with a saved checkpoint, using the config stored inside it."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Sequence, Tuple

import torch

from deepmetric.config import build_config
from deepmetric.train.checkpoint import check_compatible, load_checkpoint
from deepmetric.train.distributed import DistContext, resolve_device


def load_model(checkpoint: str | Path, overrides: Sequence[str] = (), device: str = "auto"):
    """(model in eval mode, resolved config, context) from a checkpoint; overrides may change e.g. data.root."""
    from deepmetric.train.data import build_dataset
    from deepmetric.train.loop import build_embedding_model, model_signature

    dev = resolve_device(device)
    state = load_checkpoint(checkpoint, map_location=dev)
    cfg = build_config(state["config"], overrides, source=f"{checkpoint} (stored config)")
    probe = build_dataset(cfg, cfg.data.test_split, train=False)[0][0]
    model = build_embedding_model(cfg, in_chans=int(probe.shape[0])).to(dev)
    check_compatible(state, model_signature(cfg, model), str(checkpoint))
    model.load_state_dict(state["model"])
    model.eval()
    return model, cfg, DistContext(device=dev)


def evaluate_checkpoint(checkpoint: str | Path, *, split: str = "test", overrides: Sequence[str] = ()) -> Dict[str, float]:
    from deepmetric.train.loop import evaluate

    model, cfg, ctx = load_model(checkpoint, overrides)
    return evaluate(model, cfg, ctx, split)


def embed_checkpoint(checkpoint: str | Path, *, split: str = "test", overrides: Sequence[str] = ()) -> Tuple[torch.Tensor, torch.Tensor]:
    from deepmetric.train.data import build_dataset
    from deepmetric.train.loop import _embed_dataset

    model, cfg, ctx = load_model(checkpoint, overrides)
    return _embed_dataset(model, build_dataset(cfg, split, train=False), cfg, ctx)
