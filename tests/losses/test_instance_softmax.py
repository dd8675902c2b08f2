"""InstanceSoftmaxLoss against loop references written from SPEC.md §1, closed forms and invariants."""
import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses

from deepmetric.functional.instance import hardest_negatives_mask, instance_views, softmax_embedding_terms
from deepmetric.losses.category_softmax import CategorySoftmaxLoss
from deepmetric.losses.instance_softmax import InstanceSoftmaxLoss, two_view_batch
from deepmetric.registry import LOSSES

D64 = torch.float64


# ----------------------------------------------------------------------------------- loop references


def _unit(x):
    return x / x.norm(dim=1, keepdim=True)


def _kept(negs, sims, fraction):
    """Hardest negatives by plain sorting: most similar first, ties to the lower index; ceil rounding."""
    if fraction >= 1.0:
        return list(negs)
    ranked = sorted(negs, key=lambda b: -float(sims[b].detach()))
    return ranked[: max(1, math.ceil(fraction * len(negs) - 1e-9))]


def ref_code(x_query, x_key, labels, tau, w, fraction=1.0):
    """Released-code form, SPEC §1, one query at a time. Keys come from ``x_key`` (pass
    ``x.detach()`` for the stop-gradient variant)."""
    zq, zk = _unit(x_query), _unit(x_key)
    lab = labels.tolist()
    n = len(lab)
    total = 0.0
    for a in range(n):
        (pa,) = [b for b in range(n) if b != a and lab[b] == lab[a]]
        s = [torch.dot(zq[a], zk[b]) for b in range(n)]
        negs = _kept([b for b in range(n) if lab[b] != lab[a]], s, fraction)
        d_a = torch.exp(s[pa] / tau) + w * sum((torch.exp(s[b] / tau) for b in negs), torch.zeros((), dtype=D64))
        term = torch.log(torch.exp(s[pa] / tau) / d_a)
        for b in negs:
            term = term + w * torch.log(1 - torch.exp(s[b] / tau) / d_a)
        total = total + term
    return -total / n


def ref_paper(x_query, x_key, labels, tau, w, fraction=1.0):
    """Paper form, SPEC §1: first occurrence of an id is f_i, second f̂_i; keys f_k from ``x_key``."""
    zq, zk = _unit(x_query), _unit(x_key)
    lab = labels.tolist()
    ids = sorted(set(lab))
    first = [lab.index(i) for i in ids]
    second = [len(lab) - 1 - lab[::-1].index(i) for i in ids]
    m = len(ids)
    f, f_hat, f_key = [zq[r] for r in first], [zq[r] for r in second], [zk[r] for r in first]
    zero = torch.zeros((), dtype=D64)
    j_total = zero
    for i in range(m):  # −Σ_i log P(i|x̂_i)
        s = [torch.dot(f_key[k], f_hat[i]) for k in range(m)]
        negs = _kept([k for k in range(m) if k != i], s, fraction)
        den = torch.exp(s[i] / tau) + w * sum((torch.exp(s[k] / tau) for k in negs), zero)
        j_total = j_total - torch.log(torch.exp(s[i] / tau) / den)
    for j in range(m):  # −Σ_j Σ_{i≠j} log(1 − P(i|x_j))
        s = [torch.dot(f_key[k], f[j]) for k in range(m)]
        negs = _kept([k for k in range(m) if k != j], s, fraction)
        den = torch.exp(s[j] / tau) + w * sum((torch.exp(s[k] / tau) for k in negs), zero)
        for i in negs:
            j_total = j_total - w * torch.log(1 - torch.exp(s[i] / tau) / den)
    return j_total


def two_view_data(m=4, d=5, seed=0, noise=0.3, shuffle=True):
    """m instances (ids scattered, rows shuffled), each two noisy views of a random centre (so the
    positive is usually the most similar row: log(1 − p) stays defined for w < 1)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(m, d, generator=g, dtype=D64)
    x = torch.cat([centres + noise * torch.randn(m, d, generator=g, dtype=D64) for _ in range(2)])
    ids = torch.randperm(100, generator=g)[:m] * 3 + 1
    y = torch.cat([ids, ids])
    if shuffle:
        perm = torch.randperm(2 * m, generator=g)
        x, y = x[perm], y[perm]
    return x, y


def _value_and_grad(fn, x):
    x = x.clone().requires_grad_(True)
    v = fn(x)
    (g,) = torch.autograd.grad(v, x)
    return v.detach(), g


# ------------------------------------------------------------------------------------- vs reference


@pytest.mark.parametrize("stop_gradient", [True, False])
@pytest.mark.parametrize("w,fraction", [(1.0, 1.0), (2.5, 1.0), (0.6, 1.0), (1.0, 0.5), (1.7, 0.3)])
def test_code_form_matches_loop_reference(stop_gradient, w, fraction):
    x, y = two_view_data(m=5)
    loss = InstanceSoftmaxLoss(temperature=0.2, negative_weight=w, stop_gradient=stop_gradient, hard_negative_fraction=fraction)
    v, g = _value_and_grad(lambda t: loss(t, y), x)
    key = (lambda t: t.detach()) if stop_gradient else (lambda t: t)
    rv, rg = _value_and_grad(lambda t: ref_code(t, key(t), y, 0.2, w, fraction), x)
    torch.testing.assert_close(v, rv, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g, rg, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("stop_gradient", [True, False])
@pytest.mark.parametrize("w,fraction", [(1.0, 1.0), (2.5, 1.0), (0.6, 1.0), (1.0, 0.5), (1.7, 0.3)])
def test_paper_form_matches_loop_reference(stop_gradient, w, fraction):
    x, y = two_view_data(m=5, seed=1)
    loss = InstanceSoftmaxLoss(temperature=0.2, negative_weight=w, stop_gradient=stop_gradient, form="paper",
                               hard_negative_fraction=fraction)
    v, g = _value_and_grad(lambda t: loss(t, y), x)
    key = (lambda t: t.detach()) if stop_gradient else (lambda t: t)
    rv, rg = _value_and_grad(lambda t: ref_paper(t, key(t), y, 0.2, w, fraction), x)
    torch.testing.assert_close(v, rv, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g, rg, rtol=1e-8, atol=1e-10)


def test_paper_and_code_forms_differ():
    x, y = two_view_data(m=4, seed=2)
    code = InstanceSoftmaxLoss()(x, y)
    paper = InstanceSoftmaxLoss(form="paper")(x, y)
    assert not torch.isclose(code * len(y) / 2, paper, rtol=1e-3)


@pytest.mark.parametrize("form,ref", [("code", ref_code), ("paper", ref_paper)])
def test_stop_gradient_is_the_derivative_with_keys_held_fixed(form, ref):
    """Finite differences of L(queries; keys frozen at x) equal the stop-gradient gradient."""
    x, y = two_view_data(m=3, d=3, seed=3)
    _, g = _value_and_grad(lambda t: InstanceSoftmaxLoss(form=form, negative_weight=1.3)(t, y), x)
    eps = 1e-6
    num = torch.zeros_like(x)
    for idx in range(x.numel()):
        e = torch.zeros_like(x).view(-1)
        e[idx] = eps
        e = e.view_as(x)
        num.view(-1)[idx] = (ref(x + e, x, y, 0.1, 1.3) - ref(x - e, x, y, 0.1, 1.3)) / (2 * eps)
    torch.testing.assert_close(g, num, rtol=1e-5, atol=1e-6)
    # ... and it is not the full derivative.
    _, g_full = _value_and_grad(lambda t: InstanceSoftmaxLoss(form=form, negative_weight=1.3, stop_gradient=False)(t, y), x)
    assert (g - g_full).abs().max() > 1e-3


# ------------------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("w", [1.0, 2.0])
def test_code_form_closed_form_orthogonal_instances(w):
    """m instances, both views equal e_i (one-hot, d = m + 1), τ = 0.1.

    For any row a: s(a, π(a)) = e_i·e_i = 1 and s(a, b) = e_i·e_j = 0 for the 2m − 2 rows of the other
    instances. So D = e^{1/τ} + w(2m − 2), p(a, π(a)) = e^{1/τ}/D, p(a, b) = 1/D, every row gives the same
    term and L = −[1/τ − log D + w(2m − 2) log(1 − 1/D)].
    """
    m, tau = 4, 0.1
    e = torch.eye(m + 1, dtype=D64)[:m]
    z, y = two_view_batch(e, e.clone())
    big_d = math.exp(1 / tau) + w * (2 * m - 2)
    expected = -(1 / tau - math.log(big_d) + w * (2 * m - 2) * math.log(1 - 1 / big_d))
    got = InstanceSoftmaxLoss(temperature=tau, negative_weight=w)(z * 3.0, y)  # scale: normalised inside
    assert got.item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("w", [1.0, 2.0])
def test_paper_form_closed_form_orthogonal_instances(w):
    """Same batch, paper form: f_i = f̂_i = e_i. P(i|x̂_i) = e^{1/τ}/D' with D' = e^{1/τ} + w(m − 1), and
    P(i|x_j) = 1/D' for the m − 1 instances i ≠ j. So J = −m(1/τ − log D') − w·m(m − 1)·log(1 − 1/D')."""
    m, tau = 4, 0.1
    e = torch.eye(m + 1, dtype=D64)[:m]
    z, y = two_view_batch(e, e.clone())
    big_d = math.exp(1 / tau) + w * (m - 1)
    expected = -m * (1 / tau - math.log(big_d)) - w * m * (m - 1) * math.log(1 - 1 / big_d)
    got = InstanceSoftmaxLoss(temperature=tau, negative_weight=w, form="paper")(z, y)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_code_form_closed_form_collapsed_batch():
    """All 2m embeddings equal: every s = 1, so D = e^{1/τ}(1 + w(2m − 2)), every p = 1/(1 + w(2m − 2)) =: q
    and L = −[log q + w(2m − 2) log(1 − q)] (independent of τ)."""
    m, w = 3, 1.5
    z = torch.ones(2 * m, 4, dtype=D64)
    y = torch.arange(m).repeat(2)
    q = 1 / (1 + w * (2 * m - 2))
    expected = -(math.log(q) + w * (2 * m - 2) * math.log(1 - q))
    for tau in (0.1, 0.5):
        assert InstanceSoftmaxLoss(temperature=tau, negative_weight=w)(z, y).item() == pytest.approx(expected, rel=1e-12)


def test_zero_negative_weight_and_single_instance_give_zero():
    """w = 0 leaves D = e^{s(a,π(a))/τ}, so p(a,π(a)) = 1 and L = 0; one instance alone has no negatives."""
    x, y = two_view_data(m=4)
    assert InstanceSoftmaxLoss(negative_weight=0.0)(x, y).item() == pytest.approx(0.0, abs=1e-12)
    one = torch.randn(2, 3, dtype=D64, requires_grad=True)
    for form in ("code", "paper"):
        val = InstanceSoftmaxLoss(form=form)(one, torch.tensor([5, 5]))
        assert val.item() == pytest.approx(0.0, abs=1e-12)
        val.backward()


# --------------------------------------------------------------------------------------- invariants


def test_code_form_invariant_to_row_permutation_and_relabelling():
    x, y = two_view_data(m=5, seed=4)
    loss = InstanceSoftmaxLoss(negative_weight=1.4, hard_negative_fraction=0.5)
    v, g = _value_and_grad(lambda t: loss(t, y), x)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(1))
    relabel = {old: new for old, new in zip(torch.unique(y).tolist(), [40, -2, 7, 1000, 3])}
    y2 = torch.tensor([relabel[i] for i in y[perm].tolist()])
    v2, g2 = _value_and_grad(lambda t: loss(t, y2), x[perm])
    torch.testing.assert_close(v2, v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g2, g[perm], rtol=1e-10, atol=1e-12)


def test_paper_form_invariant_to_instance_permutation_and_relabelling():
    x, y = two_view_data(m=5, seed=5, shuffle=False)  # rows: view 1 of all, then view 2 of all
    loss = InstanceSoftmaxLoss(form="paper", negative_weight=0.8)
    v, g = _value_and_grad(lambda t: loss(t, y), x)
    p = torch.randperm(5, generator=torch.Generator().manual_seed(2))
    rows = torch.cat([p, p + 5])  # permute instances, keep view 1 before view 2
    y2 = y[rows] * 7 - 11
    v2, g2 = _value_and_grad(lambda t: loss(t, y2), x[rows])
    torch.testing.assert_close(v2, v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g2, g[rows], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("form", ["code", "paper"])
@pytest.mark.parametrize("w,fraction", [(1.0, 1.0), (0.7, 1.0), (2.0, 0.5)])
def test_gradcheck_full_gradient(form, w, fraction):
    x, y = two_view_data(m=3, d=4, seed=6)
    loss = InstanceSoftmaxLoss(form=form, negative_weight=w, stop_gradient=False, hard_negative_fraction=fraction, temperature=0.3)
    assert torch.autograd.gradcheck(lambda t: loss(t, y), (x.clone().requires_grad_(),))


def test_dominant_negative_is_accurate_in_float32():
    """A negative far closer than the positive: p(a,b) rounds to 1 in float32, yet log(1 − p) is finite and
    accurate because it is computed from the other entries of D_a (leave-one-out), not from 1 − p."""
    a = torch.tensor([1.0, 0.0, 0.0])
    pos = torch.tensor([-0.9, math.sqrt(1 - 0.81), 0.0])  # s(a, π(a)) = −0.9
    near = torch.tensor([0.99, math.sqrt(1 - 0.99 ** 2), 0.0])  # s(a, b) = 0.99
    far = torch.tensor([-0.9, 0.0, math.sqrt(1 - 0.81)])
    x = torch.stack([a, near, pos, far]).double()
    y = torch.tensor([0, 1, 0, 1])
    for w in (1.0, 2.0):
        expected = ref_code(x, x, y, 0.1, w)
        x32 = x.float().requires_grad_()
        got = InstanceSoftmaxLoss(negative_weight=w)(x32, y)
        got.backward()
        assert torch.isfinite(got) and torch.isfinite(x32.grad).all()
        assert got.item() == pytest.approx(expected.item(), rel=1e-4)


def test_down_weighted_dominant_negative_is_clamped_not_nan():
    """w < 1: p = e^{s}/D can exceed 1 (the released formula is undefined); 1 − p is floored, no NaN."""
    x = torch.tensor([[1.0, 0.0], [0.99, 0.141], [-1.0, 0.0], [-0.99, -0.141]], requires_grad=True)
    y = torch.tensor([0, 1, 0, 1])
    val = InstanceSoftmaxLoss(negative_weight=0.2)(x, y)
    val.backward()
    assert torch.isfinite(val) and torch.isfinite(x.grad).all()
    assert val.item() > 10  # the floored log(1 − p) = log(1e-6) terms dominate


def test_half_precision_is_computed_in_float32():
    x, y = two_view_data(m=4, seed=7)
    got = InstanceSoftmaxLoss()(x.to(torch.bfloat16), y)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(InstanceSoftmaxLoss()(x.to(torch.bfloat16).double(), y).item(), rel=1e-5)


# -------------------------------------------------------------------------- extra views, PML, helpers


def test_extra_views_average_the_positives_like_the_category_loss():
    """k = 4 rows per id (e.g. after angular_perturbation): every other row of the id is a positive."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(12, 5, generator=g, dtype=D64)
    y = torch.arange(3).repeat(4)
    for sg in (True, False):
        inst = InstanceSoftmaxLoss(stop_gradient=sg, negative_weight=1.5)
        cat = CategorySoftmaxLoss(stop_gradient=sg, negative_weight=1.5)
        v, gr = _value_and_grad(lambda t: inst(t, y), x)
        v2, gr2 = _value_and_grad(lambda t: cat(t, y), x)
        torch.testing.assert_close(v, v2, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(gr, gr2, rtol=1e-10, atol=1e-12)


def test_positive_term_equals_pml_ntxent():
    """The only exact correspondence with PML: NT-Xent's per-pair loss −log(e^{s_ap/τ}/(e^{s_ap/τ} +
    Σ_n e^{s_an/τ})) is the code form's −log p(a, π(a)) with w = 1 and full gradient; the full loss adds
    the Σ log(1 − p) spreading term, which NT-Xent does not have."""
    x, y = two_view_data(m=5, seed=9)
    tau = 0.2

    def positive_term(t):
        z = _unit(t)
        same = y[:, None] == y[None, :]
        eye = torch.eye(len(y), dtype=torch.bool)
        pos, _ = softmax_embedding_terms(z @ z.t() / tau, same & ~eye, ~same)
        return -pos.mean()

    v, g = _value_and_grad(positive_term, x)
    pv, pg = _value_and_grad(lambda t: pml_losses.NTXentLoss(temperature=tau)(t, y), x)
    torch.testing.assert_close(v, pv, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(g, pg, rtol=1e-7, atol=1e-10)
    assert InstanceSoftmaxLoss(temperature=tau, stop_gradient=False)(x, y) > v + 1e-3


def test_hard_negative_rounding():
    sims = torch.arange(10, dtype=D64).flip(0)[None, :].repeat(4, 1)  # column 0 most similar
    negs = torch.ones(4, 10, dtype=torch.bool)
    for fraction, kept in [(0.3, 3), (0.35, 4), (0.01, 1), (0.5, 5), (1.0, 10)]:
        mask = hardest_negatives_mask(sims, negs, fraction)
        assert mask.sum(1).tolist() == [kept] * 4
        assert mask[0, :kept].all()
    ties = hardest_negatives_mask(torch.zeros(1, 4), torch.tensor([[True, False, True, True]]), 0.5)
    assert ties.tolist() == [[True, False, True, False]]  # ties: lower column first


def test_two_view_batch_layout_and_errors():
    v1, v2 = torch.randn(3, 4), torch.randn(3, 4)
    z, y = two_view_batch(v1, v2)
    assert torch.equal(z, torch.cat([v1, v2])) and y.tolist() == [0, 1, 2, 0, 1, 2]
    _, y = two_view_batch(v1, v2, torch.tensor([9, 4, 6]))
    assert y.tolist() == [9, 4, 6, 9, 4, 6]
    ids, index = instance_views(y)
    assert ids.tolist() == [4, 6, 9] and index.tolist() == [[1, 4], [2, 5], [0, 3]]
    with pytest.raises(ValueError, match="same shape"):
        two_view_batch(v1, torch.randn(2, 4))
    with pytest.raises(ValueError, match="distinct"):
        two_view_batch(v1, v2, torch.tensor([1, 1, 2]))


def test_registered_and_marked_unsupervised():
    assert LOSSES.get("instance_softmax") is InstanceSoftmaxLoss
    assert InstanceSoftmaxLoss.unsupervised is True


# ------------------------------------------------------------------------------------------- errors


def test_bad_labels_are_clear_errors():
    loss = InstanceSoftmaxLoss()
    with pytest.raises(ValueError, match=r"3× : 2.*two_view_batch"):  # an id three times
        loss(torch.randn(7, 4), torch.tensor([0, 0, 1, 1, 2, 2, 2]))
    with pytest.raises(ValueError, match=r"1× : 2"):  # odd batch
        loss(torch.randn(5, 4), torch.tensor([0, 0, 1, 1, 2]))
    with pytest.raises(ValueError, match=r"1× : 0, 1, 2"):  # class-like labels, every id once
        loss(torch.randn(3, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"labels \(B,\)"):  # shape mismatch
        loss(torch.randn(6, 4), torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match=r"labels \(B,\)"):
        loss(torch.randn(4), torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="integer ids"):
        loss(torch.randn(4, 3), torch.tensor([0.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="exactly twice"):  # the paper form needs two views
        InstanceSoftmaxLoss(form="paper")(torch.randn(8, 3), torch.arange(2).repeat(4))


@pytest.mark.parametrize("kwargs,match", [
    ({"temperature": 0.0}, "temperature"), ({"temperature": float("nan")}, "temperature"),
    ({"negative_weight": -1.0}, "negative_weight"), ({"form": "pape"}, "'pape'"),
    ({"hard_negative_fraction": 0.0}, "hard_negative_fraction"), ({"hard_negative_fraction": 1.5}, "1.5"),
    ({"stop_gradient": "yes"}, "stop_gradient"),
])
def test_bad_hyper_parameters_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        InstanceSoftmaxLoss(**kwargs)
