"""Synthesis geometry (SPEC.md §2–4): Max-Mahalanobis centres, SEE simplex, EE chords, reflections, EE mining."""

import pytest
import torch

from deepmetric.functional.geometry import (
    chord_points,
    disjoint_class_pairs,
    max_mahalanobis_centers,
    reflect,
    same_class_pairs,
    simplex_vertices_around,
    spherical_expansion_points,
)

D64 = torch.float64


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


@pytest.mark.parametrize("num,dim", [(2, 1), (3, 2), (4, 3), (5, 8), (9, 8), (11, 10)])
def test_simplex_pairwise_products_are_minus_one_over_num_minus_one(num, dim):
    mu = max_mahalanobis_centers(num, dim, dtype=D64)
    gram = mu @ mu.t()
    want = torch.full((num, num), -1.0 / (num - 1), dtype=D64).fill_diagonal_(1.0)
    torch.testing.assert_close(gram, want, atol=1e-12, rtol=0)
    torch.testing.assert_close(mu[0], torch.eye(dim, dtype=D64)[0])  # μ_1 = e_1


def test_centers_validate_arguments():
    with pytest.raises(ValueError, match="num must be an integer >= 1, got 0"):
        max_mahalanobis_centers(0, 3)


def test_more_centres_than_a_simplex_holds_is_an_error_naming_the_values():
    # 5 points fit R^4 (a simplex), 6 do not: no regular simplex, and nothing in deepmetric needs one.
    assert max_mahalanobis_centers(5, 4).shape == (5, 4)
    with pytest.raises(ValueError, match=r"num=6 points needs dim >= num - 1 = 5, got dim=4"):
        max_mahalanobis_centers(6, 4)


def test_simplex_vertices_around_u_are_a_regular_simplex_orthogonal_to_w():
    g = torch.Generator().manual_seed(0)
    m, d, n = 5, 12, 6
    w = unit(torch.randn(m, d, generator=g, dtype=D64))
    u = torch.randn(m, d, generator=g, dtype=D64)
    u = unit(u - (u * w).sum(1, keepdim=True) * w)
    v = simplex_vertices_around(u, w, torch.randn(m, d, n - 1, generator=g, dtype=D64))
    allv = torch.cat([u[:, None], v], dim=1)  # (m, n+1, d)
    gram = allv @ allv.transpose(1, 2)
    want = torch.full((n + 1, n + 1), -1.0 / n, dtype=D64).fill_diagonal_(1.0)
    torch.testing.assert_close(gram, want.expand(m, -1, -1), atol=1e-10, rtol=0)
    torch.testing.assert_close((v * w[:, None]).sum(-1), torch.zeros(m, n, dtype=D64), atol=1e-12, rtol=0)


def test_spherical_expansion_points_keep_the_cosine_and_spread():
    g = torch.Generator().manual_seed(1)
    m, d, n = 4, 10, 8
    z, w = unit(torch.randn(m, d, generator=g, dtype=D64)), unit(torch.randn(m, d, generator=g, dtype=D64))
    pts, norm = spherical_expansion_points(z, w, torch.randn(m, d, n - 1, generator=g, dtype=D64))
    torch.testing.assert_close(pts.norm(dim=-1), torch.ones(m, n, dtype=D64))
    torch.testing.assert_close((pts * w[:, None]).sum(-1), (z * w).sum(-1, keepdim=True).expand(m, n))
    cos = (z * w).sum(-1)
    torch.testing.assert_close(norm, (1 - cos**2).sqrt())
    # Residual directions of source and points: pairwise −1/n, the simplex.
    res = torch.cat([z[:, None], pts], 1) - cos[:, None, None] * w[:, None]
    res = unit(res)
    gram = res @ res.transpose(1, 2)
    want = torch.full((n + 1, n + 1), -1.0 / n, dtype=D64).fill_diagonal_(1.0)
    torch.testing.assert_close(gram, want.expand(m, -1, -1), atol=1e-10, rtol=0)


def test_spherical_expansion_points_gradcheck():
    g = torch.Generator().manual_seed(2)
    z = unit(torch.randn(2, 6, generator=g, dtype=D64)).requires_grad_()
    w = unit(torch.randn(2, 6, generator=g, dtype=D64))
    noise = torch.randn(2, 6, 2, generator=g, dtype=D64)
    assert torch.autograd.gradcheck(lambda x: spherical_expansion_points(x, w, noise)[0], (z,))


def test_chord_points_are_renormalised_points_of_the_segment():
    g = torch.Generator().manual_seed(0)
    a, b = unit(torch.randn(3, 5, generator=g, dtype=D64)), unit(torch.randn(3, 5, generator=g, dtype=D64))
    pts = chord_points(a, b, 3)
    for p in range(3):
        for k in range(1, 4):
            ref = (k * b[p] + (4 - k) * a[p]) / 4
            torch.testing.assert_close(pts[p, k - 1], ref / ref.norm())


def test_reflection_preserves_norm_and_angle_and_is_an_involution():
    g = torch.Generator().manual_seed(0)
    p, a = torch.randn(6, 7, generator=g, dtype=D64) * 3, torch.randn(6, 7, generator=g, dtype=D64)
    q = reflect(p, a)
    torch.testing.assert_close(q.norm(dim=1), p.norm(dim=1))
    cos = lambda x, y: (unit(x) * unit(y)).sum(1)  # noqa: E731
    torch.testing.assert_close(cos(q, a), cos(p, a))
    torch.testing.assert_close(reflect(q, a), p)
    # Closed form in 2-D: reflecting (0, 1) about the x-axis gives (0, -1).
    torch.testing.assert_close(reflect(torch.tensor([[0.0, 1.0]]), torch.tensor([[2.0, 0.0]])), torch.tensor([[0.0, -1.0]]))


def test_same_class_pairs_come_from_labels():
    i, j = same_class_pairs(torch.tensor([3, 1, 3, 3, 1, 7]))
    assert sorted(zip(i.tolist(), j.tolist())) == [(0, 2), (0, 3), (1, 4), (2, 3)]


def test_disjoint_class_pairs_pair_each_class_off_in_batch_order():
    # class 3 at rows 0, 2, 3, 6 -> (0, 2), (3, 6); class 1 at rows 1, 4, 7 -> (1, 4), row 7 left over; 7 alone.
    i, j = disjoint_class_pairs(torch.tensor([3, 1, 3, 3, 1, 7, 3, 1]))
    assert list(zip(i.tolist(), j.tolist())) == [(0, 2), (1, 4), (3, 6)]
    # Depends on labels, not on the layout: the released rows (2t, 2t+1) are recovered from a P x K batch.
    y = torch.arange(4).repeat_interleave(6)
    i, j = disjoint_class_pairs(y)
    assert i.tolist() == list(range(0, 24, 2)) and j.tolist() == list(range(1, 24, 2))
    # Interleaved classes: class 1 at rows 0, 2, 3 -> (0, 2); class 0 at rows 1, 4, 5 -> (1, 4).
    i, j = disjoint_class_pairs(torch.tensor([1, 0, 1, 1, 0, 0]))
    assert list(zip(i.tolist(), j.tolist())) == [(0, 2), (1, 4)]
    assert len(disjoint_class_pairs(torch.tensor([], dtype=torch.long))[0]) == 0
