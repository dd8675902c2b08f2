"""Index lifecycle: add / remove / update items by id in flat, HNSW and IVF-PQ indexes, atomic commits,
HNSW tombstones and rebuild, indexes saved before ids existed."""
import json

import numpy as np
import pytest

from deepmetric.retrieval.index import HNSW_REBUILD_FRACTION, SearchIndex, SearchIndexError, clustered_vectors


def _exact(gallery, ids, queries, k):
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    s = q.astype(np.float64) @ g.T.astype(np.float64)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.asarray(ids)[order]


def _build(kind, n=600, d=16, seed=0):
    x, labels = clustered_vectors(n, d, clusters=10, seed=seed)
    meta = {"labels": labels.tolist(), "paths": [f"/g/{i}.png" for i in range(n)]}
    return SearchIndex.build(x, kind=kind, metadata=meta, ef_search=128), x, labels


def _overlap(a, b):
    return np.mean([len(set(r) & set(t)) / len(t) for r, t in zip(a, b)])


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_remove_add_update_search_only_live_items(kind, tmp_path):
    index, x, labels = _build(kind)
    gone = list(range(0, 600, 7))
    before_s, before_i = index.search(x[:50], 200)
    index.remove(gone)
    live = [i for i in range(600) if i not in set(gone)]
    assert len(index) == len(live) == index.metadata["count"] and index.ids == live
    assert index.labels == [int(labels[i]) for i in live] and index.paths[0] == "/g/1.png"
    q = x[:50]
    _, got = index.search(q, 10)
    assert not set(got.ravel().tolist()) & set(gone)
    truth = _exact(x[live], live, q, 10)
    if kind == "flat":
        np.testing.assert_array_equal(got, truth)
    elif kind == "hnsw":
        assert _overlap(got, truth) >= 0.6
    else:  # IVF-PQ: the other items' codes and lists are untouched, so the scores are the old ones minus the removed
        got_s, _ = index.search(q, 10)
        kept = [row_s[~np.isin(row_i, gone)][:10] for row_s, row_i in zip(before_s, before_i)]
        np.testing.assert_allclose(got_s, np.stack(kept), rtol=0, atol=1e-6)

    rng = np.random.default_rng(1)
    new = rng.standard_normal((5, 16)).astype(np.float32)
    new_ids = index.add(new, labels=[3] * 5, paths=[f"/new/{i}.png" for i in range(5)])
    assert new_ids == [600, 601, 602, 603, 604] and len(index) == len(live) + 5
    # each new vector finds itself (IVF-PQ: among its 10 best, the codes are approximate)
    top = 1 if kind != "ivfpq" else 10
    _, nn = index.search(new, top)
    assert all(i in row for i, row in zip(new_ids, nn.tolist()))
    assert index.labels[index.position(602)] == 3 and index.paths[index.position(602)] == "/new/2.png"

    moved = rng.standard_normal((1, 16)).astype(np.float32)
    index.update([1], moved, labels=[9])
    _, nn = index.search(moved, top)
    assert 1 in nn[0] and index.labels[index.position(1)] == 9 and index.paths[index.position(1)] == "/g/1.png"
    assert len(index) == len(live) + 5

    index.save(tmp_path / "idx")
    index.add(rng.standard_normal((2, 16)).astype(np.float32))
    index.remove([2])
    index.commit(tmp_path / "idx")
    files = sorted(p.name for p in (tmp_path / "idx").iterdir())
    assert files == ["index.1.faiss", "index.json"]  # the previous faiss file is gone after the commit
    loaded = SearchIndex.load(tmp_path / "idx")
    assert loaded.ids == index.ids and len(loaded) == len(index) and loaded.labels == index.labels
    np.testing.assert_array_equal(loaded.search(q, 5)[1], index.search(q, 5)[1])


def test_errors_leave_the_index_unchanged():
    index, x, _ = _build("flat", n=100)
    with pytest.raises(KeyError, match="no item with id 100"):
        index.remove([3, 100])
    assert len(index) == 100 and 3 in index.ids
    with pytest.raises(ValueError, match="already in the index; use update"):
        index.add(x[:1], ids=[5])
    with pytest.raises(ValueError, match="dimension 8"):
        index.add(np.ones((1, 8), np.float32))
    with pytest.raises(ValueError, match="labels has 2 entries for 1"):
        index.add(x[:1], labels=[1, 2])
    assert len(index) == 100


def test_hnsw_tombstones_are_filtered_then_rebuilt():
    index, x, _ = _build("hnsw", n=400)
    few = list(range(0, 40))  # 10%: below the rebuild share, stays as tombstones
    index.remove(few)
    assert len(index.metadata["tombstones"]) == 40 and index.index.ntotal == 400 and len(index) == 360
    _, got = index.search(x[:40], 5)  # the removed items' own vectors as queries
    assert not set(got.ravel().tolist()) & set(few) and (got >= 0).all()
    # an update of an HNSW item is a tombstone plus a new node under the same id
    index.update([100], x[200:201])
    _, nn = index.search(x[200:201], 2)
    assert set(nn[0].tolist()) == {100, 200}
    more = list(range(40, 40 + int(HNSW_REBUILD_FRACTION * 400)))
    index.remove(more)
    assert index.metadata["tombstones"] == [] and index.index.ntotal == len(index) == 400 - 40 - len(more)
    _, got = index.search(x[:50], 5)
    assert not set(got.ravel().tolist()) & set(few + more)


def test_index_saved_before_ids_existed_loads_with_row_ids(tmp_path):
    import faiss

    x, labels = clustered_vectors(200, 8, clusters=4, seed=3)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    for kind, raw in (("flat", faiss.IndexFlatIP(8)), ("hnsw", faiss.IndexHNSWFlat(8, 16, faiss.METRIC_INNER_PRODUCT))):
        raw.add(xn)
        d = tmp_path / kind
        d.mkdir()
        faiss.write_index(raw, str(d / "index.faiss"))
        (d / "index.json").write_text(json.dumps({"kind": kind, "dim": 8, "count": 200, "params": {"ef_search": 64, "hnsw_m": 16, "ef_construction": 40},
                                                  "labels": labels.tolist()}))
        old = SearchIndex.load(d)
        assert old.ids == list(range(200))
        _, nn = old.search(x[:5], 1)
        assert nn[:, 0].tolist() == [0, 1, 2, 3, 4]
        old.remove([1])
        old.add(x[1:2])
        old.commit(d)
        again = SearchIndex.load(d)
        assert again.search(x[1:2], 1)[1][0, 0] == 200 and len(again) == 200


def test_a_damaged_commit_is_detected(tmp_path):
    index, x, _ = _build("flat", n=100)
    index.save(tmp_path / "i")
    index.remove([0])
    index.commit(tmp_path / "i")
    (tmp_path / "i" / "index.1.faiss").unlink()
    with pytest.raises(SearchIndexError, match="index.1.faiss is missing"):
        SearchIndex.load(tmp_path / "i")


def test_hnsw_tombstone_search_survives_faiss_torch_patch():
    """PML's utils.inference imports faiss.contrib.torch_utils, which replaces Index.search by a wrapper
    without ``params``; a program that imports both must still filter tombstones."""
    import pytorch_metric_learning.utils.inference  # noqa: F401  (applies the patch, as a user's program may)

    index, x, _ = _build("hnsw", n=200)
    index.remove([0, 1, 2])
    _, got = index.search(x[:3], 4)
    assert not set(got.ravel().tolist()) & {0, 1, 2} and (got >= 0).all()
