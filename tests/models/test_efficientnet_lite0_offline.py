"""The packaged EfficientNet-Lite0 ImageNet weights, mapped by order into timm, recognise a cat."""
import pytest
import timm
import torch
from PIL import Image

from deepmetric.models import build_model, load_efficientnet_lite0_offline

skimage_data = pytest.importorskip("skimage.data")


def test_timm_preprocessing_for_efficientnet_lite0():
    # timm's efficientnet_lite0 weights use ImageNet mean/std (not the 0.5/0.5 of tf_efficientnet_lite0).
    cfg = timm.create_model("efficientnet_lite0", pretrained=False).pretrained_cfg
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
    assert cfg["interpolation"] == "bicubic" and cfg["crop_pct"] == 0.875 and cfg["input_size"] == (3, 224, 224)
    assert build_model("efficientnet_lite0").backbone.preprocessing["mean"] == cfg["mean"]


def test_offline_weights_classify_chelsea_as_a_cat():
    model = load_efficientnet_lite0_offline(num_classes=1000)
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    x = transform(Image.fromarray(skimage_data.chelsea())).unsqueeze(0)
    with torch.no_grad():
        p = model(x).softmax(-1)[0]
    assert 281 <= p.argmax().item() <= 285  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert p[281:286].sum().item() > 0.8  # measured 0.89
    # The backbone built through the factory carries the same weights (avg pooling = timm's head pooling).
    bb = build_model("efficientnet_lite0", pretrained="offline").eval()
    with torch.no_grad():
        torch.testing.assert_close(bb.features(x), model.forward_head(model.forward_features(x), pre_logits=True))


def test_only_the_imagenet_head_or_none():
    with pytest.raises(ValueError, match="num_classes=10"):
        load_efficientnet_lite0_offline(num_classes=10)


def test_mapping_by_order_refuses_a_misaligned_file(monkeypatch):
    import deepmetric.models.pretrained as pretrained

    real = pretrained.read_state_dict

    def swapped(path):
        items = list(real(path).items())
        items[0], items[1] = items[1], items[0]  # conv_stem.weight <-> bn1.weight
        return dict(items)

    monkeypatch.setattr(pretrained, "read_state_dict", swapped)
    with pytest.raises(pretrained.PretrainedWeightsError, match="does not line up with timm's 'conv_stem.weight'"):
        pretrained.efficientnet_lite0_offline_state_dict()
