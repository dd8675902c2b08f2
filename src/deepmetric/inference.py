"""A trained model as a function from images to embeddings: deepmetric's one inference layer.

:class:`Embedder` carries a model in eval mode with what it takes to feed it: the run config, the
evaluation transform of the recipe, the PIL mode of its input ("L" for one channel, "RGB" for three), its
device and autocast dtype, and the process context. :meth:`Embedder.from_checkpoint` loads a checkpoint
written by training, or an index folder's ``model.pt``, WITHOUT any dataset present: the input channels
come from the model signature stored in the checkpoint. It embeds PIL images, folders of image files and
datasets (each process of a ``torchrun`` job embeds a shard; the shards are gathered).

The training loop validates with the same :func:`embed_dataset` and :func:`evaluate_split`; ``deepmetric
eval/embed``, ``index build``, ``search``, ``serve``, ``report`` and ``export`` load models through
:class:`Embedder`.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from deepmetric.checkpoint import check_compatible, load_checkpoint
from deepmetric.config import RunConfig, build_config
from deepmetric.data.base import IMAGE_EXTENSIONS, load_image, to_mode
from deepmetric.data.build import build_dataset
from deepmetric.data.transforms import build_transform
from deepmetric.distributed import DistContext, cleanup, gather_nograd, init_distributed, resolve_device
from deepmetric.models import build_model, model_signature
from deepmetric.retrieval import embed, knn_accuracy, retrieval_metrics

# ------------------------------------------------------------------------------------ model and inputs


def build_embedding_model(cfg: RunConfig, in_chans: int) -> nn.Module:
    """The embedding model the config describes, for images with ``in_chans`` channels."""
    m = cfg.model
    return build_model(
        m.backbone,
        embedding_dim=m.embedding_dim,
        pretrained=m.pretrained,
        pooling=m.pooling,
        head_norm=m.head_norm,
        head_init=m.head_init,
        frozen=m.frozen,
        normalize=m.normalize,
        freeze_bn=m.freeze_bn,
        in_chans=in_chans,
    )


def eval_transform(cfg: RunConfig) -> Callable:
    """The evaluation transform of the config's recipe (what every gallery item and query goes through)."""
    d = cfg.data
    return build_transform(d.transform, train=False, image_size=d.image_size, resize=d.resize)


def image_mode(in_chans: int) -> str:
    """PIL mode the model's transform expects: "L" for one input channel, "RGB" for three."""
    if in_chans not in (1, 3):
        raise ValueError(f"models with {in_chans} input channels cannot be fed images; expected 1 (grayscale) or 3 (RGB)")
    return "L" if in_chans == 1 else "RGB"


def amp_dtype(cfg: RunConfig) -> Optional[torch.dtype]:
    """The autocast dtype of ``train.amp`` (None = float32): evaluation runs like training does."""
    return None if cfg.train.amp == "none" else (torch.bfloat16 if cfg.train.amp == "bf16" else torch.float16)


# ------------------------------------------------------------------------------------ embedding datasets


def eval_loader(dataset: Dataset, cfg: RunConfig, ctx: DistContext, indices: Optional[Sequence[int]] = None) -> DataLoader:
    """A plain ordered loader over ``dataset`` (or its ``indices``), batches of ``eval.batch_size``."""
    if indices is not None:
        dataset = Subset(dataset, list(indices))
    return DataLoader(dataset, batch_size=cfg.eval.batch_size, shuffle=False, num_workers=cfg.data.num_workers,
                      pin_memory=ctx.device.type == "cuda")


@torch.no_grad()
def embed_dataset(model: nn.Module, dataset: Dataset, cfg: RunConfig, ctx: DistContext, *,
                  on_device: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """(embeddings (N, d) float32, labels (N,) int64) of ``dataset`` in order, on the CPU, or on
    ``ctx.device`` with ``on_device`` (evaluation on a GPU then searches there: retrieval's torch engine).

    With several processes each embeds a contiguous shard (the last one padded by repeating the last item)
    and every process receives the gathered result.
    """
    n = len(dataset)  # type: ignore[arg-type]
    dtype = amp_dtype(cfg)
    if not ctx.enabled:
        return embed(model, eval_loader(dataset, cfg, ctx), device=ctx.device, amp_dtype=dtype, keep_on_device=on_device)
    per = math.ceil(n / ctx.world_size)
    idx = [min(i, n - 1) for i in range(ctx.rank * per, (ctx.rank + 1) * per)]
    emb, lab = embed(model, eval_loader(dataset, cfg, ctx, idx), device=ctx.device, amp_dtype=dtype, keep_on_device=True)
    emb = gather_nograd(emb.to(ctx.device), ctx)[:n]
    lab = gather_nograd(lab.to(ctx.device), ctx)[:n]
    return (emb if on_device else emb.cpu()), lab.cpu()


def evaluate_split(model: nn.Module, cfg: RunConfig, ctx: DistContext, dataset: Dataset, *,
                   memory: Optional[Dataset] = None) -> Dict[str, float]:
    """Retrieval metrics of ``dataset`` (and weighted kNN accuracy when ``eval.knn_accuracy``).

    Args:
        model: the embedding model (unwrapped from DDP / compile).
        dataset: the evaluated split with the evaluation transform; query/gallery masks when it has them.
        memory: the training split with the evaluation transform, the kNN classifier's memory when the
            evaluated classes are the training classes; built from the config when needed and not given.
    """
    emb, labels = embed_dataset(model, dataset, cfg, ctx, on_device=True)  # a GPU's embeddings are searched there
    masks = {}
    if getattr(dataset, "is_query", None) is not None:
        masks = {"query_mask": np.asarray(dataset.is_query), "gallery_mask": np.asarray(dataset.is_gallery)}
    metrics = retrieval_metrics(emb, labels, ks=tuple(cfg.eval.ks), nmi=cfg.eval.nmi, seed=cfg.seed, **masks)
    if cfg.eval.knn_accuracy:
        if memory is None:
            memory = build_dataset(cfg, cfg.data.train_split, train=False)
        metrics["knn_accuracy"] = _knn_accuracy(model, cfg, ctx, emb, labels, dataset, memory)
    return {k: float(v) for k, v in metrics.items()}


def _knn_accuracy(model: nn.Module, cfg: RunConfig, ctx: DistContext, emb: torch.Tensor, labels: torch.Tensor,
                  dataset: Dataset, memory: Dataset) -> float:
    """Weighted kNN (SPEC §1). Seen classes: the training split is the memory. Unseen classes (the
    evaluated split's classes are not the training classes): leave-one-out over the split itself."""
    k, t = cfg.eval.knn_k, cfg.eval.knn_temperature
    if list(getattr(memory, "class_names", [])) == list(getattr(dataset, "class_names", [None])):
        labeled = getattr(memory, "is_labeled", None)
        if labeled is not None and not bool(np.all(labeled)):
            # e.g. STL-10 train+unlabeled: unlabeled images carry a placeholder label and must not vote
            memory = Subset(memory, np.flatnonzero(labeled).tolist())
        mem_emb, mem_lab = embed_dataset(model, memory, cfg, ctx, on_device=True)
        return float(knn_accuracy(mem_emb, mem_lab, emb, labels, k=k, temperature=t))
    return float(knn_accuracy(emb, labels, emb, labels, k=k, temperature=t, exclude_self=True))


# ------------------------------------------------------------------------------------------ image folders


#: label of an item whose file cannot be decoded; such items are dropped after embedding, never indexed
UNREADABLE = -2


class GalleryFiles(Dataset):
    """Gallery image files with their labels, read with the one loader (:func:`deepmetric.data.base.load_image`).

    Unlike a training dataset, an unreadable file is never replaced by another image (that would index a
    copy's embedding under this file's name): it yields a blank image and the label :data:`UNREADABLE`,
    and the index builder leaves it out of the index with one warning listing them all.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], labels: Sequence[int], transform: Optional[Callable], mode: str) -> None:
        self.paths = [Path(p) for p in paths]
        self.labels = [int(v) for v in labels]
        self.transform = transform
        self.mode = mode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        label = self.labels[i]
        try:
            image: Any = load_image(self.paths[i], self.mode)
        except Exception:  # noqa: BLE001 - missing, empty, truncated, not an image: all "leave it out"
            image, label = Image.new(self.mode, (256, 256)), UNREADABLE
        if self.transform is not None:
            image = self.transform(image)
        return image, label


class ImageDirGallery(GalleryFiles):
    """Every image file under ``root`` (sorted, recursive). An image inside a first-level sub-folder is
    labelled with that folder's name (class folders); an image directly in ``root`` has label −1 (unknown).

    Files that cannot be decoded get the label :data:`UNREADABLE` (see :class:`GalleryFiles`).
    """

    def __init__(self, root: str | os.PathLike, transform: Optional[Callable], mode: str) -> None:
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


# ------------------------------------------------------------------------------------------- the embedder


@dataclass
class Embedder:
    """A trained model ready to embed images: model (eval mode), config, eval transform, input mode, device.

    Build one with :meth:`from_checkpoint` (or directly from a model and its config).
    """

    model: nn.Module
    cfg: RunConfig
    ctx: DistContext = field(default_factory=DistContext)

    def __post_init__(self) -> None:
        self.model.eval()
        self.transform: Callable = eval_transform(self.cfg)
        self.in_chans: int = int(getattr(self.model, "in_chans", 3))
        self.mode: str = image_mode(self.in_chans)

    @property
    def device(self) -> torch.device:
        return self.ctx.device

    @property
    def signature(self) -> Dict[str, Any]:
        """The model signature (what an index or checkpoint is checked against)."""
        return model_signature(self.model)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, overrides: Sequence[str] = (), *, device: str = "auto",
                        ctx: Optional[DistContext] = None) -> "Embedder":
        """Load a checkpoint written by training or an index's ``model.pt``; no dataset needs to exist.

        The model is rebuilt from the stored config with ``model.pretrained=null`` (its weights are
        replaced by the stored ones anyway: nothing is downloaded or read from a pretrained-weights file)
        and the input channels recorded in the stored model signature.

        Args:
            path: the checkpoint file.
            overrides: config overrides such as ``data.root=/data/CUB`` (where splits are read from).
            device: "auto", "cpu" or "cuda" (ignored when ``ctx`` is given).
            ctx: the process context of a ``torchrun`` job, to embed datasets in shards.

        Raises:
            CheckpointError: the file is missing, damaged, not a deepmetric checkpoint, or its weights do
                not fit the model its config describes.
        """
        ctx = ctx or DistContext(device=resolve_device(device))
        state = load_checkpoint(path, map_location=ctx.device)
        cfg = build_config(state["config"], list(overrides) + ["model.pretrained=null"], source=f"{path} (stored config)")
        in_chans = (state.get("model_signature") or {}).get("in_chans")
        if in_chans is None:
            # A checkpoint written before signatures were stored: the only record of the input channels is
            # the data it was trained on, so this (old) case alone needs the dataset.
            in_chans = build_dataset(cfg, cfg.data.test_split, train=False)[0][0].shape[0]
        model = build_embedding_model(cfg, in_chans=int(in_chans)).to(ctx.device)
        check_compatible(state, model_signature(model), str(path))
        model.load_state_dict(state["model"])
        return cls(model, cfg, ctx)

    def dataset(self, split: Optional[str] = None, *, transform: Any = "default") -> Dataset:
        """A split of the config's dataset (default: its test split) with the evaluation transform, or
        ``transform`` (None gives PIL images)."""
        split = split or self.cfg.data.test_split
        return build_dataset(self.cfg, split, train=False, transform=transform)

    def folder(self, root: str | os.PathLike) -> ImageDirGallery:
        """The image files under ``root`` as a dataset fed like this model's inputs (see ImageDirGallery)."""
        return ImageDirGallery(root, self.transform, self.mode)

    def files(self, paths: Sequence[str | os.PathLike], labels: Sequence[int]) -> GalleryFiles:
        """Image files with their labels as a dataset fed like this model's inputs (see GalleryFiles)."""
        return GalleryFiles(paths, labels, self.transform, self.mode)

    def embed_dataset(self, dataset: Dataset) -> Tuple[torch.Tensor, torch.Tensor]:
        """(embeddings (N, d), labels (N,)) of a dataset of (image tensor, label) items, on the CPU."""
        return embed_dataset(self.model, dataset, self.cfg, self.ctx)

    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(n, d) embeddings of PIL images of any mode (converted as the gallery images were), on the CPU."""
        batch = torch.stack([self.transform(to_mode(im, self.mode)) for im in images])
        labels = torch.zeros(len(batch), dtype=torch.long)
        emb, _ = embed(self.model, [(batch, labels)], device=self.device, amp_dtype=amp_dtype(self.cfg))
        return emb

    def embed_files(self, paths: Sequence[str | os.PathLike]) -> torch.Tensor:
        """(n, d) embeddings of image files."""
        images = []
        for p in paths:
            if not Path(p).is_file():
                raise FileNotFoundError(f"image {str(p)!r} does not exist")
            images.append(load_image(Path(p), self.mode))
        return self.embed_images(images)

    def evaluate(self, split: Optional[str] = None) -> Dict[str, float]:
        """Metrics of a split, computed as during training (:func:`evaluate_split`)."""
        return evaluate_split(self.model, self.cfg, self.ctx, self.dataset(split))


def evaluate_checkpoint(checkpoint: str | os.PathLike, *, split: str = "test", overrides: Sequence[str] = (),
                        device: str = "auto") -> Dict[str, float]:
    """Metrics of a checkpoint on a split of its stored config's dataset (sharded under ``torchrun``)."""
    ctx = init_distributed(device)
    try:
        return Embedder.from_checkpoint(checkpoint, overrides, ctx=ctx).evaluate(split)
    finally:
        cleanup(ctx)


def embed_checkpoint(checkpoint: str | os.PathLike, *, split: str = "test", overrides: Sequence[str] = (),
                     device: str = "auto") -> Tuple[torch.Tensor, torch.Tensor]:
    """(embeddings, labels) of a split with a checkpoint's model (sharded under ``torchrun``)."""
    ctx = init_distributed(device)
    try:
        embedder = Embedder.from_checkpoint(checkpoint, overrides, ctx=ctx)
        return embedder.embed_dataset(embedder.dataset(split))
    finally:
        cleanup(ctx)
