"""The loop's data plumbing: datasets, samplers and loaders built from the config.

Augmentation randomness is a pure function of (run seed, epoch, position in the epoch): every item is
transformed under a private RNG seeded from those three numbers. A resumed run, a run with more loader
workers or a run on more processes therefore sees exactly the same augmented images.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Iterator, List, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from deepmetric.config import RunConfig
from deepmetric.data.build import build_dataset
from deepmetric.data.samplers import MPerClassSampler, RandomBatchSampler
from deepmetric.data.transforms import build_transform
from deepmetric.data.two_view import TwoViewDataset
from deepmetric.distributed import DistContext


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
