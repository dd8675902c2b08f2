"""Atomic checkpoints that carry the resolved config, so a run can always be resumed or re-evaluated."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Dict

import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be used here, with what to do about it."""


def save_checkpoint(state: Dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, fsync, then rename.

    A crash (even ``kill -9``) at any moment leaves either the previous file or the new one, never a
    truncated checkpoint.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; errors say what was expected."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; pass a file such as RUN_DIR/best.pt or RUN_DIR/last.pt")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged file
        raise CheckpointError(f"checkpoint {str(path)!r} could not be read ({type(exc).__name__}: {exc}); it is damaged or not a deepmetric checkpoint") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{str(path)!r} is not a deepmetric checkpoint (expected keys 'model' and 'config')")
    return state


def check_compatible(state: Dict[str, Any], signature: Dict[str, Any], source: str) -> None:
    """Refuse a checkpoint whose model differs from the one the config builds (clear, one line)."""
    theirs = state.get("model_signature")
    if theirs is None or theirs == signature:
        return
    diffs = [f"{k}: checkpoint {theirs.get(k)!r} vs config {signature.get(k)!r}" for k in sorted(set(theirs) | set(signature)) if theirs.get(k) != signature.get(k)]
    raise CheckpointError(f"checkpoint {source} was trained with another model ({'; '.join(diffs)}); use the config it was trained with, or start a new run folder")
