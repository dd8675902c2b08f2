import pytest
import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import miners as pml_miners

from deepmetric.losses.build import build_loss, loss_parameters
from deepmetric.registry import LOSSES

BASELINES = ["proxy_anchor", "multi_similarity", "triplet", "contrastive", "ntxent", "supcon",
             "normalized_softmax", "arcface", "cosface", "soft_triple"]


@pytest.mark.parametrize("name", BASELINES)
def test_every_baseline_is_registered_and_differentiable(name):
    torch.manual_seed(0)
    loss = build_loss(name, num_classes=4, embedding_dim=8)
    z = torch.nn.functional.normalize(torch.randn(16, 8, dtype=torch.float32), dim=1).requires_grad_()
    y = torch.arange(16) % 4
    value = loss(z, y)
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


def test_paper_defaults():
    assert loss_parameters("proxy_anchor") == {"margin": 0.1, "alpha": 32.0}
    assert loss_parameters("multi_similarity") == {"alpha": 2.0, "beta": 50.0, "base": 0.5, "epsilon": 0.1}
    assert loss_parameters("arcface")["margin"] == pytest.approx(28.6)


def test_proxy_anchor_equals_pml_with_same_proxies():
    torch.manual_seed(1)
    ours = build_loss("proxy_anchor", num_classes=5, embedding_dim=6)
    ref = pml_losses.ProxyAnchorLoss(5, 6, margin=0.1, alpha=32)
    ref.proxies.data.copy_(ours.proxies.detach())
    z, y = torch.randn(20, 6), torch.arange(20) % 5
    assert torch.allclose(ours(z, y), ref(z, y))
    assert list(ours.parameters())[0].shape == (5, 6)  # proxies are parameters -> reach the optimizer


def test_multi_similarity_uses_its_miner():
    torch.manual_seed(2)
    z, y = torch.nn.functional.normalize(torch.randn(24, 8), dim=1), torch.arange(24) % 6
    ours = build_loss("multi_similarity", num_classes=6, embedding_dim=8)
    miner, ms = pml_miners.MultiSimilarityMiner(epsilon=0.1), pml_losses.MultiSimilarityLoss(alpha=2, beta=50, base=0.5)
    assert torch.allclose(ours(z, y), ms(z, y, miner(z, y)))
    assert not torch.allclose(ours(z, y), ms(z, y))  # mining changes the value on random data


def test_unknown_parameter_is_a_clear_error():
    with pytest.raises(ValueError, match=r"no parameter\(s\) \['marginn'\].*margin=0.1"):
        build_loss("proxy_anchor", {"marginn": 0.2}, num_classes=3, embedding_dim=4)
    with pytest.raises(ValueError, match="alpha must be > 0"):
        build_loss("proxy_anchor", {"alpha": 0}, num_classes=3, embedding_dim=4)
    with pytest.raises(KeyError, match="Valid choices"):
        LOSSES.get("nope")
