"""Backbone factory: shapes, pooling maths, CIFAR stem, BN-Inception layout, registry errors."""
import pytest
import torch
from torch import nn

from deepmetric.models import GlobalPool, build_backbone
from deepmetric.models.bn_inception import BNInception
from deepmetric.registry import BACKBONES


def test_registry_lists_every_builtin_backbone():
    assert set(BACKBONES.names()) >= {"small_cnn", "glyph_cnn", "cifar_resnet18", "resnet18", "resnet50", "googlenet", "bn_inception",
                                      "vit_small", "deit_small", "efficientnet_lite0"}


@pytest.mark.parametrize("size", [28, 8])
def test_small_cnn_single_channel_shapes(size):
    bb = build_backbone("small_cnn", in_chans=1).eval()
    with torch.no_grad():
        fmap = bb.forward_map(torch.randn(3, 1, size, size))
        f = bb(torch.randn(3, 1, size, size))
    assert fmap.shape == (3, 128, size // 4, size // 4)
    assert f.shape == (3, 128) and bb.num_features == 128


@pytest.mark.parametrize("size", [32, 64, 8])
def test_glyph_cnn_shapes_at_any_size(size):
    bb = build_backbone("glyph_cnn", in_chans=1).eval()
    with torch.no_grad():
        fmap = bb.forward_map(torch.randn(2, 1, size, size))
        f = bb(torch.randn(2, 1, size, size))
    assert fmap.shape == (2, 512, 1, 1) and f.shape == (2, 512) and bb.num_features == 512
    assert 2.4e6 < sum(p.numel() for p in bb.parameters()) < 2.6e6


def test_glyph_cnn_keeps_the_layout_small_cnn_averages_away():
    """The same stroke pattern in the top-left or the bottom-right quadrant: small_cnn's average over its
    map is blind to the move (shift by a multiple of its stride 4, far from the borders), glyph_cnn is not."""
    torch.manual_seed(0)
    patch = (torch.rand(1, 1, 8, 8) > 0.5).float()
    a, b = torch.zeros(1, 1, 64, 64), torch.zeros(1, 1, 64, 64)
    a[..., 12:20, 12:20] = patch
    b[..., 44:52, 44:52] = patch
    for name, lo, hi in (("small_cnn", 0.0, 1e-5), ("glyph_cnn", 0.2, float("inf"))):
        bb = build_backbone(name, in_chans=1).eval()
        with torch.no_grad():
            fa, fb = bb(a), bb(b)
        rel = ((fa - fb).norm() / fa.norm()).item()
        assert lo <= rel < hi, (name, rel)


def test_global_pool_closed_form():
    x = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    x[0, 0, 1, 1] = -50.0
    ref_avg = x.double().mean(dim=(2, 3))
    ref_max = x.double().amax(dim=(2, 3))
    torch.testing.assert_close(GlobalPool("avg")(x).double(), ref_avg)
    torch.testing.assert_close(GlobalPool("max")(x).double(), ref_max)
    torch.testing.assert_close(GlobalPool("avgmax")(x).double(), ref_avg + ref_max)
    # Channel 0 of sample 0: values 0, 1, 2, -50 -> avg -11.75, max 2.
    assert GlobalPool("avg")(x)[0, 0].item() == -11.75 and GlobalPool("max")(x)[0, 0].item() == 2.0
    with pytest.raises(ValueError, match="'sum'"):
        GlobalPool("sum")


@pytest.mark.parametrize("pooling", ["avg", "max", "avgmax"])
def test_backbone_pools_its_feature_map(pooling):
    bb = build_backbone("small_cnn", in_chans=1, pooling=pooling).eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        fmap = bb.forward_map(x).double()
        got = bb(x).double()
    ref = {"avg": fmap.mean((2, 3)), "max": fmap.amax((2, 3)), "avgmax": fmap.mean((2, 3)) + fmap.amax((2, 3))}[pooling]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_cifar_resnet18_stem():
    bb = build_backbone("cifar_resnet18").eval()
    conv1 = bb.body.conv1
    assert conv1.kernel_size == (3, 3) and conv1.stride == (1, 1) and conv1.padding == (1, 1)
    assert isinstance(bb.body.maxpool, nn.Identity)
    with torch.no_grad():
        fmap = bb.forward_map(torch.randn(2, 3, 32, 32))
    assert fmap.shape == (2, 512, 4, 4)  # 32 / 8: only the three stride-2 stages downsample
    # The ImageNet ResNet-18 shrinks 32x32 to 1x1 instead.
    with torch.no_grad():
        assert build_backbone("resnet18").eval().forward_map(torch.randn(2, 3, 32, 32)).shape == (2, 512, 1, 1)


def test_bn_inception_layout_matches_the_caffe_port():
    m = BNInception().eval()
    # Cadene's BNInception has 11,295,240 parameters including its 1024x1000 classifier (1,025,000).
    assert sum(p.numel() for p in m.parameters()) == 11_295_240 - 1_025_000
    names = dict(m.named_modules())
    assert names["inception_3c_3x3"].stride == (2, 2) and "inception_3c_1x1" not in names
    assert names["inception_5b_pool_proj"].in_channels == 1024
    with torch.no_grad():
        assert m(torch.randn(1, 3, 224, 224)).shape == (1, 1024, 7, 7)


def test_bn_inception_squeezes_caffe_bn_vectors():
    sd = {"conv1_7x7_s2_bn.weight": torch.ones(1, 64), "conv1_7x7_s2.weight": torch.ones(64, 3, 7, 7)}
    out = BNInception.adapt_pretrained_state_dict(sd)
    assert out["conv1_7x7_s2_bn.weight"].shape == (64,) and out["conv1_7x7_s2.weight"].shape == (64, 3, 7, 7)


@pytest.mark.parametrize("name,size,features", [
    ("resnet18", 32, 512), ("resnet50", 32, 2048), ("googlenet", 64, 1024), ("bn_inception", 64, 1024),
    ("efficientnet_lite0", 32, 1280), ("vit_small", 224, 384), ("deit_small", 224, 384), ("timm:resnet18", 32, 512),
])
def test_builtin_backbone_shapes(name, size, features):
    bb = build_backbone(name).eval()
    with torch.no_grad():
        f = bb(torch.randn(2, 3, size, size))
    assert f.shape == (2, features) and bb.num_features == features


def test_googlenet_has_no_aux_heads_or_classifier():
    bb = build_backbone("googlenet")
    assert bb.body.aux1 is None and bb.body.aux2 is None
    assert not any(k.startswith(("fc.", "aux")) for k in bb.body.state_dict())


def test_in_chans_reaches_the_first_conv():
    assert build_backbone("resnet18", in_chans=1).body.conv1.in_channels == 1
    assert build_backbone("googlenet", in_chans=1).body.conv1.conv.in_channels == 1
    assert build_backbone("bn_inception", in_chans=2).body.conv1_7x7_s2.in_channels == 2


def test_vit_ignores_pooling_and_uses_cls_token():
    a = build_backbone("vit_small", pooling="avg").eval()
    b = build_backbone("vit_small", pooling="max").eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))
        tokens = a.body.forward_features(x)
    assert a.pooling == "token"
    with torch.no_grad():
        torch.testing.assert_close(a(x), a.body.fc_norm(tokens[:, 0]))


def test_channels_last_gives_the_same_features():
    bb = build_backbone("small_cnn", in_chans=3, pooling="avgmax").eval()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        ref = bb(x)
        bb = bb.to(memory_format=torch.channels_last)
        got = bb(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_bad_names_and_arguments_are_explained():
    with pytest.raises(KeyError, match="small_cnn"):
        build_backbone("smal_cnn")
    with pytest.raises(ValueError, match="no_such_net"):
        build_backbone("timm:no_such_net")
    with pytest.raises(ValueError, match="'median'"):
        build_backbone("small_cnn", pooling="median")
    with pytest.raises(ValueError, match="in_chans=0"):
        build_backbone("small_cnn", in_chans=0)
