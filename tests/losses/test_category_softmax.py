"""CategorySoftmaxLoss against a loop reference of SPEC.md §1 [choice], closed form, reduction and invariants."""
import math

import pytest
import torch

from deepmetric.losses.category_softmax import CategorySoftmaxLoss
from deepmetric.losses.instance_softmax import InstanceSoftmaxLoss
from deepmetric.registry import LOSSES

D64 = torch.float64


def ref_category(x_query, x_key, labels, tau, w):
    """For each anchor with a positive: D = Σ_P e^{s/τ} + w Σ_N e^{s/τ};
    term = mean_P log p + w Σ_N log(1 − p); L = −mean over anchors."""
    zq = x_query / x_query.norm(dim=1, keepdim=True)
    zk = x_key / x_key.norm(dim=1, keepdim=True)
    lab = labels.tolist()
    n = len(lab)
    terms = []
    for a in range(n):
        pos = [b for b in range(n) if b != a and lab[b] == lab[a]]
        if not pos:
            continue
        neg = [b for b in range(n) if lab[b] != lab[a]]
        e = [torch.exp(torch.dot(zq[a], zk[b]) / tau) for b in range(n)]
        d_a = sum(e[b] for b in pos) + w * sum((e[b] for b in neg), torch.zeros((), dtype=D64))
        term = sum(torch.log(e[b] / d_a) for b in pos) / len(pos)
        for b in neg:
            term = term + w * torch.log(1 - e[b] / d_a)
        terms.append(term)
    return -sum(terms) / len(terms)


def data(seed=0, noise=0.4):
    """Classes of sizes 3, 2, 4 and a singleton (an anchor without positive), rows shuffled."""
    g = torch.Generator().manual_seed(seed)
    y = torch.tensor([5, 5, 5, 2, 2, 9, 9, 9, 9, 0])
    centres = torch.randn(10, 6, generator=g, dtype=D64)
    x = centres[y] + noise * torch.randn(10, 6, generator=g, dtype=D64)
    perm = torch.randperm(10, generator=g)
    return x[perm], y[perm]


def _value_and_grad(fn, x):
    x = x.clone().requires_grad_(True)
    v = fn(x)
    (g,) = torch.autograd.grad(v, x)
    return v.detach(), g


@pytest.mark.parametrize("stop_gradient", [False, True])
@pytest.mark.parametrize("w", [1.0, 3.0, 0.5])
def test_matches_loop_reference(stop_gradient, w):
    x, y = data()
    loss = CategorySoftmaxLoss(temperature=0.25, negative_weight=w, stop_gradient=stop_gradient)
    v, g = _value_and_grad(lambda t: loss(t, y), x)
    key = (lambda t: t.detach()) if stop_gradient else (lambda t: t)
    rv, rg = _value_and_grad(lambda t: ref_category(t, key(t), y, 0.25, w), x)
    torch.testing.assert_close(v, rv, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g, rg, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("stop_gradient", [False, True])
def test_reduces_to_instance_loss_with_two_samples_per_class(stop_gradient):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(10, 4, generator=g, dtype=D64)
    y = torch.tensor([3, 1, 4, 0, 2, 2, 0, 4, 1, 3])
    cat = CategorySoftmaxLoss(negative_weight=1.3, stop_gradient=stop_gradient)
    inst = InstanceSoftmaxLoss(negative_weight=1.3, stop_gradient=stop_gradient, form="code")
    v, gr = _value_and_grad(lambda t: cat(t, y), x)
    v2, gr2 = _value_and_grad(lambda t: inst(t, y), x)
    torch.testing.assert_close(v, v2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gr, gr2, rtol=1e-10, atol=1e-12)


def test_closed_form_orthogonal_classes():
    """C classes, n samples each, every sample of class c equal to e_c, τ = 0.1.

    An anchor has n − 1 positives with s = 1 and (C − 1)n negatives with s = 0, so
    D = (n − 1)e^{1/τ} + w(C − 1)n, log p(a,p) = 1/τ − log D, p(a,n) = 1/D and every anchor gives
    L = −[1/τ − log D + w(C − 1)n log(1 − 1/D)].
    """
    c, n, tau, w = 3, 3, 0.1, 2.0
    z = torch.eye(4, dtype=D64)[:c].repeat_interleave(n, dim=0)
    y = torch.arange(c).repeat_interleave(n)
    big_d = (n - 1) * math.exp(1 / tau) + w * (c - 1) * n
    expected = -(1 / tau - math.log(big_d) + w * (c - 1) * n * math.log(1 - 1 / big_d))
    assert CategorySoftmaxLoss(temperature=tau, negative_weight=w)(2.0 * z, y).item() == pytest.approx(expected, rel=1e-12)


def test_single_class_batch_has_no_negatives():
    """All rows one class and identical: D = (B − 1)e^{1/τ}, p = 1/(B − 1), L = log(B − 1)."""
    z = torch.ones(5, 3, dtype=D64)
    assert CategorySoftmaxLoss()(z, torch.zeros(5, dtype=torch.long)).item() == pytest.approx(math.log(4), rel=1e-12)


def test_no_positive_pair_returns_a_differentiable_zero():
    x = torch.randn(4, 3, requires_grad=True)
    val = CategorySoftmaxLoss()(x, torch.tensor([0, 1, 2, 3]))
    assert val.item() == 0.0 and val.grad_fn is not None
    val.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_singleton_anchor_is_skipped_but_remains_a_negative():
    x, y = data(seed=2)
    keep = y != 0
    full = CategorySoftmaxLoss()(x, y)
    without = CategorySoftmaxLoss()(x[keep], y[keep])
    assert not torch.isclose(full, without)  # the singleton still appears in the others' denominators
    assert full.item() == pytest.approx(ref_category(x, x, y, 0.1, 1.0).item(), rel=1e-10)


def test_invariant_to_permutation_and_relabelling():
    x, y = data(seed=3)
    loss = CategorySoftmaxLoss(negative_weight=0.9, stop_gradient=True)
    v, g = _value_and_grad(lambda t: loss(t, y), x)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(4))
    v2, g2 = _value_and_grad(lambda t: loss(t, y[perm] * 10 + 3), x[perm])
    torch.testing.assert_close(v2, v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g2, g[perm], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("w", [1.0, 0.6, 2.0])
def test_gradcheck(w):
    x, y = data(seed=5)
    loss = CategorySoftmaxLoss(temperature=0.3, negative_weight=w)
    x7, y7 = x[:7].clone().requires_grad_(), y[:7]
    assert torch.autograd.gradcheck(lambda t: loss(t, y7), (x7,))


def test_registered_and_supervised():
    assert LOSSES.get("category_softmax") is CategorySoftmaxLoss
    assert getattr(CategorySoftmaxLoss, "unsupervised", False) is False


@pytest.mark.parametrize("kwargs,match", [
    ({"temperature": -0.1}, "temperature"), ({"negative_weight": float("inf")}, "negative_weight"),
    ({"stop_gradient": 1}, "stop_gradient"),
])
def test_bad_hyper_parameters_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CategorySoftmaxLoss(**kwargs)


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"labels \(B,\)"):
        CategorySoftmaxLoss()(torch.randn(4, 3), torch.tensor([0, 0, 1]))
