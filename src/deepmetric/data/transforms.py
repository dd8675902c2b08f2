"""Image transforms of each paper's recipe, built from torchvision.transforms.

``build_transform(recipe, train=..., image_size=..., resize=...)`` returns a PIL-image -> float tensor
(C, image_size, image_size) callable. Random transforms draw from torch's RNG: the training loop runs
each item under a private, seeded RNG (deepmetric.train.data.SeededItems), which makes them reproducible.

Recipes:
    "mnist": train RandomResizedCrop(scale 0.7–1, ratio 0.9–1.1) + RandomRotation(±10°); eval Resize.
        Normalised with the MNIST mean/std (0.1307, 0.3081).
    "cifar": SPEC §1 (Ye et al. 2019 / Wu et al. 2018 code): RandomResizedCrop(scale 0.2–1),
        ColorJitter(0.4, 0.4, 0.4, 0.4), RandomGrayscale(0.2), horizontal flip; eval Resize only.
        CIFAR-10 mean/std.
    "fine_grained": resize the shorter side to ``resize`` (default 256) -> RandomResizedCrop(image_size)
        + flip (Proxy-Anchor, EE, SEE); eval resize -> CenterCrop(image_size). ImageNet mean/std.
    "fine_grained_crop": SPEC §1 unseen-class protocol of Ye et al.: resize to resize×resize (256×256)
        -> RandomCrop(image_size) (227) + flip; eval resize×resize -> CenterCrop(image_size).
    "fine_grained_caffe": the "fine_grained" geometry with the Caffe input of BN-Inception's ImageNet
        weights: BGR channel order, range 0-255, minus (104, 117, 128), std 1 (Proxy-Anchor
        code/dataset/utils.py l.84-98; deepmetric.models.bn_inception.BN_INCEPTION_PREPROCESSING).
    "vit": ImageNet mean/std, bicubic: RandomResizedCrop(image_size, bicubic) + flip; eval bicubic resize
        of the shorter side to ``resize`` (default image_size / 0.875) -> CenterCrop.
    "imagenet": as "vit" with bilinear interpolation (generic ImageNet-pretrained CNNs).
    "glyphs": rendered characters (deepmetric.data.glyphs; white ink on black), one channel. Train, in
        this order: resize to image_size; stroke thickness (RandomStrokeWidth: a 3×3 min filter thins,
        a max filter thickens, each with p=0.25); RandomAffine(±8°, translate 8%, scale 0.85–1.1,
        shear ±8°, black fill); Gaussian blur σ 0.1–1.0 with p=0.3; additive Gaussian pixel noise σ 0.05
        with p=0.3 (AddGaussianNoise, clamped to [0, 1]). Eval: resize only. Normalised with (0.5, 0.5).
        No flips: a mirrored character is another (or no) character.
    "glyphs_rgb": "glyphs" with the gray channel repeated three times and ImageNet mean/std, for
        ImageNet-pretrained backbones (EfficientNet-Lite0) that expect RGB input.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CAFFE_BGR_MEAN = (104.0, 117.0, 128.0)
GLYPHS_MEAN, GLYPHS_STD = (0.5,), (0.5,)

RECIPES = ("mnist", "cifar", "fine_grained", "fine_grained_crop", "fine_grained_caffe", "vit", "imagenet", "glyphs",
           "glyphs_rgb")


class RandomStrokeWidth:
    """Thin or thicken the strokes of a white-on-black drawing (a PIL "L" image).

    With probability ``p_thin`` a ``size``×``size`` min filter (erosion: thinner strokes), else with
    probability ``p_thick`` a max filter (dilation: thicker strokes), else the image is unchanged. Draws
    one number from torch's RNG per call (reproducible under the loop's per-item seeding).
    """

    def __init__(self, p_thin: float = 0.25, p_thick: float = 0.25, size: int = 3) -> None:
        if p_thin < 0 or p_thick < 0 or p_thin + p_thick > 1:
            raise ValueError(f"RandomStrokeWidth: p_thin={p_thin} and p_thick={p_thick} must be >= 0 with a sum <= 1")
        if size < 3 or size % 2 == 0:
            raise ValueError(f"RandomStrokeWidth: size={size} must be an odd filter size >= 3")
        self.p_thin, self.p_thick, self.size = p_thin, p_thick, size

    def __call__(self, image: Image.Image) -> Image.Image:
        u = float(torch.rand(()))
        if u < self.p_thin:
            return image.filter(ImageFilter.MinFilter(self.size))
        if u < self.p_thin + self.p_thick:
            return image.filter(ImageFilter.MaxFilter(self.size))
        return image

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p_thin={self.p_thin}, p_thick={self.p_thick}, size={self.size})"


class AddGaussianNoise:
    """With probability ``p``, add N(0, ``std``²) noise to every pixel of a [0, 1] tensor and clamp to [0, 1]."""

    def __init__(self, std: float = 0.05, p: float = 0.3) -> None:
        if std < 0 or not 0 <= p <= 1:
            raise ValueError(f"AddGaussianNoise: std={std} must be >= 0 and p={p} in [0, 1]")
        self.std, self.p = std, p

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if float(torch.rand(())) >= self.p:
            return x
        return (x + self.std * torch.randn_like(x)).clamp_(0.0, 1.0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(std={self.std}, p={self.p})"


def _glyph_transform(train: bool, image_size: int, rgb: bool) -> Callable:
    ops: List[Callable] = [T.Resize((image_size, image_size))]
    if train:
        ops += [
            RandomStrokeWidth(0.25, 0.25, 3),
            T.RandomAffine(degrees=8, translate=(0.08, 0.08), scale=(0.85, 1.1), shear=8, fill=0),
            T.RandomApply([T.GaussianBlur(3, sigma=(0.1, 1.0))], p=0.3),
        ]
    if rgb:
        ops.append(T.Grayscale(num_output_channels=3))
    ops.append(T.ToTensor())
    if train:
        ops.append(AddGaussianNoise(0.05, p=0.3))
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if rgb else (GLYPHS_MEAN, GLYPHS_STD)
    return T.Compose([*ops, T.Normalize(mean, std)])


class CaffeBGR:
    """(3, H, W) RGB tensor in [0, 1] -> BGR in [0, 255] minus the Caffe ImageNet mean ``CAFFE_BGR_MEAN``."""

    def __call__(self, x):
        mean = x.new_tensor(CAFFE_BGR_MEAN).view(3, 1, 1)
        return x.flip(0) * 255.0 - mean

    def __repr__(self) -> str:
        return f"CaffeBGR(mean={CAFFE_BGR_MEAN})"


def build_transform(recipe: str, *, train: bool, image_size: int, resize: Optional[int] = None,
                    crop_scale: Optional[Tuple[float, float]] = None) -> Callable:
    """The train or eval transform of ``recipe`` (see the module docstring).

    Args:
        recipe: one of :data:`RECIPES`.
        train: random augmentation (True) or deterministic evaluation transform (False).
        image_size: side of the output square image.
        resize: side the image is resized to before cropping (fine_grained*, vit, imagenet); defaults to
            256 for fine_grained* and ``round(image_size / 0.875)`` for vit/imagenet. Ignored by
            mnist/cifar/glyphs/glyphs_rgb.
        crop_scale: (min, max) area fraction of the training RandomResizedCrop of fine_grained, vit and
            imagenet; None keeps torchvision's (0.08, 1.0). Ignored elsewhere.

    Returns:
        A ``torchvision.transforms.Compose`` mapping a PIL image to a (C, image_size, image_size) tensor.
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown transform recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    if image_size < 1 or (resize is not None and resize < 1):
        raise ValueError(f"transform {recipe!r}: image_size={image_size} and resize={resize} must be positive")
    if resize is not None and resize < image_size and recipe not in ("mnist", "cifar", "glyphs", "glyphs_rgb"):
        raise ValueError(f"transform {recipe!r}: resize={resize} is smaller than the crop image_size={image_size}; use resize >= image_size")
    if crop_scale is not None and not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
        raise ValueError(f"transform {recipe!r}: crop_scale={tuple(crop_scale)} must be (min, max) with 0 < min <= max <= 1")
    scale = tuple(crop_scale) if crop_scale is not None else (0.08, 1.0)
    if recipe in ("glyphs", "glyphs_rgb"):
        return _glyph_transform(train, image_size, rgb=recipe == "glyphs_rgb")
    ops: List[Callable]
    if recipe == "mnist":
        mean, std = MNIST_MEAN, MNIST_STD
        ops = [T.RandomResizedCrop(image_size, scale=(0.7, 1.0), ratio=(0.9, 1.1)), T.RandomRotation(10)] if train else [T.Resize((image_size, image_size))]
    elif recipe == "cifar":
        mean, std = CIFAR_MEAN, CIFAR_STD
        if train:
            ops = [
                T.RandomResizedCrop(image_size, scale=(0.2, 1.0)),
                T.ColorJitter(0.4, 0.4, 0.4, 0.4),
                T.RandomGrayscale(p=0.2),
                T.RandomHorizontalFlip(),
            ]
        else:
            ops = [T.Resize((image_size, image_size))]
    elif recipe in ("fine_grained", "fine_grained_crop", "fine_grained_caffe"):
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        side = resize or 256
        if recipe in ("fine_grained", "fine_grained_caffe"):
            ops = [T.Resize(side), T.RandomResizedCrop(image_size, scale=scale), T.RandomHorizontalFlip()] if train else [T.Resize(side), T.CenterCrop(image_size)]
        else:
            first = T.Resize((side, side))
            ops = [first, T.RandomCrop(image_size), T.RandomHorizontalFlip()] if train else [first, T.CenterCrop(image_size)]
    else:  # vit, imagenet
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        mode = InterpolationMode.BICUBIC if recipe == "vit" else InterpolationMode.BILINEAR
        side = resize or int(round(image_size / 0.875))
        if train:
            ops = [T.RandomResizedCrop(image_size, scale=scale, interpolation=mode), T.RandomHorizontalFlip()]
        else:
            ops = [T.Resize(side, interpolation=mode), T.CenterCrop(image_size)]
    if recipe == "fine_grained_caffe":
        return T.Compose([*ops, T.ToTensor(), CaffeBGR()])
    return T.Compose([*ops, T.ToTensor(), T.Normalize(mean, std)])
