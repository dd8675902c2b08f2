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
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from deepmetric.retrieval.index import META_FILE, SearchIndex, SearchIndexError

MODEL_FILE = "model.pt"
THUMBS_DIR = "thumbs"
#: Longest side of the thumbnails made on demand from gallery files.
THUMBNAIL_SIDE = 256


# ------------------------------------------------------------------------------------------ the model


def load_embedding_model(path: str | os.PathLike, overrides: Sequence[str] = (), device: str = "auto"):
    """(model in eval mode, config, device) from a checkpoint or an index's ``model.pt``.

    The model is rebuilt from the stored config with ``model.pretrained=null`` (its weights are replaced
    by the stored ones anyway, so nothing is downloaded or read from a pretrained-weights file), with the
    input channels recorded in the stored model signature: no dataset needs to be present.
    """
    from deepmetric.config import build_config
    from deepmetric.train.checkpoint import check_compatible, load_checkpoint
    from deepmetric.train.distributed import resolve_device
    from deepmetric.train.loop import build_embedding_model, model_signature

    dev = resolve_device(device)
    state = load_checkpoint(path, map_location=dev)
    in_chans = (state.get("model_signature") or {}).get("in_chans")
    if in_chans is None:  # a checkpoint without a signature: let the evaluation helper probe the dataset
        from deepmetric.train.evaluate import load_model

        model, cfg, ctx = load_model(path, overrides, device=device)
        return model, cfg, ctx.device
    cfg = build_config(state["config"], list(overrides) + ["model.pretrained=null"], source=f"{path} (stored config)")
    model = build_embedding_model(cfg, in_chans=int(in_chans)).to(dev)
    check_compatible(state, model_signature(cfg, model), str(path))
    model.load_state_dict(state["model"])
    model.eval()
    return model, cfg, dev


def eval_transform(cfg: Any) -> Callable:
    """The evaluation transform of the config's recipe (what the gallery and every query go through)."""
    from deepmetric.data.transforms import build_transform

    d = cfg.data
    return build_transform(d.transform, train=False, image_size=d.image_size, resize=d.resize)


def image_mode(in_chans: int) -> str:
    """PIL mode the model's transform expects: "L" for one input channel, "RGB" for three."""
    if in_chans not in (1, 3):
        raise ValueError(f"models with {in_chans} input channels cannot be fed images; expected 1 (grayscale) or 3 (RGB)")
    return "L" if in_chans == 1 else "RGB"


# ---------------------------------------------------------------------------------------- the gallery


#: label of an item whose file cannot be decoded; such items are dropped after embedding, never indexed
UNREADABLE = -2


class GalleryFiles(Dataset):
    """Gallery image files with their labels, read with the one loader (:func:`deepmetric.data.base.load_image`).

    Unlike a training dataset, an unreadable file is never replaced by another image (that would index a
    copy's embedding under this file's name): it yields a blank image and the label :data:`UNREADABLE`,
    and :func:`build_index_from_checkpoint` leaves it out of the index with one warning listing them all.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], labels: Sequence[int], transform: Optional[Callable], mode: str) -> None:
        self.paths = [Path(p) for p in paths]
        self.labels = [int(v) for v in labels]
        self.transform = transform
        self.mode = mode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from deepmetric.data.base import load_image

        label = self.labels[i]
        try:
            image: Any = load_image(self.paths[i], self.mode)
        except Exception:  # noqa: BLE001 - missing, empty, truncated, not an image: all "leave it out"
            image, label = Image.new(self.mode, (THUMBNAIL_SIDE, THUMBNAIL_SIDE)), UNREADABLE
        if self.transform is not None:
            image = self.transform(image)
        return image, label


class ImageDirGallery(GalleryFiles):
    """Every image file under ``root`` (sorted, recursive). An image inside a first-level sub-folder is
    labelled with that folder's name (class folders); an image directly in ``root`` has label −1 (unknown).

    Files that cannot be decoded get the label :data:`UNREADABLE` (see :class:`GalleryFiles`).
    """

    def __init__(self, root: str | os.PathLike, transform: Optional[Callable], mode: str) -> None:
        from deepmetric.data.base import IMAGE_EXTENSIONS

        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {str(self.root)!r} does not exist; pass a folder of images (optionally in class sub-folders)")
        files = sorted(p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not any(part.startswith(".") for part in p.relative_to(self.root).parts))
        if not files:
            raise FileNotFoundError(f"no image files under {str(self.root)!r} (extensions: {' '.join(IMAGE_EXTENSIONS)})")
        folders = [p.relative_to(self.root).parts[0] if len(p.relative_to(self.root).parts) > 1 else None for p in files]
        self.class_names: List[str] = sorted({f for f in folders if f is not None})
        index = {c: i for i, c in enumerate(self.class_names)}
        super().__init__(files, [index[f] if f is not None else -1 for f in folders], transform, mode)


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
    if out.exists() and any(out.iterdir()):
        if not (out / META_FILE).is_file():
            raise FileExistsError(f"{out} exists and is not an index folder; choose an empty or new --out")
        for name in ("index.faiss", META_FILE, MODEL_FILE, THUMBS_DIR):
            p = out / name
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
    from deepmetric.retrieval import embed
    from deepmetric.train.data import build_dataset, eval_loader
    from deepmetric.train.distributed import DistContext
    from deepmetric.train.loop import model_signature

    from deepmetric.retrieval.index import KINDS

    if kind not in KINDS:  # checked before the (long) embedding pass
        raise ValueError(f"index kind={kind!r} is not one of {KINDS}")
    if split is not None and image_dir is not None:
        raise ValueError(f"pass either a split ({split!r}) or an image folder ({str(image_dir)!r}) as the gallery, not both")
    model, cfg, dev = load_embedding_model(checkpoint, overrides, device)
    in_chans = int(getattr(model, "in_chans", 3))
    mode = image_mode(in_chans)
    transform = eval_transform(cfg)
    raw: Optional[Any] = None
    if image_dir is not None:
        gallery: Any = ImageDirGallery(image_dir, transform, mode)
        paths: Optional[List[str]] = [str(p) for p in gallery.paths]
        class_names = list(gallery.class_names)
        source = {"image_dir": str(Path(image_dir).resolve())}
    else:
        split = split or cfg.data.test_split
        gallery = build_dataset(cfg, split, train=False)
        paths = dataset_paths(gallery)
        if paths is None:
            raw = build_dataset(cfg, split, train=False, transform=None)  # PIL images, saved as thumbnails
        class_names = [str(c) for c in getattr(gallery, "class_names", [])]
        source = {"dataset": cfg.data.dataset, "split": split}
        if paths is not None:  # files: read them here, so that an unreadable one is left out, not replaced
            gallery = GalleryFiles(paths, dataset_labels(gallery), transform, mode)
    out = Path(out)
    _prepare_out(out)
    emb, labels = embed(model, eval_loader(gallery, cfg, DistContext(device=dev)), device=dev)
    if paths is not None:
        emb, labels, paths = _drop_unreadable(emb, labels, paths)
    if raw is not None:
        (out / THUMBS_DIR).mkdir()
        for i in range(len(raw)):
            raw[i][0].save(out / THUMBS_DIR / f"{i:06d}.png")
    from deepmetric.train.checkpoint import load_checkpoint, save_checkpoint

    signature = model_signature(cfg, model)
    state = load_checkpoint(checkpoint, map_location="cpu")
    save_checkpoint({"model": state["model"], "config": state["config"], "model_signature": signature}, out / MODEL_FILE)
    metadata = {
        "labels": [int(v) for v in labels.tolist()],
        "class_names": class_names,
        "paths": paths,
        "thumbnails": THUMBS_DIR if raw is not None else None,
        "image_mode": mode,
        "in_chans": in_chans,
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
        from deepmetric.train.loop import model_signature

        self.dir = Path(index_dir)
        self.index = SearchIndex.load(self.dir)
        model_path = self.dir / MODEL_FILE
        if not model_path.is_file():
            raise SearchIndexError(f"{self.dir} has no {MODEL_FILE} (the model that embeds queries); rebuild it with `deepmetric index build --checkpoint CKPT --out {self.dir}`")
        self.model, self.cfg, self.device = load_embedding_model(model_path, device=device)
        self.index.check_model(model_signature(self.cfg, self.model), source=str(model_path))
        self.mode = image_mode(int(getattr(self.model, "in_chans", 3)))
        self.transform = eval_transform(self.cfg)
        meta = self.index.metadata
        thumbs = meta.get("thumbnails")
        self.thumbs_dir = (self.dir / thumbs) if thumbs else None
        self._thumbnail = lru_cache(maxsize=512)(self._make_thumbnail)

    def __len__(self) -> int:
        return len(self.index)

    @torch.no_grad()
    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(n, d) embeddings of PIL images (any mode: converted like the gallery images were)."""
        from deepmetric.data.base import to_mode

        batch = torch.stack([self.transform(to_mode(im, self.mode)) for im in images]).to(self.device)
        return self.model(batch).float().cpu()

    def item(self, i: int) -> Dict[str, Any]:
        """What is known about gallery item ``i``: id, label (None if unknown), class name, file name."""
        meta = self.index.metadata
        labels, names, paths = meta.get("labels"), meta.get("class_names") or [], meta.get("paths")
        label = labels[i] if labels is not None and labels[i] >= 0 else None
        return {
            "id": int(i),
            "label": label,
            "class_name": names[label] if label is not None and label < len(names) else None,
            "name": Path(paths[i]).name if paths else f"{i:06d}.png",
        }

    def search(self, images: Sequence[Image.Image], k: int) -> List[List[Dict[str, Any]]]:
        """For each image, its top-k gallery items (``item`` fields plus ``rank``, cosine ``score`` and
        ``match``), best first. ``match`` is ``score >= threshold`` when the index is calibrated
        (``deepmetric calibrate``), else None; a query whose first result is not a match has no match."""
        if not images:
            return []
        scores, ids = self.index.search(self.embed_images(images), k)
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
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} does not exist; the index holds items 0..{len(self) - 1}")
        return self._thumbnail(int(i))

    def _make_thumbnail(self, i: int) -> tuple[bytes, str]:
        from deepmetric.data.base import load_image

        if self.thumbs_dir is not None:
            return (self.thumbs_dir / f"{i:06d}.png").read_bytes(), "image/png"
        path = Path(self.index.metadata["paths"][i])
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


def search_images(index_dir: str | os.PathLike, image_paths: Sequence[str | os.PathLike], k: int = 10, *, device: str = "auto") -> List[List[Dict[str, Any]]]:
    """Top-k gallery items of each image file (see :meth:`IndexSearcher.search`)."""
    from deepmetric.data.base import load_image

    searcher = IndexSearcher(index_dir, device=device)
    images = []
    for p in image_paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"query image {str(p)!r} does not exist")
        images.append(load_image(Path(p), searcher.mode))
    return searcher.search(images, k)
