"""GeM pooling: closed forms (p = 1 is the mean, large p tends to the max), the learned exponent, a model config."""
import pytest
import torch

from deepmetric.models.backbones import GlobalPool, gem_pool


def test_gem_closed_forms():
    x = torch.rand(2, 3, 4, 5, dtype=torch.float64) + 0.1
    torch.testing.assert_close(gem_pool(x, torch.tensor(1.0, dtype=torch.float64)), x.mean((2, 3)))
    # p = 2: root mean square
    torch.testing.assert_close(gem_pool(x, torch.tensor(2.0, dtype=torch.float64)), x.pow(2).mean((2, 3)).sqrt())
    big = gem_pool(x, torch.tensor(200.0, dtype=torch.float64))
    # max · (1/20)^(1/p) <= GeM_p <= max over the 20 positions: within 1.5% of the max at p = 200
    assert torch.all(big <= x.amax((2, 3)) + 1e-12) and torch.all(big >= x.amax((2, 3)) * (1 / 20) ** (1 / 200) - 1e-12)
    # negative activations are clamped to eps (ReLU maps are >= 0; this keeps x^p real)
    assert torch.all(gem_pool(-x, torch.tensor(3.0, dtype=torch.float64)) < 1e-5)


def test_gem_exponent_is_a_learned_parameter_with_correct_gradient():
    pool = GlobalPool("gem")
    assert [n for n, _ in pool.named_parameters()] == ["p"] and float(pool.p.detach()) == 3.0
    x = (torch.rand(2, 3, 4, 4, dtype=torch.float64) + 0.1).requires_grad_()
    p = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: gem_pool(a, b), (x, p))


def test_a_config_can_ask_for_gem():
    from deepmetric.config import build_config
    from deepmetric.inference import build_embedding_model

    cfg = build_config({"model": {"pooling": "gem"}}, source="test")
    model = build_embedding_model(cfg, in_chans=1)
    assert any(n.endswith("pool.p") for n, _ in model.named_parameters())
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, cfg.model.embedding_dim)
    with pytest.raises(ValueError, match="not one of"):
        GlobalPool("gem2")
