"""What every dataset adapter shares: the error type, image decoding, bad-image handling, count checks.

Two families of datasets live in ``deepmetric.data``:

* :class:`ArrayDataset` — images already decoded in a uint8 array (embedded MNIST/digits, CIFAR-10,
  STL-10). Nothing can be unreadable.
* :class:`ImageFileDataset` — one image file per item (CUB, Cars, SOP, In-Shop, folders, CSV). A file
  that cannot be decoded (missing, zero bytes, truncated, not an image) never stops an epoch by default:
  the item is replaced by the next readable image of the SAME class (so P×K batches keep their class
  structure), each bad file is warned about once with the running count, and :meth:`scan` lists them all
  up front. With ``strict=True`` the first bad file raises :class:`UnreadableImageError` naming it.

Every item is ``(image, label)``: a PIL image (mode ``self.mode``: "RGB" for colour datasets, "L" for
MNIST/digits) passed through ``transform`` when one is given, and an int label in 0..C−1 of the split.
Nothing is ever downloaded: a missing or malformed annotation file is a :class:`DatasetError` that names
the file and shows the expected layout.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, ClassVar, Dict, List, NamedTuple, Optional, Sequence, Set

import numpy as np
from PIL import Image, ImageOps
from torch.utils.data import Dataset

#: File name endings treated as images by the folder/CSV adapters (compared lower-case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class DatasetError(ValueError):
    """A dataset's files are missing, malformed or incomplete (the message says which and what to do)."""


class UnreadableImageError(DatasetError):
    """An image file could not be decoded and the dataset was built with ``strict=True``."""


class UnreadableImageWarning(UserWarning):
    """An image file could not be decoded and was replaced by another image of the same class."""


class BadImage(NamedTuple):
    """One entry of :meth:`ImageFileDataset.scan`'s report."""

    index: int
    path: Path
    error: str


def missing_file_error(dataset: str, path: Path, layout: str, what: str = "file") -> DatasetError:
    """The error for a missing annotation file or folder: names it and shows the expected layout."""
    return DatasetError(
        f"{dataset}: {what} not found: {path}\n"
        f"Expected this layout (nothing is downloaded; get the official archive and unpack it):\n{layout.rstrip()}"
    )


def check_split(dataset: str, split: str, splits: Sequence[str]) -> None:
    """Raise a ValueError naming the valid splits when ``split`` is not one of them."""
    if split not in splits:
        raise ValueError(f"{dataset}: unknown split {split!r}; valid splits: {', '.join(map(repr, splits))}")


def remap_labels(raw: Sequence[Any], order: Optional[Sequence[Any]] = None) -> tuple[np.ndarray, List[Any]]:
    """Map raw class ids to 0..C−1.

    Args:
        raw: (N,) original class ids of the split's items.
        order: the classes in label order; defaults to the sorted distinct values of ``raw``.

    Returns:
        ((N,) int64 labels, the original class ids in label order).
    """
    classes = sorted(set(raw)) if order is None else list(order)
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[c] for c in raw], dtype=np.int64), classes


#: integer modes holding more than 8 bits per pixel: 16-bit grayscale ("I;16*": PNG, TIFF) and 32-bit "I"
#: (16-bit PNGs open as "I" in older Pillow; TIFF integer images), read as 16-bit samples 0..65535
_WIDE_INTEGER_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_mode(image: Image.Image, mode: str) -> Image.Image:
    """``image`` converted to ``mode`` ("RGB" or "L") with its full tonal range.

    * 16-bit grayscale ("I;16", "I;16B", ...) and "I": samples 0..65535 scale to 0..255 as round(v / 257)
      (values outside 0..65535 are clipped); PIL's own ``convert`` clips at 255, which binarises a
      16-bit image.
    * Images with transparency (RGBA, LA, PA, palette with a transparent colour) are composited onto
      white first: a plain ``convert`` would expose whatever colour the transparent pixels hold (often
      black), which is not what the image shows.
    * CMYK, grayscale and palette images go through PIL's standard conversion (CMYK: R = (255 − C)(255 − K)/255).
    """
    if image.mode == mode:
        return image
    if image.mode in _WIDE_INTEGER_MODES:
        wide = np.asarray(image, dtype=np.int64).clip(0, 65535)
        # (2v + 257) // 514 = round(v / 257) with halves up, in integers
        image = Image.fromarray(((2 * wide + 257) // 514).astype(np.uint8), mode="L")
        return image if mode == "L" else image.convert(mode)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image.convert(mode)


def oriented(image: Image.Image) -> Image.Image:
    """An opened image decoded in full (truncation is detected now, not inside a transform), its first
    frame, turned upright by its EXIF orientation tag (cameras store rotated pixels plus that tag)."""
    image.seek(0)
    image.load()
    return ImageOps.exif_transpose(image)


def load_image(source: Any, mode: str) -> Image.Image:
    """THE image loader of every dataset, index and search path: open ``source`` (a path or a binary
    file object), decode it fully, apply its EXIF orientation and convert it with :func:`to_mode`."""
    with Image.open(source) as im:
        return to_mode(oriented(im), mode)


class _CountsMixin:
    """``check()`` against the published image and class counts of an official dataset."""

    #: split -> number of images in the official release (documented numbers, checked by ``check()``).
    expected_counts: ClassVar[Dict[str, int]] = {}
    #: split -> number of classes in the official release.
    expected_classes: ClassVar[Dict[str, int]] = {}

    def check(self) -> "_CountsMixin":
        """Verify the split against the published numbers; raise :class:`DatasetError` when they differ.

        Returns ``self`` so that ``ds = CUB200(root, "train").check()`` reads naturally.
        """
        split, name = self.split, type(self).__name__  # type: ignore[attr-defined]
        want_n, want_c = self.expected_counts.get(split), self.expected_classes.get(split)
        if want_n is None:
            raise ValueError(f"{name}: no published counts for split {split!r}; known: {sorted(self.expected_counts)}")
        n, c = len(self), int(self.num_classes)  # type: ignore[arg-type, attr-defined]
        if n != want_n or (want_c is not None and c != want_c):
            raise DatasetError(
                f"{name} split {split!r} under {self.root}: expected {want_n} images in {want_c} classes "  # type: ignore[attr-defined]
                f"(the published numbers), found {n} images in {c} classes. The copy is incomplete or a different "
                f"version: re-extract the official archive (nothing is downloaded)."
            )
        return self


class ArrayDataset(_CountsMixin, Dataset):
    """Images held in a uint8 array ``(N, H, W)`` (mode "L") or ``(N, H, W, 3)`` (mode "RGB").

    Subclasses set ``self.images``, ``self.labels`` (int64, 0..C−1), ``self.class_names``, ``self.mode``.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: List[str]
    mode: str = "RGB"

    def __init__(self, root: Any, split: str, transform: Optional[Callable] = None, *, strict: bool = False) -> None:
        self.root = None if root is None else Path(root)
        self.split = split
        self.transform = transform
        self.strict = strict  # kept for the common signature: decoded arrays cannot be unreadable

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        # uint8 (H, W) decodes as "L" and (H, W, 3) as "RGB".
        image: Any = Image.fromarray(np.ascontiguousarray(self.images[index]))
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def scan(self) -> List[BadImage]:
        """Nothing to verify in decoded arrays: always an empty report."""
        return []

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={self.split!r}, images={len(self)}, classes={self.num_classes})"


class ImageFileDataset(_CountsMixin, Dataset):
    """Items are image files; unreadable ones are replaced by a readable image of the same class.

    Subclasses set ``self.paths`` (absolute Paths), ``self.labels`` (int64, 0..C−1) and
    ``self.class_names`` in their constructor after calling ``super().__init__``.

    Bad-file bookkeeping (``bad_files``) is per process: with DataLoader workers each worker warns about
    the files it meets, and the count in the warning is that worker's count.
    """

    paths: List[Path]
    labels: np.ndarray
    class_names: List[str]
    mode: str = "RGB"

    def __init__(self, root: Any, split: str, transform: Optional[Callable] = None, *, strict: bool = False) -> None:
        if root is None:
            raise ValueError(f"{type(self).__name__}: root is None; set data.root to the dataset folder")
        self.root = Path(root).expanduser()
        self.split = split
        self.transform = transform
        self.strict = strict
        self.bad_files: Set[Path] = set()
        self._by_class: Optional[List[np.ndarray]] = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, images={len(self)}, classes={self.num_classes})"

    def _class_members(self, label: int) -> np.ndarray:
        if self._by_class is None:
            order = np.argsort(self.labels, kind="stable")
            bounds = np.searchsorted(self.labels[order], np.arange(self.num_classes + 1))
            self._by_class = [order[bounds[c]:bounds[c + 1]] for c in range(self.num_classes)]
        return self._by_class[label]

    def _record_bad(self, index: int, error: BaseException, instead: str) -> None:
        path = self.paths[index]
        if path in self.bad_files:
            return
        self.bad_files.add(path)
        warnings.warn(
            f"{type(self).__name__}: unreadable image {path} ({type(error).__name__}: {error}); {instead}. "
            f"{len(self.bad_files)} unreadable image(s) so far in this dataset; call .scan() to list them all, "
            f"or pass strict=True to stop at the first one.",
            UnreadableImageWarning,
            stacklevel=3,
        )

    def load(self, index: int) -> Image.Image:
        """The decoded image of item ``index``, or of the next readable item of its class (see class doc)."""
        try:
            return load_image(self.paths[index], self.mode)
        # Any decoder failure (PIL raises OSError, ValueError, SyntaxError, struct.error, …) must not stop an epoch.
        except Exception as first_error:  # noqa: BLE001
            if self.strict:
                raise UnreadableImageError(
                    f"{type(self).__name__}: cannot read image {self.paths[index]} (item {index}, split {self.split!r}): "
                    f"{type(first_error).__name__}: {first_error}. Replace or delete the file, or build the dataset with "
                    f"strict=False to substitute another image of the same class."
                ) from first_error
            error: BaseException = first_error
        label = int(self.labels[index])
        members = self._class_members(label)
        # Deterministic replacement (no RNG): the class members that follow ``index``, cyclically.
        start = int(np.searchsorted(members, index))
        failed = [index]
        for j in list(members[start:]) + list(members[:start]):
            j = int(j)
            if j == index or self.paths[j] in self.bad_files:
                continue
            try:
                image = load_image(self.paths[j], self.mode)
            except Exception as e:  # noqa: BLE001 - same reason as above
                self._record_bad(j, e, f"met while looking for a substitute for item {index}")
                failed.append(j)
                continue
            self._record_bad(index, error, f"using {self.paths[j]} of the same class instead")
            return image
        self._record_bad(index, error, "no readable image of its class is left")
        names = ", ".join(str(self.paths[i]) for i in members[:5])
        raise DatasetError(
            f"{type(self).__name__}: every image of class {label} ({self.class_names[label]!r}) in split {self.split!r} "
            f"is unreadable (e.g. {names}); there is nothing to substitute. Fix those files."
        )

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image: Any = self.load(index)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def scan(self) -> List[BadImage]:
        """Decode every image once and report the unreadable ones (also remembered in ``bad_files``).

        Returns:
            One :class:`BadImage` (index, path, error text) per unreadable file, in index order.
        """
        report = []
        for i, path in enumerate(self.paths):
            try:
                load_image(path, self.mode)
            except Exception as e:  # noqa: BLE001 - a report of every failure is the point
                report.append(BadImage(i, path, f"{type(e).__name__}: {e}"))
                self.bad_files.add(path)
        return report


def read_text_lines(path: Path, dataset: str, layout: str) -> List[str]:
    """Non-empty lines of a text annotation file; missing file = :func:`missing_file_error`."""
    if not path.is_file():
        raise missing_file_error(dataset, path, layout)
    return [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def malformed(dataset: str, path: Path, line_no: int, line: str, expected: str) -> DatasetError:
    """The error for a line that does not have the expected fields."""
    return DatasetError(f"{dataset}: malformed line {line_no} of {path}: {line!r}; expected {expected}")
