"""Local .safetensors / torch files loaded into timm backbones through timm's own loading (issue 18, item 6)."""
import pytest
import torch
from safetensors.torch import save_file

from deepmetric.models import PretrainedWeightsError, build_backbone


def _source(in_chans=3, num_classes=0, seed=0):
    import timm

    torch.manual_seed(seed)
    m = timm.create_model("resnet18", pretrained=False, num_classes=num_classes, in_chans=in_chans)
    with torch.no_grad():  # running stats that differ from a fresh model's
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-1, 1)
                mod.running_var.uniform_(0.5, 2)
    return {k: v.clone().contiguous() for k, v in m.state_dict().items()}


def _write(sd, path):
    if path.suffix == ".safetensors":
        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    return str(path)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
@pytest.mark.parametrize("num_classes", [0, 1000])
def test_file_tensors_reach_the_model(tmp_path, suffix, num_classes):
    sd = _source(num_classes=num_classes)
    bb = build_backbone("resnet18", pretrained=_write(sd, tmp_path / f"w{suffix}"), in_chans=3)
    own = bb.body.state_dict()
    assert not any(k.startswith("fc.") for k in own)  # classifier dropped, not kept
    body_keys = [k for k in sd if not k.startswith("fc.")]
    assert sorted(own) == sorted(body_keys)
    for k in body_keys:
        torch.testing.assert_close(own[k], sd[k], rtol=0, atol=0, msg=k)
    assert bb.preprocessing["mean"] == pytest.approx((0.485, 0.456, 0.406))


def test_one_channel_model_from_three_channel_file_gets_the_summed_kernel(tmp_path):
    sd = _source(in_chans=3)
    bb = build_backbone("resnet18", pretrained=_write(sd, tmp_path / "w.safetensors"), in_chans=1)
    w = bb.body.state_dict()["conv1.weight"]
    assert w.shape == (64, 1, 7, 7)
    torch.testing.assert_close(w, sd["conv1.weight"].sum(dim=1, keepdim=True))
    torch.testing.assert_close(bb.body.state_dict()["layer1.0.conv1.weight"], sd["layer1.0.conv1.weight"], rtol=0, atol=0)
    # and the grey image gives the features the RGB model gives for the same grey replicated in 3 channels
    rgb = build_backbone("resnet18", pretrained=_write(sd, tmp_path / "w.pth"), in_chans=3).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(bb.eval()(x), rgb(x.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4)


def test_one_channel_file_into_one_channel_model_is_unchanged(tmp_path):
    sd = _source(in_chans=1, seed=3)
    bb = build_backbone("resnet18", pretrained=_write(sd, tmp_path / "g.pth"), in_chans=1)
    torch.testing.assert_close(bb.body.state_dict()["conv1.weight"], sd["conv1.weight"], rtol=0, atol=0)


def test_checkpoint_dict_and_ddp_prefix(tmp_path):
    sd = _source()
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 7}, path)
    bb = build_backbone("resnet18", pretrained=str(path), in_chans=3)
    torch.testing.assert_close(bb.body.state_dict()["layer4.1.bn2.running_var"], sd["layer4.1.bn2.running_var"], rtol=0, atol=0)


def test_missing_file_is_one_clear_error_and_nothing_is_downloaded(tmp_path, monkeypatch):
    import timm.models._builder as builder

    def no_network(*a, **k):
        raise AssertionError("tried to download")

    monkeypatch.setattr(builder, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(builder, "load_state_dict_from_hf", no_network)
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        build_backbone("resnet18", pretrained=str(tmp_path / "nope.safetensors"), in_chans=3)
    sd = _source()
    bb = build_backbone("resnet18", pretrained=_write(sd, tmp_path / "w.safetensors"), in_chans=3)
    torch.testing.assert_close(bb.body.state_dict()["conv1.weight"], sd["conv1.weight"], rtol=0, atol=0)


def test_files_that_do_not_fit_are_refused_with_the_file_name(tmp_path):
    sd = _source()
    partial = {k: v for k, v in sd.items() if not k.startswith("layer4.1.")}
    with pytest.raises(PretrainedWeightsError, match=r"partial\.safetensors.*layer4\.1\."):
        build_backbone("resnet18", pretrained=_write(partial, tmp_path / "partial.safetensors"), in_chans=3)
    wrong = build_backbone("resnet50", in_chans=3).body.state_dict()
    with pytest.raises(PretrainedWeightsError, match=r"r50\.pth.*resnet18"):
        build_backbone("resnet18", pretrained=_write(wrong, tmp_path / "r50.pth"), in_chans=3)
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(PretrainedWeightsError, match="junk.safetensors"):
        build_backbone("resnet18", pretrained=str(tmp_path / "junk.safetensors"), in_chans=3)


def test_deepmetric_embedding_model_file_still_loads_into_a_timm_backbone(tmp_path):
    from deepmetric.models import build_model

    torch.manual_seed(5)
    src = build_model("resnet18", in_chans=3, embedding_dim=8)
    path = tmp_path / "run.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    bb = build_backbone("resnet18", pretrained=str(path), in_chans=3)
    for k, v in src.backbone.body.state_dict().items():
        torch.testing.assert_close(bb.body.state_dict()[k], v, rtol=0, atol=0, msg=k)
