"""Session set-up and fixtures shared by every test.

Under ``pytest -n N`` (make test) each of the N workers would start one compute thread per core, so the
machine runs N times more threads than it has cores and matmul-heavy tests slow down several-fold
(measured: the demo test went from 30 s alone to 150 s beside another worker). Each worker gets its
share of the cores instead; subprocesses started by tests inherit it through OMP_NUM_THREADS.
"""
import os

import pytest

workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if workers > 1:
    share = str(max(1, (os.cpu_count() or 1) // workers))
    os.environ.setdefault("OMP_NUM_THREADS", share)
    os.environ.setdefault("MKL_NUM_THREADS", share)

    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# A tiny trained checkpoint on scikit-learn's 8x8 digits and a gallery index built from it (seconds on CPU),
# trained once per test process and shared by the inference, serve and report tests (read-only for them).

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


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A run folder: config.yaml, best.pt, last.pt, metrics.jsonl (1 epoch of 2 steps)."""
    return train_tiny(tmp_path_factory.mktemp("run") / "digits")


@pytest.fixture(scope="session")
def digits_index(tiny_run, tmp_path_factory):
    """An index folder over the digits test split (5 classes, no files: PNG thumbnails)."""
    from deepmetric.serve.indexing import build_index_from_checkpoint

    out = tmp_path_factory.mktemp("index") / "digits"
    build_index_from_checkpoint(tiny_run / "best.pt", split="test", out=out, device="cpu")
    return out
