"""Cars196 (Stanford Cars, Krause et al. 2013) from ``cars_annos.mat``, DML split by class id (SPEC §7)."""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from deepmetric.data.base import DatasetError, ImageFileDataset, check_split, missing_file_error, remap_labels
from deepmetric.registry import DATASETS

LAYOUT = """\
<root>/
  cars_annos.mat     struct array 'annotations' with fields relative_im_path ("car_ims/000001.jpg"),
                     bbox_x1, bbox_y1, bbox_x2, bbox_y2, class (1..196), test (0/1); cell 'class_names'
  car_ims/000001.jpg … 016185.jpg
"""


@DATASETS.register("cars196")
class Cars196(ImageFileDataset):
    """Cars196, deep-metric-learning protocol.

    Splits: "train" = classes 1–98 (8,054 images), "test" = classes 99–196 (8,131 images), labels remapped
    to 0..97 in each. The ``test`` flag of the annotations (the classification split) is ignored, as in
    every DML paper. ``cars_annos.mat`` is read with ``scipy.io.loadmat``.

    Args:
        root: the folder holding ``cars_annos.mat`` and ``car_ims/``.
        split: "train" or "test".
        transform: applied to each RGB PIL image.
        strict: raise on the first unreadable image instead of substituting one of the same class.
    """

    splits = ("train", "test")
    expected_counts = {"train": 8054, "test": 8131}
    expected_classes = {"train": 98, "test": 98}

    def __init__(self, root: Any, split: str, transform: Optional[Callable] = None, *, strict: bool = False) -> None:
        super().__init__(root, split, transform, strict=strict)
        check_split("Cars196", split, self.splits)
        from scipy.io import loadmat

        mat_path = self.root / "cars_annos.mat"
        if not mat_path.is_file():
            raise missing_file_error("Cars196", mat_path, LAYOUT)
        try:
            mat = loadmat(str(mat_path), squeeze_me=True)
        except Exception as e:  # noqa: BLE001 - scipy raises several types for a damaged file
            raise DatasetError(f"Cars196: cannot read {mat_path} as a MATLAB file ({type(e).__name__}: {e}). Expected layout:\n{LAYOUT}") from e
        ann = mat.get("annotations")
        if ann is None or ann.dtype.names is None or not {"relative_im_path", "class"} <= set(ann.dtype.names):
            found = None if ann is None else ann.dtype.names
            raise DatasetError(
                f"Cars196: {mat_path} has no struct array 'annotations' with fields relative_im_path and class "
                f"(found {found!r}). Expected layout:\n{LAYOUT}"
            )
        ann = np.atleast_1d(ann)  # squeeze_me turns a one-element struct array into a scalar
        rel = [str(p) for p in ann["relative_im_path"]]
        cls = np.array([int(c) for c in ann["class"]], dtype=np.int64)
        lo, hi = (1, 98) if split == "train" else (99, 196)
        keep = np.flatnonzero((cls >= lo) & (cls <= hi))
        self.paths = [self.root / rel[i] for i in keep]
        self.labels, classes = remap_labels(cls[keep].tolist())
        names = mat.get("class_names")
        names = [str(n) for n in np.atleast_1d(names)] if names is not None else []
        self.class_names = [names[c - 1] if 0 < c <= len(names) else str(c) for c in classes]
        self.class_ids = classes
