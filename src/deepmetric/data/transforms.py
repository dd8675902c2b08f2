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
"""
from __future__ import annotations

from typing import Callable, List, Optional, Tuple

from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
CAFFE_BGR_MEAN = (104.0, 117.0, 128.0)

RECIPES = ("mnist", "cifar", "fine_grained", "fine_grained_crop", "fine_grained_caffe", "vit", "imagenet")


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
            256 for fine_grained* and ``round(image_size / 0.875)`` for vit/imagenet. Ignored by mnist/cifar.
        crop_scale: (min, max) area fraction of the training RandomResizedCrop of fine_grained, vit and
            imagenet; None keeps torchvision's (0.08, 1.0). Ignored elsewhere.

    Returns:
        A ``torchvision.transforms.Compose`` mapping a PIL image to a (C, image_size, image_size) tensor.
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown transform recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    if image_size < 1 or (resize is not None and resize < 1):
        raise ValueError(f"transform {recipe!r}: image_size={image_size} and resize={resize} must be positive")
    if resize is not None and resize < image_size and recipe not in ("mnist", "cifar"):
        raise ValueError(f"transform {recipe!r}: resize={resize} is smaller than the crop image_size={image_size}; use resize >= image_size")
    if crop_scale is not None and not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
        raise ValueError(f"transform {recipe!r}: crop_scale={tuple(crop_scale)} must be (min, max) with 0 < min <= max <= 1")
    scale = tuple(crop_scale) if crop_scale is not None else (0.08, 1.0)
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
