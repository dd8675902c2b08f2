"""Open-set thresholds: pair scores, FMR/FNMR, threshold choice, ROC — against brute-force pair loops."""
import itertools

import numpy as np
import pytest
import torch

from deepmetric.retrieval.openset import (PairScores, fnmr_at_fmr, pair_scores, plot_roc, roc_curve,
                                          threshold_at_fmr, threshold_at_precision)


def _data(n=60, d=6, classes=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return centres[y] + 0.9 * torch.randn(n, d, generator=g), y


def _brute_pairs(x, y):
    x = torch.nn.functional.normalize(x.double(), dim=1).numpy()
    gen, imp = [], []
    for i, j in itertools.combinations(range(len(y)), 2):
        (gen if y[i] == y[j] else imp).append(float(x[i] @ x[j]))
    return np.array(gen), np.array(imp)


def test_pair_scores_are_every_unordered_pair_once():
    x, y = _data()
    ps = pair_scores(x, y, block_size=7)  # blocks that do not divide n: off-diagonal and diagonal blocks
    gen, imp = _brute_pairs(x, y)
    assert not ps.sampled and ps.impostor_total == imp.size
    np.testing.assert_allclose(np.sort(ps.genuine), np.sort(gen), atol=1e-6)
    np.testing.assert_allclose(np.sort(ps.impostor), np.sort(imp), atol=1e-6)


def test_impostor_sampling_is_seeded_and_unbiased_enough():
    x, y = _data(n=200)
    full = pair_scores(x, y)
    a = pair_scores(x, y, max_impostor_pairs=5000, seed=1)
    b = pair_scores(x, y, max_impostor_pairs=5000, seed=1)
    assert a.sampled and a.impostor_total == full.impostor.size
    np.testing.assert_array_equal(a.impostor, b.impostor)
    np.testing.assert_array_equal(a.genuine, full.genuine)  # the genuine side is never sampled
    assert 4000 < a.impostor.size < 6000
    assert abs(np.median(a.impostor) - np.median(full.impostor)) < 0.03


@pytest.mark.parametrize("target", [0.5, 0.1, 0.01, 0.001])
def test_fmr_threshold_is_the_smallest_meeting_the_target(target):
    x, y = _data()
    ps = pair_scores(x, y)
    th = threshold_at_fmr(ps, target)
    gen, imp = _brute_pairs(x, y)
    fmr = lambda t: np.mean(ps.impostor >= t)
    assert th.fmr == pytest.approx(fmr(th.value)) and th.fmr <= target
    # one float32 step lower already exceeds the target: t is the smallest admissible threshold
    below = np.nextafter(np.float32(th.value), np.float32(-np.inf))
    assert fmr(below) > target
    assert th.fnmr == pytest.approx(np.mean(ps.genuine < th.value))
    assert th.genuine_pairs == gen.size and th.impostor_pairs == imp.size


def test_ties_fall_on_one_side_of_the_threshold():
    # 10 impostors all at 0.5, target FMR 0.35: the threshold cannot cut through the tie, so FMR = 0
    ps = PairScores(np.array([0.9, 0.5, 0.2], np.float32), np.full(10, 0.5, np.float32), 10)
    th = threshold_at_fmr(ps, 0.35)
    assert th.value > 0.5 and th.fmr == 0.0
    assert th.fnmr == pytest.approx(2 / 3)
    assert fnmr_at_fmr(ps, (0.35,)) == {"fnmr@fmr=0.35": pytest.approx(2 / 3)}


def test_closed_form_separable_scores():
    # genuine all above impostors: FMR 0 with FNMR 0 is reachable
    ps = PairScores(np.array([0.8, 0.9], np.float32), np.array([0.1, 0.2, 0.3], np.float32), 3)
    th = threshold_at_fmr(ps, 0.2)
    assert th.fmr == 0.0 and th.fnmr == 0.0 and 0.3 < th.value <= 0.8
    p = threshold_at_precision(ps, 1.0)
    assert p.value == pytest.approx(0.8) and p.precision == 1.0 and p.fnmr == 0.0


def test_precision_threshold_against_brute_force():
    x, y = _data(seed=3)
    ps = pair_scores(x, y)
    th = threshold_at_precision(ps, 0.6)
    cands = np.unique(np.concatenate([ps.genuine, ps.impostor]))

    def prec(t):
        tp, fp = (ps.genuine >= t).sum(), (ps.impostor >= t).sum()
        return tp / (tp + fp)

    best = min(t for t in cands if prec(t) >= 0.6)
    assert th.value == pytest.approx(float(best)) and th.precision == pytest.approx(prec(best))
    with pytest.raises(ValueError, match="best on this split"):
        threshold_at_precision(PairScores(np.array([0.1], np.float32), np.array([0.9], np.float32), 1), 0.9)


def test_roc_endpoints_and_monotone(tmp_path):
    x, y = _data()
    ps = pair_scores(x, y)
    roc = roc_curve(ps)
    assert np.all(np.diff(roc["threshold"]) < 0)
    assert np.all(np.diff(roc["fmr"]) >= 0) and np.all(np.diff(roc["fnmr"]) <= 0)
    assert roc["fmr"][-1] == 1.0 and roc["fnmr"][-1] == 0.0
    i = len(roc["threshold"]) // 2
    t = roc["threshold"][i]
    assert roc["fmr"][i] == pytest.approx(np.mean(ps.impostor >= t))
    png = plot_roc(ps, tmp_path / "roc.png", marked=threshold_at_fmr(ps, 0.01))
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_errors():
    with pytest.raises(ValueError, match="genuine and"):
        pair_scores(np.eye(3), [0, 1, 2])
    ps = PairScores(np.array([0.8], np.float32), np.array([0.1], np.float32), 1)
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        threshold_at_fmr(ps, 1.5)
