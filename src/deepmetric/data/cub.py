"""CUB-200-2011 in its official layout (Wah et al. 2011), zero-shot split by class id (SPEC §7)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

from deepmetric.data.base import DatasetError, ImageFileDataset, check_split, malformed, read_text_lines, remap_labels
from deepmetric.registry import DATASETS

LAYOUT = """\
<root>/                      (or <root> = CUB_200_2011/ itself)
  CUB_200_2011/
    images.txt               "<image_id> <relative path>"      e.g. "1 001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg"
    image_class_labels.txt   "<image_id> <class_id 1..200>"
    classes.txt              "<class_id> <class name>"          e.g. "1 001.Black_footed_Albatross"
    images/<relative path>
"""


@DATASETS.register("cub200")
class CUB200(ImageFileDataset):
    """CUB-200-2011 (Caltech-UCSD Birds), deep-metric-learning protocol.

    Splits: "train" = classes 1–100 (5,864 images), "test" = classes 101–200 (5,924 images); labels are
    remapped to 0..99 inside each split, ``class_names`` are the official names without their "001."
    prefix. The official train/test image split (train_test_split.txt) is not used: DML splits by class.

    Args:
        root: the folder holding ``CUB_200_2011/``, or ``CUB_200_2011/`` itself.
        split: "train" or "test".
        transform: applied to each RGB PIL image.
        strict: raise on the first unreadable image instead of substituting one of the same class.
    """

    splits = ("train", "test")
    expected_counts = {"train": 5864, "test": 5924}
    expected_classes = {"train": 100, "test": 100}

    def __init__(self, root: Any, split: str, transform: Optional[Callable] = None, *, strict: bool = False) -> None:
        super().__init__(root, split, transform, strict=strict)
        check_split("CUB200", split, self.splits)
        base = self.root / "CUB_200_2011" if (self.root / "CUB_200_2011").is_dir() else self.root
        self.base = base
        images = self._pairs(base / "images.txt")
        class_of = {k: int(v) for k, v in self._pairs(base / "image_class_labels.txt").items()}
        names = {int(k): v for k, v in self._pairs(base / "classes.txt").items()}
        lo, hi = (1, 100) if split == "train" else (101, 200)
        ids = [i for i in images if i in class_of and lo <= class_of[i] <= hi]
        missing = [i for i in images if i not in class_of]
        if missing:
            raise DatasetError(
                f"CUB200: {base / 'image_class_labels.txt'} has no class for {len(missing)} image id(s) of images.txt "
                f"(e.g. {missing[:5]}); the two files must list the same ids. Re-extract the official archive."
            )
        self.paths = [base / "images" / images[i] for i in ids]
        self.labels, classes = remap_labels([class_of[i] for i in ids])
        # "001.Black_footed_Albatross" -> "Black_footed_Albatross"
        self.class_names = [names.get(c, str(c)).split(".", 1)[-1] for c in classes]
        self.class_ids = classes

    @staticmethod
    def _pairs(path: Path) -> dict:
        out = {}
        for n, line in enumerate(read_text_lines(path, "CUB200", LAYOUT), 1):
            parts = line.split(maxsplit=1)
            if len(parts) != 2:
                raise malformed("CUB200", path, n, line, "two fields '<id> <value>'")
            try:
                out[int(parts[0])] = parts[1].strip()
            except ValueError:
                raise malformed("CUB200", path, n, line, "an integer id first") from None
        return out
