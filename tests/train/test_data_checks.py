"""What the loop checks about its data before it trains: label ranges, and which items may vote in kNN."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
import layouts  # noqa: E402

from deepmetric.config import build_config  # noqa: E402
from deepmetric.data.embedded import Digits  # noqa: E402
from deepmetric.registry import DATASETS  # noqa: E402
from deepmetric.data.build import build_dataset  # noqa: E402
from deepmetric.train.loop import train  # noqa: E402

TINY = {
    "device": "cpu",
    "model": {"backbone": "small_cnn", "embedding_dim": 16},
    "train": {"epochs": 1, "max_steps_per_epoch": 1, "progress": False, "report": False},
    "eval": {"nmi": False},
}


class ShiftedDigits(Digits):
    """A broken adapter: labels 1..C instead of 0..C-1."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.labels = self.labels + 1


def test_labels_outside_the_class_range_are_refused_before_training(monkeypatch, tmp_path):
    monkeypatch.setitem(DATASETS._table, "shifted_digits", ShiftedDigits)
    cfg = build_config({**TINY, "data": {"dataset": "shifted_digits", "image_size": 8, "batch_size": 16,
                                         "samples_per_class": 8}})
    with pytest.raises(ValueError, match=r"split 'train'.*label\(s\) outside 0\.\.2.*labels found in 1\.\.3.*remap") as e:
        build_dataset(cfg, "train", train=True)
    assert "num_classes=3" in str(e.value)
    with pytest.raises(ValueError, match="outside 0..2"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "last.pt").exists()


def test_unlabeled_stl10_images_never_vote_in_the_knn_memory(tmp_path):
    # Memory = train+unlabeled: the 4 labelled train images are classes 1-2, the 6 unlabeled ones carry the
    # placeholder label 0, and every test image is class 0. Only labelled images may vote, so no test image
    # can be classified correctly: kNN accuracy must be exactly 0 (a memory that let the placeholder vote
    # would predict class 0 for them).
    root = layouts.make_stl10(tmp_path / "data", train_labels=(2, 3, 2, 3), test_labels=(1, 1, 1, 1), n_unlabeled=6)
    cfg = build_config({**TINY, "data": {"dataset": "stl10", "root": str(root), "transform": "cifar", "image_size": 16,
                                         "train_split": "train+unlabeled", "val_split": None, "two_view": True,
                                         "sampler": "random", "batch_size": 4},
                        "loss": {"name": "instance_softmax"},
                        "eval": {"nmi": False, "knn_accuracy": True, "knn_k": 3, "ks": [1, 2]}})
    memory = build_dataset(cfg, "train+unlabeled", train=False)
    assert list(memory.labels) == [1, 2, 1, 2] + [0] * 6 and list(np.flatnonzero(~memory.is_labeled)) == list(range(4, 10))
    res = train(cfg, tmp_path / "run")
    assert res["test"]["knn_accuracy"] == 0.0
