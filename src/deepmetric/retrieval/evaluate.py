"""Embed a dataset with a model, then score it: ``embed → knn → metrics`` (DESIGN.md, Evaluation)."""
from __future__ import annotations

from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

import torch
from torch import nn

from deepmetric.retrieval.metrics import retrieval_metrics

__all__ = ["embed", "evaluate_retrieval"]


def embed(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    device: str | torch.device = "cpu",
    amp_dtype: Optional[torch.dtype] = None,
    keep_on_device: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` over ``loader`` in eval mode without gradients and collect embeddings and labels.

    The model's previous train/eval mode is restored afterwards (also when an error is raised).

    Args:
        model: maps images (b, …) to embeddings (b, d); already on ``device``.
        loader: yields ``(images, labels)`` batches, e.g. a ``torch.utils.data.DataLoader``.
        device: where the images are sent.
        amp_dtype: run under ``torch.autocast`` with this dtype (e.g. ``torch.bfloat16``); None = off.
        keep_on_device: leave the embeddings on ``device`` (a GPU: evaluation then searches them there with
            the torch engine) instead of copying them to the CPU; labels always come back on the CPU.

    Returns:
        ``(embeddings, labels)``: float32 (N, d) and int64 (N,) tensors on the CPU (embeddings on ``device``
        with ``keep_on_device``), in loader order.

    Raises:
        ValueError: a batch is not an (images, labels) pair, the model returns something other than one
            (b, d) tensor per batch, or the loader is empty.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    embs, labs = [], []
    try:
        with torch.inference_mode():
            for step, batch in enumerate(loader):
                if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                    raise ValueError(f"the loader must yield (images, labels) pairs; batch {step} is a "
                                     f"{type(batch).__name__} of length {len(batch) if hasattr(batch, '__len__') else '?'}")
                images, labels = batch
                images = images.to(device, non_blocking=True)
                if amp_dtype is not None:
                    with torch.autocast(device_type=device.type, dtype=amp_dtype):
                        out = model(images)
                else:
                    out = model(images)
                if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != len(images):
                    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                    raise ValueError(f"the model must return one (batch, d) embedding tensor; batch {step} of "
                                     f"{len(images)} images gave {shape}")
                embs.append(out.float() if keep_on_device else out.float().cpu())  # float32 for the kNN engines
                labs.append(torch.as_tensor(labels).long().cpu())
    finally:
        model.train(was_training)
    if not embs:
        raise ValueError("the loader yielded no batch; nothing to embed")
    return torch.cat(embs), torch.cat(labs)


def evaluate_retrieval(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    device: str | torch.device = "cpu",
    amp_dtype: Optional[torch.dtype] = None,
    query_mask: Any = None,
    gallery_mask: Any = None,
    ks: Sequence[int] = (1, 2, 4, 8),
    nmi: bool = True,
    ami: bool = False,
    seed: int = 0,
    engine: str = "auto",
) -> Dict[str, float]:
    """:func:`embed` then :func:`~deepmetric.retrieval.metrics.retrieval_metrics` (see both for arguments).

    Masks index the loader's items in order (use a loader without shuffling). The embeddings stay on
    ``device``: on a GPU the ``"auto"`` engine searches them there (blocked torch top-k), on the CPU faiss.
    """
    embeddings, labels = embed(model, loader, device=device, amp_dtype=amp_dtype, keep_on_device=True)
    return retrieval_metrics(embeddings, labels, query_mask=query_mask, gallery_mask=gallery_mask, ks=ks,
                             nmi=nmi, ami=ami, seed=seed, engine=engine)
