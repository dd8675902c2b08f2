"""A CSV file listing images (open-metric-learning's dataset format)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from deepmetric.data.base import DatasetError, ImageFileDataset, malformed, missing_file_error, remap_labels
from deepmetric.registry import DATASETS

LAYOUT = """\
<root> = a CSV file, or a folder holding df.csv; one row per image with columns
  label       class id (integers, or any text)
  path        image path, relative to the CSV's folder (absolute paths are kept)
  split       e.g. train / validation
  is_query    optional (with is_gallery): true/false, 1/0, or empty, for query-vs-gallery evaluation
  is_gallery  optional
"""

_TRUE = {"1", "1.0", "true", "t", "yes", "y"}
_FALSE = {"0", "0.0", "false", "f", "no", "n", "", "nan", "none"}
#: Split names tried, in order, when the requested one is absent (open-metric-learning says "validation").
ALIASES = {"test": ("validation", "val"), "val": ("validation",), "validation": ("val",)}


def _parse_bool(value: str, path: Path, line_no: int, column: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise malformed("CSVDataset", path, line_no, value, f"a boolean in column {column!r} (true/false, 1/0 or empty)")


@DATASETS.register("csv")
class CSVDataset(ImageFileDataset):
    """Images listed in a CSV file with columns label, path, split (+ optional is_query, is_gallery).

    This is open-metric-learning's format, so its datasets load unchanged. Labels are remapped to 0..C−1
    per split (numeric order when every label is an integer, else text order); ``class_names`` are the
    original labels as text. When the CSV has is_query/is_gallery columns and the split marks at least one
    row, ``is_query`` and ``is_gallery`` are boolean arrays (query-vs-gallery evaluation); otherwise they are
    None (every item is a query against all others). A requested split that is absent falls back to its
    aliases (``ALIASES``: "test" -> "validation" or "val", …).

    Args:
        root: the CSV file, or a folder holding ``df.csv``.
        split: a value of the split column.
        transform: applied to each RGB PIL image.
        strict: raise on the first unreadable image instead of substituting one of the same class.
    """

    def __init__(self, root: Any, split: str, transform: Optional[Callable] = None, *, strict: bool = False) -> None:
        super().__init__(root, split, transform, strict=strict)
        path = self.root if self.root.suffix.lower() == ".csv" or self.root.is_file() else self.root / "df.csv"
        if not path.is_file():
            raise missing_file_error("CSVDataset", path, LAYOUT)
        self.csv_path = path
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            reader.fieldnames = columns
            rows = list(reader)
        missing = [c for c in ("label", "path", "split") if c not in columns]
        if missing:
            raise DatasetError(f"CSVDataset: {path} lacks column(s) {missing} (found {columns}). Expected:\n{LAYOUT}")
        for n, r in enumerate(rows, 2):  # a short row leaves its last fields None
            empty = [c for c in ("label", "path", "split") if r.get(c) is None or not r[c].strip()]
            if empty:
                shown = ",".join(v for v in (r.get(c) for c in columns) if v is not None)
                raise malformed("CSVDataset", path, n, shown, f"a value in column(s) {empty} (columns: {','.join(columns)})")
        if ("is_query" in columns) != ("is_gallery" in columns):
            raise DatasetError(f"CSVDataset: {path} has only one of is_query / is_gallery; give both or neither")
        available = sorted({r["split"].strip() for r in rows})
        chosen_split = split
        if split not in available:
            chosen_split = next((a for a in ALIASES.get(split, ()) if a in available), None)  # type: ignore[assignment]
            if chosen_split is None:
                raise ValueError(f"CSVDataset: split {split!r} is not in {path}; its splits are {available}")
        self.csv_split = chosen_split
        picked = [(n, r) for n, r in enumerate(rows, 2) if r["split"].strip() == chosen_split]
        raw = [r["label"].strip() for _, r in picked]
        if all(_is_int(v) for v in raw):
            self.labels, classes = remap_labels([int(v) for v in raw])
        else:
            self.labels, classes = remap_labels(raw)
        self.class_names = [str(c) for c in classes]
        folder = path.parent
        self.paths = [Path(r["path"].strip()) if Path(r["path"].strip()).is_absolute() else folder / r["path"].strip() for _, r in picked]
        self.is_query: Optional[np.ndarray] = None
        self.is_gallery: Optional[np.ndarray] = None
        if "is_query" in columns:
            q = np.array([_parse_bool(r["is_query"] or "", path, n, "is_query") for n, r in picked], dtype=bool)
            g = np.array([_parse_bool(r["is_gallery"] or "", path, n, "is_gallery") for n, r in picked], dtype=bool)
            if q.any() or g.any():
                if not (q.any() and g.any()):
                    raise DatasetError(f"CSVDataset: split {chosen_split!r} of {path} marks {int(q.sum())} queries and {int(g.sum())} gallery items; both must be non-empty")
                self.is_query, self.is_gallery = q, g


def _is_int(v: str) -> bool:
    try:
        int(v)
    except ValueError:
        return False
    return True
