"""Build a registered loss from its name and keyword parameters, with errors that say what to fix."""
from __future__ import annotations

import inspect
from typing import Any, Dict, Mapping, Optional

from torch import nn

from deepmetric.registry import LOSSES

#: Arguments the factory fills in from the data and model; a config may not set them.
CONTEXT_ARGS = ("num_classes", "embedding_dim")


def loss_parameters(name: str) -> Dict[str, Any]:
    """The user-settable keyword parameters of a registered loss and their defaults."""
    sig = inspect.signature(LOSSES.get(name))
    return {
        k: p.default
        for k, p in sig.parameters.items()
        if k not in CONTEXT_ARGS and k != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def build_loss(name: str, params: Optional[Mapping[str, Any]] = None, *, num_classes: int, embedding_dim: int) -> nn.Module:
    """Instantiate the loss ``name`` with ``params``; unknown parameter names are a ``ValueError``."""
    ctor = LOSSES.get(name)
    params = dict(params or {})
    valid = loss_parameters(name)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(
            f"loss {name!r} has no parameter(s) {unknown}; valid parameters: "
            + (", ".join(f"{k}={v!r}" for k, v in valid.items()) or "(none)")
        )
    accepted = inspect.signature(ctor).parameters
    for key, value in (("num_classes", num_classes), ("embedding_dim", embedding_dim)):
        if key in accepted:
            params[key] = value
    return ctor(**params)
