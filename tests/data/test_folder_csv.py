"""ImageFolderDataset (split folders or split by class) and CSVDataset (open-metric-learning format)."""
import numpy as np
import pytest

from deepmetric.data.base import DatasetError
from deepmetric.data.csv_dataset import CSVDataset
from deepmetric.data.folder import ImageFolderDataset
from deepmetric.registry import DATASETS
from layouts import colour, make_csv, make_image_folder, write_image


def test_registry():
    assert DATASETS.get("image_folder") is ImageFolderDataset and DATASETS.get("csv") is CSVDataset


def test_split_folders(tmp_path):
    root = make_image_folder(tmp_path, classes=("b", "a", "c"), per_class=2, splits=("train", "query"))
    (root / "train" / "a" / "notes.txt").write_text("not an image")
    ds = ImageFolderDataset(root, "query")
    assert ds.class_names == ["a", "b", "c"] and ds.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert len(ImageFolderDataset(root, "train")) == 6  # the .txt file is ignored
    img, y = ds[2]
    assert np.abs(np.asarray(img, dtype=int) - colour(1, 0)).max() == 0  # "b" was class index 0 of the fixture
    with pytest.raises(DatasetError, match=r"(?s)split folder not found: .*test.*found split folders: \['query', 'train'\]"):
        ImageFolderDataset(root, "test")


def test_class_folders_split_by_class(tmp_path):
    root = make_image_folder(tmp_path, classes=("d", "c", "b", "a", "e"), per_class=2)
    (root / "empty").mkdir()
    tr, te, al = (ImageFolderDataset(root, s, class_split=0.6) for s in ("train", "test", "all"))
    assert tr.class_names == ["a", "b", "c"] and te.class_names == ["d", "e"] and al.num_classes == 5
    assert set(tr.labels.tolist()) == {0, 1, 2} and set(te.labels.tolist()) == {0, 1}
    assert not set(map(str, tr.paths)) & set(map(str, te.paths)) and len(al) == len(tr) + len(te)
    with pytest.raises(ValueError, match=r"split must be 'train', 'test' or 'all', not 'val'"):
        ImageFolderDataset(root, "val")
    with pytest.raises(ValueError, match=r"class_split=1.0"):
        ImageFolderDataset(root, "train", class_split=1.0)
    with pytest.raises(DatasetError, match=r"folder not found"):
        ImageFolderDataset(tmp_path / "nope", "train")


def test_csv_default_oml_layout(tmp_path):
    path = make_csv(tmp_path)
    for root in (path, tmp_path):  # the file, or the folder holding df.csv
        tr = CSVDataset(root, "train")
        assert tr.class_names == ["10", "11"] and tr.labels.tolist() == [0, 0, 1, 1] and tr.is_query is None
    va = CSVDataset(path, "test")  # alias of "validation"
    assert va.csv_split == "validation" and va.class_names == ["20", "21"]
    assert va.is_query.tolist() == [True, False, True, False] and va.is_gallery.tolist() == [False, True, False, True]
    assert va.paths[1] == tmp_path / "images" / "20_1.jpg"
    img, y = va[1]
    assert y == 0 and np.abs(np.asarray(img, dtype=int) - colour(20, 1)).max() <= 6


def test_csv_numeric_label_order_absolute_paths_and_errors(tmp_path):
    absolute = write_image(tmp_path / "elsewhere" / "x_0.png", (1, 2, 3))
    rows = [{"label": 10, "path": "i/10_0.png", "split": "train"}, {"label": 9, "path": "i/9_0.png", "split": "train"},
            {"label": 100, "path": str(absolute), "split": "train"}]
    ds = CSVDataset(make_csv(tmp_path / "d", rows, name="my.csv"), "train")
    assert ds.class_names == ["9", "10", "100"] and ds.labels.tolist() == [1, 0, 2]  # numeric, not text, order
    assert ds.paths[2] == absolute and tuple(np.asarray(ds[2][0])[0, 0]) == (1, 2, 3)
    with pytest.raises(ValueError, match=r"split 'test' is not in .*my\.csv; its splits are \['train'\]"):
        CSVDataset(tmp_path / "d" / "my.csv", "test")
    (tmp_path / "bad.csv").write_text("label,file,split\n1,a.png,train\n")
    with pytest.raises(DatasetError, match=r"lacks column\(s\) \['path'\]"):
        CSVDataset(tmp_path / "bad.csv", "train")
    (tmp_path / "half.csv").write_text("label,path,split,is_query\n1,a.png,train,1\n")
    with pytest.raises(DatasetError, match=r"only one of is_query / is_gallery"):
        CSVDataset(tmp_path / "half.csv", "train")
    (tmp_path / "b.csv").write_text("label,path,split,is_query,is_gallery\n1,a.png,v,maybe,1\n")
    with pytest.raises(DatasetError, match=r"malformed line 2 .*is_query"):
        CSVDataset(tmp_path / "b.csv", "v")
    with pytest.raises(DatasetError, match=r"df\.csv"):
        CSVDataset(tmp_path / "nothing_here", "train")
