"""CIFAR-10 (Krizhevsky 2009) from the official python pickles (SPEC §1, §7)."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np

from deepmetric.data.base import ArrayDataset, DatasetError, check_split, missing_file_error
from deepmetric.registry import DATASETS

LAYOUT = """\
<root>/                    (or <root> = cifar-10-batches-py/ itself)
  cifar-10-batches-py/
    data_batch_1 … data_batch_5   pickles {b"data": uint8 (10000, 3072) rows R…G…B…, b"labels": [0..9]}
    test_batch                    same
    batches.meta                  pickle {b"label_names": [b"airplane", …]}
"""


def _unpickle(path: Path) -> Dict[Any, Any]:
    if not path.is_file():
        raise missing_file_error("CIFAR10", path, LAYOUT)
    try:
        with open(path, "rb") as f:
            # The official files are Python-2 pickles of bytes keys; they are local files the user unpacked.
            return pickle.load(f, encoding="bytes")
    except Exception as e:  # noqa: BLE001 - a damaged pickle raises many different types
        raise DatasetError(f"CIFAR10: cannot unpickle {path} ({type(e).__name__}: {e}); re-extract the official python archive. Expected layout:\n{LAYOUT}") from e


def _get(d: Dict[Any, Any], key: str, path: Path) -> Any:
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise DatasetError(f"CIFAR10: {path} has no {key!r} entry (keys: {sorted(map(str, d))}); expected layout:\n{LAYOUT}")


@DATASETS.register("cifar10")
class CIFAR10(ArrayDataset):
    """CIFAR-10: 50,000 training and 10,000 test 32×32 RGB images of 10 classes (seen-class protocol).

    Args:
        root: the folder holding ``cifar-10-batches-py/``, or that folder itself.
        split: "train" (data_batch_1..5) or "test" (test_batch).
        transform: applied to each RGB PIL image.
        strict: accepted for the common signature (decoded arrays cannot be unreadable).
    """

    splits = ("train", "test")
    expected_counts = {"train": 50000, "test": 10000}
    expected_classes = {"train": 10, "test": 10}

    def __init__(self, root: Any, split: str, transform: Optional[Callable] = None, *, strict: bool = False) -> None:
        super().__init__(root, split, transform, strict=strict)
        check_split("CIFAR10", split, self.splits)
        if self.root is None:
            raise ValueError("CIFAR10: root is None; set data.root to the folder holding cifar-10-batches-py/")
        base = self.root / "cifar-10-batches-py" if (self.root / "cifar-10-batches-py").is_dir() else self.root
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        images, labels = [], []
        for name in files:
            d = _unpickle(base / name)
            data = np.asarray(_get(d, "data", base / name), dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3072:
                raise DatasetError(f"CIFAR10: {base / name} holds data of shape {data.shape}; expected (N, 3072) uint8")
            # Each row is the R plane, then G, then B, each 32×32 row-major: (N, 3, 32, 32) -> (N, 32, 32, 3).
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(np.asarray(_get(d, "labels", base / name), dtype=np.int64))
        self.images = np.ascontiguousarray(np.concatenate(images))
        self.labels = np.concatenate(labels)
        meta = base / "batches.meta"
        names = _get(_unpickle(meta), "label_names", meta)
        self.class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        if len(self.labels) != len(self.images) or (len(self.labels) and not 0 <= self.labels.min() <= self.labels.max() < len(self.class_names)):
            raise DatasetError(f"CIFAR10: labels under {base} do not match the images or the {len(self.class_names)} class names")
