"""Intra-class ranking maths (SPEC.md §5): independent loop reference, closed form, gradcheck."""
import pytest
import torch

from deepmetric.functional.ranking import intensity_ranking_hinge, intra_ranking_loss

D64 = torch.float64


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def reference(src, syn, ylab, refs, rlab, margin, class_margin):
    src, syn, refs = unit(src), unit(syn), unit(refs)
    m, J, _ = syn.shape
    rank, n_rank = 0.0, 0
    for i in range(m):
        for j in range(J - 1):
            s1 = float(src[i] @ syn[i, j])
            s2 = float(src[i] @ syn[i, j + 1])
            rank += max(0.0, margin - (s1 - s2))
            n_rank += 1
    cls, n_cls = 0.0, 0
    for i in range(m):
        others = [k for k in range(len(refs)) if rlab[k] != ylab[i]]
        if not others:
            continue
        for j in range(J):
            hardest = max(float(syn[i, j] @ refs[k]) for k in others)
            cls += max(0.0, hardest - float(syn[i, j] @ src[i]) + class_margin)
            n_cls += 1
    return (rank / n_rank if n_rank else 0.0) + (cls / n_cls if n_cls else 0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_loop_reference(seed):
    g = torch.Generator().manual_seed(seed)
    m, J, d = 5, 4, 6
    src = torch.randn(m, d, generator=g, dtype=D64)
    syn = src[:, None] + 0.8 * torch.randn(m, J, d, generator=g, dtype=D64)
    ylab = torch.tensor([0, 1, 1, 2, 0])
    refs, rlab = torch.randn(3, d, generator=g, dtype=D64), torch.arange(3)
    got = intra_ranking_loss(src, syn, ylab, refs, rlab, margin=0.07, class_margin=0.3)
    assert float(got) > 0
    assert float(got) == pytest.approx(reference(src, syn, ylab, refs, rlab, 0.07, 0.3), rel=1e-12, abs=1e-12)


def test_zero_when_ordering_holds_with_margin_and_positive_otherwise():
    sim = torch.tensor([[0.9, 0.7, 0.5]], dtype=D64)
    assert torch.equal(intensity_ranking_hinge(sim, 0.1), torch.zeros(1, 2, dtype=D64))
    torch.testing.assert_close(intensity_ranking_hinge(sim, 0.25), torch.tensor([[0.05, 0.05]], dtype=D64))
    torch.testing.assert_close(intensity_ranking_hinge(sim.flip(1), 0.0), torch.tensor([[0.2, 0.2]], dtype=D64))
    # Full loss, closed form: points at angles 10°, 20°, 30° from the source in a plane, the other class far away.
    ang = torch.deg2rad(torch.tensor([10.0, 20.0, 30.0], dtype=D64))
    syn = torch.stack([torch.cos(ang), torch.sin(ang), torch.zeros(3, dtype=D64)], 1)[None]
    src = torch.tensor([[1.0, 0.0, 0.0]], dtype=D64)
    refs, rlab = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=D64), torch.tensor([1, 0])
    assert float(intra_ranking_loss(src, syn, torch.tensor([0]), refs, rlab, margin=0.01, class_margin=0.1)) == 0.0
    drops = torch.cos(ang[:-1]) - torch.cos(ang[1:])
    want = torch.relu(0.1 - drops).mean()
    got = intra_ranking_loss(src, syn, torch.tensor([0]), refs, rlab, margin=0.1, class_margin=0.1)
    torch.testing.assert_close(got, want)


def test_gradcheck_and_empty():
    g = torch.Generator().manual_seed(4)
    src = torch.randn(3, 4, generator=g, dtype=D64).requires_grad_()
    syn = (src.detach()[:, None] + torch.randn(3, 3, 4, generator=g, dtype=D64)).requires_grad_()
    refs = torch.randn(2, 4, generator=g, dtype=D64).requires_grad_()
    f = lambda a, b, c: intra_ranking_loss(a, b, torch.tensor([0, 1, 0]), c, torch.arange(2), margin=0.5, class_margin=0.5)  # noqa: E731
    assert torch.autograd.gradcheck(f, (src, syn, refs))
    empty = intra_ranking_loss(src[:0], syn[:0], torch.tensor([], dtype=torch.long), refs, torch.arange(2))
    assert empty.detach().item() == 0.0 and empty.requires_grad
