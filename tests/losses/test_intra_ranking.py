"""IntraClassRankingLoss (SPEC §5): the module over a traced batch equals the pure function; errors."""
import pytest
import torch

from deepmetric.functional.ranking import intra_ranking_loss
from deepmetric.losses.intra_ranking import IntraClassRankingLoss
from deepmetric.registry import LOSSES
from deepmetric.synthesis.intra_variance import IntraVarianceSynthesis

D64 = torch.float64


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(3, 8, generator=g, dtype=D64)
    y = torch.arange(12) % 3
    z = unit(p)[y] + 0.5 * torch.randn(12, 8, generator=g, dtype=D64)
    out = IntraVarianceSynthesis(num_intensities=3, alpha=0.5, band=(-1.0, 1.0), space="embedding")(z, y, generator=g, proxies=p)
    return out, p


def test_module_equals_function_with_proxies_and_with_centres():
    out, p = batch()
    loss = IntraClassRankingLoss(margin=0.1, class_margin=0.3)
    assert LOSSES.get("intra_ranking") is IntraClassRankingLoss
    src = out.owner[out.is_synthetic, 0].reshape(12, 3)[:, 0]
    syn = out.embeddings[out.is_synthetic].reshape(12, 3, 8)
    got = loss(out.embeddings, out.labels, source=out.owner[:, 0], intensity=out.intensity, proxies=p)
    want = intra_ranking_loss(out.embeddings[src], syn, out.labels[src], p, torch.arange(3), margin=0.1, class_margin=0.3)
    torch.testing.assert_close(got, want)
    real = ~out.is_synthetic
    centres = torch.stack([unit(unit(out.embeddings[real][out.labels[real] == c]).sum(0)) for c in range(3)])
    got_c = loss(out.embeddings, out.labels, source=out.owner[:, 0], intensity=out.intensity)
    torch.testing.assert_close(got_c, intra_ranking_loss(out.embeddings[src], syn, out.labels[src], centres, torch.arange(3), margin=0.1, class_margin=0.3))


def test_permuting_synthetic_rows_does_not_change_the_loss():
    out, p = batch(1)
    loss = IntraClassRankingLoss()
    perm = torch.cat([torch.arange(12), 12 + torch.randperm(36, generator=torch.Generator().manual_seed(0))])
    a = loss(out.embeddings, out.labels, source=out.owner[:, 0], intensity=out.intensity, proxies=p)
    b = loss(out.embeddings[perm], out.labels[perm], source=out.owner[perm, 0], intensity=out.intensity[perm], proxies=p)
    torch.testing.assert_close(a, b)


def test_errors_and_no_synthetic_rows():
    out, p = batch()
    loss = IntraClassRankingLoss()
    with pytest.raises(ValueError, match="needs source and intensity"):
        loss(out.embeddings, out.labels)
    bad = out.intensity.clone()
    bad[12] = 2
    with pytest.raises(ValueError, match="each intensity 1..3 exactly once"):
        loss(out.embeddings, out.labels, source=out.owner[:, 0], intensity=bad, proxies=p)
    with pytest.raises(ValueError, match="margin must be a number >= 0, got -1"):
        IntraClassRankingLoss(margin=-1)
    z = out.embeddings[:12].clone().requires_grad_()
    zero = loss(z, out.labels[:12], source=torch.full((12,), -1), intensity=torch.zeros(12, dtype=torch.long), proxies=p)
    assert zero.item() == 0.0
    zero.backward()
