"""In-Shop Clothes Retrieval (DeepFashion, Liu et al. 2016) in its official layout (SPEC §7)."""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from deepmetric.data.base import DatasetError, ImageFileDataset, check_split, malformed, read_text_lines
from deepmetric.registry import DATASETS

LAYOUT = """\
<root>/
  Eval/list_eval_partition.txt   line 1: the number of images (52712); line 2: "image_name item_id evaluation_status";
                                 then e.g. "img/WOMEN/Dresses/id_00000002/02_1_front.jpg id_00000002 train"
                                 (status: train, query or gallery)
  img/WOMEN/… img/MEN/…          the images; Img/img/… (the archive's own nesting) is accepted too
"""


@DATASETS.register("inshop")
class InShop(ImageFileDataset):
    """In-Shop Clothes Retrieval: training items, and query/gallery sets of other items for evaluation.

    Splits:
        "train": 25,882 images of 3,997 items, labels 0..3996.
        "query": 14,218 images; "gallery": 12,612 images — both of the same 3,985 test items.
        "test": query ∪ gallery (26,830 images, query rows first, then gallery rows) with boolean arrays
            ``is_query`` / ``is_gallery`` for query-vs-gallery retrieval.
    The query, gallery and test splits share ONE label space (the sorted item ids of query ∪ gallery), so a
    query's label equals its gallery matches' label whichever of those splits is loaded. ``class_names``
    are the item ids ("id_00000002").

    Args:
        root: the folder holding ``Eval/`` and ``img/`` (or ``Img/img/``).
        split: "train", "query", "gallery" or "test".
        transform: applied to each RGB PIL image.
        strict: raise on the first unreadable image instead of substituting one of the same class.
    """

    splits = ("train", "query", "gallery", "test")
    expected_counts = {"train": 25882, "query": 14218, "gallery": 12612, "test": 26830}
    expected_classes = {"train": 3997, "query": 3985, "gallery": 3985, "test": 3985}

    def __init__(self, root: Any, split: str, transform: Optional[Callable] = None, *, strict: bool = False) -> None:
        super().__init__(root, split, transform, strict=strict)
        check_split("InShop", split, self.splits)
        path = self.root / "Eval" / "list_eval_partition.txt"
        lines = read_text_lines(path, "InShop", LAYOUT)
        if len(lines) < 2 or lines[1].split() != ["image_name", "item_id", "evaluation_status"]:
            raise malformed("InShop", path, 2, lines[1] if len(lines) > 1 else "", "the count on line 1 and 'image_name item_id evaluation_status' on line 2")
        rows = []
        for n, line in enumerate(lines[2:], 3):
            parts = line.split()
            if len(parts) != 3 or parts[2] not in ("train", "query", "gallery"):
                raise malformed("InShop", path, n, line, "'<image_name> <item_id> <train|query|gallery>'")
            rows.append(parts)
        try:
            declared = int(lines[0].split()[0])
        except ValueError:
            raise malformed("InShop", path, 1, lines[0], "the number of images") from None
        if declared != len(rows):
            raise DatasetError(f"InShop: {path} declares {declared} images on line 1 but lists {len(rows)}; the file is truncated or edited")
        # The archive unpacks to Img/img/…, the paths in the file start with img/.
        image_base = self.root / "Img" if (self.root / "Img").is_dir() and not (self.root / "img").is_dir() else self.root
        self.image_base = image_base
        if split == "train":
            chosen = [r for r in rows if r[2] == "train"]
            items = sorted({r[1] for r in chosen})
        else:
            # One label space for query and gallery (and their union), whichever split is requested.
            items = sorted({r[1] for r in rows if r[2] != "train"})
            wanted = ("query", "gallery") if split == "test" else (split,)
            chosen = [r for status in wanted for r in rows if r[2] == status]
        index = {item: i for i, item in enumerate(items)}
        self.paths = [image_base / r[0] for r in chosen]
        self.labels = np.array([index[r[1]] for r in chosen], dtype=np.int64)
        self.class_names = items
        status = np.array([r[2] for r in chosen])
        # Masks only on "test": evaluation reads them as query-vs-gallery retrieval; elsewhere every item is
        # both query and gallery (leave-one-out retrieval), which None means.
        self.is_query: Optional[np.ndarray] = status == "query" if split == "test" else None
        self.is_gallery: Optional[np.ndarray] = status == "gallery" if split == "test" else None
