"""The instance-wise (unsupervised) path never uses labels."""
import numpy as np
import pytest
import torch

from deepmetric.config import build_config
from deepmetric.data.embedded import _EmbeddedDigits
from deepmetric.checkpoint import load_checkpoint
from deepmetric.train.loop import train

UNSUP = {
    "device": "cpu",
    "data": {"dataset": "digits", "image_size": 8, "two_view": True, "sampler": "random", "batch_size": 16, "val_split": None},
    "model": {"backbone": "small_cnn", "embedding_dim": 16},
    "loss": {"name": "instance_softmax", "params": {"temperature": 0.1}},
    "train": {"epochs": 2, "max_steps_per_epoch": 3, "progress": False, "report": False},
    "eval": {"nmi": False, "knn_accuracy": True, "knn_k": 20},
}


def _weights(path):
    return load_checkpoint(path)["model"]


@pytest.mark.parametrize("extra", [[], ["data.neighbour_positives=0.5"], ["synthesis.name=feature_interpolation"]])
def test_shuffling_labels_changes_nothing_in_training(tmp_path, monkeypatch, extra):
    cfg = build_config(UNSUP, extra)
    res_a = train(cfg, tmp_path / "a")
    original = _EmbeddedDigits.__init__

    def shuffled(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.labels = np.random.default_rng(123).permutation(self.labels)  # labels now carry no information

    monkeypatch.setattr(_EmbeddedDigits, "__init__", shuffled)
    res_b = train(cfg, tmp_path / "b")
    wa, wb = _weights(tmp_path / "a" / "last.pt"), _weights(tmp_path / "b" / "last.pt")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    # evaluation does use labels, so the metrics differ: the test above is not vacuous
    assert res_a["test"]["knn_accuracy"] != res_b["test"]["knn_accuracy"]


def test_instance_loss_requires_two_views():
    from deepmetric.train.loop import is_unsupervised

    with pytest.raises(ValueError, match="two_view=true"):
        is_unsupervised(build_config(UNSUP, ["data.two_view=false"]))
