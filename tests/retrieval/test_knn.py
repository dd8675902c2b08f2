"""topk_search against brute force (torch.topk on the full matrix), its block structure and its errors."""
import numpy as np
import pytest
import torch

from deepmetric.retrieval import knn as knn_module
from deepmetric.retrieval.knn import topk_search


def _data(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def _brute(q, g, k, exclude_diag):
    s = q.double() @ g.double().t()
    if exclude_diag:
        s[torch.arange(q.shape[0]), torch.arange(q.shape[0])] = float("-inf")
    return s.topk(k, dim=1)


@pytest.mark.parametrize("block_size", [1, 7, 16, 50, 4096])
@pytest.mark.parametrize("k", [1, 5, 49])
def test_self_search_equals_brute_force(block_size, k):
    x = _data(50, 12, 0)  # 50 = 7·7 + 1: ragged last block of one row
    sims, idx = topk_search(x, k=k, block_size=block_size)
    ref_s, ref_i = _brute(x, x, k, exclude_diag=True)
    assert sims.dtype == torch.float32 and idx.dtype == torch.int64 and sims.shape == (50, k)
    assert torch.equal(idx, ref_i)
    torch.testing.assert_close(sims.double(), ref_s, atol=1e-5, rtol=0)
    assert not (idx == torch.arange(50)[:, None]).any()  # never itself


@pytest.mark.parametrize("tile, block_size", [(8, 20), (8, 16), (3, 50), (16, 5)])
def test_tiles_narrower_than_row_blocks_equal_brute_force(monkeypatch, tile, block_size):
    # Row blocks that are not a multiple of the tile split a diagonal square across two row blocks.
    monkeypatch.setattr(knn_module, "TILE", tile)
    x = _data(50, 12, 0)
    for exclude in (True, False):
        sims, idx = topk_search(x, k=7, exclude_self=exclude, block_size=block_size)
        ref_s, ref_i = _brute(x, x, 7, exclude_diag=exclude)
        assert torch.equal(idx, ref_i)
        torch.testing.assert_close(sims.double(), ref_s, atol=1e-5, rtol=0)
    q, g = _data(23, 12, 2), _data(37, 12, 3)
    _, idx = topk_search(q, g, k=6, block_size=block_size)
    assert torch.equal(idx, _brute(q, g, 6, exclude_diag=False)[1])


def test_self_search_keeping_self_puts_each_unit_vector_first():
    x = torch.nn.functional.normalize(_data(30, 6, 1), dim=1)
    sims, idx = topk_search(x, k=3, exclude_self=False, block_size=4)
    assert torch.equal(idx[:, 0], torch.arange(30))
    ref_s, ref_i = _brute(x, x, 3, exclude_diag=False)
    assert torch.equal(idx, ref_i)


@pytest.mark.parametrize("block_size", [1, 5, 9, 1000])
def test_gallery_search_equals_brute_force(block_size):
    q, g = _data(23, 10, 2), _data(37, 10, 3)
    sims, idx = topk_search(q, g, k=6, block_size=block_size)
    ref_s, ref_i = _brute(q, g, 6, exclude_diag=False)
    assert torch.equal(idx, ref_i)
    torch.testing.assert_close(sims.double(), ref_s, atol=1e-5, rtol=0)


def test_gallery_search_with_exclude_self_means_query_r_is_gallery_item_r():
    g = _data(40, 8, 4)
    q = g[:15]
    _, idx = topk_search(q, g, k=4, exclude_self=True, block_size=6)
    _, ref_i = _brute(q, g, 4, exclude_diag=True)
    assert torch.equal(idx, ref_i)
    # gallery=None (symmetric path) and the explicit gallery path agree
    _, idx_sym = topk_search(g, k=4, block_size=6)
    _, idx_gal = topk_search(g, g, k=4, exclude_self=True, block_size=6)
    assert torch.equal(idx_sym, idx_gal)


def test_numpy_and_float64_inputs_give_the_same_result():
    x = _data(33, 5, 5)
    s_t, i_t = topk_search(x, k=4, block_size=8)
    s_n, i_n = topk_search(x.double().numpy(), k=4, block_size=8)
    assert torch.equal(i_t, i_n) and torch.equal(s_t, s_n)


@pytest.mark.parametrize("n, bs", [(50, 7), (50, 1000), (1300, 1000), (3000, 1000)])
def test_symmetric_path_multiplies_each_pair_once_with_bounded_tiles(monkeypatch, n, bs):
    """Memory bound and half the FLOPs, by construction: record every product the search makes."""
    shapes = []
    real_mm = torch.mm

    def spy(a, b, *, out=None):
        shapes.append((a.shape[0], b.shape[1], a.shape[1]))
        return real_mm(a, b, out=out)

    monkeypatch.setattr(knn_module.torch, "mm", spy)
    d = 4
    w = min(bs, knn_module.TILE)
    topk_search(_data(n, d, 6), k=3, block_size=bs)
    assert max(r for r, _, _ in shapes) <= bs and max(c for _, c, _ in shapes) <= w
    # tile [c0, c1) multiplies the rows 0..c1 once: the pairs above the diagonal plus its w x w square
    expected = sum(min(c0 + w, n) * (min(c0 + w, n) - c0) for c0 in range(0, n, w))
    assert sum(r * c for r, c, _ in shapes) == expected
    assert expected <= (n * n + n * w) / 2
    if n >= 5 * w:  # many tiles: close to half of a plain search's n^2 products
        assert sum(r * c * dd for r, c, dd in shapes) < 0.6 * n * n * d


def test_equal_similarities_are_ordered_by_lower_index_first():
    # integer-valued vectors: every product is exact, so duplicates tie exactly
    base = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    x = torch.cat([base, base, base])  # rows 0,3,6 / 1,4,7 / 2,5,8 are equal
    sims, idx = topk_search(x, k=8, block_size=2)
    for row in range(9):
        s, i = sims[row].tolist(), idx[row].tolist()
        assert s == sorted(s, reverse=True)
        for a in range(7):
            if s[a] == s[a + 1]:
                assert i[a] < i[a + 1]
    # query 2 = (1,1): similarity 2 with rows 5 and 8 (2 excluded), then 1 with the six others
    assert idx[2].tolist() == [5, 8, 0, 1, 3, 4, 6, 7]


def test_results_are_deterministic():
    x = _data(60, 7, 7)
    a = topk_search(x, k=5, block_size=11)
    b = topk_search(x, k=5, block_size=11)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(queries=np.zeros((5, 3)), k=5), "k=5 neighbours"),  # only 4 others
        (dict(queries=np.zeros((5, 3)), k=0), "positive integer"),
        (dict(queries=np.zeros((5, 3)), k=2, block_size=0), "block_size"),
        (dict(queries=np.zeros(5), k=1), "2-D"),
        (dict(queries=np.array([[0.0, np.nan], [1.0, 1.0]]), k=1), "NaN"),
        (dict(queries=np.zeros((5, 3)), gallery=np.zeros((6, 4)), k=1), "dimension"),
        (dict(queries=np.zeros((7, 3)), gallery=np.zeros((6, 3)), k=1, exclude_self=True), "7 queries"),
        (dict(queries=np.zeros((2, 3)), gallery=np.zeros((6, 3)), k=7), "k=7"),
    ],
)
def test_errors_name_the_problem(kwargs, match):
    with pytest.raises(ValueError, match=match):
        topk_search(**kwargs)
