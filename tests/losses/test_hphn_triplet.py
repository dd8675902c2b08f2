"""HPHN triplet loss and Embedding Expansion against a transcription of the released MXNet code.

clovaai/embedding-expansion, loss/embedding_aug.py + loss/hphn_triplet.py, rewritten line by line in
torch below (``released_hphn``): rows 2t, 2t+1 are a pair, every row makes n points towards its
partner (so each point exists twice), the hardest positive over the real block, the hardest negative
over the whole enlarged batch, then the minimum over each row's n + 1 group copies.
"""
import pytest
import torch

from deepmetric.losses.build import build_loss
from deepmetric.losses.hphn_triplet import HPHNTripletLoss
from deepmetric.losses.synthesis_loss import SynthesisLoss
from deepmetric.synthesis.embedding_expansion import EmbeddingExpansion

D64 = torch.float64


def released_hphn(embeddings, labels, n_inner_pts, margin):
    """Per-row HPHN losses of the released code (embeddings already L2-normalised by the model)."""
    batch_size = embeddings.shape[0]
    if n_inner_pts != 0:
        swap = [i + 1 if i % 2 == 0 else i - 1 for i in range(batch_size)]
        anchor, pos = embeddings[swap], embeddings
        concat_e, concat_l = [embeddings], [labels]
        total = float(n_inner_pts + 1)
        for n_idx in range(n_inner_pts):
            left = float(n_idx + 1)
            inner = (anchor * left + pos * (total - left)) / total
            concat_e.append(inner / inner.norm(dim=1, keepdim=True))
            concat_l.append(labels)
        embeddings, labels = torch.cat(concat_e), torch.cat(concat_l)
    sq = (embeddings ** 2).sum(1, keepdim=True)
    dist = (sq + sq.t() - 2 * embeddings @ embeddings.t()).clamp(1e-12, 1e12).sqrt()
    n = dist.shape[0]
    is_pos = (labels[None, :] == labels[:, None]).to(dist.dtype)
    is_neg = 1.0 - is_pos
    dist_pos = dist * is_pos
    dist_ap = dist_pos[:batch_size, :batch_size].max(1).values if n_inner_pts != 0 else dist_pos.max(1).values
    dist_neg = dist * is_neg + dist.max(1, keepdim=True).values * is_pos
    dist_an = dist_neg.min(1).values
    if n_inner_pts != 0:
        dist_an = dist_an.reshape(n // batch_size, batch_size).min(0).values
    return torch.relu(dist_ap - dist_an + margin)


def released_layout(classes=4, per_class=6, d=8, seed=0):
    """A P x K batch in the released layout (a class's K rows together): float64 leaves before the L2 norm."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(classes * per_class, d, generator=g, dtype=D64)
    return x.requires_grad_(), torch.arange(classes).repeat_interleave(per_class)


def l2(x):
    """The released model's last layer (F.L2Normalization)."""
    return x / x.norm(dim=1, keepdim=True)


def interleave(labels):
    """A row order that mixes the classes but keeps each class's rows in their released order."""
    per = int((labels == labels[0]).sum())
    k = int(labels.max()) + 1
    return torch.arange(len(labels)).reshape(k, per).t().reshape(-1)


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_ee_plus_hphn_equals_the_released_code_on_a_shuffled_batch(n):
    x, y = released_layout()
    want = released_hphn(l2(x), y, n, margin=0.2).mean()
    (g_want,) = torch.autograd.grad(want, x)
    order = interleave(y)  # our pairs come from labels, so the row layout must not matter
    loss = SynthesisLoss(HPHNTripletLoss(margin=0.2), EmbeddingExpansion(n=n))
    got = loss(x[order], y[order])
    (g_got,) = torch.autograd.grad(got, x)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-12)
    assert float(want.detach()) > 0


def test_n_zero_and_no_synthesis_are_the_same_batch_hard_loss():
    x, y = released_layout(seed=1)
    plain = HPHNTripletLoss(margin=0.3)(x, y)
    torch.testing.assert_close(plain, released_hphn(l2(x), y, 0, margin=0.3).mean(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(SynthesisLoss(HPHNTripletLoss(margin=0.3), EmbeddingExpansion(n=0))(x, y), plain)
    # EE changes the loss only through the synthesis: with n = 2 the hardest negative pair can only get closer.
    with_ee = SynthesisLoss(HPHNTripletLoss(margin=0.3), EmbeddingExpansion(n=2))(x, y)
    assert float(with_ee.detach()) > float(plain.detach())


def test_closed_form_on_a_square():
    # Classes {e1, e2} and {-e1, -e2}: every anchor's hardest positive is at √2 and its nearest negative at
    # √2 (the neighbour at 90°), so each hinge is exactly the margin.
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], dtype=D64)
    y = torch.tensor([0, 0, 1, 1])
    assert float(HPHNTripletLoss(margin=0.25)(x, y)) == pytest.approx(0.25, abs=1e-12)
    # EE (n = 1) adds the midpoints ±(1, 1)/√2, at √(2 + √2) from the other class's real rows and 2 from each
    # other: farther than √2, so the hardest negative pair, and the loss, stay the same.
    assert float(SynthesisLoss(HPHNTripletLoss(margin=0.25), EmbeddingExpansion(n=1))(x, y)) == pytest.approx(0.25, abs=1e-12)
    # Move -e2 towards the midpoint of class 0: now the anchor e1's synthetic point is the closest to it.
    x2 = x.clone()
    x2[3] = torch.tensor([0.6, 0.8], dtype=D64)
    m = 2 ** -0.5
    d_mid = float(torch.tensor([m - 0.6, m - 0.8], dtype=D64).norm())
    d_real = min(float((x2[i] - x2[3]).norm()) for i in (0, 1))
    assert d_mid < d_real
    hinge_e1 = max(0.0, 2 ** 0.5 - d_mid + 0.25)  # anchors e1 and e2 share the midpoint
    got = SynthesisLoss(HPHNTripletLoss(margin=0.25), EmbeddingExpansion(n=1))(x2, y)
    plain = HPHNTripletLoss(margin=0.25)(x2, y)
    assert float(got) > float(plain)
    per_row = released_hphn(torch.cat([x2[:2], x2[2:]]), y, 1, margin=0.25)
    assert float(per_row[0]) == pytest.approx(hinge_e1, abs=1e-9) and float(got) == pytest.approx(float(per_row.mean()), abs=1e-12)


def test_registered_with_the_released_defaults_and_validates():
    loss = build_loss("hphn_triplet", num_classes=3, embedding_dim=4)
    assert isinstance(loss, HPHNTripletLoss) and loss.margin == 1e-5 and loss.soft_margin is False
    assert EmbeddingExpansion().n == 2 and EmbeddingExpansion().pairs == "disjoint"
    with pytest.raises(ValueError, match="margin must be a number >= 0, got -1"):
        HPHNTripletLoss(margin=-1)
    x, y = released_layout()
    syn = torch.zeros(len(y), dtype=torch.bool)
    syn[-1] = True
    with pytest.raises(ValueError, match="synthetic rows need owner"):
        HPHNTripletLoss()(x, y, is_synthetic=syn)
