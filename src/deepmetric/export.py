"""Export an embedding model for serving outside deepmetric: ONNX (onnxruntime) or TorchScript.

The exported graph maps images (B, C, H, W) float32 to embeddings (B, d) with a dynamic batch axis, named
``images`` -> ``embeddings``. It is traced in eval mode (BatchNorm uses running statistics, no dropout), and
after writing it is run once on ``example_input`` and compared with the PyTorch model: a mismatch above
``atol`` is an error, so a file this function returns is known to reproduce the model.

An ONNX file also carries the preprocessing its inputs need, as ONNX ``metadata_props`` (JSON values):
``mean``, ``std``, ``image_size``, ``resize``, ``channels``, ``image_mode`` and ``channel_order``, from
:func:`preprocessing_metadata` — enough for a runtime without deepmetric to feed it images correctly.
ONNX support is the ``export`` extra (``pip install 'deepmetric[export]'``: onnx, onnxruntime).
"""
from __future__ import annotations

import os
from pathlib import Path
import json
from typing import Any, Dict, Literal, Optional

import torch
from torch import nn

FORMATS = ("onnx", "torchscript")


def preprocessing_metadata(transform: Any, *, image_size: int, resize: Optional[int], channels: int) -> Dict[str, Any]:
    """What an image goes through before the model, read from the evaluation ``transform``.

    Returns:
        ``{"mean", "std"`` (per channel, on [0, 1] pixels, as in ``torchvision.transforms.Normalize``; None
        when the transform does not normalise), ``"image_size"`` (the square input side), ``"resize"`` (the
        shorter side before the centre crop, or None), ``"channels"``, ``"image_mode"`` ("L" or "RGB"),
        ``"channel_order"`` ("RGB", or "BGR" with pixels in 0–255 for the Caffe-style models)}``.
    """
    from torchvision import transforms as T

    from deepmetric.data.transforms import CAFFE_BGR_MEAN, CaffeBGR

    steps = list(getattr(transform, "transforms", [transform]))
    norm = next((t for t in steps if isinstance(t, T.Normalize)), None)
    caffe = any(isinstance(t, CaffeBGR) for t in steps)
    mean = [float(v) for v in norm.mean] if norm is not None else ([v / 255 for v in CAFFE_BGR_MEAN] if caffe else None)
    std = [float(v) for v in norm.std] if norm is not None else ([1 / 255] * 3 if caffe else None)
    return {"mean": mean, "std": std, "image_size": int(image_size), "resize": None if resize is None else int(resize),
            "channels": int(channels), "image_mode": "L" if channels == 1 else "RGB", "channel_order": "BGR" if caffe else "RGB"}


class _ImagesToEmbeddings(nn.Module):
    """The exported function, images -> embeddings, with no optional arguments: the ONNX exporter passes
    every parameter of ``forward`` positionally, which a keyword-only option (``return_features``) refuses."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


def export_model(model: nn.Module, path: str | os.PathLike, *, format: Literal["onnx", "torchscript"] = "onnx",
                 example_input: torch.Tensor, opset_version: int = 17, atol: float = 1e-4,
                 metadata: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``model`` to ``path`` and check that the file reproduces it.

    Args:
        model: maps (B, C, H, W) to (B, d); exported in eval mode, its train/eval mode restored afterwards.
        path: output file (``.onnx`` or ``.pt``); parent folders are created.
        format: ``"onnx"`` (legacy TorchScript-based exporter, ``dynamo=False``: needs no ``onnxscript``)
            or ``"torchscript"`` (``torch.jit.trace``).
        example_input: (B, C, H, W) float32 images used for tracing and the check, on the model's device.
        opset_version: ONNX opset.
        atol: largest allowed absolute difference between the exported and the PyTorch embeddings.
        metadata: ONNX only: ``{key: JSON-serialisable value}`` written into the file's ``metadata_props``
            (e.g. :func:`preprocessing_metadata`).

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
    if format == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError as exc:
            raise ValueError(f"ONNX export needs the 'export' extra ({exc.name} is not installed): "
                             "pip install 'deepmetric[export]' (onnx, onnxruntime), or use --format torchscript") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = example_input.float().contiguous()
    was_training = model.training
    net = _ImagesToEmbeddings(model)
    model.eval()
    try:
        with torch.no_grad():
            expected = model(example)
            if format == "onnx":
                torch.onnx.export(
                    net, (example,), str(path), input_names=["images"], output_names=["embeddings"],
                    dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}},
                    opset_version=opset_version, dynamo=False,
                )
                if metadata:
                    _write_onnx_metadata(path, metadata)
                got = _run_onnx(path, example)
            else:
                traced = torch.jit.trace(net, example)
                torch.jit.save(traced, str(path))
                got = torch.jit.load(str(path), map_location=example.device)(example)
    finally:
        model.train(was_training)
    diff = (got.to(expected.device).float() - expected.float()).abs().max().item()
    if diff > atol:
        raise ValueError(f"exported {format} model at {str(path)!r} differs from the PyTorch model by {diff:.3g} (> atol={atol})")
    return path


def _write_onnx_metadata(path: Path, metadata: Dict[str, Any]) -> None:
    import onnx

    proto = onnx.load(str(path))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = str(key), json.dumps(value)
    onnx.save(proto, str(path))


def read_onnx_metadata(path: str | os.PathLike) -> Dict[str, Any]:
    """The ``metadata_props`` of an ONNX file written by :func:`export_model`, JSON-decoded."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}


def _run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(["embeddings"], {"images": x.detach().cpu().numpy()})
    return torch.from_numpy(out)
