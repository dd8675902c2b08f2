"""Official-layout adapters on tiny fixtures written in exactly each layout (tests/data/layouts.py)."""
import pickle

import numpy as np
import pytest

from deepmetric.data.base import DatasetError
from deepmetric.data.cars import Cars196
from deepmetric.data.cifar import CIFAR10
from deepmetric.data.cub import CUB200
from deepmetric.data.inshop import InShop
from deepmetric.data.sop import StanfordOnlineProducts
from deepmetric.data.stl10 import STL10
from deepmetric.registry import DATASETS
from layouts import (CIFAR_NAMES, STL_NAMES, cifar_image, colour, make_cars, make_cifar10, make_cub, make_inshop,
                     make_sop, make_stl10, stl_bytes, stl_pixel)


def assert_colour(image, rgb, tol=6):
    """A flat-colour fixture image (JPEG: within a few levels)."""
    px = np.asarray(image.convert("RGB"), dtype=int)
    assert np.abs(px - np.array(rgb)).max() <= tol, (px[0, 0], rgb)


def test_registry_names():
    for name, cls in [("cub200", CUB200), ("cars196", Cars196), ("sop", StanfordOnlineProducts), ("inshop", InShop),
                      ("cifar10", CIFAR10), ("stl10", STL10)]:
        assert DATASETS.get(name) is cls


def test_published_counts_are_documented():
    assert CUB200.expected_counts == {"train": 5864, "test": 5924}
    assert Cars196.expected_counts == {"train": 8054, "test": 8131}
    assert StanfordOnlineProducts.expected_counts == {"train": 59551, "test": 60502}
    assert InShop.expected_counts == {"train": 25882, "query": 14218, "gallery": 12612, "test": 26830}
    assert CIFAR10.expected_counts == {"train": 50000, "test": 10000}
    assert STL10.expected_counts["train"] == 5000 and STL10.expected_counts["unlabeled"] == 100000


# ------------------------------------------------------------------------------------------------ CUB


@pytest.mark.parametrize("nested", [True, False])
def test_cub_splits_by_class_id_and_reads_the_right_files(tmp_path, nested):
    root = make_cub(tmp_path, classes=(2, 100, 101, 200, 1), per_class=3)
    if not nested:
        root = root / "CUB_200_2011"
    tr, te = CUB200(root, "train"), CUB200(root, "test")
    assert (len(tr), len(te)) == (9, 6)
    assert tr.class_ids == [1, 2, 100] and te.class_ids == [101, 200]
    assert tr.class_names == ["Bird_1", "Bird_2", "Bird_100"]
    assert sorted(set(tr.labels.tolist())) == [0, 1, 2] and sorted(set(te.labels.tolist())) == [0, 1]
    for ds in (tr, te):
        for i in range(len(ds)):
            img, y = ds[i]
            cid = ds.class_ids[y]
            k = int(ds.paths[i].stem.split("_")[2])
            assert img.mode == "RGB"
            assert_colour(img, colour(cid, k))
    assert not set(map(str, tr.paths)) & set(map(str, te.paths))


def test_cub_check_reports_expected_and_found(tmp_path):
    ds = CUB200(make_cub(tmp_path), "train")
    with pytest.raises(DatasetError, match=r"expected 5864 images in 100 classes.*found 6 images in 3 classes"):
        ds.check()


def test_cub_missing_file_names_it_and_shows_the_layout(tmp_path):
    root = make_cub(tmp_path)
    (root / "CUB_200_2011" / "image_class_labels.txt").unlink()
    with pytest.raises(DatasetError, match=r"image_class_labels\.txt") as e:
        CUB200(root, "train")
    assert "images.txt" in str(e.value) and "classes.txt" in str(e.value) and "nothing is downloaded" in str(e.value)
    with pytest.raises(DatasetError, match=r"not found: .*nowhere.*images\.txt"):
        CUB200(tmp_path / "nowhere", "test")


def test_cub_malformed_line_is_reported_with_its_number(tmp_path):
    root = make_cub(tmp_path)
    f = root / "CUB_200_2011" / "image_class_labels.txt"
    f.write_text(f.read_text() + "13\n")
    with pytest.raises(DatasetError, match=r"malformed line 13 of .*image_class_labels\.txt"):
        CUB200(root, "train")


def test_unknown_split_lists_valid_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown split 'val'.*'train', 'test'"):
        CUB200(make_cub(tmp_path), "val")


# ----------------------------------------------------------------------------------------------- Cars


def test_cars_reads_a_real_mat_file_and_splits_98_98_ignoring_the_test_flag(tmp_path):
    root = make_cars(tmp_path, classes=(98, 1, 99, 196), per_class=3)
    tr, te = Cars196(root, "train"), Cars196(root, "test")
    assert (len(tr), len(te)) == (6, 6)
    assert tr.class_ids == [1, 98] and te.class_ids == [99, 196]
    assert te.class_names == ["Car model 99", "Car model 196"]
    # the fixture's 'test' flag alternates within every class: both splits still get all of a class
    assert np.bincount(tr.labels).tolist() == [3, 3] and np.bincount(te.labels).tolist() == [3, 3]
    # images were written in the order of `classes`, k = 0..2: file n of class c is colour(c, k)
    img, y = te[0]
    assert_colour(img, colour(te.class_ids[y], 0))
    with pytest.raises(DatasetError, match=r"expected 8131 images in 98 classes.*found 6 images in 2 classes"):
        te.check()


def test_cars_single_annotation_and_missing_or_bad_mat(tmp_path):
    root = make_cars(tmp_path / "one", classes=(5,), per_class=1)
    ds = Cars196(root, "train")
    assert len(ds) == 1 and ds.labels.tolist() == [0]
    with pytest.raises(DatasetError, match=r"cars_annos\.mat.*car_ims"):
        Cars196(tmp_path / "empty", "train")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "cars_annos.mat").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=r"cannot read .*cars_annos\.mat"):
        Cars196(tmp_path / "bad", "train")


# ------------------------------------------------------------------------------------------------ SOP


def test_sop_official_files(tmp_path):
    base = make_sop(tmp_path, train_classes=(7, 3, 11318), test_classes=(11319, 22634), per_class=2)
    for root in (base, tmp_path):  # the folder itself or its parent
        tr, te = StanfordOnlineProducts(root, "train"), StanfordOnlineProducts(root, "test")
        assert (len(tr), len(te)) == (6, 4)
        assert tr.class_names == ["3", "7", "11318"] and te.class_names == ["11319", "22634"]
        assert tr.labels.tolist() == [1, 1, 0, 0, 2, 2]
        assert tr.super_labels.tolist() == [8, 8, 4, 4, 3, 3]  # super class = class % 12 + 1 in the fixture
    img, y = tr[2]
    assert_colour(img, colour(3, 0))
    with pytest.raises(DatasetError, match=r"expected 59551 images in 11318 classes.*found 6"):
        tr.check()


def test_sop_header_and_rows_are_checked(tmp_path):
    base = make_sop(tmp_path)
    f = base / "Ebay_test.txt"
    lines = f.read_text().splitlines()
    f.write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(DatasetError, match=r"malformed line 1 of .*Ebay_test\.txt.*image_id class_id super_class_id path"):
        StanfordOnlineProducts(base, "test")
    f.write_text("\n".join(lines + ["99 x 1 a.JPG"]) + "\n")
    with pytest.raises(DatasetError, match=r"malformed line 8 "):
        StanfordOnlineProducts(base, "test")
    (base / "Ebay_train.txt").unlink()
    with pytest.raises(DatasetError, match=r"Ebay_train\.txt"):
        StanfordOnlineProducts(base, "train")


# --------------------------------------------------------------------------------------------- In-Shop


@pytest.mark.parametrize("nest_img", [False, True])
def test_inshop_query_and_gallery_share_one_label_space(tmp_path, nest_img):
    root = make_inshop(tmp_path, train_items=(4, 1), test_items=(7, 5, 9), per_item=2, queries_per_item=1, galleries_per_item=2, nest_img=nest_img)
    tr = InShop(root, "train")
    q, g, t = InShop(root, "query"), InShop(root, "gallery"), InShop(root, "test")
    assert (len(tr), len(q), len(g), len(t)) == (4, 3, 6, 9)
    assert tr.class_names == ["id_00000001", "id_00000004"] and tr.is_query is None
    for ds in (q, g, t):
        assert ds.class_names == ["id_00000005", "id_00000007", "id_00000009"]
    # the same item has the same label in query and gallery
    item = lambda ds, i: ds.paths[i].parent.name  # noqa: E731
    for ds in (q, g, t):
        for i in range(len(ds)):
            assert ds.class_names[ds.labels[i]] == item(ds, i)
    assert t.is_query.tolist() == [True] * 3 + [False] * 6 and (t.is_gallery == ~t.is_query).all()
    assert [str(p) for p in t.paths] == [str(p) for p in q.paths] + [str(p) for p in g.paths]
    assert not set(tr.class_names) & set(t.class_names)
    img, y = t[4]
    assert_colour(img, colour(int(t.class_names[y][3:]), int(t.paths[4].name[:2])))
    with pytest.raises(DatasetError, match=r"expected 14218 images in 3985 classes.*found 3 images in 3 classes"):
        q.check()


def test_inshop_header_count_and_missing_file(tmp_path):
    root = make_inshop(tmp_path)
    f = root / "Eval" / "list_eval_partition.txt"
    lines = f.read_text().splitlines()
    f.write_text("\n".join(["999"] + lines[1:]) + "\n")
    with pytest.raises(DatasetError, match=r"declares 999 images on line 1 but lists 15"):
        InShop(root, "train")
    f.write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(DatasetError, match=r"malformed line 2 "):
        InShop(root, "train")
    f.write_text("\n".join(lines[:2] + ["img/x.jpg id_1 validation"]) + "\n")
    with pytest.raises(DatasetError, match=r"malformed line 3 .*train\|query\|gallery"):
        InShop(root, "train")
    with pytest.raises(DatasetError, match=r"Eval.list_eval_partition\.txt"):
        InShop(tmp_path / "nothing", "test")


# -------------------------------------------------------------------------------------------- CIFAR-10


def test_cifar10_pickles_planes_and_names(tmp_path):
    root = make_cifar10(tmp_path, per_class_train=2, per_class_test=1)
    tr, te = CIFAR10(root, "train"), CIFAR10(root / "cifar-10-batches-py", "test")
    assert (len(tr), len(te)) == (20, 10) and tr.class_names == CIFAR_NAMES and tr.num_classes == 10
    assert np.bincount(tr.labels).tolist() == [2] * 10
    for ds, first_k in ((tr, 0), (te, 10)):
        for i in range(len(ds)):
            img, y = ds[i]
            assert img.mode == "RGB" and img.size == (32, 32)
            px = np.asarray(img)
            # R encodes the label: plane order and label alignment are right; G = 4·row, B = 4·column
            assert (px[..., 0] - 20 * y).min() >= first_k and (px[..., 0] - 20 * y).max() <= first_k + 1
            np.testing.assert_array_equal(px[..., 1:], cifar_image(0, 0)[..., 1:])
    with pytest.raises(DatasetError, match=r"expected 50000 images in 10 classes.*found 20"):
        tr.check()


def test_cifar10_missing_and_damaged_batches(tmp_path):
    root = make_cifar10(tmp_path)
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match=r"data_batch_3"):
        CIFAR10(root, "train")
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DatasetError, match=r"cannot unpickle .*test_batch"):
        CIFAR10(root, "test")
    with open(root / "cifar-10-batches-py" / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, fh)
    with pytest.raises(DatasetError, match=r"shape \(2, 100\).*\(N, 3072\)"):
        CIFAR10(root, "test")


# ---------------------------------------------------------------------------------------------- STL-10


def test_stl10_fixture_bytes_are_column_major():
    b = stl_bytes(3)
    # byte c·9216 + x·96 + y is channel c at column x, row y
    assert b[0 * 9216 + 5 * 96 + 2] == stl_pixel(3, 2, 5, 0) == 2
    assert b[1 * 9216 + 5 * 96 + 2] == stl_pixel(3, 2, 5, 1) == 5


def test_stl10_pixel_order_labels_and_unlabeled(tmp_path):
    root = make_stl10(tmp_path, train_labels=(1, 10, 4), test_labels=(2, 3), n_unlabeled=2)
    tr, te, un, both = (STL10(root, s) for s in ("train", "test", "unlabeled", "train+unlabeled"))
    assert (len(tr), len(te), len(un), len(both)) == (3, 2, 2, 5)
    assert tr.labels.tolist() == [0, 9, 3] and te.labels.tolist() == [1, 2] and tr.class_names == STL_NAMES
    assert un.labels.tolist() == [0, 0] and not un.is_labeled.any() and not un.has_labels and tr.has_labels
    assert both.is_labeled.tolist() == [True] * 3 + [False] * 2
    # image numbers: train 0..2, test 3..4, unlabeled 5..6
    for ds, first in ((tr, 0), (te, 3), (un, 5), (both, None)):
        for i in range(len(ds)):
            n = (first + i) if first is not None else (i if i < 3 else 5 + i - 3)
            img, _ = ds[i]
            px = np.asarray(img)
            assert img.mode == "RGB" and px.shape == (96, 96, 3)
            assert px[7, 40, 0] == 7 and px[7, 40, 1] == 40  # R = row, G = column
            np.testing.assert_array_equal(px[..., 0], np.repeat(np.arange(96)[:, None], 96, 1))
            assert (px[..., 2] == n * 7 % 256).all()


def test_stl10_truncated_and_missing_files(tmp_path):
    root = make_stl10(tmp_path)
    f = root / "stl10_binary" / "test_X.bin"
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(DatasetError, match=r"test_X\.bin has \d+ bytes, not a positive multiple of 27648"):
        STL10(root, "test")
    (root / "stl10_binary" / "train_y.bin").write_bytes(bytes([1, 2]))
    with pytest.raises(DatasetError, match=r"train_y\.bin holds 2 labels.*expected 6 labels"):
        STL10(root, "train")
    (root / "stl10_binary" / "unlabeled_X.bin").unlink()
    with pytest.raises(DatasetError, match=r"unlabeled_X\.bin"):
        STL10(root, "unlabeled")


def test_stl10_pickles_without_the_pixels(tmp_path):
    ds = STL10(make_stl10(tmp_path), "train+unlabeled")
    before = np.asarray(ds[7][0])
    blob = pickle.dumps(ds)
    assert len(blob) < 27648  # file names and labels only, not one image's bytes
    np.testing.assert_array_equal(np.asarray(pickle.loads(blob)[7][0]), before)
