"""The torch-blocked kNN engine (the GPU path) against the faiss CPU engine and a stable brute-force sort."""
import numpy as np
import pytest
import torch

from deepmetric.retrieval.knn import topk_search
from deepmetric.retrieval.knn_torch import topk_search_torch


def _brute(q, g, k, exclude):
    s = q.double() @ g.double().T
    if exclude:
        s[torch.arange(len(q)), torch.arange(len(q))] = -np.inf
    order = np.lexsort((np.broadcast_to(np.arange(s.shape[1]), s.shape), -s.numpy()), axis=-1)[:, :k]
    return torch.from_numpy(order)


@pytest.mark.parametrize("gallery", [False, True])
@pytest.mark.parametrize("block,tile", [(7, 5), (64, 1000)])
def test_same_results_as_the_cpu_engine(gallery, block, tile):
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(90, 12, generator=g), dim=1)
    y = torch.nn.functional.normalize(torch.randn(130, 12, generator=g), dim=1) if gallery else None
    v, i = topk_search_torch(x, y, k=9, block_size=block, tile=tile)
    rv, ri = topk_search(x, y, k=9)
    torch.testing.assert_close(v, rv, atol=1e-6, rtol=0)
    assert torch.equal(i, ri)
    assert torch.equal(i, _brute(x, x if y is None else y, 9, exclude=y is None))


def test_ties_keep_the_lower_indices_across_tiles():
    # 3 distinct vectors repeated: every query has long tie groups that cross tile boundaries
    base = torch.eye(3)
    x = base[torch.tensor([0, 1, 2] * 10)]
    v, i = topk_search_torch(x, None, k=12, block_size=4, tile=7)
    assert torch.equal(i, _brute(x, x, 12, exclude=True))
    assert torch.equal(v[:, :9], torch.ones(30, 9)) and torch.equal(v[:, 9:], torch.zeros(30, 3))


def test_errors():
    x = torch.randn(5, 3)
    with pytest.raises(ValueError, match=r"k=5 must be an integer in \[1, 4\]"):
        topk_search_torch(x, k=5)
    with pytest.raises(ValueError, match="dimension"):
        topk_search_torch(x, torch.randn(5, 4), k=1)
    with pytest.raises(ValueError, match="NaN"):
        topk_search_torch(torch.full((3, 2), float("nan")), k=1)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_embeddings_are_searched_on_the_gpu_with_cpu_results():
    g = torch.Generator().manual_seed(1)
    x = torch.nn.functional.normalize(torch.randn(3000, 64, generator=g), dim=1)
    v, i = topk_search(x.cuda(), None, k=20)  # dispatched to the torch engine on the device
    rv, ri = topk_search(x, None, k=20)
    torch.testing.assert_close(v, rv, atol=1e-5, rtol=0)
    assert (i == ri).float().mean() > 0.999  # last-bit differences may swap near-equal neighbours
