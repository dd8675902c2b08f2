"""A saved, searchable gallery: a faiss index over unit-norm embeddings plus the metadata to show results.

Similarity is cosine: every vector is L2-normalised at the faiss boundary (build and search), so faiss's
inner product IS the cosine similarity. Three index kinds:

* ``"flat"`` (``IndexFlatIP``): exact search; the reference the others are measured against.
* ``"hnsw"`` (``IndexHNSWFlat``, inner product): graph search, no training, memory ≈ flat + graph.
* ``"ivfpq"`` (``IndexIVFPQ`` over an ``IndexFlatIP`` coarse quantiser): inverted lists + product
  quantisation, trained on the gallery itself; compact and approximate (its scores are reconstructions).

A saved index is a folder::

    DIR/index.faiss   the faiss index (faiss.write_index); after edits ``index.<generation>.faiss``
    DIR/index.json    metadata: kind, dim, count, search parameters, the item ids and what the caller
                      stored per item (labels, paths) and overall (class names, model signature, config)

Items have stable integer ids (0..n−1 when built; new ids continue from the largest ever used) and can be
added, removed and updated without re-embedding the others (:meth:`SearchIndex.add`, ``remove``,
``update``), with faiss's id semantics: flat = ``IndexIDMap2(IndexFlatIP)`` and IVF-PQ (ids stored in its
inverted lists) remove with ``remove_ids``. faiss's HNSW graph cannot delete a node, so a removed or
replaced HNSW item becomes a **tombstone**: its graph position stays (and keeps routing searches) but
every search filters it with an ``IDSelector`` during the graph walk, so results still hold k live
items; when tombstones reach :data:`HNSW_REBUILD_FRACTION` of the graph, the graph is rebuilt from the
live vectors (HNSW stores them, so nothing is re-embedded). IVF-PQ keeps the coarse quantiser and PQ
codebooks trained on the original gallery: many added items from a new distribution call for a rebuild.

Edits are persisted atomically (:meth:`SearchIndex.commit`): the new faiss file is written under a new
name, then ``index.json``, which names it, is replaced in one rename; a crash leaves the previous
complete index.

:func:`measured_recall` reports how much of the exact top-k an approximate index returns, so the
approximation is quoted as a measured number, never assumed.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

INDEX_FILE = "index.faiss"
META_FILE = "index.json"
KINDS = ("flat", "hnsw", "ivfpq")
FORMAT_VERSION = 1
#: per-item metadata lists, kept aligned with ``metadata["ids"]`` through edits
ITEM_FIELDS = ("labels", "paths")
#: an HNSW graph whose tombstones reach this share of its nodes is rebuilt from the live vectors
HNSW_REBUILD_FRACTION = 0.25


class SearchIndexError(ValueError):
    """A saved index that cannot be used (missing/damaged files, wrong model); the message says what to do."""


def as_float32_matrix(x: Any, name: str) -> np.ndarray:
    """The one faiss boundary: a torch tensor or array (n, d) -> contiguous float32 numpy (n, d), checked."""
    if hasattr(x, "detach"):  # torch tensor: faiss reads host memory only
        x = x.detach().float().cpu().numpy()
    arr = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be a 2-D (n, d) matrix with d >= 1, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=1).sum())
        raise ValueError(f"{name} holds {bad} row(s) with NaN or infinite values; embed with a model that does not diverge")
    return arr


def _unit_rows(x: Any, name: str) -> np.ndarray:
    """Rows scaled to unit L2 norm (a copy), so that inner product = cosine. Zero rows stay zero."""
    import faiss

    arr = as_float32_matrix(x, name).copy()
    faiss.normalize_L2(arr)
    return arr


def _default_pq_m(dim: int) -> int:
    """Number of PQ sub-quantisers: the largest divisor of ``dim`` that is ≤ 64 and leaves ≥ 2 dims per sub-vector."""
    candidates = [m for m in range(1, min(dim, 64) + 1) if dim % m == 0 and dim // m >= 2]
    return max(candidates) if candidates else 1


def _default_ivfpq_params(n: int, dim: int) -> Dict[str, int]:
    """IVF-PQ sizes that train on ``n`` gallery vectors without faiss's too-few-points errors.

    nlist ≈ √n, capped so each list gets ≥ 39 training points (faiss's k-means rule of thumb);
    nbits ≤ 8 so the 2**nbits PQ centroids get ≥ 39 points each too; nprobe = a quarter of the lists (≥ 1).
    """
    nlist = max(1, min(int(round(math.sqrt(n))), n // 39))
    nbits = int(max(1, min(8, math.floor(math.log2(max(2.0, n / 39))))))
    return {"nlist": nlist, "pq_m": _default_pq_m(dim), "nbits": nbits, "nprobe": max(1, nlist // 4)}


class SearchIndex:
    """A faiss index over L2-normalised gallery embeddings, with JSON metadata, saved as a folder.

    Build with :meth:`build`, query with :meth:`search`, persist with :meth:`save` / :meth:`load`.

    Attributes:
        index: the faiss index (inner product on unit vectors = cosine similarity).
        metadata: JSON-serialisable dict. Always holds ``kind``, ``dim``, ``count``, ``metric`` ("cosine")
            and ``params`` (search/training parameters); plus what the caller passed to :meth:`build`, e.g.
            ``labels`` (count ints, −1 = unknown), ``paths`` (count strings), ``class_names``,
            ``model_signature``, ``config``.
    """

    def __init__(self, index: Any, metadata: Dict[str, Any]) -> None:
        self.index = index
        self.metadata = metadata

    # ------------------------------------------------------------------------------------------ build
    @classmethod
    def build(
        cls,
        embeddings: Any,
        *,
        kind: str = "flat",
        metadata: Optional[Dict[str, Any]] = None,
        hnsw_m: int = 32,
        ef_construction: int = 80,
        ef_search: int = 64,
        nlist: Optional[int] = None,
        pq_m: Optional[int] = None,
        nbits: Optional[int] = None,
        nprobe: Optional[int] = None,
    ) -> "SearchIndex":
        """Index ``embeddings`` (n, d) for cosine search.

        Args:
            embeddings: (n, d) gallery embeddings (torch or numpy); normalised here, so any scale works.
            kind: "flat" (exact), "hnsw" or "ivfpq" (approximate; see the module docstring).
            metadata: extra JSON-serialisable fields stored with the index. ``labels`` and ``paths``, when
                given, must have one entry per row.
            hnsw_m: HNSW neighbours per node (M). ef_construction / ef_search: HNSW beam widths.
            nlist / pq_m / nbits / nprobe: IVF-PQ lists, sub-quantisers, bits per code and lists probed per
                query; ``None`` = sizes derived from n and d (``_default_ivfpq_params``).

        Returns:
            The built index.

        Raises:
            ValueError: unknown kind, empty or non-finite embeddings, metadata of the wrong length, or
                IVF-PQ sizes that the gallery cannot train (the message gives the limits).
        """
        import faiss

        if kind not in KINDS:
            raise ValueError(f"index kind={kind!r} is not one of {KINDS}")
        x = _unit_rows(embeddings, "embeddings")
        n, d = x.shape
        if n == 0:
            raise ValueError("embeddings is empty (0 rows); an index needs at least one gallery item")
        meta = dict(metadata or {})
        for key in ("labels", "paths"):
            if meta.get(key) is not None and len(meta[key]) != n:
                raise ValueError(f"metadata[{key!r}] has {len(meta[key])} entries but there are {n} embeddings; pass one per row")
        params: Dict[str, Any] = {}
        if kind == "flat":
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(d))
        elif kind == "hnsw":
            if hnsw_m < 2 or ef_search < 1 or ef_construction < 1:
                raise ValueError(f"hnsw_m={hnsw_m} must be >= 2 and ef_search={ef_search}, ef_construction={ef_construction} >= 1")
            index = faiss.IndexIDMap2(_new_hnsw(d, hnsw_m, ef_construction))
            params = {"hnsw_m": hnsw_m, "ef_construction": ef_construction, "ef_search": ef_search}
        else:
            auto = _default_ivfpq_params(n, d)
            params = {
                "nlist": auto["nlist"] if nlist is None else nlist,
                "pq_m": auto["pq_m"] if pq_m is None else pq_m,
                "nbits": auto["nbits"] if nbits is None else nbits,
            }
            params["nprobe"] = max(1, params["nlist"] // 4) if nprobe is None else nprobe
            if d % params["pq_m"]:
                raise ValueError(f"pq_m={params['pq_m']} must divide the embedding dimension {d}")
            if not 1 <= params["nlist"] <= n or not 1 <= params["nbits"] <= 16 or not 1 <= params["nprobe"]:
                raise ValueError(f"IVF-PQ needs 1 <= nlist <= n ({n}), 1 <= nbits <= 16 and nprobe >= 1; got {params}")
            if n < 2 ** params["nbits"]:
                raise ValueError(f"IVF-PQ with nbits={params['nbits']} trains {2 ** params['nbits']} centroids per sub-quantiser but the gallery has only {n} vectors; lower nbits or use kind='flat'")
            quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFPQ(quantizer, d, params["nlist"], params["pq_m"], params["nbits"], faiss.METRIC_INNER_PRODUCT)
            index.train(x)
        index.add_with_ids(x, np.arange(n, dtype=np.int64))
        meta.update({"format_version": FORMAT_VERSION, "kind": kind, "dim": d, "count": n, "metric": "cosine", "params": params,
                     "ids": list(range(n)), "next_id": n, "tombstones": []})
        out = cls(index, meta)
        out._apply_search_params()
        return out

    def _apply_search_params(self) -> None:
        """Search-time knobs are set from the metadata (faiss does not persist all of them)."""
        p = self.metadata.get("params", {})
        if self.kind == "hnsw":
            self.inner.hnsw.efSearch = int(p.get("ef_search", 64))
        elif self.kind == "ivfpq":
            self.inner.nprobe = int(p.get("nprobe", 1))

    @property
    def inner(self) -> Any:
        """The faiss index under the id map (IndexFlatIP / IndexHNSWFlat), or the IVF-PQ index itself."""
        import faiss

        return faiss.downcast_index(self.index.index) if isinstance(self.index, faiss.IndexIDMap2) else self.index

    # ------------------------------------------------------------------------------- ids and edits
    @property
    def ids(self) -> List[int]:
        """The live item ids, in metadata order (the order of ``labels`` and ``paths``)."""
        return self.metadata["ids"]

    def position(self, item_id: int) -> int:
        """Where item ``item_id`` sits in the per-item metadata lists; KeyError naming the valid range if absent."""
        pos = self._positions().get(int(item_id))
        if pos is None:
            ids = self.ids
            span = f"{min(ids)}..{max(ids)}" if ids else "none"
            raise KeyError(f"no item with id {item_id} in the index ({len(ids)} items, ids {span})")
        return pos

    def _positions(self) -> Dict[int, int]:
        if getattr(self, "_pos_cache", None) is None:
            self._pos_cache = {int(i): p for p, i in enumerate(self.metadata["ids"])}
        return self._pos_cache

    def _item_fields(self, n_new: int, labels: Optional[Sequence[int]], paths: Optional[Sequence[Optional[str]]]) -> Dict[str, list]:
        given = {"labels": labels, "paths": paths}
        out = {}
        for key in ITEM_FIELDS:
            v = given[key]
            if v is not None and len(v) != n_new:
                raise ValueError(f"{key} has {len(v)} entries for {n_new} new embeddings; pass one per row")
            out[key] = [int(a) for a in v] if (v is not None and key == "labels") else (list(v) if v is not None else None)
        return out

    def add(self, embeddings: Any, *, ids: Optional[Sequence[int]] = None, labels: Optional[Sequence[int]] = None,
            paths: Optional[Sequence[Optional[str]]] = None) -> List[int]:
        """Add items (their embeddings from the index's model) without touching the others.

        Args:
            embeddings: (m, d) new embeddings (normalised here).
            ids: their ids; None = new ids after the largest ever used. An id already present is an error
                (use :meth:`update`).
            labels / paths: per new item (label −1 = unknown, path None = no file).

        Returns:
            The ids of the new items.
        """
        x = _unit_rows(embeddings, "embeddings")
        if x.shape[1] != self.dim:
            raise ValueError(f"the new embeddings have dimension {x.shape[1]} but the index holds {self.dim}-dimensional ones; "
                             "embed them with the index's model (index.json: model_signature)")
        m = x.shape[0]
        if ids is None:
            new_ids = list(range(int(self.metadata["next_id"]), int(self.metadata["next_id"]) + m))
        else:
            new_ids = [int(i) for i in ids]
            if len(new_ids) != m or len(set(new_ids)) != m or any(i < 0 for i in new_ids):
                raise ValueError(f"ids must be {m} distinct non-negative integers, one per new embedding; got {list(ids)[:10]}")
            clash = [i for i in new_ids if i in self._positions()]
            if clash:
                raise ValueError(f"ids {clash[:10]} are already in the index; use update to replace them")
        fields = self._item_fields(m, labels, paths)
        self.index.add_with_ids(x, np.asarray(new_ids, dtype=np.int64))
        meta = self.metadata
        for key in ITEM_FIELDS:
            if fields[key] is None and meta.get(key) is None:
                continue
            old = meta.get(key)
            if old is None:
                old = [-1 if key == "labels" else None] * len(meta["ids"])
            new = fields[key] if fields[key] is not None else [-1 if key == "labels" else None] * m
            meta[key] = list(old) + new
        meta["ids"] = list(meta["ids"]) + new_ids
        meta["next_id"] = max(int(meta["next_id"]), max(new_ids) + 1)
        meta["count"] = len(meta["ids"])
        self._pos_cache = None
        return new_ids

    def remove(self, ids: Sequence[int]) -> None:
        """Remove items by id (flat/IVF-PQ: faiss ``remove_ids``; HNSW: tombstones, see the module docstring).

        Raises:
            KeyError: an id is not in the index (nothing is removed then).
        """
        import faiss

        ids = [int(i) for i in ids]
        positions = [self.position(i) for i in ids]  # all checked before anything changes
        if self.kind == "hnsw":
            id_map = faiss.vector_to_array(self.index.id_map)
            wanted = set(ids)
            dead = set(self.metadata["tombstones"])
            self.metadata["tombstones"] = sorted(dead | {int(p) for p in np.flatnonzero(np.isin(id_map, list(wanted))) if p not in dead})
        else:
            removed = self.index.remove_ids(faiss.IDSelectorBatch(np.asarray(ids, dtype=np.int64)))
            if removed != len(set(ids)):
                raise RuntimeError(f"faiss removed {removed} vectors for {len(set(ids))} ids; the index and index.json disagree")
        drop = set(positions)
        meta = self.metadata
        for key in ("ids", *ITEM_FIELDS):
            if meta.get(key) is not None:
                meta[key] = [v for p, v in enumerate(meta[key]) if p not in drop]
        meta["count"] = len(meta["ids"])
        self._pos_cache = None
        if self.kind == "hnsw" and len(meta["tombstones"]) >= HNSW_REBUILD_FRACTION * self.index.ntotal:
            self.compact()

    def update(self, ids: Sequence[int], embeddings: Any, *, labels: Optional[Sequence[int]] = None,
               paths: Optional[Sequence[Optional[str]]] = None) -> None:
        """Replace the embeddings (and, when given, labels/paths) of existing items, keeping their ids."""
        ids = [int(i) for i in ids]
        old = [self.position(i) for i in ids]
        keep = {key: [self.metadata[key][p] for p in old] if self.metadata.get(key) is not None else None for key in ITEM_FIELDS}
        x = _unit_rows(embeddings, "embeddings")
        if x.shape[0] != len(ids):
            raise ValueError(f"{x.shape[0]} embeddings for {len(ids)} ids; pass one per id")
        fields = self._item_fields(len(ids), labels, paths)
        self.remove(ids)
        self.add(x, ids=ids, labels=fields["labels"] if fields["labels"] is not None else keep["labels"],
                 paths=fields["paths"] if fields["paths"] is not None else keep["paths"])

    def compact(self) -> None:
        """HNSW: rebuild the graph from the live vectors (drops every tombstone). Other kinds: nothing to do."""
        import faiss

        if self.kind != "hnsw" or not self.metadata["tombstones"]:
            return
        id_map = faiss.vector_to_array(self.index.id_map)
        dead = set(self.metadata["tombstones"])
        live = np.array([p for p in range(self.index.ntotal) if p not in dead], dtype=np.int64)
        vectors = np.stack([self.inner.reconstruct(int(p)) for p in live]) if live.size else np.zeros((0, self.dim), np.float32)
        p = self.metadata["params"]
        index = faiss.IndexIDMap2(_new_hnsw(self.dim, int(p["hnsw_m"]), int(p["ef_construction"])))
        if live.size:
            index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), id_map[live])
        self.index = index
        self.metadata["tombstones"] = []
        self._apply_search_params()

    # ------------------------------------------------------------------------------------ properties
    @property
    def kind(self) -> str:
        return str(self.metadata["kind"])

    @property
    def dim(self) -> int:
        return int(self.metadata["dim"])

    def __len__(self) -> int:
        return int(self.index.ntotal) - len(self.metadata.get("tombstones") or [])

    @property
    def labels(self) -> Optional[List[int]]:
        return self.metadata.get("labels")

    @property
    def paths(self) -> Optional[List[str]]:
        return self.metadata.get("paths")

    @property
    def class_names(self) -> Optional[List[str]]:
        return self.metadata.get("class_names")

    def __repr__(self) -> str:
        return f"SearchIndex(kind={self.kind!r}, count={len(self)}, dim={self.dim})"

    @property
    def threshold(self) -> Optional[float]:
        """The calibrated match threshold (``deepmetric calibrate``), or None when uncalibrated: a gallery
        item is a match for a query when their cosine similarity is >= it."""
        th = self.metadata.get("threshold")
        return None if th is None else float(th["value"])

    def set_threshold(self, threshold: Optional[Dict[str, Any]]) -> None:
        """Store a calibrated threshold (``Threshold.to_dict()``: value plus how it was measured), or clear it."""
        if threshold is not None:
            value = threshold.get("value") if isinstance(threshold, dict) else None
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"a threshold needs a finite 'value', got {threshold!r}")
        self.metadata["threshold"] = threshold

    # ---------------------------------------------------------------------------------------- search
    def reconstruct(self, ids: Sequence[int]) -> np.ndarray:
        """(m, d) stored unit vectors of items ``ids`` (IVF-PQ: their PQ reconstructions)."""
        import faiss

        if self.kind == "ivfpq" and self.index.direct_map.type == faiss.DirectMap.NoMap:
            self.index.set_direct_map_type(faiss.DirectMap.Hashtable)  # id -> list entry, built once
        return np.stack([self.index.reconstruct(int(i)) for i in ids]) if len(ids) else np.zeros((0, self.dim), np.float32)

    def search(self, queries: Any, k: int, *, qe: int = 0, alpha: float = 3.0) -> Tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar gallery items of each query.

        Args:
            queries: (q, d) query embeddings (torch or numpy; normalised here).
            k: neighbours per query; more than the gallery holds is clipped to its size.
            qe: α-query expansion (``deepmetric.retrieval.rerank``): search the ``qe`` nearest items first,
                replace each query by normalize(q + Σ max(s_i, 0)^α g_i) and search again; 0 = off.
            alpha: the α of the expansion weights (0 = average QE).

        Returns:
            (scores, ids): (q, min(k, count)) float32 cosine similarities, best first, and int64 gallery
            row ids. An approximate index that finds fewer than k items pads with id −1 and score −inf.
        """
        if k < 1:
            raise ValueError(f"k={k} must be >= 1")
        q = _unit_rows(queries, "queries")
        if q.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {q.shape[1]} but the index holds {self.dim}-dimensional embeddings; embed the queries with the index's model")
        if qe:
            if qe < 0 or not alpha >= 0:
                raise ValueError(f"qe={qe} must be >= 0 and alpha={alpha} >= 0")
            import faiss

            s1, ids1 = self.search(q, qe)
            expanded = q.copy()
            for row, (srow, irow) in enumerate(zip(s1, ids1)):
                live = irow >= 0
                w = np.maximum(srow[live], 0) ** alpha if alpha > 0 else np.ones(int(live.sum()), np.float32)
                expanded[row] += (w[:, None] * self.reconstruct(irow[live])).sum(axis=0)
            faiss.normalize_L2(expanded)
            return self.search(expanded, k)
        k = min(int(k), len(self))
        if k == 0:
            return np.zeros((q.shape[0], 0), np.float32), np.zeros((q.shape[0], 0), np.int64)
        dead = self.metadata.get("tombstones") or []
        if dead:  # HNSW tombstones: filtered during the graph walk, on graph positions, then mapped to ids
            import faiss

            batch = faiss.IDSelectorBatch(np.asarray(dead, dtype=np.int64))  # named: must outlive the search
            selector = faiss.IDSelectorNot(batch)
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=int(self.inner.hnsw.efSearch))
            # faiss.contrib.torch_utils (imported by PML's utils.inference) replaces Index.search with a
            # wrapper that takes no params; the original stays reachable as search_numpy.
            search = getattr(self.inner, "search_numpy", self.inner.search)
            scores, pos = search(q, k, params=params)
            id_map = faiss.vector_to_array(self.index.id_map)
            ids = np.where(pos >= 0, id_map[np.maximum(pos, 0)], -1)
        else:
            scores, ids = self.index.search(q, k)
        scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
        return scores, ids.astype(np.int64)

    # --------------------------------------------------------------------------------- save and load
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``DIR/index.faiss`` and ``DIR/index.json`` (created as needed; the JSON is written last,
        through a temporary file, so a folder with a readable ``index.json`` holds a complete index)."""
        import faiss

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(directory / INDEX_FILE))
        self.metadata["faiss_file"] = INDEX_FILE
        tmp = directory / (META_FILE + ".tmp")
        tmp.write_text(json.dumps(self.metadata, indent=1))
        os.replace(tmp, directory / META_FILE)
        return directory

    def commit(self, directory: str | os.PathLike) -> Path:
        """Persist edits to an existing index folder atomically.

        The faiss index goes to a NEW file ``index.<generation>.faiss``; then ``index.json``, which names
        that file, replaces the old one in a single rename (the commit point); then the previous faiss file
        is deleted. A crash at any point leaves a folder that loads as the old or the new index.
        """
        import faiss

        directory = Path(directory)
        old_file = self.metadata.get("faiss_file", INDEX_FILE)
        gen = int(self.metadata.get("generation", 0)) + 1
        new_file = f"index.{gen}.faiss"
        faiss.write_index(self.index, str(directory / new_file))
        self.metadata["generation"], self.metadata["faiss_file"] = gen, new_file
        self.save_metadata(directory)
        if old_file != new_file and (directory / old_file).exists():
            (directory / old_file).unlink()
        return directory

    def save_metadata(self, directory: str | os.PathLike) -> Path:
        """Rewrite only ``DIR/index.json`` (e.g. a new threshold), atomically: a temporary file then a rename."""
        directory = Path(directory)
        faiss_file = self.metadata.get("faiss_file", INDEX_FILE)
        if not (directory / faiss_file).is_file():
            raise SearchIndexError(f"{directory} holds no {faiss_file}; save the whole index with SearchIndex.save first")
        tmp = directory / (META_FILE + ".tmp")
        tmp.write_text(json.dumps(self.metadata, indent=1))
        os.replace(tmp, directory / META_FILE)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, *, expected_dim: Optional[int] = None) -> "SearchIndex":
        """Read an index folder written by :meth:`save`, checking that it is complete and consistent.

        Args:
            directory: the index folder.
            expected_dim: when given, the embedding dimension of the model that will embed queries; a
                different index dimension is an error.

        Raises:
            SearchIndexError: folder or file missing, unreadable, or inconsistent (the message says what to do).
        """
        import faiss

        directory = Path(directory)
        rebuild = "build it with `deepmetric index build --checkpoint CKPT --out DIR`"
        if not directory.is_dir():
            raise SearchIndexError(f"index folder {str(directory)!r} does not exist; {rebuild}")
        meta_path = directory / META_FILE
        if not meta_path.is_file():
            raise SearchIndexError(f"{str(directory)!r} is not a complete index: {META_FILE} is missing; {rebuild}")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SearchIndexError(f"{meta_path} is not readable JSON ({exc}); {rebuild}") from None
        index_path = directory / str((meta if isinstance(meta, dict) else {}).get("faiss_file", INDEX_FILE))
        if not index_path.is_file():
            raise SearchIndexError(f"{str(directory)!r} is not a complete index: {index_path.name} is missing; {rebuild}")
        missing = [k for k in ("kind", "dim", "count") if k not in (meta if isinstance(meta, dict) else {})]
        if missing:
            raise SearchIndexError(f"{meta_path} lacks the field(s) {missing}; it was not written by SearchIndex.save. {rebuild.capitalize()}")
        if meta.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
            raise SearchIndexError(f"{meta_path} has format_version {meta['format_version']}, newer than this deepmetric reads ({FORMAT_VERSION}); upgrade deepmetric")
        try:
            index = faiss.read_index(str(index_path))
        except RuntimeError as exc:
            raise SearchIndexError(f"{index_path} could not be read by faiss ({str(exc).splitlines()[0] if str(exc) else exc}); {rebuild}") from None
        dead = len(meta.get("tombstones") or [])
        if index.d != meta["dim"] or index.ntotal - dead != meta["count"]:
            raise SearchIndexError(
                f"{directory}: {index_path.name} holds {index.ntotal - dead} vectors of dimension {index.d} but {META_FILE} says "
                f"{meta['count']} of dimension {meta['dim']}; the two files come from different builds. {rebuild.capitalize()}"
            )
        if "ids" not in meta:  # written before items had ids: rows 0..n-1, wrapped in an id map
            index = _with_sequential_ids(index, meta)
        if expected_dim is not None and expected_dim != meta["dim"]:
            raise SearchIndexError(
                f"{directory} holds {meta['dim']}-dimensional embeddings but the model produces {expected_dim}-dimensional "
                f"ones; the index was built with another model. Rebuild it with this model's checkpoint: {rebuild}"
            )
        out = cls(index, meta)
        out._apply_search_params()
        return out

    def check_model(self, signature: Dict[str, Any], source: str = "the model") -> None:
        """Refuse a query model other than the one the gallery was embedded with.

        Args:
            signature: ``deepmetric.models.model_signature(model)`` of the query model.
            source: how to name the query model in the error.

        Raises:
            SearchIndexError: dimension or architecture differs (the message lists the differences).
        """
        if signature.get("embedding_dim") is not None and signature["embedding_dim"] != self.dim:
            raise SearchIndexError(
                f"{source} produces {signature['embedding_dim']}-dimensional embeddings but the index holds {self.dim}-dimensional "
                f"ones; rebuild the index with `deepmetric index build` and this model's checkpoint"
            )
        theirs = self.metadata.get("model_signature")
        if theirs and theirs != signature:
            diffs = [f"{k}: index {theirs.get(k)!r} vs {signature.get(k)!r}" for k in sorted(set(theirs) | set(signature)) if theirs.get(k) != signature.get(k)]
            raise SearchIndexError(f"the index was built with another model than {source} ({'; '.join(diffs)}); embeddings of two "
                                   f"models are not comparable, so re-embed the whole gallery with the new model: {self.rebuild_command()}")

    def rebuild_command(self, checkpoint: str = "NEW_CHECKPOINT.pt", out: str = "DIR") -> str:
        """The ``deepmetric index build`` command that re-embeds this index's gallery with another checkpoint."""
        src = self.metadata.get("source") or {}
        gallery = f"--images {src['image_dir']}" if "image_dir" in src else (f"--split {src['split']}" if "split" in src else "--split SPLIT")
        return f"`deepmetric index build --checkpoint {checkpoint} {gallery} --kind {self.kind} --out {out}`"


def measured_recall(index: SearchIndex, exact: SearchIndex, queries: Any, k: int) -> float:
    """Recall@k of an approximate index against exact search: the mean share of each query's exact top-k
    ids that the approximate top-k also returns (1.0 = identical neighbour sets).

    Args:
        index: the approximate index (e.g. kind "hnsw" or "ivfpq").
        exact: a "flat" index over the same gallery, in the same row order.
        queries: (q, d) query embeddings.
        k: neighbours compared per query.
    """
    if len(index) != len(exact) or index.dim != exact.dim:
        raise ValueError(f"the two indexes hold different galleries ({len(index)}×{index.dim} vs {len(exact)}×{exact.dim}); build both from the same embeddings")
    _, approx_ids = index.search(queries, k)
    _, true_ids = exact.search(queries, k)
    hits = [len(set(a[a >= 0].tolist()) & set(t.tolist())) / t.size for a, t in zip(approx_ids, true_ids)]
    return float(np.mean(hits))


def clustered_vectors(n: int, dim: int, *, clusters: int = 20, spread: float = 0.3, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Synthetic unit vectors around ``clusters`` random centres (for recall measurements), and their cluster ids.

    Args:
        n: number of vectors. dim: their dimension. clusters: number of centres.
        spread: typical norm of the Gaussian noise added to each unit centre before re-normalising.
        seed: seed of a private numpy Generator (the global RNG is untouched).
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    ids = rng.integers(0, clusters, size=n)
    # Per-coordinate std spread/√dim: the noise vector's norm is ≈ spread whatever the dimension.
    x = centres[ids] + (spread / math.sqrt(dim)) * rng.standard_normal((n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), ids.astype(np.int64)


def _new_hnsw(d: int, m: int, ef_construction: int) -> Any:
    import faiss

    index = faiss.IndexHNSWFlat(d, m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    return index


def _with_sequential_ids(index: Any, meta: Dict[str, Any]) -> Any:
    """An index saved before ids existed: its rows become items 0..n−1 (flat/HNSW under an IndexIDMap2)."""
    import faiss

    n = int(index.ntotal)
    meta.update({"ids": list(range(n)), "next_id": n, "tombstones": []})
    if meta["kind"] == "ivfpq":  # IVF lists already store the row numbers as ids
        return index
    # faiss refuses to wrap a non-empty index (ids unknown); ours are the rows, so the count is hidden for
    # the constructor's check and the id map filled with 0..n−1 (no copy of the vectors or the graph)
    index.ntotal = 0
    try:
        wrapped = faiss.IndexIDMap2(index)
    finally:
        index.ntotal = n
    faiss.copy_array_to_vector(np.arange(n, dtype=np.int64), wrapped.id_map)
    wrapped.ntotal = n
    wrapped.construct_rev_map()
    wrapped.referenced_objects = [index]  # faiss's idiom: the Python reference keeps the wrapped index alive
    return wrapped


__all__: Sequence[str] = ("SearchIndex", "SearchIndexError", "measured_recall", "clustered_vectors", "KINDS", "INDEX_FILE", "META_FILE")
