"""Batch samplers: P classes × K samples per batch (supervised) and plain random batches (unsupervised).

Both are batch samplers (``DataLoader(ds, batch_sampler=...)``): iterating yields lists of dataset
indices. Their randomness comes only from a private ``torch.Generator`` seeded from ``(seed, epoch)``,
so the sequence of an epoch is a pure function of those two numbers; ``set_epoch(e)`` selects it.

Distributed rule (the same for both samplers). Every rank computes the same GLOBAL sequence of G
batches for the epoch; rank r of W takes global batches r, r+W, r+2W, … — i.e. global batch
``r + i·W`` is its i-th batch. Every rank yields the same number of batches:

* ``drop_last=True``: ⌊G/W⌋ batches each; the last G mod W global batches are used by nobody, so the
  ranks' batches are pairwise disjoint and together they are exactly the first W·⌊G/W⌋ global batches.
* ``drop_last=False``: ⌈G/W⌉ batches each; global batch indices wrap around (``(r + i·W) mod G``), so the
  ranks together cover all G batches and a few ranks repeat batches from the start of the epoch.

(With ``world_size=1`` a rank yields the global sequence itself; the training loop may instead draw
global batches of W× the per-process size and slice each one across ranks.)
"""
from __future__ import annotations

import abc
import hashlib
import math
import warnings
from collections import deque
from typing import Deque, Iterator, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler

from deepmetric.registry import SAMPLERS


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator seeded from (seed, epoch) by a stable hash (same value on every process)."""
    h = hashlib.blake2b(f"sampler:{seed}:{epoch}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(h, "little") & ((1 << 63) - 1))


def _check_rank(name: str, rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"{name}: rank={rank}, world_size={world_size}; need world_size >= 1 and 0 <= rank < world_size")


def _rank_share(num_global: int, rank: int, world_size: int, drop_last: bool) -> List[int]:
    """Global batch numbers that ``rank`` takes, in order (see the module docstring)."""
    if num_global == 0:
        return []
    if drop_last:
        return [rank + i * world_size for i in range(num_global // world_size)]
    return [(rank + i * world_size) % num_global for i in range(math.ceil(num_global / world_size))]


class _EpochSampler(Sampler, abc.ABC):
    """What both batch samplers share: epochs, and each rank's share of the global batch sequence."""

    seed: int
    rank: int
    world_size: int
    drop_last: bool
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the batch sequence of ``epoch`` (deterministic; differs between epochs)."""
        self.epoch = int(epoch)

    @abc.abstractmethod
    def num_global_batches(self) -> int:
        """Batches one process would draw per epoch with the global batch size."""

    @abc.abstractmethod
    def global_batches(self, epoch: Optional[int] = None) -> List[List[int]]:
        """The epoch's global batches (lists of dataset indices), the same on every rank."""

    def __len__(self) -> int:
        g = self.num_global_batches()
        return g // self.world_size if self.drop_last else math.ceil(g / self.world_size)

    def __iter__(self) -> Iterator[List[int]]:
        batches = self.global_batches()
        for b in _rank_share(len(batches), self.rank, self.world_size, self.drop_last):
            yield batches[b]


@SAMPLERS.register("m_per_class")
class MPerClassSampler(_EpochSampler):
    """Batches of P classes × K samples: ``classes_per_batch`` distinct classes, ``samples_per_class`` each.

    Within an epoch, classes are visited in shuffled rounds (every usable class once per round; P distinct
    classes per batch) and each class's samples are drawn from its own shuffled cycle, so all samples of a
    class are used before any repeats. A batch lists its classes one after another (K indices each), so
    any contiguous slice of K·j indices holds whole classes.

    A class with fewer than K samples is sampled with replacement (all its samples, then random repeats);
    such classes are reported once in a warning. When K ≥ 2, classes with a single sample are left out
    (they can never give a positive pair) and reported in the same warning.

    Args:
        labels: (N,) class label of every dataset item (any integers).
        classes_per_batch: P.
        samples_per_class: K.
        num_batches: global batches per epoch; default ⌊N / (P·K)⌋ (about one pass over the data), at least 1.
        seed: base seed of the per-epoch generator.
        rank, world_size: this process and the number of processes (module docstring).
        drop_last: how the global batches are shared among ranks (module docstring).
    """

    def __init__(self, labels: Sequence[int], *, classes_per_batch: int, samples_per_class: int, num_batches: Optional[int] = None,
                 seed: int = 0, rank: int = 0, world_size: int = 1, drop_last: bool = True) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.size == 0:
            raise ValueError(f"MPerClassSampler: labels must be a non-empty 1-D array, got shape {labels.shape}")
        if classes_per_batch < 1 or samples_per_class < 1:
            raise ValueError(f"MPerClassSampler: classes_per_batch={classes_per_batch} and samples_per_class={samples_per_class} must be >= 1")
        if num_batches is not None and num_batches < 1:
            raise ValueError(f"MPerClassSampler: num_batches={num_batches} must be >= 1 (or None for one pass over the data)")
        _check_rank("MPerClassSampler", rank, world_size)
        P, K, N = classes_per_batch, samples_per_class, len(labels)
        if P * K > N:
            raise ValueError(
                f"MPerClassSampler: a batch of classes_per_batch × samples_per_class = {P} × {K} = {P * K} is larger than "
                f"the dataset ({N} items); lower the batch size or use a larger dataset"
            )
        classes, inverse = np.unique(labels, return_inverse=True)
        members = [np.flatnonzero(inverse == c) for c in range(len(classes))]
        min_count = 2 if K >= 2 else 1
        singletons = [int(classes[c]) for c, m in enumerate(members) if len(m) < min_count]
        self.class_indices = [m for m in members if len(m) >= min_count]
        self.class_labels = [int(classes[c]) for c, m in enumerate(members) if len(m) >= min_count]
        if len(self.class_indices) < P:
            raise ValueError(
                f"MPerClassSampler: classes_per_batch={P} but only {len(self.class_indices)} class(es) have at least {min_count} "
                f"sample(s) ({len(classes)} classes in all); lower classes_per_batch (batch_size / samples_per_class) to at most "
                f"{len(self.class_indices)}, or use a dataset with more classes"
            )
        short = [(lab, len(m)) for lab, m in zip(self.class_labels, self.class_indices) if len(m) < K]
        if short or singletons:
            msg = f"MPerClassSampler: samples_per_class={K}, but "
            parts = []
            if short:
                parts.append(f"{len(short)} class(es) have fewer samples and are sampled with replacement (e.g. class, count: {short[:5]})")
            if singletons:
                parts.append(f"{len(singletons)} class(es) with a single sample are left out (e.g. {singletons[:5]})")
            warnings.warn(msg + "; ".join(parts), stacklevel=2)
        self.classes_per_batch, self.samples_per_class = P, K
        self.num_batches = num_batches
        self.num_items = N
        self.seed, self.rank, self.world_size, self.drop_last = int(seed), int(rank), int(world_size), bool(drop_last)
        self.epoch = 0

    def num_global_batches(self) -> int:
        return self.num_batches if self.num_batches is not None else max(1, self.num_items // (self.classes_per_batch * self.samples_per_class))

    def global_batches(self, epoch: Optional[int] = None) -> List[List[int]]:
        """Every global batch of ``epoch`` (default: the current one), as lists of dataset indices."""
        g = epoch_generator(self.seed, self.epoch if epoch is None else epoch)
        P, K, C = self.classes_per_batch, self.samples_per_class, len(self.class_indices)
        cycles: List[np.ndarray] = [np.empty(0, dtype=np.int64)] * C
        cursor = [0] * C
        order: Deque[int] = deque()
        batches: List[List[int]] = []
        for _ in range(self.num_global_batches()):
            # Next P classes of the shuffled rounds; a new round never repeats a class still in this batch.
            chosen: List[int] = []
            while len(chosen) < P:
                if not order:
                    perm = torch.randperm(C, generator=g).tolist()
                    order = deque([c for c in perm if c not in chosen] + [c for c in perm if c in chosen])
                chosen.append(order.popleft())
            batch: List[int] = []
            for c in chosen:
                m = self.class_indices[c]
                if len(m) < K:
                    extra = torch.randint(len(m), (K - len(m),), generator=g).numpy()
                    pick = np.concatenate([m[torch.randperm(len(m), generator=g).numpy()], m[extra]])
                else:
                    take = []
                    while len(take) < K:
                        if cursor[c] >= len(cycles[c]):
                            cycles[c] = m[torch.randperm(len(m), generator=g).numpy()]
                            cursor[c] = 0
                            # a fresh cycle must not hand back a sample already in this group
                            if take:
                                rest = [i for i in cycles[c] if i not in take]
                                cycles[c] = np.array(rest + [i for i in cycles[c] if i in take], dtype=np.int64)
                        n = min(K - len(take), len(cycles[c]) - cursor[c])
                        take.extend(int(i) for i in cycles[c][cursor[c]:cursor[c] + n])
                        cursor[c] += n
                    pick = np.array(take)
                batch.extend(int(i) for i in pick)
            batches.append(batch)
        return batches


@SAMPLERS.register("random")
class RandomBatchSampler(_EpochSampler):
    """Random batches over ``range(n)``: a fresh permutation per epoch cut into batches of ``batch_size``.

    For unsupervised training (no labels are read). Global batches are the consecutive chunks of the
    epoch's permutation: ⌊n / batch_size⌋ full ones, plus the partial last one when ``drop_last`` is False.

    Args:
        n: dataset size.
        batch_size: items per batch.
        seed, rank, world_size, drop_last: as :class:`MPerClassSampler` (module docstring).
    """

    def __init__(self, n: int, *, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1, drop_last: bool = True) -> None:
        if batch_size < 1:
            raise ValueError(f"RandomBatchSampler: batch_size={batch_size} must be >= 1")
        if batch_size > n:
            raise ValueError(f"RandomBatchSampler: batch_size={batch_size} is larger than the dataset ({n} items); lower the batch size")
        _check_rank("RandomBatchSampler", rank, world_size)
        self.n, self.batch_size = int(n), int(batch_size)
        self.seed, self.rank, self.world_size, self.drop_last = int(seed), int(rank), int(world_size), bool(drop_last)
        self.epoch = 0

    def num_global_batches(self) -> int:
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    def global_batches(self, epoch: Optional[int] = None) -> List[List[int]]:
        """Every global batch of ``epoch`` (default: the current one)."""
        perm = torch.randperm(self.n, generator=epoch_generator(self.seed, self.epoch if epoch is None else epoch)).tolist()
        bs = self.batch_size
        return [perm[i * bs:(i + 1) * bs] for i in range(self.num_global_batches())]
