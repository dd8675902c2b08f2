"""EmbeddingModel: head maths, frozen BatchNorm, parameter groups, signature."""
import json

import pytest
import torch
from torch import nn

from deepmetric.models import EmbeddingModel, build_model, model_signature


def _small(**kw):
    kw.setdefault("embedding_dim", 8)
    return build_model("small_cnn", in_chans=1, **kw)


def test_forward_shape_and_unit_norm():
    m = _small(embedding_dim=12).eval()
    with torch.no_grad():
        z = m(torch.randn(5, 1, 28, 28))
    assert isinstance(m, EmbeddingModel) and z.shape == (5, 12) and m.embedding_dim == 12 and m.in_chans == 1
    torch.testing.assert_close(z.norm(dim=1), torch.ones(5))


def test_unnormalised_head_is_the_linear_layer():
    m = _small(normalize=False).eval()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        f = m.features(x).double()
        z = m(x).double()
    W, b = m.head.fc.weight.double(), m.head.fc.bias.double()
    torch.testing.assert_close(z, f @ W.T + b, rtol=1e-5, atol=1e-6)
    assert f.shape == (3, 128)
    assert not torch.allclose(z.norm(dim=1), torch.ones(3, dtype=torch.float64))


def test_layernorm_head_then_l2():
    m = _small(head_norm="ln").eval()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        y = m.head.fc(m.features(x)).double()
        z = m(x).double()
    ln = (y - y.mean(1, keepdim=True)) / torch.sqrt(y.var(1, unbiased=False, keepdim=True) + 1e-5)
    torch.testing.assert_close(z, ln / ln.norm(dim=1, keepdim=True), rtol=1e-5, atol=1e-6)
    assert isinstance(_small(head_norm="bn").head.norm, nn.BatchNorm1d)


def test_pre_layernorm_head_is_sees_lastnorm_head():
    """SEE --use_lastnorm: LayerNorm without affine on the features, then Linear, then L2 (not "ln")."""
    m = _small(head_norm="pre_ln", normalize=True).eval()
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        f = m.features(x).double()
        z = m(x).double()
    n = (f - f.mean(1, keepdim=True)) / torch.sqrt(f.var(1, unbiased=False, keepdim=True) + 1e-5)
    y = n @ m.head.fc.weight.double().T + m.head.fc.bias.double()
    torch.testing.assert_close(z, y / y.norm(dim=1, keepdim=True), rtol=1e-5, atol=1e-6)
    # the features' scale and offset do not matter to a pre-LayerNorm head (they do to a Linear head)
    with torch.no_grad():
        a, b = m.head(f.float()), m.head(3.0 * f.float() + 2.0)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # no parameters or buffers in the LayerNorm: the state dict is the plain head's
    assert list(m.head.state_dict()) == ["fc.weight", "fc.bias"]


def test_orthogonal_head_init():
    m = _small(embedding_dim=8, head_init="orthogonal")
    W = m.head.fc.weight.detach().double()  # (8, 128): orthonormal rows
    torch.testing.assert_close(W @ W.T, torch.eye(8, dtype=torch.float64), rtol=0, atol=1e-5)
    assert torch.count_nonzero(m.head.fc.bias) == 0
    k = _small(embedding_dim=8).head.fc.weight.detach().double()
    assert not torch.allclose(k @ k.T, torch.eye(8, dtype=torch.float64), atol=1e-2)
    with pytest.raises(ValueError, match="'xavier'"):
        _small(head_init="xavier")


def test_frozen_prefixes_leave_the_optimiser_groups():
    free = _small()
    m = _small(frozen=["body.stage1"])
    names = [n for n, p in m.backbone.named_parameters() if not p.requires_grad]
    assert names and all(n.startswith("body.stage1.") for n in names)
    total = sum(p.numel() for p in free.parameters())
    grouped = sum(p.numel() for g in m.param_groups(1e-3) for p in g["params"])
    assert grouped == total - sum(p.numel() for n, p in m.backbone.named_parameters() if n.startswith("body.stage1."))
    with pytest.raises(ValueError, match="'body.patch_embed' matches no parameter of backbone 'small_cnn'"):
        _small(frozen=["body.patch_embed"])


def _bn_state(m):
    return {k: v.clone() for k, v in m.backbone.state_dict().items() if "running" in k or "num_batches" in k}


def test_frozen_bn_stays_in_eval_and_its_statistics_do_not_move():
    torch.manual_seed(0)
    m = _small(freeze_bn=True, head_norm="bn")
    m.train()
    bns = [mod for mod in m.backbone.modules() if isinstance(mod, nn.BatchNorm2d)]
    assert bns and all(not bn.training for bn in bns)
    assert all(not p.requires_grad for bn in bns for p in bn.parameters())
    assert m.head.norm.training  # the head's BatchNorm is not part of the backbone
    before = _bn_state(m)
    affine = [p.clone() for bn in bns for p in bn.parameters()]
    conv = m.backbone.body.stage1[0][0].weight.clone()
    opt = torch.optim.SGD([p for g in m.param_groups(0.1) for p in g["params"]], lr=0.1)
    loss = m(torch.randn(6, 1, 28, 28)).sum(0).pow(2).sum()
    loss.backward()
    opt.step()
    m.train()  # a second .train() must not wake BN up
    assert all(not bn.training for bn in bns)
    for k, v in _bn_state(m).items():
        torch.testing.assert_close(v, before[k], msg=k)
    for p, q in zip([p for bn in bns for p in bn.parameters()], affine):
        torch.testing.assert_close(p, q)
    assert not torch.equal(conv, m.backbone.body.stage1[0][0].weight)  # the rest did train


def test_unfrozen_bn_statistics_move():
    m = _small()
    m.train()
    before = _bn_state(m)
    m(torch.randn(6, 1, 28, 28))
    after = _bn_state(m)
    assert any(not torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("freeze", [False, True])
def test_param_groups_cover_every_trainable_parameter_once(freeze):
    m = _small(head_norm="bn", freeze_bn=freeze)
    groups = m.param_groups(0.01, backbone_lr_mult=0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = [id(p) for p in m.parameters() if p.requires_grad]
    assert len(ids) == len(set(ids)) and set(ids) == set(trainable)
    if not freeze:
        assert len(ids) == len(list(m.parameters()))
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs["backbone"] == pytest.approx(0.001) and lrs["head"] == 0.01
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in m.head.parameters()}
    torch.optim.SGD(groups, lr=0.01)  # accepted by an optimiser as is
    with pytest.raises(ValueError, match="lr=0"):
        m.param_groups(0)


def test_model_signature_detects_another_model():
    a = model_signature(_small())
    assert a == model_signature(_small())
    json.dumps(a)
    assert a["backbone"] == "small_cnn" and a["embedding_dim"] == 8 and a["in_chans"] == 1
    for other in (_small(embedding_dim=9), _small(pooling="max"), _small(head_norm="bn"),
                  build_model("small_cnn", in_chans=3, embedding_dim=8)):
        assert model_signature(other) != a
    # The shape hash alone tells different layouts apart.
    assert model_signature(_small(head_norm="bn"))["shapes_sha256"] != a["shapes_sha256"]


def test_bad_head_arguments():
    with pytest.raises(ValueError, match="embedding_dim=0"):
        _small(embedding_dim=0)
    with pytest.raises(ValueError, match="'batch'"):
        _small(head_norm="batch")
