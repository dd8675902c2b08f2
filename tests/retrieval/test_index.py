"""SearchIndex: exact search against a float64 brute-force reference, save/load, errors, measured recall."""
import json

import numpy as np
import pytest
import torch

from deepmetric.retrieval.index import INDEX_FILE, META_FILE, SearchIndex, SearchIndexError, clustered_vectors, measured_recall


def brute_force(gallery, queries, k):
    """Top-k cosine neighbours written from the definition: float64, plain loops over the gallery."""
    g = np.asarray(gallery, dtype=np.float64)
    q = np.asarray(queries, dtype=np.float64)
    out_s, out_i = [], []
    for row in q:
        sims = []
        for j, v in enumerate(g):
            sims.append((float(row @ v / (np.linalg.norm(row) * np.linalg.norm(v))), j))
        sims.sort(key=lambda t: (-t[0], t[1]))
        out_s.append([s for s, _ in sims[:k]])
        out_i.append([j for _, j in sims[:k]])
    return np.array(out_s), np.array(out_i)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((60, 12)).astype(np.float32) * rng.uniform(0.1, 5, (60, 1)).astype(np.float32), rng.standard_normal((7, 12)).astype(np.float32)


def test_flat_search_equals_brute_force_cosine(data):
    gallery, queries = data
    index = SearchIndex.build(gallery, kind="flat")
    scores, ids = index.search(queries, 5)
    ref_s, ref_i = brute_force(gallery, queries, 5)
    assert scores.shape == ids.shape == (7, 5) and ids.dtype == np.int64
    np.testing.assert_array_equal(ids, ref_i)
    np.testing.assert_allclose(scores, ref_s, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 1e-7)  # best first


def test_torch_input_scale_invariance_and_k_clipping(data):
    gallery, queries = data
    a = SearchIndex.build(torch.from_numpy(gallery), kind="flat")
    b = SearchIndex.build(gallery * 7.5, kind="flat")
    sa, ia = a.search(torch.from_numpy(queries) * 0.01, 60)
    sb, ib = b.search(queries, 1000)  # more than the gallery: clipped to its 60 items
    assert ia.shape == (7, 60) and ib.shape == (7, 60)
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_allclose(sa, sb, atol=1e-6)
    assert sorted(ia[0].tolist()) == list(range(60))


def test_gallery_item_finds_itself_with_score_one(data):
    gallery, _ = data
    scores, ids = SearchIndex.build(gallery, kind="hnsw").search(gallery[:10], 1)
    np.testing.assert_array_equal(ids[:, 0], np.arange(10))
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_save_load_round_trip(tmp_path, kind):
    x, labels = clustered_vectors(800, 16, clusters=8, seed=1)
    meta = {"labels": labels.tolist(), "paths": [f"/g/{i}.png" for i in range(800)], "class_names": [f"c{i}" for i in range(8)], "model_signature": {"embedding_dim": 16}}
    index = SearchIndex.build(x, kind=kind, metadata=meta, ef_search=40)
    before = index.search(x[:20], 6)
    index.save(tmp_path / "idx")
    loaded = SearchIndex.load(tmp_path / "idx", expected_dim=16)
    after = loaded.search(x[:20], 6)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_allclose(before[0], after[0], atol=1e-6)
    assert loaded.kind == kind and len(loaded) == 800 and loaded.dim == 16
    assert loaded.labels == labels.tolist() and loaded.paths[5] == "/g/5.png" and loaded.class_names[7] == "c7"
    if kind == "hnsw":
        assert loaded.inner.hnsw.efSearch == 40
    if kind == "ivfpq":
        assert loaded.inner.nprobe == loaded.metadata["params"]["nprobe"] >= 1


def test_load_errors_say_what_to_do(tmp_path):
    x, _ = clustered_vectors(50, 8, seed=2)
    with pytest.raises(SearchIndexError, match="does not exist.*index build"):
        SearchIndex.load(tmp_path / "nowhere")
    SearchIndex.build(x).save(tmp_path / "a")
    SearchIndex.build(np.ones((50, 4), np.float32)).save(tmp_path / "b")
    with pytest.raises(SearchIndexError, match="16-dimensional|8-dimensional") as err:
        SearchIndex.load(tmp_path / "a", expected_dim=16)
    assert "another model" in str(err.value) and "Rebuild" in str(err.value)
    # index.faiss of one build, index.json of another: dimensions disagree.
    (tmp_path / "a" / INDEX_FILE).write_bytes((tmp_path / "b" / INDEX_FILE).read_bytes())
    with pytest.raises(SearchIndexError, match="dimension 4 but index.json says 50 of dimension 8"):
        SearchIndex.load(tmp_path / "a")
    (tmp_path / "b" / INDEX_FILE).unlink()
    with pytest.raises(SearchIndexError, match="index.faiss is missing"):
        SearchIndex.load(tmp_path / "b")
    SearchIndex.build(x).save(tmp_path / "c")
    (tmp_path / "c" / META_FILE).write_text("{not json")
    with pytest.raises(SearchIndexError, match="not readable JSON"):
        SearchIndex.load(tmp_path / "c")
    (tmp_path / "c" / META_FILE).write_text(json.dumps({"dim": 8}))
    with pytest.raises(SearchIndexError, match=r"lacks the field\(s\) \['kind', 'count'\]"):
        SearchIndex.load(tmp_path / "c")
    (tmp_path / "c" / INDEX_FILE).write_bytes(b"garbage")
    (tmp_path / "c" / META_FILE).write_text(json.dumps({"dim": 8, "kind": "flat", "count": 50}))
    with pytest.raises(SearchIndexError, match="could not be read by faiss"):
        SearchIndex.load(tmp_path / "c")


def test_check_model_refuses_another_model():
    x, _ = clustered_vectors(30, 8, seed=3)
    sig = {"backbone": "small_cnn", "embedding_dim": 8, "shapes_sha256": "aaa"}
    index = SearchIndex.build(x, metadata={"model_signature": sig})
    index.check_model(dict(sig))  # same model: fine
    with pytest.raises(SearchIndexError, match="produces 16-dimensional embeddings but the index holds 8"):
        index.check_model({**sig, "embedding_dim": 16})
    with pytest.raises(SearchIndexError, match="shapes_sha256: index 'aaa' vs 'bbb'"):
        index.check_model({**sig, "shapes_sha256": "bbb"})
    with pytest.raises(ValueError, match="queries have dimension 5"):
        index.search(np.ones((1, 5), np.float32), 1)


def test_build_validates_its_arguments():
    x, _ = clustered_vectors(40, 8, seed=4)
    with pytest.raises(ValueError, match="kind='annoy'"):
        SearchIndex.build(x, kind="annoy")
    with pytest.raises(ValueError, match="1 row"):
        SearchIndex.build(np.where(np.arange(40)[:, None] == 3, np.nan, x))
    with pytest.raises(ValueError, match=r"metadata\['labels'\] has 3 entries but there are 40"):
        SearchIndex.build(x, metadata={"labels": [0, 1, 2]})
    with pytest.raises(ValueError, match="pq_m=3 must divide the embedding dimension 8"):
        SearchIndex.build(x, kind="ivfpq", pq_m=3)
    with pytest.raises(ValueError, match="nbits=8 trains 256 centroids.*only 40"):
        SearchIndex.build(x, kind="ivfpq", nbits=8)
    with pytest.raises(ValueError, match="k=0"):
        SearchIndex.build(x).search(x[:1], 0)


def test_measured_recall_of_approximate_indexes_on_clustered_data():
    both, _ = clustered_vectors(3150, 32, clusters=20, spread=0.6, seed=5)
    x, q = both[:3000], both[3000:]  # queries: fresh points around the same centres
    exact = SearchIndex.build(x, kind="flat")
    assert measured_recall(exact, exact, q, 10) == 1.0
    hnsw = SearchIndex.build(x, kind="hnsw", ef_search=128)
    narrow = SearchIndex.build(x, kind="hnsw", ef_search=10, hnsw_m=4)
    ivfpq = SearchIndex.build(x, kind="ivfpq")
    r_hnsw, r_narrow, r_ivfpq = (measured_recall(i, exact, q, 10) for i in (hnsw, narrow, ivfpq))
    assert r_hnsw >= 0.9
    assert r_narrow < r_hnsw  # a smaller graph and beam must lose neighbours on this data
    assert 0.5 <= r_ivfpq < 1.0  # product quantisation is lossy but still finds most neighbours
    with pytest.raises(ValueError, match="different galleries"):
        measured_recall(hnsw, SearchIndex.build(x[:100]), q, 10)
