"""The "glyphs" / "glyphs_rgb" transform recipes and their two glyph-specific operations."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from deepmetric.data.transforms import IMAGENET_MEAN, IMAGENET_STD, AddGaussianNoise, RandomStrokeWidth, build_transform


def _bar(width: int = 3, size: int = 32) -> Image.Image:
    a = np.zeros((size, size), np.uint8)
    c = size // 2
    a[c - 12:c + 12, c - width // 2:c - width // 2 + width] = 255
    return Image.fromarray(a)


def _stroke_width(image: Image.Image) -> int:
    return int((np.asarray(image)[image.size[1] // 2] > 127).sum())


def test_stroke_width_thins_with_a_min_filter_and_thickens_with_a_max_filter():
    bar = _bar(3)
    assert _stroke_width(RandomStrokeWidth(1.0, 0.0)(bar)) == 1
    assert _stroke_width(RandomStrokeWidth(0.0, 1.0)(bar)) == 5
    assert _stroke_width(RandomStrokeWidth(0.0, 1.0, size=5)(bar)) == 7
    assert np.array_equal(np.asarray(RandomStrokeWidth(0.0, 0.0)(bar)), np.asarray(bar))


def test_stroke_width_draws_its_choice_from_torch_rng_with_the_stated_probabilities():
    t = RandomStrokeWidth(0.25, 0.25)
    torch.manual_seed(0)
    widths = [_stroke_width(t(_bar(3))) for _ in range(800)]
    freq = {w: widths.count(w) / len(widths) for w in (1, 3, 5)}
    assert sum(freq.values()) == 1.0
    # binomial sd at n=800: 0.015 (p=0.25), 0.018 (p=0.5); 4 sd bounds
    assert abs(freq[1] - 0.25) < 0.06 and abs(freq[5] - 0.25) < 0.06 and abs(freq[3] - 0.5) < 0.07
    torch.manual_seed(0)
    assert [_stroke_width(t(_bar(3))) for _ in range(800)] == widths


@pytest.mark.parametrize("kwargs", [dict(p_thin=0.7, p_thick=0.5), dict(p_thin=-0.1), dict(size=4), dict(size=1)])
def test_stroke_width_refuses_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="RandomStrokeWidth"):
        RandomStrokeWidth(**kwargs)


def test_gaussian_noise_has_the_stated_spread_and_stays_in_range():
    torch.manual_seed(1)
    x = torch.full((1, 64, 64), 0.5)
    y = AddGaussianNoise(std=0.05, p=1.0)(x.clone())
    assert abs(float((y - x).std()) - 0.05) < 0.005 and abs(float((y - x).mean())) < 0.005
    ones = AddGaussianNoise(std=0.5, p=1.0)(torch.ones(1, 16, 16))
    assert float(ones.max()) == 1.0 and float(ones.min()) >= 0.0 and float(ones.min()) < 1.0
    assert torch.equal(AddGaussianNoise(std=0.5, p=0.0)(x.clone()), x)
    with pytest.raises(ValueError, match="std=-1"):
        AddGaussianNoise(std=-1)


def test_glyphs_eval_transform_is_resize_then_normalise_to_minus_one_one():
    img = Image.fromarray(np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8))
    x = build_transform("glyphs", train=False, image_size=64)(img)
    assert x.shape == (1, 64, 64)
    expected = torch.from_numpy(np.asarray(img, np.float32) / 255.0 * 2.0 - 1.0)
    assert torch.allclose(x[0], expected, atol=1e-6)
    assert build_transform("glyphs", train=False, image_size=32)(img).shape == (1, 32, 32)


def test_glyphs_rgb_repeats_the_gray_channel_with_imagenet_statistics():
    img = _bar(5, 32)
    x = build_transform("glyphs_rgb", train=False, image_size=32)(img)
    assert x.shape == (3, 32, 32)
    raw = torch.from_numpy(np.asarray(img, np.float32) / 255.0)
    for c in range(3):
        assert torch.allclose(x[c], (raw - IMAGENET_MEAN[c]) / IMAGENET_STD[c], atol=1e-6)


def test_glyphs_train_transform_is_reproducible_per_seed_and_keeps_the_character():
    img = _bar(9, 64)  # 9 x 24 px of 64 x 64: 5.3% ink
    t = build_transform("glyphs", train=True, image_size=64)
    outs = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        outs.append(t(img))
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])
    # still a bright stroke on a dark ground: at most ±10% scale, 8% shift, so most ink stays in the frame
    for x in outs:
        ink = (x[0] > 0.0).float().mean()
        assert 0.015 < float(ink) < 0.2
