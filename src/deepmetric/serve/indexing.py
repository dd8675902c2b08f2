"""Gallery indexes built from a checkpoint, and searching them with images.

``build_index_from_checkpoint`` embeds a gallery — a split of the checkpoint's dataset, or a folder of
images — with the checkpoint's model and evaluation transform, and writes a self-contained index folder::

    OUT/index.faiss   faiss index over the unit-norm gallery embeddings (deepmetric.retrieval.index)
    OUT/index.json    metadata: labels, class names, file paths, model signature, config, source
    OUT/model.pt      the model weights with their config, to embed queries (serving needs no run folder)
    OUT/thumbs/       PNG images of a gallery that has no files (embedded MNIST/digits, CIFAR, STL-10)

:class:`IndexSearcher` opens such a folder (index + model + transform) for searching with PIL images;
:func:`search_images` does it for image files.
"""
from __future__ import annotations

import io
import os
import shutil
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from deepmetric.checkpoint import load_checkpoint, save_checkpoint
from deepmetric.data.base import load_image
from deepmetric.inference import UNREADABLE, Embedder
from deepmetric.retrieval.index import KINDS, META_FILE, SearchIndex, SearchIndexError

MODEL_FILE = "model.pt"
THUMBS_DIR = "thumbs"
#: images uploaded through the API's POST/PUT /items are kept here (as <id>.png), so the index owns them
ADDED_DIR = "added"
#: Longest side of the thumbnails made on demand from gallery files.
THUMBNAIL_SIDE = 256


# ---------------------------------------------------------------------------------------- the gallery


def dataset_labels(dataset: Any) -> List[int]:
    """The label of each item of a dataset adapter (or a class subset of one), without reading images."""
    return [int(v) for v in np.asarray(dataset.labels).tolist()]


def dataset_paths(dataset: Any) -> Optional[List[str]]:
    """Absolute file path of each item of ``dataset`` (looking through class subsets), or None if it has no files."""
    if hasattr(dataset, "paths"):
        return [str(Path(p).resolve()) for p in dataset.paths]
    inner, indices = getattr(dataset, "dataset", None), getattr(dataset, "indices", None)
    if inner is not None and indices is not None:
        paths = dataset_paths(inner)
        return None if paths is None else [paths[int(i)] for i in indices]
    return None


def _prepare_out(out: Path) -> None:
    """An empty or new folder, or an earlier index folder (replaced); never anything else."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder; choose a new or empty folder for the index")
    if out.exists() and any(out.iterdir()):
        if not (out / META_FILE).is_file():
            raise FileExistsError(f"{out} exists and is not an index folder; choose an empty or new --out")
        for p in [out / n for n in (META_FILE, MODEL_FILE, THUMBS_DIR, ADDED_DIR, "roc.png")] + list(out.glob("index*.faiss")):
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)


def _drop_unreadable(emb: torch.Tensor, labels: torch.Tensor, paths: List[str]):
    """Leave the items whose file could not be decoded out of the gallery, with ONE warning listing them."""
    bad = labels == UNREADABLE
    if not bool(bad.any()):
        return emb, labels, paths
    bad_paths = [p for p, b in zip(paths, bad.tolist()) if b]
    if bool(bad.all()):
        raise ValueError(f"none of the {len(paths)} gallery image files could be decoded (first: {bad_paths[0]}); "
                         "check the files and the dataset root")
    shown = ", ".join(bad_paths[:20]) + (f" … ({len(bad_paths) - 20} more)" if len(bad_paths) > 20 else "")
    warnings.warn(f"skipped {len(bad_paths)} unreadable image file(s) (left out of the index): {shown}", stacklevel=3)
    keep = ~bad
    return emb[keep], labels[keep], [p for p, b in zip(paths, bad.tolist()) if not b]


@torch.no_grad()
def build_index_from_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    split: Optional[str] = None,
    image_dir: Optional[str | os.PathLike] = None,
    out: str | os.PathLike,
    kind: str = "flat",
    overrides: Sequence[str] = (),
    device: str = "auto",
    index_params: Optional[Dict[str, Any]] = None,
) -> SearchIndex:
    """Embed a gallery with a checkpoint's model and write an index folder (see the module docstring).

    Args:
        checkpoint: a checkpoint written by ``deepmetric train`` (best.pt / last.pt).
        split: a split of the checkpoint's dataset (default: its test split when ``image_dir`` is None).
        image_dir: a folder of images instead (class sub-folders give labels); exclusive with ``split``.
        out: the index folder to write (must be new, empty, or an earlier index folder, which is replaced).
        kind: "flat", "hnsw" or "ivfpq" (``SearchIndex.build``).
        overrides: config overrides such as ``data.root=/data/CUB``.
        device: "auto", "cpu" or "cuda".
        index_params: extra keyword arguments of ``SearchIndex.build`` (e.g. ``{"ef_search": 128}``).

    Returns:
        The saved index.
    """
    if kind not in KINDS:  # checked before the (long) embedding pass
        raise ValueError(f"index kind={kind!r} is not one of {KINDS}")
    if split is not None and image_dir is not None:
        raise ValueError(f"pass either a split ({split!r}) or an image folder ({str(image_dir)!r}) as the gallery, not both")
    embedder = Embedder.from_checkpoint(checkpoint, overrides, device=device)
    cfg = embedder.cfg
    raw: Optional[Any] = None
    if image_dir is not None:
        gallery: Any = embedder.folder(image_dir)
        paths: Optional[List[str]] = [str(p) for p in gallery.paths]
        class_names = list(gallery.class_names)
        source = {"image_dir": str(Path(image_dir).resolve())}
    else:
        split = split or cfg.data.test_split
        gallery = embedder.dataset(split)
        paths = dataset_paths(gallery)
        if paths is None:
            raw = embedder.dataset(split, transform=None)  # PIL images, saved as thumbnails
        class_names = [str(c) for c in getattr(gallery, "class_names", [])]
        source = {"dataset": cfg.data.dataset, "split": split}
        if paths is not None:  # files: read them here, so that an unreadable one is left out, not replaced
            gallery = embedder.files(paths, dataset_labels(gallery))
    out = Path(out)
    _prepare_out(out)
    emb, labels = embedder.embed_dataset(gallery)
    if paths is not None:
        emb, labels, paths = _drop_unreadable(emb, labels, paths)
    if raw is not None:
        (out / THUMBS_DIR).mkdir()
        for i in range(len(raw)):
            raw[i][0].save(out / THUMBS_DIR / f"{i:06d}.png")
    signature = embedder.signature
    state = load_checkpoint(checkpoint, map_location="cpu")
    save_checkpoint({"model": state["model"], "config": state["config"], "model_signature": signature}, out / MODEL_FILE)
    metadata = {
        "labels": [int(v) for v in labels.tolist()],
        "class_names": class_names,
        "paths": paths,
        "thumbnails": THUMBS_DIR if raw is not None else None,
        "image_mode": embedder.mode,
        "in_chans": embedder.in_chans,
        "checkpoint": str(Path(checkpoint).resolve()),
        "source": source,
        "model_signature": signature,
        "config": state["config"],
        "overrides": list(overrides),
    }
    index = SearchIndex.build(emb, kind=kind, metadata=metadata, **(index_params or {}))
    index.save(out)
    return index


# ------------------------------------------------------------------------------------------ searching


class IndexSearcher:
    """An index folder opened for searching with images: the index, the model and its eval transform.

    Args:
        index_dir: a folder written by :func:`build_index_from_checkpoint`.
        device: "auto", "cpu" or "cuda" for the model.

    Raises:
        SearchIndexError: the folder is incomplete or its model does not match its index.
    """

    def __init__(self, index_dir: str | os.PathLike, *, device: str = "auto") -> None:
        self.dir = Path(index_dir)
        self.index = SearchIndex.load(self.dir)
        model_path = self.dir / MODEL_FILE
        if not model_path.is_file():
            raise SearchIndexError(f"{self.dir} has no {MODEL_FILE} (the model that embeds queries); rebuild it with `deepmetric index build --checkpoint CKPT --out {self.dir}`")
        self.embedder = Embedder.from_checkpoint(model_path, device=device)
        self.index.check_model(self.embedder.signature, source=str(model_path))
        self.model, self.cfg, self.device = self.embedder.model, self.embedder.cfg, self.embedder.device
        self.mode, self.transform = self.embedder.mode, self.embedder.transform
        meta = self.index.metadata
        thumbs = meta.get("thumbnails")
        self.thumbs_dir = (self.dir / thumbs) if thumbs else None
        self._thumbnail = lru_cache(maxsize=512)(self._make_thumbnail)

    def __len__(self) -> int:
        return len(self.index)

    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(n, d) embeddings of PIL images (any mode: converted like the gallery images were)."""
        return self.embedder.embed_images(images)

    def item(self, i: int) -> Dict[str, Any]:
        """What is known about gallery item with id ``i``: id, label (None if unknown), class name, file name."""
        meta = self.index.metadata
        pos = self.index.position(i)
        labels, names, paths = meta.get("labels"), meta.get("class_names") or [], meta.get("paths")
        label = labels[pos] if labels is not None and labels[pos] >= 0 else None
        return {
            "id": int(i),
            "label": label,
            "class_name": names[label] if label is not None and label < len(names) else None,
            "name": Path(paths[pos]).name if paths and paths[pos] else f"{i:06d}.png",
        }

    # ---------------------------------------------------------------------------------------- edits
    def _label_of(self, class_name: Optional[str]) -> int:
        """Label of ``class_name`` (a new class is appended to the index's class names); None = unknown (−1)."""
        if class_name is None:
            return -1
        names = self.index.metadata.setdefault("class_names", [])
        if class_name not in names:
            names.append(class_name)
        return names.index(class_name)

    def add_images(self, images: Sequence[Image.Image], paths: Sequence[str], class_names: Sequence[Optional[str]]) -> List[int]:
        """Embed ``images`` with the index's model, add them (new ids), and commit the folder atomically."""
        emb = self.embed_images(images)
        ids = self.index.add(emb, labels=[self._label_of(c) for c in class_names], paths=list(paths))
        self._commit()
        return ids

    def update_image(self, item_id: int, image: Image.Image, path: str, class_name: Optional[str] = None) -> None:
        """Replace item ``item_id``'s image (and class, when given), keeping its id; commit."""
        self.index.position(item_id)  # KeyError before any work
        emb = self.embed_images([image])
        labels = None if class_name is None else [self._label_of(class_name)]
        self.index.update([item_id], emb, labels=labels, paths=[path])
        self._commit()

    def remove(self, ids: Sequence[int]) -> None:
        """Remove items by id (their stored thumbnails too) and commit."""
        self.index.remove(ids)
        _drop_item_images(self.dir, self.index, ids)
        self._commit()

    def _commit(self) -> None:
        self.index.commit(self.dir)
        self._thumbnail.cache_clear()

    def search(self, images: Sequence[Image.Image], k: int, *, qe: int = 0) -> List[List[Dict[str, Any]]]:
        """For each image, its top-k gallery items (``item`` fields plus ``rank``, cosine ``score`` and
        ``match``), best first. ``match`` is ``score >= threshold`` when the index is calibrated
        (``deepmetric calibrate``), else None; a query whose first result is not a match has no match.
        ``qe`` > 0 re-ranks by α-query expansion over the ``qe`` nearest items (``SearchIndex.search``); the
        scores are then similarities to the expanded query."""
        if not images:
            return []
        scores, ids = self.index.search(self.embed_images(images), k, qe=qe)
        t = self.index.threshold
        return [
            [{"rank": r + 1, "score": float(s), "match": None if t is None else bool(s >= t), **self.item(int(i))}
             for r, (s, i) in enumerate(zip(srow, irow)) if i >= 0]
            for srow, irow in zip(scores, ids)
        ]

    def thumbnail(self, i: int) -> tuple[bytes, str]:
        """(bytes, media type) of item ``i``'s image: the stored PNG, or a ≤256 px JPEG of its file.

        Raises:
            IndexError: ``i`` is not an item of the index.
            FileNotFoundError: the gallery file has gone missing since the index was built.
            OSError: the gallery file can no longer be decoded.
        """
        try:
            pos = self.index.position(i)
        except KeyError as exc:
            raise IndexError(exc.args[0]) from None
        paths = self.index.metadata.get("paths")
        return self._thumbnail(int(i), paths[pos] if paths else None)

    def _make_thumbnail(self, i: int, path: Optional[str]) -> tuple[bytes, str]:
        from deepmetric.data.base import load_image

        if path is None:  # a gallery without files (embedded datasets): the PNG written at build time
            return (self.thumbs_dir / f"{i:06d}.png").read_bytes(), "image/png"
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"gallery file {path} of item {i} is missing; rebuild the index or restore the file")
        try:
            image = load_image(path, "RGB")
        except Exception as exc:  # noqa: BLE001 - the file was replaced or damaged after indexing
            raise OSError(f"gallery file {path} of item {i} can no longer be decoded ({type(exc).__name__}); "
                          "restore the file or rebuild the index") from None
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=85)
        return buf.getvalue(), "image/jpeg"


#: largest query image (width × height) read by :func:`search_images`, as the service's default
MAX_QUERY_PIXELS = 40_000_000


def check_query_image(path: str | os.PathLike, *, max_pixels: int = MAX_QUERY_PIXELS) -> None:
    """Refuse, with one clear error, a query file that is missing, not an image, or larger than
    ``max_pixels`` (read from the header: nothing is decoded)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"query image {str(path)!r} does not exist")
    try:
        with Image.open(path) as im:
            width, height = im.size
    except Image.DecompressionBombError:
        raise ValueError(f"query image {str(path)!r} is refused as a decompression bomb (far over {max_pixels:,} pixels)") from None
    except Exception as exc:  # noqa: BLE001 - any decoder error means "not an image we can read"
        raise ValueError(f"query {str(path)!r} is not an image that can be read ({type(exc).__name__}); "
                         "give a PNG, JPEG, WebP, BMP, GIF or TIFF file") from None
    if width * height > max_pixels:
        raise ValueError(f"query image {str(path)!r} has {width}×{height} = {width * height:,} pixels; the limit is "
                         f"{max_pixels:,}: resize it first")


def search_images(index_dir: str | os.PathLike, image_paths: Sequence[str | os.PathLike], k: int = 10, *, device: str = "auto",
                  max_pixels: int = MAX_QUERY_PIXELS, qe: int = 0) -> List[List[Dict[str, Any]]]:
    """Top-k gallery items of each image file (see :meth:`IndexSearcher.search`; ``qe``: query expansion).
    The files are checked (:func:`check_query_image`) before the index and model are loaded, and read with
    the gallery's loader."""
    for p in image_paths:
        check_query_image(p, max_pixels=max_pixels)
    searcher = IndexSearcher(index_dir, device=device)
    return searcher.search(_load_query_images(image_paths, searcher.mode), k, qe=qe)


def _load_query_images(paths: Sequence[str | os.PathLike], mode: str) -> List[Image.Image]:
    """Image files (already checked by :func:`check_query_image`) read with the gallery's loader."""
    from deepmetric.data.base import load_image

    images = []
    for p in paths:
        try:
            images.append(load_image(Path(p), mode))
        except Exception as exc:  # noqa: BLE001 - a header that reads, then damaged data
            raise ValueError(f"image {str(p)!r} is damaged and could not be decoded ({type(exc).__name__}: {exc})") from None
    return images


def add_to_index(index_dir: str | os.PathLike, image_paths: Sequence[str | os.PathLike], *, class_name: Optional[str] = None,
                 device: str = "auto") -> List[int]:
    """Embed image files with the index's own model and add them (the rest is not re-embedded); their ids."""
    for p in image_paths:
        check_query_image(p)
    searcher = IndexSearcher(index_dir, device=device)
    images = _load_query_images(image_paths, searcher.mode)
    return searcher.add_images(images, [str(Path(p).resolve()) for p in image_paths], [class_name] * len(images))


def update_in_index(index_dir: str | os.PathLike, item_id: int, image_path: str | os.PathLike, *, class_name: Optional[str] = None,
                    device: str = "auto") -> None:
    """Re-embed item ``item_id`` from a new image file (same id; class kept unless given)."""
    check_query_image(image_path)
    searcher = IndexSearcher(index_dir, device=device)
    searcher.update_image(item_id, _load_query_images([image_path], searcher.mode)[0], str(Path(image_path).resolve()), class_name)


def remove_from_index(index_dir: str | os.PathLike, ids: Sequence[int]) -> int:
    """Remove items by id (no model needed); the number of items left."""
    index = SearchIndex.load(index_dir)
    index.remove([int(i) for i in ids])
    _drop_item_images(Path(index_dir), index, ids)
    index.commit(index_dir)
    return len(index)


def _drop_item_images(index_dir: Path, index: SearchIndex, ids: Sequence[int]) -> None:
    """Delete the PNGs the index folder itself holds for removed items (build-time thumbnails, API uploads)."""
    thumbs = index.metadata.get("thumbnails")
    for folder in ([index_dir / thumbs] if thumbs else []) + [index_dir / ADDED_DIR]:
        for i in ids:
            (folder / f"{int(i):06d}.png").unlink(missing_ok=True)
