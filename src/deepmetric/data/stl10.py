"""STL-10 (Coates, Lee, Ng 2011) from the official binary files (SPEC §1, §7)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, List, Optional

import numpy as np

from deepmetric.data.base import ArrayDataset, DatasetError, check_split, missing_file_error
from deepmetric.registry import DATASETS

LAYOUT = """\
<root>/                    (or <root> = stl10_binary/ itself)
  stl10_binary/
    train_X.bin  train_y.bin     uint8 images (N × 3 × 96 × 96, each channel COLUMN-major) and labels 1..10
    test_X.bin   test_y.bin
    unlabeled_X.bin              100,000 images, no labels
    class_names.txt              one name per line
"""

_SIDE = 96
_IMAGE_BYTES = 3 * _SIDE * _SIDE


def decode_stl10(raw: np.ndarray) -> np.ndarray:
    """STL-10 bytes -> images.

    Args:
        raw: (N·27648,) uint8, as stored: per image 3 channel planes, each 96×96 in column-major order
            (byte ``c·9216 + x·96 + y`` is channel c at column x, row y).

    Returns:
        (N, 96, 96, 3) uint8 array indexed [image, row, column, channel] (a view when possible).
    """
    # reshape gives [n, c, x, y]; transpose to [n, y, x, c].
    return raw.reshape(-1, 3, _SIDE, _SIDE).transpose(0, 3, 2, 1)


@DATASETS.register("stl10")
class STL10(ArrayDataset):
    """STL-10: 96×96 RGB images of 10 classes; labelled train/test sets and a 100,000-image unlabeled set.

    Splits: "train" (5,000), "test" (8,000), "unlabeled" (100,000), "train+unlabeled" (105,000; the
    paper's 105K training set for unsupervised learning). Labels 1..10 in the files become 0..9.
    Unlabeled images have NO label: they get label 0 and ``is_labeled`` False (``is_labeled`` is a boolean
    array over the split; ``has_labels`` says whether every item is labelled). Use them only for
    unsupervised training (TwoViewDataset never exposes labels); never evaluate on them.
    The image files are memory-mapped, so the 2.7 GB unlabeled file is not read into memory.

    Args:
        root: the folder holding ``stl10_binary/``, or that folder itself.
        split: "train", "test", "unlabeled" or "train+unlabeled".
        transform: applied to each RGB PIL image.
        strict: accepted for the common signature (decoded arrays cannot be unreadable).
    """

    splits = ("train", "test", "unlabeled", "train+unlabeled")
    expected_counts = {"train": 5000, "test": 8000, "unlabeled": 100000, "train+unlabeled": 105000}
    expected_classes = {"train": 10, "test": 10, "unlabeled": 10, "train+unlabeled": 10}

    def __init__(self, root: Any, split: str, transform: Optional[Callable] = None, *, strict: bool = False) -> None:
        super().__init__(root, split, transform, strict=strict)
        check_split("STL10", split, self.splits)
        if self.root is None:
            raise ValueError("STL10: root is None; set data.root to the folder holding stl10_binary/")
        base = self.root / "stl10_binary" if (self.root / "stl10_binary").is_dir() else self.root
        self._image_files: List[Path] = []
        self._images: Any = None
        labels: List[np.ndarray] = []
        labeled: List[np.ndarray] = []
        for part in split.split("+"):
            x_path = base / f"{part}_X.bin"
            n = self._count_images(x_path)
            self._image_files.append(x_path)
            if part == "unlabeled":
                labels.append(np.zeros(n, dtype=np.int64))
                labeled.append(np.zeros(n, dtype=bool))
            else:
                labels.append(self._labels(base / f"{part}_y.bin", n))
                labeled.append(np.ones(n, dtype=bool))
        self.labels = np.concatenate(labels)
        self.is_labeled = np.concatenate(labeled)
        names_path = base / "class_names.txt"
        if not names_path.is_file():
            raise missing_file_error("STL10", names_path, LAYOUT)
        self.class_names = [ln.strip() for ln in names_path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if len(self.class_names) != 10:
            raise DatasetError(f"STL10: {names_path} lists {len(self.class_names)} class names; expected 10")

    @property
    def has_labels(self) -> bool:
        return bool(self.is_labeled.all())

    @property
    def images(self) -> Any:  # type: ignore[override]
        """(N, 96, 96, 3) uint8 images, memory-mapped on first use (after pickling into a worker, too)."""
        if self._images is None:
            parts = [decode_stl10(np.memmap(p, dtype=np.uint8, mode="r")) for p in self._image_files]
            self._images = parts[0] if len(parts) == 1 else _Concat(parts)
        return self._images

    def __getstate__(self) -> dict:
        # DataLoader workers (spawn) get the file names, not a pickled copy of the mapped gigabytes.
        state = self.__dict__.copy()
        state["_images"] = None
        return state

    @staticmethod
    def _count_images(path: Path) -> int:
        if not path.is_file():
            raise missing_file_error("STL10", path, LAYOUT)
        size = path.stat().st_size
        if size == 0 or size % _IMAGE_BYTES:
            raise DatasetError(f"STL10: {path} has {size} bytes, not a positive multiple of {_IMAGE_BYTES} (one 3×96×96 image); the file is truncated")
        return size // _IMAGE_BYTES

    @staticmethod
    def _labels(path: Path, n: int) -> np.ndarray:
        if not path.is_file():
            raise missing_file_error("STL10", path, LAYOUT)
        y = np.fromfile(path, dtype=np.uint8).astype(np.int64)
        if len(y) != n or (n and not 1 <= y.min() <= y.max() <= 10):
            raise DatasetError(f"STL10: {path} holds {len(y)} labels in {y.min() if len(y) else '-'}..{y.max() if len(y) else '-'}; expected {n} labels in 1..10 (one per image)")
        return y - 1


class _Concat:
    """Index-only concatenation of memory-mapped image arrays (avoids copying 2.7 GB)."""

    def __init__(self, parts: List[np.ndarray]) -> None:
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, i: int) -> np.ndarray:
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return self.parts[k][i - self.offsets[k]]
