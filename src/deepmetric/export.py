"""Export an embedding model for serving outside deepmetric: ONNX (onnxruntime) or TorchScript.

The exported graph maps images (B, C, H, W) float32 to embeddings (B, d) with a dynamic batch axis, named
``images`` -> ``embeddings``. It is traced in eval mode (BatchNorm uses running statistics, no dropout), and
after writing it is run once on ``example_input`` and compared with the PyTorch model: a mismatch above
``atol`` is an error, so a file this function returns is known to reproduce the model.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch
from torch import nn

FORMATS = ("onnx", "torchscript")


def export_model(model: nn.Module, path: str | os.PathLike, *, format: Literal["onnx", "torchscript"] = "onnx",
                 example_input: torch.Tensor, opset_version: int = 17, atol: float = 1e-4) -> Path:
    """Write ``model`` to ``path`` and check that the file reproduces it.

    Args:
        model: maps (B, C, H, W) to (B, d); exported in eval mode, its train/eval mode restored afterwards.
        path: output file (``.onnx`` or ``.pt``); parent folders are created.
        format: ``"onnx"`` (legacy TorchScript-based exporter, ``dynamo=False``: needs no ``onnxscript``)
            or ``"torchscript"`` (``torch.jit.trace``).
        example_input: (B, C, H, W) float32 images used for tracing and the check, on the model's device.
        opset_version: ONNX opset.
        atol: largest allowed absolute difference between the exported and the PyTorch embeddings.

    Returns:
        The written path.

    Raises:
        ValueError: unknown format, bad example input, or an exported model whose outputs differ.
    """
    if format not in FORMATS:
        raise ValueError(f"format={format!r} is not one of {FORMATS}")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() != 4:
        shape = tuple(example_input.shape) if isinstance(example_input, torch.Tensor) else type(example_input).__name__
        raise ValueError(f"example_input must be a (B, C, H, W) tensor of images, got {shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = example_input.float().contiguous()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = model(example)
            if format == "onnx":
                torch.onnx.export(
                    model, (example,), str(path), input_names=["images"], output_names=["embeddings"],
                    dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}},
                    opset_version=opset_version, dynamo=False,
                )
                got = _run_onnx(path, example)
            else:
                traced = torch.jit.trace(model, example)
                torch.jit.save(traced, str(path))
                got = torch.jit.load(str(path), map_location=example.device)(example)
    finally:
        model.train(was_training)
    diff = (got.to(expected.device).float() - expected.float()).abs().max().item()
    if diff > atol:
        raise ValueError(f"exported {format} model at {str(path)!r} differs from the PyTorch model by {diff:.3g} (> atol={atol})")
    return path


def _run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(["embeddings"], {"images": x.detach().cpu().numpy()})
    return torch.from_numpy(out)
