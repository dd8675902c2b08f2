"""SynthesisLoss (SPEC §2–5): every combination rule against references written from the loss equations.

The references below are plain float64 loops over the equations of each base loss (Multi-Similarity,
triplet, contrastive, Proxy-Anchor, the softmax embeddings); none of them calls PML or a deepmetric
helper. Values AND gradients are compared, so a synthetic term computed without gradient fails.
"""
import math

import pytest
import torch
from pytorch_metric_learning import losses as pml

from deepmetric.losses.baselines import MultiSimilarityWithMiner
from deepmetric.losses.category_softmax import CategorySoftmaxLoss
from deepmetric.losses.instance_softmax import InstanceSoftmaxLoss
from deepmetric.losses.intra_ranking import IntraClassRankingLoss
from deepmetric.losses.synthesis_loss import ComposedSynthesisLoss, SynthesisLoss, base_kind, base_proxies
from deepmetric.synthesis.angular_perturbation import AngularPerturbation
from deepmetric.synthesis.embedding_expansion import EmbeddingExpansion
from deepmetric.synthesis.intra_variance import IntraVarianceSynthesis
from deepmetric.synthesis.spherical_expansion import SphericalExpansion
from deepmetric.synthesis.symmetrical import SymmetricalSynthesis

D64 = torch.float64


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def data(b=24, d=16, c=4, seed=0, dtype=D64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g, dtype=dtype).requires_grad_(), torch.arange(b) % c


def pa(c=4, d=16, seed=0):
    torch.manual_seed(seed)  # PML initialises proxies from the global RNG; fix it for the test only
    return pml.ProxyAnchorLoss(c, d, margin=0.1, alpha=32).double()


def gen(s=0):
    return torch.Generator().manual_seed(s)


def see(**kw):
    kw.setdefault("schedule", "step")
    return SphericalExpansion(**kw)


def grads(value, *tensors):
    return torch.autograd.grad(value, tensors, retain_graph=True)


def close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


# ------------------------------------------------------------------ references written from the equations


def ms_anchor(sims_pos, sims_neg, alpha=2.0, beta=50.0, base=0.5):
    """Multi-Similarity (Wang et al. 2019, Eq. 6) for one anchor, from its positive and negative similarities."""
    pos = torch.log1p(sum(torch.exp(-alpha * (s - base)) for s in sims_pos)) / alpha if sims_pos else 0.0
    neg = torch.log1p(sum(torch.exp(beta * (s - base)) for s in sims_neg)) / beta if sims_neg else 0.0
    return pos + neg


def ms_mean(x, lab, pairs, anchors):
    """Mean over ``anchors`` of the MS loss of each anchor over its (anchor, partner) ``pairs``."""
    u = unit(x)
    terms = []
    for a in anchors:
        partners = [q for (an, q) in pairs if an == a]
        pos = [u[a] @ u[q] for q in partners if lab[q] == lab[a]]
        neg = [u[a] @ u[q] for q in partners if lab[q] != lab[a]]
        terms.append(ms_anchor(pos, neg))
    return sum(terms) / len(terms)


def triplet_mean(x, lab, triplets, margin):
    """Triplet margin loss on unit vectors, averaged over the triplets with a positive hinge."""
    u = unit(x)
    hinges = [torch.relu((u[a] - u[p]).norm() - (u[a] - u[n]).norm() + margin) for a, p, n in triplets]
    nonzero = [h for h in hinges if float(h.detach()) > 0]
    return sum(nonzero) / len(nonzero)


def contrastive_mean(x, lab, pairs, pos_margin=0.0, neg_margin=0.5):
    """Contrastive loss on unit vectors: positive and negative hinges, each averaged over its non-zero terms."""
    u = unit(x)
    pos = [torch.relu((u[a] - u[q]).norm() - pos_margin) for a, q in pairs if lab[a] == lab[q]]
    neg = [torch.relu(neg_margin - (u[a] - u[q]).norm()) for a, q in pairs if lab[a] != lab[q]]
    avg = lambda v: sum(h for h in v if float(h.detach()) > 0) / max(1, sum(float(h.detach()) > 0 for h in v))  # noqa: E731
    return avg(pos) + avg(neg)


def proxy_anchor_ref(x, lab, proxies, alpha=32.0, delta=0.1):
    """Proxy-Anchor (Kim et al. 2020, Eq. 4): proxies as anchors, negatives averaged over all C proxies."""
    s = unit(x) @ unit(proxies).t()
    c = proxies.shape[0]
    pos_terms, neg_terms = [], []
    for k in range(c):
        mine = lab == k
        if mine.any():
            pos_terms.append(torch.log1p(torch.exp(-alpha * (s[mine, k] - delta)).sum()))
        if (~mine).any():
            neg_terms.append(torch.log1p(torch.exp(alpha * (s[~mine, k] + delta)).sum()))
    return sum(pos_terms) / len(pos_terms) + sum(neg_terms) / c


def softmax_embedding_ref(x, lab, queries, tau=0.1):
    """Category/instance softmax embedding (SPEC §1, released-code form) averaged over ``queries``."""
    u = unit(x)
    total = 0.0
    for a in queries:
        others = [b for b in range(len(lab)) if b != a]
        pos = [b for b in others if lab[b] == lab[a]]
        neg = [b for b in others if lab[b] != lab[a]]
        e = {b: torch.exp(u[a] @ u[b] / tau) for b in others}
        d = sum(e.values())
        total = total + sum(torch.log(e[b] / d) for b in pos) / len(pos) + sum(torch.log(1 - e[b] / d) for b in neg)
    return -total / len(queries)


def real_pairs(lab, syn, synthetic_partner):
    b = int((~syn).sum())
    return [(a, q) for a in range(b) for q in range(len(lab)) if q != a and (syn[q] or not synthetic_partner)]


def real_triplets(lab, syn, synthetic_partner):
    b, n = int((~syn).sum()), len(lab)
    out = []
    for a in range(b):
        for p in range(n):
            if p == a or lab[p] != lab[a]:
                continue
            for q in range(n):
                if lab[q] != lab[a] and (not synthetic_partner or syn[p] or syn[q]):
                    out.append((a, p, q))
    return out


# -------------------------------------------------------------------------- "separate": λ means λ


def test_separate_proxy_anchor_is_base_real_plus_lambda_base_synthetic_in_value_and_gradient():
    z, y = data()
    base = pa()
    s = see(n=4, fraction_schedule=(0.5, 0.5))
    loss = SynthesisLoss(base, s, weight=0.3)
    got = loss(z, y, generator=gen(3))
    zz, yy, syn = s(z, y, generator=gen(3), proxies=base.proxies)
    assert int(syn.sum()) == 4 * 12
    want = proxy_anchor_ref(z, y, base.proxies) + 0.3 * proxy_anchor_ref(zz[syn], yy[syn], base.proxies)
    close(got, want)
    # SEE's points are detached (released code): the synthetic term trains the proxies only, and it must.
    g_got = grads(got, base.proxies, z)
    g_want = grads(want, base.proxies, z)
    close(g_got[0], g_want[0])
    close(g_got[1], g_want[1])
    real_only = grads(proxy_anchor_ref(z, y, base.proxies), base.proxies)[0]
    assert (g_got[0] - real_only).abs().max() > 1e-3  # the synthetic term moves the proxies


@pytest.mark.parametrize("fraction", [0.1, 1.0])
def test_separate_multi_similarity_averages_over_the_anchors_of_synthetic_tuples(fraction):
    # Around class centres (no proxies); detach=False so the gradient also reaches z through the points.
    z, y = data()
    s = see(n=3, fraction_schedule=(fraction, fraction), detach=False)
    ms = pml.MultiSimilarityLoss(alpha=2, beta=50, base=0.5)
    got = SynthesisLoss(ms, s, weight=0.2)(z, y, generator=gen(1))
    zz, yy, syn = s(z, y, generator=gen(1))
    b = len(y)
    real = ms_mean(z, y, real_pairs(y[:b], syn[:b], False), range(b))
    pairs = real_pairs(yy, syn, True)
    extra = ms_mean(zz, yy, pairs, sorted({a for a, _ in pairs}))
    want = real + 0.2 * extra
    close(got, want)
    close(grads(got, z)[0], grads(want, z)[0])


def test_separate_triplet_and_contrastive_average_over_their_synthetic_tuples():
    z, y = data(b=12, d=8, c=3)
    s = see(n=2, fraction_schedule=(0.5, 0.5), detach=False)
    zz, yy, syn = s(z, y, generator=gen(2))
    trip = pml.TripletMarginLoss(margin=0.3)
    got = SynthesisLoss(trip, s, weight=0.5)(z, y, generator=gen(2))
    want = triplet_mean(z, y, real_triplets(y, torch.zeros(12, dtype=torch.bool), False), 0.3) + 0.5 * triplet_mean(
        zz, yy, real_triplets(yy, syn, True), 0.3
    )
    close(got, want)
    close(grads(got, z)[0], grads(want, z)[0])

    con = pml.ContrastiveLoss(pos_margin=0.0, neg_margin=0.5)
    got = SynthesisLoss(con, s, weight=0.5)(z, y, generator=gen(2))
    want = contrastive_mean(z, y, real_pairs(y, torch.zeros(12, dtype=torch.bool), False)) + 0.5 * contrastive_mean(
        zz, yy, real_pairs(yy, syn, True)
    )
    close(got, want)
    close(grads(got, z)[0], grads(want, z)[0])


def test_nothing_synthesised_is_exactly_the_base_loss():
    z, y = data()
    base = pa()
    assert torch.equal(SynthesisLoss(base, SphericalExpansion())(z, y, generator=gen(), epoch=0, epochs=5), base(z, y))
    ms = pml.MultiSimilarityLoss(alpha=2, beta=50, base=0.5)
    y_unique = torch.arange(24)
    assert torch.equal(SynthesisLoss(ms, EmbeddingExpansion())(z, y_unique), ms(z, y_unique))


# ------------------------------------------------------------------------------ "joint": real anchors


def test_joint_pair_loss_averages_over_the_real_rows_not_the_enlarged_batch():
    # EE + plain MS (no miner): every real anchor against real and synthetic partners, mean over the B real rows.
    z, y = data(b=16, d=8, c=4)
    ee = EmbeddingExpansion(n=2)
    zz, yy, syn = ee(z, y)
    assert len(yy) == 16 + 2 * 8  # 4 classes x 4 samples -> 2 disjoint pairs per class
    ms = pml.MultiSimilarityLoss(alpha=2, beta=50, base=0.5)
    got = SynthesisLoss(ms, ee)(z, y)
    want = ms_mean(zz, yy, real_pairs(yy, syn, False), range(16))
    close(got, want)
    close(grads(got, z)[0], grads(want, z)[0])


def ms_miner_pairs(x, lab, anchors, epsilon=0.1):
    """The MS paper's pair mining (Wang et al. 2019, Eq. 3-4) for each anchor over all other rows."""
    u = unit(x).detach()
    out = []
    for a in anchors:
        others = [q for q in range(len(lab)) if q != a]
        pos = [q for q in others if lab[q] == lab[a]]
        neg = [q for q in others if lab[q] != lab[a]]
        if not pos or not neg:
            continue
        s = u @ u[a]
        hardest_neg, hardest_pos = max(float(s[q].detach()) for q in neg), min(float(s[q].detach()) for q in pos)
        out += [(a, q) for q in pos if float(s[q].detach()) - epsilon < hardest_neg]
        out += [(a, q) for q in neg if float(s[q].detach()) + epsilon > hardest_pos]
    return out


def test_joint_multi_similarity_with_its_miner_mines_real_anchors_over_all_rows():
    z, y = data(b=12, d=8, c=3)
    sym = SymmetricalSynthesis()
    zz, yy, syn = sym(z, y)
    msm = MultiSimilarityWithMiner()
    got = SynthesisLoss(msm, sym)(z, y)
    want = ms_mean(zz, yy, ms_miner_pairs(zz, yy, range(12)), range(12))
    close(got, want)
    close(grads(got, z)[0], grads(want, z)[0])


def test_joint_triplet_and_proxy_loss():
    z, y = data(b=9, d=8, c=3)
    sym = SymmetricalSynthesis()
    zz, yy, syn = sym(z, y)
    got = SynthesisLoss(pml.TripletMarginLoss(margin=0.2), sym)(z, y)
    want = triplet_mean(zz, yy, real_triplets(yy, syn, False), 0.2)
    close(got, want)
    close(grads(got, z)[0], grads(want, z)[0])
    base = pa(c=3, d=8)  # a proxy loss anchors on its proxies: every row, real or synthetic, is scored
    close(SynthesisLoss(base, sym)(z, y), proxy_anchor_ref(zz, yy, base.proxies))


# --------------------------------------------------------- losses without tuples never anchor on synthetic rows


def test_softmax_embeddings_use_synthetic_rows_as_keys_only():
    z, y = data(b=8, d=6, c=4)
    ap = AngularPerturbation(num_copies=1, max_angle_deg=20.0)
    zz, yy, syn = ap(z, y, generator=gen(4))
    want = softmax_embedding_ref(zz, yy, range(8))
    got = SynthesisLoss(CategorySoftmaxLoss(), ap)(z, y, generator=gen(4))
    close(got, want)
    close(grads(got, z)[0], grads(want, z)[0])
    inst = SynthesisLoss(InstanceSoftmaxLoss(stop_gradient=False), ap)(z, y, generator=gen(4))
    close(inst, want)
    close(grads(inst, z)[0], grads(want, z)[0])
    # The synthetic rows' own terms would change the value: they are really left out.
    assert abs(float(softmax_embedding_ref(zz, yy, range(16)).detach()) - float(want.detach())) > 1e-3
    with pytest.raises(ValueError, match="form='paper' has no rule for synthetic rows"):
        SynthesisLoss(InstanceSoftmaxLoss(form="paper"), ap)(z, y, generator=gen(4))


def test_npairs_anchors_on_real_rows():
    z, y = data(b=8, d=6, c=4)
    sym = SymmetricalSynthesis()
    zz, yy, syn = sym(z, y)
    got = SynthesisLoss(pml.NPairsLoss(), sym)(z, y)
    # N-pair (Sohn 2016): the first real row of each class is the anchor, its first positive (real rows
    # first, then synthetic) the positive; cross-entropy over the similarities to every class's positive.
    anchors, positives = [], []
    for k in range(4):
        a = min(i for i in range(8) if y[i] == k)
        anchors.append(a)
        positives.append(min(q for q in range(len(yy)) if q != a and yy[q] == k))
    s = unit(zz[anchors]) @ unit(zz[positives]).t()  # PML normalises before the dot product
    want = -torch.log_softmax(s, dim=1).diagonal().mean()
    close(got, want)
    assert base_kind(pml.NPairsLoss())[0] == "npairs"


def test_base_kinds_and_refusals():
    assert base_kind(pml.SoftTripleLoss(3, 8, centers_per_class=2))[0] == "rows"
    assert base_kind(MultiSimilarityWithMiner())[0] == "pair"
    assert base_kind(CategorySoftmaxLoss())[0] == "queries"

    class Opaque(torch.nn.Module):
        def forward(self, embeddings, labels):
            return embeddings.sum()

    with pytest.raises(ValueError, match="cannot keep synthetic rows from anchoring Opaque"):
        SynthesisLoss(Opaque(), EmbeddingExpansion())


# ------------------------------------------------------------------------------------------- ranking


def test_ranking_rule_is_base_plus_gamma_ranking():
    g = torch.Generator().manual_seed(0)
    base = pml.ProxyAnchorLoss(3, 16, margin=0.1, alpha=32)
    y = torch.arange(30) % 3
    z = unit(base.proxies.detach())[y] + 0.3 * torch.randn(30, 16, generator=g)
    iv = IntraVarianceSynthesis(band=(0.3, 0.99), margin=0.08, class_margin=0.2, space="embedding")
    loss = SynthesisLoss(base, iv)
    assert loss.weight == iv.weight and loss.ranking_loss.margin == 0.08 and loss.ranking_loss.class_margin == 0.2
    got = loss(z, y, generator=gen(2))
    batch = iv(z, y, generator=gen(2), proxies=base.proxies)
    assert batch.is_synthetic.any()
    rank = IntraClassRankingLoss(margin=0.08, class_margin=0.2)(
        batch.embeddings, batch.labels, source=batch.owner[:, 0], intensity=batch.intensity, proxies=base.proxies
    )
    assert float(rank) > 0
    torch.testing.assert_close(got, base(z, y) + iv.weight * rank)


def test_argument_errors_and_proxy_lookup():
    with pytest.raises(ValueError, match="weight=0.5 has no meaning"):
        SynthesisLoss(pml.TripletMarginLoss(), EmbeddingExpansion(), weight=0.5)
    with pytest.raises(ValueError, match="combine"):
        SynthesisLoss(pml.TripletMarginLoss(), torch.nn.Identity())
    arc = pml.ArcFaceLoss(5, 8)
    assert base_proxies(arc).shape == (5, 8)
    assert base_proxies(pml.TripletMarginLoss()) is None
    assert math.isfinite(SynthesisLoss(pa(), see(fraction_schedule=(0.5, 0.5))).weight)


# ------------------------------------------------------------------------------- several synthesisers


def test_composed_synthesisers_add_their_own_terms_with_their_own_weights():
    z, y = data(b=12, d=8, c=3)
    base = pa(c=3, d=8)
    s = see(n=2, fraction_schedule=(0.5, 0.5))
    sym = SymmetricalSynthesis()
    got = ComposedSynthesisLoss(base, [(s, 0.3), (sym, None)])(z, y, generator=gen(3))
    zz, yy, syn = s(z, y, generator=gen(3), proxies=base.proxies)
    z2, y2, _ = sym(z, y)
    real = proxy_anchor_ref(z, y, base.proxies)
    want = real + 0.3 * proxy_anchor_ref(zz[syn], yy[syn], base.proxies) + (proxy_anchor_ref(z2, y2, base.proxies) - real)
    close(got, want)
    close(grads(got, base.proxies)[0], grads(want, base.proxies)[0])
    assert len(list(ComposedSynthesisLoss(base, [(s, 0.3), (sym, None)]).parameters())) == 1  # proxies once
    with pytest.raises(ValueError, match="at least two synthesisers"):
        ComposedSynthesisLoss(base, [(s, 0.3)])
