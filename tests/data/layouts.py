"""Tiny fixtures written in exactly each official dataset layout (reused by recipe tests).

Every ``make_*`` function writes under ``root`` and returns the path to pass as the dataset's ``root``.
Images are real files (JPEG/PNG, tiny); each image is a flat colour given by :func:`colour`, so a test can
tell which file an item came from (``colour(class_id, k)`` for the k-th image of a class).
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

SIZE = (12, 10)  # (width, height): not square, so a transposition bug changes the shape


def colour(class_id: int, k: int) -> Tuple[int, int, int]:
    """The flat RGB colour of the k-th image of ``class_id`` (distinct for small ids; JPEG-safe steps)."""
    return ((class_id * 37) % 256, (k * 50 + 20) % 256, (class_id * 11 + k * 7) % 200 + 40)


def write_image(path: Path, rgb: Tuple[int, int, int], size: Tuple[int, int] = SIZE) -> Path:
    """A flat-colour RGB image, format from the suffix (.jpg / .png / …)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path, quality=95) if path.suffix.lower() in (".jpg", ".jpeg") else Image.new("RGB", size, rgb).save(path)
    return path


# ----------------------------------------------------------------------------------------- broken files


def write_zero_byte(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_truncated_jpeg(path: Path, size: Tuple[int, int] = (64, 64)) -> Path:
    """A real JPEG cut in half (PIL raises on ``load()``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_not_an_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is not an image\n")
    return path


# ------------------------------------------------------------------------------------------------ CUB


def make_cub(root: Path, classes: Sequence[int] = (1, 2, 3, 101, 102, 103), per_class: int = 2) -> Path:
    """CUB_200_2011/ with images.txt, image_class_labels.txt, classes.txt, images/; returns ``root``."""
    base = Path(root) / "CUB_200_2011"
    (base / "images").mkdir(parents=True, exist_ok=True)
    img_lines, lab_lines = [], []
    image_id = 0
    for c in classes:
        folder = f"{c:03d}.Bird_{c}"
        for k in range(per_class):
            image_id += 1
            rel = f"{folder}/Bird_{c}_{k:04d}_{image_id}.jpg"
            write_image(base / "images" / rel, colour(c, k))
            img_lines.append(f"{image_id} {rel}")
            lab_lines.append(f"{image_id} {c}")
    (base / "images.txt").write_text("\n".join(img_lines) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(lab_lines) + "\n")
    (base / "classes.txt").write_text("\n".join(f"{c} {c:03d}.Bird_{c}" for c in range(1, 201)) + "\n")
    return Path(root)


# ----------------------------------------------------------------------------------------------- Cars


def make_cars(root: Path, classes: Sequence[int] = (1, 2, 3, 99, 100, 101), per_class: int = 2) -> Path:
    """cars_annos.mat (a real MATLAB file via scipy.io.savemat) + car_ims/; returns ``root``."""
    from scipy.io import savemat

    root = Path(root)
    fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
    rows = []
    n = 0
    for c in classes:
        for k in range(per_class):
            n += 1
            rel = f"car_ims/{n:06d}.jpg"
            write_image(root / rel, colour(c, k))
            # the classification 'test' flag alternates: DML must ignore it
            rows.append((rel, 1, 1, SIZE[0], SIZE[1], c, n % 2))
    ann = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
    for i, row in enumerate(rows):
        for f, v in zip(fields, row):
            ann[0, i][f] = np.array([[v]], dtype=np.uint16) if isinstance(v, int) else np.array([v])
    names = np.empty((1, 196), dtype=object)
    for c in range(196):
        names[0, c] = f"Car model {c + 1}"
    savemat(str(root / "cars_annos.mat"), {"annotations": ann, "class_names": names})
    return root


# ------------------------------------------------------------------------------------------------ SOP

SOP_SUPER = ["bicycle", "cabinet", "chair", "coffee_maker", "fan", "kettle", "lamp", "mug", "sofa", "stapler", "table", "toaster"]


def make_sop(root: Path, train_classes: Sequence[int] = (1, 2, 3), test_classes: Sequence[int] = (11319, 11320, 11321), per_class: int = 2) -> Path:
    """Stanford_Online_Products/ with Ebay_train.txt / Ebay_test.txt; returns that folder."""
    base = Path(root) / "Stanford_Online_Products"
    image_id = 0
    for name, classes in (("Ebay_train.txt", train_classes), ("Ebay_test.txt", test_classes)):
        lines = ["image_id class_id super_class_id path"]
        for c in classes:
            sup = c % 12 + 1
            for k in range(per_class):
                image_id += 1
                rel = f"{SOP_SUPER[sup - 1]}_final/{100000 + c}_{k}.JPG"
                write_image(base / rel, colour(c, k))
                lines.append(f"{image_id} {c} {sup} {rel}")
        (base / name).parent.mkdir(parents=True, exist_ok=True)
        (base / name).write_text("\n".join(lines) + "\n")
    return base


# --------------------------------------------------------------------------------------------- In-Shop


def make_inshop(root: Path, train_items: Sequence[int] = (1, 2, 3), test_items: Sequence[int] = (7, 5, 9),
                per_item: int = 2, queries_per_item: int = 1, galleries_per_item: int = 2, nest_img: bool = False) -> Path:
    """Eval/list_eval_partition.txt (count line, header line, rows) + img/…; returns ``root``.

    Test items are listed in the given (unsorted) order and alternate query/gallery rows, so the label
    space has to be built from the ids, not from the row order. ``nest_img`` writes images under Img/img/.
    """
    root = Path(root)
    image_base = root / "Img" if nest_img else root
    rows: List[str] = []

    def add(item: int, k: int, status: str) -> None:
        gender = "WOMEN" if item % 2 else "MEN"
        rel = f"img/{gender}/Dresses/id_{item:08d}/{k:02d}_1_front.jpg"
        write_image(image_base / rel, colour(item, k))
        rows.append(f"{rel} id_{item:08d} {status}")

    for item in train_items:
        for k in range(per_item):
            add(item, k, "train")
    for k in range(max(queries_per_item, galleries_per_item)):
        for item in test_items:
            if k < queries_per_item:
                add(item, 2 * k, "query")
            if k < galleries_per_item:
                add(item, 2 * k + 1, "gallery")
    (root / "Eval").mkdir(parents=True, exist_ok=True)
    (root / "Eval" / "list_eval_partition.txt").write_text(f"{len(rows)}\nimage_name item_id evaluation_status\n" + "\n".join(rows) + "\n")
    return root


# -------------------------------------------------------------------------------------------- CIFAR-10

CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar_image(label: int, k: int) -> np.ndarray:
    """(32, 32, 3) uint8: R = label·20 + k, G = row·4, B = column·4 (so the plane order can be checked)."""
    img = np.zeros((32, 32, 3), dtype=np.uint8)
    img[..., 0] = label * 20 + k
    img[..., 1] = (np.arange(32) * 4)[:, None]
    img[..., 2] = (np.arange(32) * 4)[None, :]
    return img


def make_cifar10(root: Path, per_class_train: int = 1, per_class_test: int = 1) -> Path:
    """cifar-10-batches-py/ with real pickles data_batch_1..5, test_batch, batches.meta; returns ``root``."""
    base = Path(root) / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)

    def dump(name: str, items: List[Tuple[int, int]]) -> None:
        rows = [np.concatenate([cifar_image(y, k)[..., ch].reshape(-1) for ch in range(3)]) for y, k in items]
        data = np.stack(rows).astype(np.uint8) if rows else np.zeros((0, 3072), np.uint8)
        with open(base / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": [y for y, _ in items], b"data": data,
                         b"filenames": [f"{y}_{k}.png".encode() for y, k in items]}, f, protocol=2)

    train = [(y, k) for k in range(per_class_train) for y in range(10)]
    for b in range(5):  # spread the training items over the five batches like the real files
        dump(f"data_batch_{b + 1}", train[b::5])
    dump("test_batch", [(y, 10 + k) for k in range(per_class_test) for y in range(10)])
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in CIFAR_NAMES], b"num_cases_per_batch": 10000, b"num_vis": 3072}, f, protocol=2)
    return Path(root)


# ---------------------------------------------------------------------------------------------- STL-10

STL_NAMES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


def stl_pixel(n: int, row: int, col: int, ch: int) -> int:
    """The value the STL-10 fixture stores at (image n, row, column, channel)."""
    return (row if ch == 0 else col if ch == 1 else n * 7 % 256) % 256


def stl_bytes(n: int) -> bytes:
    """Image n in the official byte order, written with plain loops: channel, then COLUMN, then row."""
    out = bytearray()
    for ch in range(3):
        for col in range(96):
            for row in range(96):
                out.append(stl_pixel(n, row, col, ch))
    return bytes(out)


def make_stl10(root: Path, train_labels: Sequence[int] = (1, 2, 3, 10, 1, 2), test_labels: Sequence[int] = (4, 5, 6, 7),
               n_unlabeled: int = 3) -> Path:
    """stl10_binary/ with train/test X and y (labels 1..10), unlabeled_X.bin, class_names.txt; returns ``root``.

    Image n (numbered across train, then test, then unlabeled) has R = row, G = column, B = 7n.
    """
    base = Path(root) / "stl10_binary"
    base.mkdir(parents=True, exist_ok=True)
    n = 0
    for part, labels in (("train", list(train_labels)), ("test", list(test_labels)), ("unlabeled", [None] * n_unlabeled)):
        with open(base / f"{part}_X.bin", "wb") as f:
            for _ in labels:
                f.write(stl_bytes(n))
                n += 1
        if part != "unlabeled":
            (base / f"{part}_y.bin").write_bytes(bytes(labels))
    (base / "class_names.txt").write_text("\n".join(STL_NAMES) + "\n")
    return Path(root)


# ------------------------------------------------------------------------------------ folders and CSV


def make_image_folder(root: Path, classes: Sequence[str] = ("ant", "bee", "cat", "dog"), per_class: int = 2,
                      splits: Optional[Sequence[str]] = None) -> Path:
    """``root/<split>/<class>/k.png`` for each split, or ``root/<class>/k.png`` when ``splits`` is None."""
    root = Path(root)
    for s in splits or [None]:
        for ci, c in enumerate(classes):
            for k in range(per_class):
                folder = root / c if s is None else root / s / c
                write_image(folder / f"{k}.png", colour(ci + 1, k))
    return root


def make_csv(root: Path, rows: Optional[Iterable[Dict[str, object]]] = None, name: str = "df.csv") -> Path:
    """An open-metric-learning style CSV (label, path, split, is_query, is_gallery) and its images.

    Default rows: train labels 10, 11 (two images each); validation labels 20, 21 with one query and one
    gallery image each. Returns the CSV file's path.
    """
    root = Path(root)
    if rows is None:
        rows = []
        for lab in (10, 11):
            rows += [{"label": lab, "path": f"images/{lab}_{k}.jpg", "split": "train", "is_query": "", "is_gallery": ""} for k in range(2)]
        for lab in (20, 21):
            rows += [{"label": lab, "path": f"images/{lab}_0.jpg", "split": "validation", "is_query": "True", "is_gallery": "False"},
                     {"label": lab, "path": f"images/{lab}_1.jpg", "split": "validation", "is_query": "False", "is_gallery": "True"}]
    rows = list(rows)
    for r in rows:
        p = Path(str(r["path"]))
        if not p.is_absolute():
            write_image(root / p, colour(int(str(r["label"])) if str(r["label"]).isdigit() else 1, int(p.stem.split("_")[-1]) if p.stem.split("_")[-1].isdigit() else 0))
    cols = list(rows[0].keys())
    lines = [",".join(cols)] + [",".join(str(r[c]) for c in cols) for r in rows]
    (root / name).write_text("\n".join(lines) + "\n")
    return root / name
