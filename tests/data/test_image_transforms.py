"""build_transform recipes: output shapes, normalisation, determinism of eval, randomness of train."""
import numpy as np
import pytest
import torch
from PIL import Image

from deepmetric.data.transforms import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD, RECIPES, build_transform


def _rgb(w=40, h=30):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("recipe,size,resize", [("mnist", 28, None), ("cifar", 32, None), ("fine_grained", 24, 32),
                                                ("fine_grained_crop", 24, 32), ("vit", 24, None), ("imagenet", 24, 28)])
@pytest.mark.parametrize("train", [True, False])
def test_output_shape(recipe, size, resize, train):
    img = _rgb() if recipe != "mnist" else _rgb().convert("L")
    x = build_transform(recipe, train=train, image_size=size, resize=resize)(img)
    assert x.dtype == torch.float32 and x.shape == (1 if recipe == "mnist" else 3, size, size)


def test_eval_is_deterministic_and_normalised_exactly():
    flat = Image.new("RGB", (32, 32), (255, 0, 128))
    x = build_transform("cifar", train=False, image_size=32)(flat)
    want = (torch.tensor([1.0, 0.0, 128 / 255]) - torch.tensor(CIFAR_MEAN)) / torch.tensor(CIFAR_STD)
    torch.testing.assert_close(x[:, 5, 7], want)
    y = build_transform("fine_grained", train=False, image_size=20, resize=24)(flat)
    want = (torch.tensor([1.0, 0.0, 128 / 255]) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(y[:, 3, 3], want)
    img = _rgb()
    t = build_transform("vit", train=False, image_size=24)
    assert torch.equal(t(img), t(img))


def test_fine_grained_eval_is_resize_then_centre_crop():
    # a 2:1 image with a distinct centre: shorter side -> 32, centre crop 16 keeps only the middle
    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, 30:50] = 255
    x = build_transform("fine_grained", train=False, image_size=16, resize=32)(Image.fromarray(arr))
    white = (torch.ones(3) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    black = -torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)
    # resized 64×32; the white band spans columns 24..40, the crop columns 24..40: all white
    torch.testing.assert_close(x[:, 8, 8], white)
    y = build_transform("fine_grained_crop", train=False, image_size=16, resize=32)(Image.fromarray(arr))
    # squashed to 32×32: band at columns 12..20 of 32, crop columns 8..24 -> edges black, centre white
    torch.testing.assert_close(y[:, 8, 0], black, atol=1e-2, rtol=0)
    torch.testing.assert_close(y[:, 8, 8], white)


def test_train_is_random_under_the_global_rng_and_reproducible_when_seeded():
    t = build_transform("cifar", train=True, image_size=32)
    img = _rgb(32, 32)
    torch.manual_seed(0)
    a, b = t(img), t(img)
    torch.manual_seed(0)
    a2 = t(img)
    assert not torch.equal(a, b) and torch.equal(a, a2)


def test_unknown_recipe_and_bad_sizes():
    with pytest.raises(ValueError, match=r"unknown transform recipe 'resnet'; choose one of " + ", ".join(RECIPES)):
        build_transform("resnet", train=True, image_size=10)
    with pytest.raises(ValueError, match=r"resize=20 is smaller than the crop image_size=24"):
        build_transform("fine_grained", train=False, image_size=24, resize=20)


@pytest.mark.parametrize("recipe", ["fine_grained", "vit", "imagenet"])
def test_crop_scale_reaches_the_random_resized_crop(recipe):
    import torchvision.transforms as T

    def rrc(t):
        return next(op for op in t.transforms if isinstance(op, T.RandomResizedCrop))

    assert rrc(build_transform(recipe, train=True, image_size=32, resize=40)).scale == (0.08, 1.0)
    assert rrc(build_transform(recipe, train=True, image_size=32, resize=40, crop_scale=(0.2, 1.0))).scale == (0.2, 1.0)
    with pytest.raises(ValueError, match=r"crop_scale=\(0.5, 0.1\)"):
        build_transform(recipe, train=True, image_size=32, crop_scale=(0.5, 0.1))


def test_caffe_bgr_input_of_bn_inception():
    """BGR order, 0-255 range, minus (104, 117, 128): a pure colour maps to exact values."""
    arr = np.zeros((20, 20, 3), np.uint8)
    arr[..., 0], arr[..., 1], arr[..., 2] = 200, 100, 50  # R, G, B
    x = build_transform("fine_grained_caffe", train=False, image_size=16, resize=20)(Image.fromarray(arr))
    assert x.shape == (3, 16, 16)
    torch.testing.assert_close(x[:, 5, 5], torch.tensor([50 - 104.0, 100 - 117.0, 200 - 128.0]), atol=1e-3, rtol=0)
