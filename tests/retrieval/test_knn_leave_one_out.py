import pytest
import torch

from deepmetric.retrieval import knn_accuracy


def _loop_reference(z, y, k, t):
    """Leave-one-out weighted kNN written out item by item (SPEC §1 vote, own entry excluded)."""
    s = z @ z.t()
    correct = 0
    for q in range(len(z)):
        sims = [(float(s[q, j]), j) for j in range(len(z)) if j != q]
        sims.sort(key=lambda p: (-p[0], p[1]))
        votes = {}
        for v, j in sims[:k]:
            votes[int(y[j])] = votes.get(int(y[j]), 0.0) + float(torch.exp(torch.tensor(v / t, dtype=torch.float64)))
        pred = max(sorted(votes), key=lambda c: votes[c])
        correct += pred == int(y[q])
    return correct / len(z)


@pytest.mark.parametrize("k", [1, 5, 40])
def test_leave_one_out_equals_loop(k):
    g = torch.Generator().manual_seed(k)
    z = torch.nn.functional.normalize(torch.randn(60, 5, generator=g), dim=1)
    y = torch.randint(0, 3, (60,), generator=g)
    assert knn_accuracy(z, y, z, y, k=k, exclude_self=True) == pytest.approx(_loop_reference(z, y, k, 0.1))
    # without exclusion each item finds itself (s = 1) first: k = 1 is then always right
    assert knn_accuracy(z, y, z, y, k=1) == 1.0


def test_leave_one_out_needs_the_same_set():
    z = torch.nn.functional.normalize(torch.randn(10, 3), dim=1)
    with pytest.raises(ValueError, match="memory to be the test set"):
        knn_accuracy(z, torch.zeros(10, dtype=torch.long), z[:5], torch.zeros(5, dtype=torch.long), k=3, exclude_self=True)
