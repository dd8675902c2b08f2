"""The loop's data plumbing: datasets, samplers and loaders built from the config.

Augmentation randomness is a pure function of (run seed, epoch, position in the epoch): every item is
transformed under a private RNG seeded from those three numbers. A resumed run, a run with more loader
workers or a run on more processes therefore sees exactly the same augmented images.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from deepmetric.config import RunConfig
from deepmetric.registry import DATASETS
from deepmetric.train.distributed import DistContext


def item_seed(seed: int, epoch: int, position: int) -> int:
    """A 63-bit seed for one item of one epoch (stable across processes and Python versions)."""
    h = hashlib.blake2b(f"{seed}:{epoch}:{position}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


class SeededItems(Dataset):
    """Wraps a dataset so that ``ds[(index, seed)]`` runs its transforms under a private RNG."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


class EpochBatches(Sampler):
    """Turns a sampler's GLOBAL batches into this process's share, as lists of (index, item seed).

    The sampler produces the batches one process would use with batch size ``batch_size × world_size``;
    process r takes the r-th contiguous slice of each (m-per-class batches are class-grouped, so every
    slice holds whole classes). Item seeds depend on the global position, so N processes see exactly the
    images and augmentations that one process would, and the gathered batch equals the single-process one.
    ``start`` skips the first batches of an epoch (resuming mid-epoch).
    """

    def __init__(self, batch_sampler: Any, *, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.batch_sampler = batch_sampler
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch
        self.start = start
        self.batch_sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return max(0, len(self.batch_sampler) - self.start)

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        for b, batch in enumerate(self.batch_sampler):
            if b < self.start:
                continue
            per = len(batch) // self.world_size
            lo = self.rank * per
            base = b * 1_000_003
            yield [(int(batch[j]), item_seed(self.seed, self.epoch, base + j)) for j in range(lo, lo + per)]


class ClassSubset(Dataset):
    """The items of ``dataset`` whose label is in ``classes``, relabelled 0..len(classes)−1."""

    def __init__(self, dataset: Any, classes: Sequence[int]) -> None:
        self.dataset = dataset
        classes = [int(c) for c in classes]
        remap = {c: i for i, c in enumerate(classes)}
        labels = np.asarray(dataset.labels)
        self.indices = np.flatnonzero(np.isin(labels, classes))
        self.labels = np.array([remap[int(c)] for c in labels[self.indices]], dtype=np.int64)
        names = list(getattr(dataset, "class_names", range(len(labels))))
        self.class_names = [names[c] for c in classes]
        self.num_classes = len(classes)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        image, _ = self.dataset[int(self.indices[i])]
        return image, int(self.labels[i])


def holdout_classes(num_classes: int, fraction: float) -> Tuple[List[int], List[int]]:
    """(training classes, validation classes): the last ``fraction`` of class ids (at least 2) are held out."""
    n_val = max(2, int(round(num_classes * fraction)))
    if num_classes - n_val < 2:
        raise ValueError(f"cannot hold out {n_val} of {num_classes} training classes for validation; set data.val_split to a split name or null")
    return list(range(num_classes - n_val)), list(range(num_classes - n_val, num_classes))


def build_dataset(cfg: RunConfig, split: str, *, train: bool, transform: Any = "default") -> Dataset:
    """The dataset ``cfg.data.dataset`` for ``split`` with the train or eval transform of its recipe.

    With ``data.val_split: holdout`` the training split loses its last classes, which form split "holdout".
    """
    from deepmetric.data.transforms import build_transform

    d = cfg.data
    if transform == "default":
        transform = build_transform(d.transform, train=train, image_size=d.image_size, resize=d.resize, crop_scale=d.crop_scale)
    cls = DATASETS.get(d.dataset)
    holdout = d.val_split == "holdout" and split in ("holdout", d.train_split)
    ds = cls(d.root, d.train_split if holdout else split, transform=transform, strict=d.strict_images)
    if holdout:
        keep, val = holdout_classes(int(ds.num_classes), d.holdout_fraction)
        ds = ClassSubset(ds, val if split == "holdout" else keep)
    check_labels(ds, f"dataset {d.dataset!r} split {split!r}")
    return ds


def check_labels(dataset: Any, where: str) -> None:
    """Every label must be an integer in 0..num_classes−1 (the dataset contract); say which are not.

    Proxy losses index their (C, d) proxies with the labels: a label outside the range is an opaque index
    error (or a device-side assert on a GPU) in the middle of training, so it is refused up front.
    """
    labels = np.asarray(dataset.labels)
    num_classes = int(dataset.num_classes)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{where}: labels must be a 1-D integer array, got dtype {labels.dtype} and shape {labels.shape}")
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        raise ValueError(
            f"{where}: {len(bad)} label(s) outside 0..{num_classes - 1} (num_classes={num_classes}); labels found in "
            f"{int(labels.min())}..{int(labels.max())}, first bad item {int(bad[0])} has label {int(labels[bad[0]])}. "
            "A dataset must remap its classes to 0..C-1 within each split (deepmetric.data.base.remap_labels)."
        )


@dataclass
class TrainData:
    dataset: Dataset
    loader: DataLoader
    batches: EpochBatches
    labels: np.ndarray
    num_classes: int
    unsupervised: bool


def build_train_data(cfg: RunConfig, ctx: DistContext, *, unsupervised: bool) -> TrainData:
    """Training loader: P×K batches (supervised) or random batches of two-view instances (unsupervised)."""
    from deepmetric.data.samplers import MPerClassSampler, RandomBatchSampler
    from deepmetric.data.transforms import build_transform
    from deepmetric.data.two_view import TwoViewDataset

    d = cfg.data
    if unsupervised:
        base = build_dataset(cfg, d.train_split, train=True, transform=None)
        dataset: Dataset = TwoViewDataset(base, build_transform(d.transform, train=True, image_size=d.image_size, resize=d.resize, crop_scale=d.crop_scale))
    else:
        base = build_dataset(cfg, d.train_split, train=True)
        dataset = base
    labels = np.asarray(base.labels)
    n = len(labels) if d.max_train_items is None else min(len(labels), d.max_train_items)
    # data.batch_size is per process; the sampler draws global batches that EpochBatches slices per rank.
    global_batch = d.batch_size * ctx.world_size
    if unsupervised or d.sampler == "random":
        sampler: Any = RandomBatchSampler(n, batch_size=global_batch, seed=cfg.seed)
    else:
        sampler = MPerClassSampler(
            labels[:n],
            classes_per_batch=global_batch // d.samples_per_class,
            samples_per_class=d.samples_per_class,
            seed=cfg.seed,
        )
    batches = EpochBatches(sampler, seed=cfg.seed, rank=ctx.rank, world_size=ctx.world_size)
    loader = DataLoader(
        SeededItems(dataset),
        batch_sampler=batches,
        num_workers=d.num_workers,
        pin_memory=ctx.device.type == "cuda",
        persistent_workers=d.num_workers > 0 and not unsupervised,  # two-view datasets change per epoch
    )
    return TrainData(dataset, loader, batches, labels, int(base.num_classes), unsupervised)


def eval_loader(dataset: Dataset, cfg: RunConfig, ctx: DistContext, indices: Optional[Sequence[int]] = None) -> DataLoader:
    """A plain ordered loader over ``dataset`` (eval transform, no augmentation randomness)."""
    if indices is not None:
        dataset = torch.utils.data.Subset(dataset, list(indices))
    return DataLoader(dataset, batch_size=cfg.eval.batch_size, shuffle=False, num_workers=cfg.data.num_workers, pin_memory=ctx.device.type == "cuda")
