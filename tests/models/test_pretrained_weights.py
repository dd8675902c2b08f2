"""Loading pretrained weights from local files; refusing what does not fit, with a useful message."""
import pytest
import torch

from deepmetric.models import PretrainedWeightsError, build_model
from deepmetric.models.bn_inception import BNInception
from deepmetric.models.pretrained import load_into


def _small(**kw):
    return build_model("small_cnn", in_chans=1, embedding_dim=8, **kw).eval()


def _trained_body_state():
    torch.manual_seed(1)
    src = _small()
    with torch.no_grad():  # make running stats differ from a fresh model's
        for m in src.backbone.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return src, src.backbone.body.state_dict()


@pytest.mark.parametrize("wrap", ["plain", "state_dict", "model", "ddp", "embedding_model", "with_classifier"])
def test_local_file_round_trip(tmp_path, wrap):
    src, sd = _trained_body_state()
    obj = {
        "plain": sd,
        "state_dict": {"state_dict": sd, "epoch": 3},
        "model": {"model": sd},
        "ddp": {f"module.{k}": v for k, v in sd.items()},
        "embedding_model": src.state_dict(),
        "with_classifier": {**sd, "fc.weight": torch.zeros(10, 128), "fc.bias": torch.zeros(10)},
    }[wrap]
    path = tmp_path / "w.pth"
    torch.save(obj, path)
    dst = _small(pretrained=str(path))
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(dst.features(x), src.features(x))
    fresh = _small()
    with torch.no_grad():
        assert not torch.allclose(fresh.features(x), src.features(x))


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        _small(pretrained=str(missing))


def test_wrong_architecture_lists_shapes(tmp_path):
    sd = build_model("small_cnn", in_chans=3).backbone.body.state_dict()
    torch.save(sd, tmp_path / "rgb.pth")
    with pytest.raises(PretrainedWeightsError, match=r"stage1\.0\.0\.weight: file \(32, 3, 3, 3\) vs model \(32, 1, 3, 3\)"):
        _small(pretrained=str(tmp_path / "rgb.pth"))


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    _, sd = _trained_body_state()
    sd = dict(sd)
    del sd["stage3.0.weight"]
    sd["extra.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "w.pth")
    with pytest.raises(PretrainedWeightsError) as e:
        _small(pretrained=str(tmp_path / "w.pth"))
    assert "1 missing: [stage3.0.weight]" in str(e.value) and "1 unexpected: [extra.weight]" in str(e.value)


@pytest.mark.parametrize("content", ["list", "garbage", "empty"])
def test_files_that_are_not_state_dicts(tmp_path, content):
    path = tmp_path / "bad.pth"
    if content == "list":
        torch.save([1, 2, 3], path)
    elif content == "empty":
        torch.save({}, path)
    else:
        path.write_bytes(b"not a torch file")
    with pytest.raises(PretrainedWeightsError, match="bad.pth"):
        _small(pretrained=str(path))


def test_offline_without_packaged_weights_says_where_to_get_them():
    with pytest.raises(PretrainedWeightsError, match="local file"):
        _small(pretrained="offline")
    with pytest.raises(PretrainedWeightsError, match="bn_inception-52deb4733.pth"):
        build_model("bn_inception", pretrained="offline")
    with pytest.raises(PretrainedWeightsError, match="timm/resnet18"):
        build_model("timm:resnet18", pretrained="offline")


def test_old_files_without_bn_step_counter_load():
    m = BNInception()
    sd = {k: v for k, v in m.state_dict().items() if not k.endswith("num_batches_tracked")}
    load_into(BNInception(), sd, source="test")


def test_bn_inception_loads_caffe_shaped_file(tmp_path):
    src = BNInception()
    # The Caffe-converted ImageNet file stores BatchNorm vectors as (1, C).
    sd = {k: (v.unsqueeze(0) if "_bn." in k and v.dim() == 1 else v) for k, v in src.state_dict().items()}
    torch.save(sd, tmp_path / "bn_inception.pth")
    m = build_model("bn_inception", pretrained=str(tmp_path / "bn_inception.pth"))
    torch.testing.assert_close(m.backbone.body.conv1_7x7_s2_bn.weight, src.conv1_7x7_s2_bn.weight)
    torch.testing.assert_close(m.backbone.body.inception_5b_pool_proj.weight, src.inception_5b_pool_proj.weight)
