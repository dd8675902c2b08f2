"""BN-Inception (Inception with Batch Normalization), the backbone of Proxy-Anchor and most DML papers.

Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate
Shift", ICML 2015, Figure 5 (the Inception-v2 / BN-Inception column). Neither timm nor torchvision ships it,
so it is written here compactly from a table of block widths. Module names follow the Caffe port in
Cadene's ``pretrainedmodels`` (``inception_3a_1x1``, ``inception_3a_1x1_bn``, …) so that the ImageNet file
Proxy-Anchor uses (``bn_inception-52deb4733.pth``) loads strictly into it.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple

import torch
from torch import nn
import torch.nn.functional as F

#: Where the ImageNet weights usually come from, and the input they expect (Caffe convention).
BN_INCEPTION_WEIGHTS_URL = "http://data.lip6.fr/cadene/pretrainedmodels/bn_inception-52deb4733.pth"
BN_INCEPTION_PREPROCESSING = {
    "input_space": "BGR",
    "input_range": (0, 255),
    "mean": (104.0, 117.0, 128.0),
    "std": (1.0, 1.0, 1.0),
    "input_size": (3, 224, 224),
}


class _Block(NamedTuple):
    """Widths of one Inception block (0 = branch absent). ``reduce`` blocks (3c, 4e) stride by 2 and pass
    the input through a max-pool instead of a pool projection."""

    name: str
    in_ch: int
    b1x1: int
    b3x3_reduce: int
    b3x3: int
    d3x3_reduce: int
    d3x3: int
    pool: str  # "avg" | "max" | "max_stride2"
    pool_proj: int


# Ioffe & Szegedy 2015, Figure 5; output channels = 1x1 + 3x3 + double 3x3 + (pool_proj or in_ch).
_BLOCKS: List[_Block] = [
    _Block("3a", 192, 64, 64, 64, 64, 96, "avg", 32),  # -> 256
    _Block("3b", 256, 64, 64, 96, 64, 96, "avg", 64),  # -> 320
    _Block("3c", 320, 0, 128, 160, 64, 96, "max_stride2", 0),  # -> 576
    _Block("4a", 576, 224, 64, 96, 96, 128, "avg", 128),  # -> 576
    _Block("4b", 576, 192, 96, 128, 96, 128, "avg", 128),  # -> 576
    _Block("4c", 576, 160, 128, 160, 128, 160, "avg", 128),  # -> 608
    _Block("4d", 608, 96, 128, 192, 160, 192, "avg", 128),  # -> 608
    _Block("4e", 608, 0, 128, 192, 192, 256, "max_stride2", 0),  # -> 1056
    _Block("5a", 1056, 352, 192, 320, 160, 224, "avg", 128),  # -> 1024
    _Block("5b", 1024, 352, 192, 320, 192, 224, "max", 128),  # -> 1024
]


class BNInception(nn.Module):
    """BN-Inception feature extractor: images (B, in_chans, H, W) -> feature map (B, 1024, H/32, W/32).

    Every convolution is followed by BatchNorm and ReLU (conv → bn → relu, as in the paper). Global pooling
    and the classifier are left to the caller (``deepmetric.models`` pools with avg / max / avg+max).
    Pretrained ImageNet weights expect BGR input in [0, 255] minus the Caffe mean (104, 117, 128), see
    ``BN_INCEPTION_PREPROCESSING``.

    Args:
        in_chans: input channels of the first convolution.
    """

    num_features = 1024

    def __init__(self, in_chans: int = 3) -> None:
        super().__init__()
        self.in_chans = in_chans
        self._unit("conv1_7x7_s2", in_chans, 64, 7, stride=2)
        self._unit("conv2_3x3_reduce", 64, 64, 1)
        self._unit("conv2_3x3", 64, 192, 3)
        for b in _BLOCKS:
            p = f"inception_{b.name}"
            stride = 2 if b.pool == "max_stride2" else 1
            if b.b1x1:
                self._unit(f"{p}_1x1", b.in_ch, b.b1x1, 1)
            self._unit(f"{p}_3x3_reduce", b.in_ch, b.b3x3_reduce, 1)
            self._unit(f"{p}_3x3", b.b3x3_reduce, b.b3x3, 3, stride=stride)
            self._unit(f"{p}_double_3x3_reduce", b.in_ch, b.d3x3_reduce, 1)
            self._unit(f"{p}_double_3x3_1", b.d3x3_reduce, b.d3x3, 3)
            self._unit(f"{p}_double_3x3_2", b.d3x3, b.d3x3, 3, stride=stride)
            if b.pool_proj:
                self._unit(f"{p}_pool_proj", b.in_ch, b.pool_proj, 1)

    def _unit(self, name: str, cin: int, cout: int, k: int, stride: int = 1) -> None:
        # Conv with bias + BN, named like the Caffe port so its ImageNet file loads without renaming.
        self.add_module(name, nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2))
        self.add_module(f"{name}_bn", nn.BatchNorm2d(cout))

    def _cbr(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return F.relu(getattr(self, f"{name}_bn")(getattr(self, name)(x)))

    def _block(self, b: _Block, x: torch.Tensor) -> torch.Tensor:
        p = f"inception_{b.name}"
        out: List[torch.Tensor] = []
        if b.b1x1:
            out.append(self._cbr(f"{p}_1x1", x))
        out.append(self._cbr(f"{p}_3x3", self._cbr(f"{p}_3x3_reduce", x)))
        d = self._cbr(f"{p}_double_3x3_reduce", x)
        out.append(self._cbr(f"{p}_double_3x3_2", self._cbr(f"{p}_double_3x3_1", d)))
        if b.pool == "avg":
            # count_include_pad=True matches the Caffe original the weights were trained with.
            pooled: torch.Tensor = F.avg_pool2d(x, 3, stride=1, padding=1, ceil_mode=True, count_include_pad=True)
        elif b.pool == "max":
            pooled = F.max_pool2d(x, 3, stride=1, padding=1, ceil_mode=True)
        else:
            pooled = F.max_pool2d(x, 3, stride=2, ceil_mode=True)
        out.append(self._cbr(f"{p}_pool_proj", pooled) if b.pool_proj else pooled)
        return torch.cat(out, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self._cbr("conv1_7x7_s2", x), 3, stride=2, ceil_mode=True)
        x = self._cbr("conv2_3x3", self._cbr("conv2_3x3_reduce", x))
        x = F.max_pool2d(x, 3, stride=2, ceil_mode=True)
        for b in _BLOCKS:
            x = self._block(b, x)
        return x

    @staticmethod
    def adapt_pretrained_state_dict(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """The Caffe-converted ImageNet file stores BatchNorm vectors as (1, C); squeeze them to (C,)
        (the same fix Proxy-Anchor's loader applies). Everything else is returned unchanged."""
        return {k: (v.squeeze(0) if v.dim() == 2 and v.shape[0] == 1 and "_bn." in k else v) for k, v in state.items()}
