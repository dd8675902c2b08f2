"""Any folder of class sub-folders of images (torchvision ImageFolder style), with or without split folders."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, List, Optional

from deepmetric.data.base import IMAGE_EXTENSIONS, DatasetError, ImageFileDataset, missing_file_error, remap_labels
from deepmetric.registry import DATASETS

LAYOUT = """\
either split folders:              or only class folders (split by class, see class_split):
  <root>/train/<class>/*.jpg         <root>/<class>/*.jpg
  <root>/test/<class>/*.png          …
  <root>/<any split>/<class>/…
(image files: {exts})
""".format(exts=" ".join(IMAGE_EXTENSIONS))

_SPLIT_NAMES = ("train", "val", "validation", "trainval", "test", "query", "gallery")


def _images_in(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)


def _class_dirs(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


@DATASETS.register("image_folder")
class ImageFolderDataset(ImageFileDataset):
    """Images in ``<root>/<split>/<class>/`` or, with no split folders, ``<root>/<class>/`` split by class.

    With split folders, ``split`` names one of them. With only class folders, the classes (sorted by
    name) are split zero-shot style: "train" = the first ``round(class_split · C)`` classes, "test" = the
    rest, "all" = every class. Labels are 0..C−1 per split in sorted class-name order; ``class_names`` are
    the folder names. Files are the images directly inside each class folder (sorted); class folders with
    no image are ignored.

    Args:
        root: the dataset folder.
        split: a split folder name, or "train" / "test" / "all" for class folders only.
        transform: applied to each RGB PIL image.
        strict: raise on the first unreadable image instead of substituting one of the same class.
        class_split: fraction of the classes in "train" when there are no split folders.
    """

    def __init__(self, root: Any, split: str, transform: Optional[Callable] = None, *, strict: bool = False, class_split: float = 0.5) -> None:
        super().__init__(root, split, transform, strict=strict)
        if not 0.0 < class_split < 1.0:
            raise ValueError(f"ImageFolderDataset: class_split={class_split} must be in (0, 1)")
        if not self.root.is_dir():
            raise missing_file_error("ImageFolderDataset", self.root, LAYOUT, what="folder")
        present_splits = [d.name for d in _class_dirs(self.root) if d.name in _SPLIT_NAMES]
        if (self.root / split).is_dir():
            classes = _class_dirs(self.root / split)
            self.layout = "split folders"
        elif present_splits:
            raise missing_file_error("ImageFolderDataset", self.root / split, LAYOUT + f"found split folders: {present_splits}\n", what="split folder")
        elif split in ("train", "test", "all"):
            classes = [d for d in _class_dirs(self.root) if _images_in(d)]
            n_train = int(round(class_split * len(classes)))
            if split != "all" and (n_train == 0 or n_train == len(classes)):
                raise DatasetError(f"ImageFolderDataset: {len(classes)} class folder(s) under {self.root} cannot be split with class_split={class_split}; add classes or use split 'all'")
            classes = classes if split == "all" else classes[:n_train] if split == "train" else classes[n_train:]
            self.layout = "class folders"
        else:
            raise ValueError(f"ImageFolderDataset: {self.root} has class folders only; split must be 'train', 'test' or 'all', not {split!r}")
        paths, names = [], []
        for d in classes:
            for p in _images_in(d):
                paths.append(p)
                names.append(d.name)
        if not paths:
            raise DatasetError(f"ImageFolderDataset: no image files for split {split!r} under {self.root}. Expected layout:\n{LAYOUT}")
        self.paths = paths
        self.labels, self.class_names = remap_labels(names)
