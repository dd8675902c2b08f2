"""Intra-variance ranking on graded image augmentations (space="image", Fu et al., AAAI 2021; SPEC §5).

The augmentation is checked in closed form: on a ramp image (pixel value = pixel coordinate) a bilinear
affine warp is exactly affine, so a least-squares fit of the output recovers the rotation angle, the scale
and the translation that the docstring promises for intensity j (copy(p) = image(R(−s·j·θ)(p − t)/c),
c = 1 − j·scale, |t| = j·translation·side). The synthesiser is checked on what it feeds the ranking loss:
copies embedded by the model, with gradients into the model.
"""
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from deepmetric.distributed import DistContext
from deepmetric.losses.intra_ranking import IntraClassRankingLoss
from deepmetric.losses.synthesis_loss import SynthesisLoss
from deepmetric.registry import SYNTHESISERS
from deepmetric.synthesis.intra_variance import IMAGE_DEFAULTS, IntraVarianceSynthesis, graded_augment
from deepmetric.train.loop import _image_context

D64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def ramp(h, w, n=1):
    """(n, 2, h, w): channel 0 = x, channel 1 = y, in centred pixel coordinates."""
    y, x = torch.meshgrid(torch.arange(h, dtype=D64) - (h - 1) / 2, torch.arange(w, dtype=D64) - (w - 1) / 2, indexing="ij")
    return torch.stack([x, y])[None].expand(n, -1, -1, -1).contiguous(), x, y


def fit_affine(out, x, y, radius):
    """Least squares of out[c] = M[c] · (x, y) + b[c] on the pixels within ``radius`` of the centre -> M, b."""
    keep = (x**2 + y**2) <= radius**2
    a = torch.stack([x[keep], y[keep], torch.ones_like(x[keep])], 1)
    coef = torch.linalg.lstsq(a, torch.stack([out[0][keep], out[1][keep]], 1)).solution  # (3, 2)
    m, b = coef[:2].T, coef[2]
    resid = a @ coef - torch.stack([out[0][keep], out[1][keep]], 1)
    return m, b, float(resid.abs().max())


@pytest.mark.parametrize("h, w", [(9, 9), (7, 12)])
def test_intensity_zero_is_the_identity(h, w):
    x = torch.randn(4, 3, h, w, generator=gen(0), dtype=D64)
    out = graded_augment(x, torch.zeros(4), rotation=30.0, translation=0.2, scale=0.1, noise=0.5, generator=gen(1))
    torch.testing.assert_close(out, x, atol=1e-10, rtol=0)


@pytest.mark.parametrize("h, w", [(41, 41), (41, 61)])  # non-square: rotation in pixel geometry, no shear
def test_rotation_scale_translation_grow_with_intensity(h, w):
    theta, trans, shrink = 10.0, 0.05, 0.05
    n = 12
    for j in (1, 2, 3):
        img, x, y = ramp(h, w, n)
        out = graded_augment(img, torch.full((n,), j), rotation=theta, translation=trans, scale=shrink, noise=0.0,
                             generator=gen(j))
        angles, dirs = [], []
        for i in range(n):
            m, b, resid = fit_affine(out[i], x, y, radius=6)
            assert resid < 1e-8  # exactly affine inside: bilinear sampling reproduces a ramp
            c = 1 / math.sqrt(float(torch.linalg.det(m)))
            angle = math.degrees(math.atan2(float(m[0, 1]), float(m[0, 0])))  # m = R(−a)/c = [[cos, sin], [−sin, cos]]/c
            t = -torch.linalg.solve(m, b)  # copy(p) = m (p − t)
            assert c == pytest.approx(1 - j * shrink, abs=1e-9)
            assert abs(angle) == pytest.approx(j * theta, abs=1e-7)
            assert float(t.norm()) == pytest.approx(j * trans * max(h, w), abs=1e-7)
            torch.testing.assert_close((m * c) @ (m * c).T, torch.eye(2, dtype=D64), atol=1e-9, rtol=0)  # no shear
            angles.append(angle)
            dirs.append(math.atan2(float(t[1]), float(t[0])))
        assert min(angles) < 0 < max(angles)  # random sign
        assert max(dirs) - min(dirs) > 1.0  # random translation direction


def test_copy_is_a_rotation_times_a_scale():
    img, x, y = ramp(41, 41, 1)
    out = graded_augment(img, torch.tensor([2]), rotation=7.0, translation=0.0, scale=0.1, noise=0.0, generator=gen(0))
    m, b, _ = fit_affine(out[0], x, y, radius=8)
    r = m * (1 - 2 * 0.1)
    torch.testing.assert_close(r @ r.T, torch.eye(2, dtype=D64), atol=1e-9, rtol=0)  # orthogonal: no shear
    torch.testing.assert_close(b, torch.zeros(2, dtype=D64), atol=1e-9, rtol=0)  # no translation asked


def test_noise_std_is_j_sigma():
    x = torch.zeros(3, 3, 64, 64, dtype=D64)
    out = graded_augment(x, torch.tensor([1, 2, 3]), rotation=0.0, translation=0.0, scale=0.0, noise=0.2, generator=gen(3))
    for j in (1, 2, 3):
        assert float(out[j - 1].std()) == pytest.approx(0.2 * j, rel=0.03)
        assert abs(float(out[j - 1].mean())) < 0.02 * j


def test_pixel_difference_grows_with_intensity():
    smooth = torch.nn.functional.avg_pool2d(torch.randn(1, 3, 48, 48, generator=gen(4), dtype=D64), 7, 1, 3)
    x = smooth.expand(5, -1, -1, -1)
    out = graded_augment(x, torch.arange(5), **IMAGE_DEFAULTS, generator=gen(5))
    diff = (out - x).abs().mean(dim=(1, 2, 3)).tolist()
    assert diff[0] < 1e-12 and all(a < b for a, b in zip(diff, diff[1:])), diff


class Net(nn.Module):
    """images (n, 3, 8, 8) -> unit embeddings (n, d): conv, ReLU, pool, linear, L2 (float64)."""

    def __init__(self, d=6, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 5, 3, padding=1).double()
        self.fc = nn.Linear(5 * 4, d).double()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        h = nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 2).flatten(1)
        z = self.fc(h)
        return z / z.norm(dim=1, keepdim=True)


def data(b=12, c=3, seed=0):
    net = Net(seed=seed)
    imgs = torch.randn(b, 3, 8, 8, generator=gen(seed), dtype=D64)
    y = torch.arange(b) % c
    with torch.no_grad():
        z = net(imgs)
    proxies = torch.stack([z[y == k].mean(0) for k in range(c)])
    proxies = proxies / proxies.norm(dim=1, keepdim=True)
    net.calls = 0
    return net, imgs, y, proxies


def synth(**kw):
    return IntraVarianceSynthesis(num_intensities=3, band=(-1.0, 1.0), space="image", **kw)


def test_copies_are_the_model_embeddings_of_the_graded_images():
    net, imgs, y, p = data()
    z = net(imgs)
    iv = synth()
    out = iv(z, y, generator=gen(7), proxies=p, images=imgs, embed=net)
    b, n_syn = len(y), 3 * len(y)
    assert out.embeddings.shape == (b + n_syn, 6) and int(out.is_synthetic.sum()) == n_syn
    order = torch.argsort((z * p[y]).sum(1).detach(), descending=True, stable=True)  # decreasing cosine
    src = order.repeat_interleave(3)
    assert out.owner[b:, 0].tolist() == src.tolist()
    assert out.intensity[b:].tolist() == [1, 2, 3] * b
    assert out.labels[b:].tolist() == y[src].tolist()
    expected = net(graded_augment(imgs[src], torch.tensor([1, 2, 3] * b), **IMAGE_DEFAULTS, generator=gen(7)))
    torch.testing.assert_close(out.embeddings[b:], expected)
    assert not torch.allclose(out.embeddings[b:], z[src], atol=1e-3)  # not the originals


def test_gradient_reaches_the_model_through_the_copies():
    net, imgs, y, p = data()
    z = net(imgs).detach()  # real rows carry no gradient: what reaches the model comes through the copies
    out = synth()(z, y, generator=gen(1), proxies=p, images=imgs, embed=net)
    rank = IntraClassRankingLoss(margin=0.5, class_margin=0.5)(out.embeddings, out.labels, source=out.owner[:, 0],
                                                               intensity=out.intensity, proxies=p)
    assert float(rank.detach()) > 0
    rank.backward()
    for name, prm in net.named_parameters():
        assert prm.grad is not None and float(prm.grad.abs().sum()) > 0, name


def test_detach_embeds_the_copies_without_gradient():
    net, imgs, y, p = data()
    params = list(net.parameters())
    for detach, reaches in ((False, True), (True, False)):
        out = synth(detach=detach)(net(imgs), y, generator=gen(1), proxies=p, images=imgs, embed=net)
        grads = torch.autograd.grad(out.embeddings[len(y):].sum(), params, allow_unused=True)
        total = sum(float(g.abs().sum()) for g in grads if g is not None)
        assert (total > 0) is reaches, (detach, total)


def test_seeded_generator_is_deterministic_and_the_global_rng_untouched():
    net, imgs, y, p = data()
    z = net(imgs).detach()
    state = torch.random.get_rng_state()
    a = synth()(z, y, generator=gen(3), proxies=p, images=imgs, embed=net).embeddings
    b = synth()(z, y, generator=gen(3), proxies=p, images=imgs, embed=net).embeddings
    c = synth()(z, y, generator=gen(4), proxies=p, images=imgs, embed=net).embeddings
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a, b)
    assert not torch.allclose(a[len(y):], c[len(y):])


def test_only_rows_with_images_are_gated():
    """DDP: the embeddings are the global batch, this process has images for some rows only."""
    net, imgs, y, p = data(b=12)
    z = net(imgs).detach()
    rows = torch.arange(6, 12)
    out = synth()(z, y, generator=gen(2), proxies=p, images=imgs[6:], embed=net, image_rows=rows)
    src = out.owner[12:, 0]
    assert len(src) == 18 and set(src.tolist()) == set(range(6, 12))
    expected = net(graded_augment(imgs[src], out.intensity[12:], **IMAGE_DEFAULTS, generator=gen(2)))
    torch.testing.assert_close(out.embeddings[12:], expected)
    with pytest.raises(ValueError, match="image_rows must be"):
        synth()(z, y, images=imgs[6:], embed=net, image_rows=torch.tensor([0, 1, 2, 3, 4, 12]))
    with pytest.raises(ValueError, match="6 images for 12 embeddings"):
        synth()(z, y, images=imgs[6:], embed=net)


@pytest.mark.parametrize("unsupervised", [False, True])
def test_loop_image_rows_are_this_process_rows(unsupervised):
    """Rank 1 of 2, 4 local images: supervised rows 4..7 of the gathered 8; unsupervised (view1 | view2)
    halves gathered separately: rows 2, 3 (rank 1's view 1) and 6, 7 (its view 2)."""
    net = Net()
    cfg = SimpleNamespace(model=SimpleNamespace(channels_last=False), train=SimpleNamespace(amp="none"))
    run = SimpleNamespace(model=net, cfg=cfg, ctx=DistContext(rank=1, world_size=2))
    imgs = torch.randn(4, 3, 8, 8, dtype=D64)
    ctx = _image_context(run, imgs, unsupervised)
    assert ctx["image_rows"].tolist() == ([2, 3, 6, 7] if unsupervised else [4, 5, 6, 7])
    torch.testing.assert_close(ctx["embed"](imgs), net(imgs).float())


def test_loss_asks_for_images_only_in_image_space():
    from pytorch_metric_learning.losses import ProxyAnchorLoss

    base = ProxyAnchorLoss(num_classes=3, embedding_size=6)
    img = SynthesisLoss(base, synth())
    feat = SynthesisLoss(base, IntraVarianceSynthesis())
    assert img.uses_images and not img.uses_features
    assert feat.uses_features and not feat.uses_images


def test_image_space_through_synthesis_loss_matches_the_parts():
    from pytorch_metric_learning.losses import ProxyAnchorLoss

    net, imgs, y, _ = data()
    base = ProxyAnchorLoss(num_classes=3, embedding_size=6).double()
    loss = SynthesisLoss(base, synth(weight=2.0))
    z = net(imgs)
    terms = loss(z, y, generator=gen(9), images=imgs, embed=net, return_terms=True)
    proxies = nn.functional.normalize(base.proxies.detach(), dim=1)
    out = synth()(z, y, generator=gen(9), proxies=proxies, images=imgs, embed=net)
    rank = IntraClassRankingLoss(margin=0.1, class_margin=0.1)(out.embeddings, out.labels, source=out.owner[:, 0],
                                                               intensity=out.intensity, proxies=proxies)
    assert float(terms.aux) == pytest.approx(float(rank.detach()), rel=1e-9)
    assert float(terms.loss.detach()) == pytest.approx(float(base(z, y).detach()) + 2.0 * float(rank.detach()), rel=1e-9)


@pytest.mark.parametrize("kw, match", [
    ({"noise": -0.1}, "noise .* got -0.1"),
    ({"rotation": float("nan")}, "rotation .* got nan"),
    ({"translation": "big"}, "translation .* got 'big'"),
    ({"scale": 0.34}, "scale=0.34 .* J·scale < 1"),
    ({"rotation": 0, "translation": 0, "scale": 0, "noise": 0}, "all 0"),
])
def test_bad_strengths_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        SYNTHESISERS.get("intra_variance")(space="image", num_intensities=3, **kw)


def test_strengths_belong_to_image_space_and_context_is_required():
    with pytest.raises(ValueError, match="rotation set the image augmentations .* space is 'features'"):
        IntraVarianceSynthesis(rotation=5.0)
    net, imgs, y, p = data()
    with pytest.raises(ValueError, match="images=.*embed="):
        synth()(net(imgs), y, proxies=p)
