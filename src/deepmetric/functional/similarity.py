"""Similarity primitives shared by losses, synthesisers and retrieval."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Rows of ``x`` (…, d) scaled to unit L2 norm (zero rows stay zero)."""
    return F.normalize(x, p=2.0, dim=-1, eps=eps)


def cosine_similarity_matrix(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """(n, m) matrix of cosine similarities between rows of ``a`` (n, d) and ``b`` (m, d)."""
    a = l2_normalize(a)
    b = a if b is None else l2_normalize(b)
    return a @ b.t()
