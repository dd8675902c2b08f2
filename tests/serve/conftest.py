"""A tiny trained checkpoint on scikit-learn's 8x8 digits and a gallery index built from it (seconds on CPU)."""
import pytest

TINY = {
    "device": "cpu",
    "data": {"dataset": "digits", "image_size": 8, "batch_size": 24, "samples_per_class": 8},
    "model": {"backbone": "small_cnn", "embedding_dim": 16},
    "train": {"epochs": 1, "max_steps_per_epoch": 2, "progress": False, "log_every": 1, "report": False},
    "eval": {"nmi": False},
}


def train_tiny(out, *overrides):
    from deepmetric.config import build_config
    from deepmetric.train.loop import train

    train(build_config(TINY, list(overrides)), out)
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run folder: config.yaml, best.pt, last.pt, metrics.jsonl (1 epoch of 2 steps)."""
    return train_tiny(tmp_path_factory.mktemp("run") / "digits")


@pytest.fixture(scope="module")
def digits_index(tiny_run, tmp_path_factory):
    """An index folder over the digits test split (5 classes, no files: PNG thumbnails)."""
    from deepmetric.serve.indexing import build_index_from_checkpoint

    out = tmp_path_factory.mktemp("index") / "digits"
    build_index_from_checkpoint(tiny_run / "best.pt", split="test", out=out, device="cpu")
    return out
