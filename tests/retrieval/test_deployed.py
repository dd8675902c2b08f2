"""deployed_quality: the exact row equals retrieval_metrics; compressed and approximate rows are close and smaller."""
import numpy as np
import pytest
import torch

from deepmetric.retrieval import retrieval_metrics
from deepmetric.retrieval.deployed import build_variant, deployed_quality


def _data(n=400, d=32, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(classes, d, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return c[y] + 1.5 * torch.randn(n, d, generator=g), y


def test_rows_against_exact_metrics_and_sizes():
    x, y = _data()
    rows = {r["variant"]: r for r in deployed_quality(x, y, variants=("hnsw", "ivfpq", "float16", "int8", "pca31"), latency_queries=20)}
    assert list(rows) == ["flat", "hnsw", "ivfpq", "float16", "int8", "pca31"]
    exact = retrieval_metrics(x, y, nmi=False)
    for key in ("recall@1", "recall@8", "map@r"):
        assert rows["flat"][key] == pytest.approx(exact[key], abs=1e-9)
        assert rows["float16"][key] == pytest.approx(exact[key], abs=0.01)  # 11-bit mantissa: a few swaps at most
        assert rows["hnsw"][key] == pytest.approx(exact[key], abs=0.02)
        assert rows["pca31"][key] == pytest.approx(exact[key], abs=0.05)  # one of 32 dimensions dropped
    assert rows["ivfpq"]["map@r"] > 0.5 * exact["map@r"]
    # float32 = 4 bytes per dimension, float16 2, int8 1 (plus headers)
    assert rows["flat"]["bytes_per_item"] == pytest.approx(4 * 32, rel=0.05)
    assert rows["float16"]["bytes_per_item"] == pytest.approx(2 * 32, rel=0.1)
    assert rows["int8"]["bytes_per_item"] == pytest.approx(32, rel=0.1)
    assert rows["ivfpq"]["bytes_per_item"] < rows["int8"]["bytes_per_item"]
    assert all(r["latency_ms"] > 0 for r in rows.values())


def test_bad_variants_are_named():
    x, _ = _data(n=50)
    xn = np.ascontiguousarray(torch.nn.functional.normalize(x, dim=1).numpy())
    with pytest.raises(ValueError, match="not one of"):
        build_variant(xn, "lsh", depth=5)
    with pytest.raises(ValueError, match="between 1 and 31"):
        build_variant(xn, "pca32", depth=5)
