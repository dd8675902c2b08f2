"""Datasets from a run config: ``build_dataset(cfg, split, train=...)`` with the recipe's transform.

Used by training, evaluation, indexing and reports alike. ``data.val_split: holdout`` carves a validation
split out of the training classes (:func:`holdout_classes`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, List, Sequence, Tuple

import numpy as np
from torch.utils.data import Dataset

from deepmetric.registry import DATASETS

if TYPE_CHECKING:  # the config module (pydantic) is not needed to import deepmetric.data
    from deepmetric.config import RunConfig


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
    d = cfg.data
    if transform == "default":
        from deepmetric.data.transforms import build_transform  # here: torchvision imports in seconds

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
