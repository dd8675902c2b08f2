"""Atomic, self-checking checkpoints that carry the resolved config, so a run can always be resumed or
re-evaluated, and a damaged file is never used.

File format: a ``torch.save`` file holding ``{"deepmetric_checkpoint": 1, "sha256": hex digest, "payload":
uint8 tensor}``, where the payload is the ``torch.save`` serialisation of the state dict (model weights,
optimizer state, config, ...) and the digest is the SHA-256 of the payload bytes. :func:`load_checkpoint`
recomputes the digest before unpickling anything: a file whose bytes were damaged (disk, copy, transfer)
is refused with one line instead of silently evaluating to nonsense. Plain ``torch.save`` files (written
before the digest existed) still load, after the CRC-32 check of every member of their zip archive.
"""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Dict

import torch

#: Version of the envelope around the payload (see the module docstring).
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used here, with what to do about it."""


def save_checkpoint(state: Dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, fsync, then rename.

    A crash (even ``kill -9``) at any moment leaves either the previous file or the new one, never a
    truncated checkpoint. The file carries the SHA-256 of the serialised state (module docstring).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getbuffer()
    envelope = {"deepmetric_checkpoint": FORMAT_VERSION, "sha256": hashlib.sha256(payload).hexdigest(),
                "payload": torch.frombuffer(payload, dtype=torch.uint8)}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(envelope, f)
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
    """Read a checkpoint written by :func:`save_checkpoint`, after checking its content hash.

    Raises:
        CheckpointError: the file is missing, damaged (hash or zip checksum mismatch, unreadable), or not a
            deepmetric checkpoint; the message says which and what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; pass a file such as RUN_DIR/best.pt or RUN_DIR/last.pt")
    damaged = f"checkpoint {str(path)!r} is damaged"
    try:
        # weights_only: the envelope is plain data, so nothing of a damaged file is unpickled as code
        outer = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - an older plain torch.save checkpoint, or an unreadable file
        outer = None
    if isinstance(outer, dict) and "deepmetric_checkpoint" in outer:
        payload = outer.get("payload")
        if not isinstance(payload, torch.Tensor) or payload.dtype != torch.uint8 or "sha256" not in outer:
            raise CheckpointError(f"{damaged} (its envelope lacks the payload or the sha256 digest); restore it from a copy or retrain")
        data = payload.numpy().tobytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest != outer["sha256"]:
            raise CheckpointError(f"{damaged}: the SHA-256 of its content is {digest[:12]}… but {outer['sha256'][:12]}… was stored when it was "
                                  "written; restore it from a copy or retrain")
        source: Any = io.BytesIO(data)
    else:
        _check_zip(path, damaged)
        source = path
    try:
        state = torch.load(source, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged file
        raise CheckpointError(f"checkpoint {str(path)!r} could not be read ({type(exc).__name__}: {exc}); it is damaged or not a deepmetric checkpoint") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{str(path)!r} is not a deepmetric checkpoint (expected keys 'model' and 'config')")
    return state


def _check_zip(path: Path, damaged: str) -> None:
    """The CRC-32 of every member of a plain ``torch.save`` zip file (torch.load itself does not check them)."""
    if not zipfile.is_zipfile(path):
        return  # not a zip: torch.load says what it is
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{damaged} ({type(exc).__name__}: {exc}); restore it from a copy or retrain") from None
    if bad is not None:
        raise CheckpointError(f"{damaged}: the checksum of its member {bad!r} does not match its content; restore it from a copy or retrain")


def check_compatible(state: Dict[str, Any], signature: Dict[str, Any], source: str) -> None:
    """Refuse a checkpoint whose model differs from the one the config builds (clear, one line)."""
    theirs = state.get("model_signature")
    if theirs is None or theirs == signature:
        return
    diffs = [f"{k}: checkpoint {theirs.get(k)!r} vs config {signature.get(k)!r}" for k in sorted(set(theirs) | set(signature)) if theirs.get(k) != signature.get(k)]
    raise CheckpointError(f"checkpoint {source} was trained with another model ({'; '.join(diffs)}); use the config it was trained with, or start a new run folder")
