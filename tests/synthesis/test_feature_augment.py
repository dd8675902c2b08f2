"""Feature-space augmenters (SPEC.md §1 TPAMI [choice]): geometry, labels, determinism, contract."""
import math

import pytest
import torch

from deepmetric.functional.instance import rotate_on_sphere, slerp
from deepmetric.losses.category_softmax import CategorySoftmaxLoss
from deepmetric.losses.instance_softmax import InstanceSoftmaxLoss, two_view_batch
from deepmetric.registry import SYNTHESISERS
from deepmetric.synthesis.angular_perturbation import AngularPerturbation
from deepmetric.synthesis.feature_interpolation import FeatureInterpolation

D64 = torch.float64


def batch(m=5, d=6, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    v1, v2 = scale * torch.randn(m, d, generator=g, dtype=D64), scale * torch.randn(m, d, generator=g, dtype=D64)
    return two_view_batch(v1, v2, torch.randperm(50, generator=g)[:m] + 3)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def unit(x):
    return x / x.norm(dim=1, keepdim=True)


def angle(a, b):
    """Angle between unit rows, accurate near 0 and π."""
    return 2 * torch.atan2((a - b).norm(dim=-1), (a + b).norm(dim=-1))


# --------------------------------------------------------------------------------------------- slerp


def test_slerp_walks_the_great_circle_at_the_requested_arc_fraction():
    g = gen(1)
    a, b = unit(torch.randn(20, 5, generator=g, dtype=D64)), unit(torch.randn(20, 5, generator=g, dtype=D64))
    t = torch.rand(20, generator=g, dtype=D64)
    s = slerp(a, b, t)
    omega = angle(a, b)
    torch.testing.assert_close(s.norm(dim=1), torch.ones(20, dtype=D64))
    torch.testing.assert_close(angle(a, s), t * omega)
    torch.testing.assert_close(angle(s, b), (1 - t) * omega)
    torch.testing.assert_close(slerp(a, b, torch.zeros(20, dtype=D64)), a)
    torch.testing.assert_close(slerp(a, b, torch.ones(20, dtype=D64)), b)


def test_slerp_of_equal_points_is_that_point_with_finite_gradients():
    a = unit(torch.randn(3, 4, dtype=D64)).requires_grad_()
    s = slerp(a, a, torch.full((3,), 0.3, dtype=D64))
    torch.testing.assert_close(s, a.detach())
    s.sum().backward()
    assert torch.isfinite(a.grad).all()


def test_slerp_gradcheck():
    g = gen(2)
    a, b = unit(torch.randn(3, 4, generator=g, dtype=D64)), unit(torch.randn(3, 4, generator=g, dtype=D64))
    t = torch.tensor([0.2, 0.5, 0.9], dtype=D64)
    assert torch.autograd.gradcheck(lambda p, q: slerp(p, q, t), (a.requires_grad_(), b.requires_grad_()))


def test_rotation_moves_by_exactly_the_angle():
    g = gen(3)
    z = unit(torch.randn(50, 7, generator=g, dtype=D64))
    theta = torch.rand(50, generator=g, dtype=D64) * math.pi
    r = rotate_on_sphere(z, torch.randn(50, 7, generator=g, dtype=D64), theta)
    torch.testing.assert_close(r.norm(dim=1), torch.ones(50, dtype=D64))
    torch.testing.assert_close(angle(z, r), theta)
    # the displacement lies in the plane of z and a tangent ⟂ z: (r − z cos θ) ⟂ z
    tangent = r - z * torch.cos(theta)[:, None]
    torch.testing.assert_close((tangent * z).sum(1), torch.zeros(50, dtype=D64), atol=1e-12, rtol=0)


# ------------------------------------------------------------------------------ feature interpolation


def test_interpolation_contract_labels_and_norms():
    z, y = batch()
    out = FeatureInterpolation(num_synthetic=3, views=False)(z, y, generator=gen(0))
    assert out.embeddings.shape == (16, 6) and out.labels.shape == (16,)
    assert torch.equal(out.embeddings[:10], z) and torch.equal(out.labels[:10], y)  # originals first, unchanged
    assert out.is_synthetic.tolist() == [False] * 10 + [True] * 6
    new = out.labels[10:]
    assert new.tolist() == [int(y.max()) + 1 + i for i in range(3)] * 2  # new ids, view 1 block then view 2
    torch.testing.assert_close(out.embeddings[10:].norm(dim=1), torch.ones(6, dtype=D64))
    assert len(FeatureInterpolation(views=False)(z, y).labels) == 20  # None: as many new instances as the batch has
    InstanceSoftmaxLoss()(out.embeddings, out.labels)  # accepted unchanged: every id exactly twice


def test_between_view_interpolants_are_new_views_of_every_instance_on_its_own_arc():
    z, y = batch(m=5, d=6, seed=2)
    alpha = 0.2
    plain = FeatureInterpolation(num_synthetic=3, alpha=alpha, views=False)(z, y, generator=gen(1))
    out = FeatureInterpolation(num_synthetic=3, alpha=alpha)(z, y, generator=gen(1))
    assert out.embeddings.shape == (10 + 6 + 5 + 3, 6)
    torch.testing.assert_close(out.embeddings[:16], plain.embeddings)  # between-instance part unchanged
    ids = out.labels[16:]
    new_ids = plain.labels[10:13]
    order = torch.argsort(y[:5])  # real instances in increasing id order (instance_views), then the new ones
    assert ids.tolist() == y[:5][order].tolist() + new_ids.tolist()
    ends1 = torch.cat([unit(z[:5])[order], plain.embeddings[10:13]])
    ends2 = torch.cat([unit(z[5:])[order], plain.embeddings[13:16]])
    for r in range(8):
        s_ = out.embeddings[16 + r : 17 + r]
        a, b = ends1[r : r + 1], ends2[r : r + 1]
        assert float(angle(a, s_) + angle(s_, b) - angle(a, b)) == pytest.approx(0.0, abs=1e-9)  # on the arc a-b
        frac = float(angle(a, s_) / angle(a, b))
        assert alpha - 1e-9 <= frac <= 1 - alpha + 1e-9
    # Every id now appears three times: the instance loss takes the batch as it is.
    assert set(torch.unique(out.labels, return_counts=True)[1].tolist()) == {3}
    assert torch.isfinite(InstanceSoftmaxLoss()(out.embeddings, out.labels))
    # Views only (no new instances): one more view per instance, nothing else.
    only = FeatureInterpolation(num_synthetic=0)(z, y, generator=gen(1))
    assert only.is_synthetic.sum() == 5 and only.labels[10:].tolist() == sorted(y[:5].tolist())
    with pytest.raises(ValueError, match="views must be true or false"):
        FeatureInterpolation(views="yes")


def _parents(s, candidates):
    """The unordered pairs i < j whose great-circle arc passes through s (angle(a,s) + angle(s,b) =
    angle(a,b)), with the arc fraction of s measured from i."""
    found = []
    for i in range(len(candidates)):
        for j in range(i + 1, len(candidates)):
            a, b = candidates[i : i + 1], candidates[j : j + 1]
            if abs(float(angle(a, s) + angle(s, b) - angle(a, b))) < 1e-9:
                found.append((i, j, float(angle(a, s) / angle(a, b))))
    return found


def test_interpolants_lie_on_the_great_circle_between_two_instances_view_by_view():
    z, y = batch(m=5, d=6, seed=4)
    alpha = 0.2
    out = FeatureInterpolation(num_synthetic=6, alpha=alpha)(z, y, generator=gen(5))
    view1, view2 = unit(z[:5]), unit(z[5:])
    for n in range(6):
        (i, j, t1), = _parents(out.embeddings[10 + n : 11 + n], view1)
        (i2, j2, t2), = _parents(out.embeddings[16 + n : 17 + n], view2)
        assert (i, j) == (i2, j2)  # the same two (different) instances for both views
        assert t1 == pytest.approx(t2, abs=1e-9)  # same arc fraction
        assert alpha - 1e-9 <= t1 <= 1 - alpha + 1e-9


def test_pairs_come_from_ids_not_row_positions():
    z, y = batch(m=5, seed=6)
    p = torch.randperm(5, generator=gen(7))
    rows = torch.cat([p, p + 5])  # reorder instances (view 1 rows still before view 2 rows)
    a = FeatureInterpolation(num_synthetic=4)(z, y, generator=gen(8))
    b = FeatureInterpolation(num_synthetic=4)(z[rows], y[rows], generator=gen(8))
    torch.testing.assert_close(b.embeddings[10:], a.embeddings[10:])
    assert torch.equal(b.labels[10:], a.labels[10:])


def test_interpolation_is_deterministic_and_leaves_the_global_rng_alone():
    z, y = batch(seed=9)
    synth = FeatureInterpolation(num_synthetic=4)
    state = torch.get_rng_state()
    a, b = synth(z, y, generator=gen(11)), synth(z, y, generator=gen(11))
    assert torch.equal(a.embeddings, b.embeddings)
    assert not torch.allclose(a.embeddings, synth(z, y, generator=gen(12)).embeddings)
    assert torch.equal(synth(z, y).embeddings, synth(z, y, generator=gen(0)).embeddings)  # None: seed 0
    assert torch.equal(torch.get_rng_state(), state)


def test_zero_synthetic_is_the_identity():
    z, y = batch()
    out = FeatureInterpolation(num_synthetic=0, views=False)(z, y, generator=gen(0))
    assert out.embeddings is z and out.labels is y and not out.is_synthetic.any()


def test_interpolation_gradients_and_detach():
    z, y = batch(seed=10)
    z = z.requires_grad_()
    out = FeatureInterpolation(num_synthetic=5)(z, y, generator=gen(0))
    InstanceSoftmaxLoss(stop_gradient=False)(out.embeddings, out.labels).backward()
    g_through = z.grad.clone()
    z.grad = None
    out = FeatureInterpolation(num_synthetic=5, detach=True)(z, y, generator=gen(0))
    (from_synth,) = torch.autograd.grad(out.embeddings[10:].sum(), z, allow_unused=True, materialize_grads=True)
    assert torch.equal(from_synth, torch.zeros_like(z))  # detached: synthetic rows do not reach the parents
    InstanceSoftmaxLoss(stop_gradient=False)(out.embeddings, out.labels).backward()
    assert torch.isfinite(g_through).all() and (g_through - z.grad).abs().max() > 1e-6


def test_interpolation_errors():
    z, y = batch()
    with pytest.raises(ValueError, match="alpha"):
        FeatureInterpolation(alpha=0.7)
    with pytest.raises(ValueError, match="num_synthetic"):
        FeatureInterpolation(num_synthetic=-1)
    with pytest.raises(ValueError, match="3× : "):
        FeatureInterpolation()(torch.randn(5, 3), torch.tensor([0, 0, 0, 1, 1]))
    with pytest.raises(ValueError, match="at least 2 instances"):
        FeatureInterpolation()(torch.randn(2, 3), torch.tensor([4, 4]))


# ------------------------------------------------------------------------------- angular perturbation


def test_perturbation_contract_labels_norms_and_angle_bound():
    z, y = batch(m=20, d=8, seed=12)
    out = AngularPerturbation(max_angle_deg=20.0, num_copies=2)(z, y, generator=gen(1))
    assert torch.equal(out.embeddings[:40], z) and torch.equal(out.labels[:40], y)
    assert out.is_synthetic.tolist() == [False] * 40 + [True] * 80
    # a copy keeps its source's id: an extra positive, never a negative of its own instance
    assert torch.equal(out.labels[40:], y.repeat(2))
    synth = out.embeddings[40:]
    torch.testing.assert_close(synth.norm(dim=1), torch.ones(80, dtype=D64))
    theta = angle(unit(z).repeat(2, 1), synth)
    bound = math.radians(20.0)
    assert float(theta.max()) <= bound + 1e-12
    assert float(theta.max()) > 0.9 * bound and float(theta.min()) < 0.1 * bound  # θ ~ U[0, max]


def test_perturbed_batch_is_accepted_by_the_losses_as_extra_views():
    z, y = batch(m=4, seed=13)
    out = AngularPerturbation()(z, y, generator=gen(2))
    assert torch.unique(out.labels, return_counts=True)[1].tolist() == [4] * 4
    inst = InstanceSoftmaxLoss()(out.embeddings, out.labels)
    cat = CategorySoftmaxLoss(stop_gradient=True)(out.embeddings, out.labels)
    assert inst.item() == pytest.approx(cat.item(), rel=1e-12)


def test_perturbation_is_deterministic_and_leaves_the_global_rng_alone():
    z, y = batch(seed=14)
    synth = AngularPerturbation(max_angle_deg=30.0)
    state = torch.get_rng_state()
    assert torch.equal(synth(z, y, generator=gen(3)).embeddings, synth(z, y, generator=gen(3)).embeddings)
    assert not torch.allclose(synth(z, y, generator=gen(3)).embeddings, synth(z, y, generator=gen(4)).embeddings)
    assert torch.equal(synth(z, y).embeddings, synth(z, y, generator=gen(0)).embeddings)
    assert torch.equal(torch.get_rng_state(), state)


def test_zero_copies_is_the_identity_and_detach_cuts_gradients():
    z, y = batch()
    out = AngularPerturbation(num_copies=0)(z, y, generator=gen(0))
    assert out.embeddings is z and not out.is_synthetic.any()
    zg = z.clone().requires_grad_()

    def grad_from_copies(synth):
        (g,) = torch.autograd.grad(synth(zg, y).embeddings[10:].sum(), zg, allow_unused=True, materialize_grads=True)
        return g

    assert grad_from_copies(AngularPerturbation()).abs().sum() > 0
    assert torch.equal(grad_from_copies(AngularPerturbation(detach=True)), torch.zeros_like(zg))


def test_perturbation_errors():
    with pytest.raises(ValueError, match="max_angle_deg"):
        AngularPerturbation(max_angle_deg=0.0)
    with pytest.raises(ValueError, match="num_copies"):
        AngularPerturbation(num_copies=1.5)
    with pytest.raises(ValueError, match="d=1"):
        AngularPerturbation()(torch.randn(4, 1), torch.tensor([0, 1, 0, 1]))


def test_both_are_registered_joint_synthesisers():
    assert SYNTHESISERS.get("feature_interpolation") is FeatureInterpolation
    assert SYNTHESISERS.get("angular_perturbation") is AngularPerturbation
    assert FeatureInterpolation.combine == AngularPerturbation.combine == "joint"
