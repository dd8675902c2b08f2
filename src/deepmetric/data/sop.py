"""Stanford Online Products (Oh Song et al. 2016) in its official layout (SPEC §7)."""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np

from deepmetric.data.base import ImageFileDataset, check_split, malformed, read_text_lines, remap_labels
from deepmetric.registry import DATASETS

LAYOUT = """\
<root>/                    (or the folder that holds Stanford_Online_Products/)
  Ebay_train.txt           header "image_id class_id super_class_id path", then e.g. "1 1 1 bicycle_final/111085122871_0.JPG"
  Ebay_test.txt            same columns
  bicycle_final/… cabinet_final/… (the 12 super-class folders of images)
"""


@DATASETS.register("sop")
class StanfordOnlineProducts(ImageFileDataset):
    """Stanford Online Products: the official Ebay_train (11,318 classes) / Ebay_test (11,316 classes) split.

    Labels are the class_id column remapped to 0..C−1 per split; ``class_names`` are the original class
    ids as strings; ``super_labels`` (int64) holds the super_class_id of every item (1..12).

    Args:
        root: ``Stanford_Online_Products/`` or the folder that holds it.
        split: "train" (59,551 images) or "test" (60,502 images).
        transform: applied to each RGB PIL image.
        strict: raise on the first unreadable image instead of substituting one of the same class.
    """

    splits = ("train", "test")
    expected_counts = {"train": 59551, "test": 60502}
    expected_classes = {"train": 11318, "test": 11316}

    def __init__(self, root: Any, split: str, transform: Optional[Callable] = None, *, strict: bool = False) -> None:
        super().__init__(root, split, transform, strict=strict)
        check_split("StanfordOnlineProducts", split, self.splits)
        nested = self.root / "Stanford_Online_Products"
        base = nested if (nested / "Ebay_train.txt").is_file() or (nested / "Ebay_test.txt").is_file() else self.root
        self.base = base
        path = base / ("Ebay_train.txt" if split == "train" else "Ebay_test.txt")
        lines = read_text_lines(path, "StanfordOnlineProducts", LAYOUT)
        header = lines[0].split() if lines else []
        if header != ["image_id", "class_id", "super_class_id", "path"]:
            raise malformed("StanfordOnlineProducts", path, 1, lines[0] if lines else "", "the header 'image_id class_id super_class_id path'")
        rel, cls, sup = [], [], []
        for n, line in enumerate(lines[1:], 2):
            parts = line.split(maxsplit=3)
            try:
                if len(parts) != 4:
                    raise ValueError
                cls.append(int(parts[1]))
                sup.append(int(parts[2]))
            except ValueError:
                raise malformed("StanfordOnlineProducts", path, n, line, "'<image_id> <class_id> <super_class_id> <path>' with integer ids") from None
            rel.append(parts[3].strip())
        self.paths = [base / r for r in rel]
        self.labels, classes = remap_labels(cls)
        self.class_names = [str(c) for c in classes]
        self.class_ids = classes
        self.super_labels = np.array(sup, dtype=np.int64)
