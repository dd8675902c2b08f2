"""GPU paths (skipped without CUDA; run on a lent GPU machine): AMP, channels-last, compile, CUDA eval."""
import pytest
import torch

from deepmetric.config import build_config
from deepmetric.train.loop import train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

BASE = {
    "device": "cuda",
    "data": {"dataset": "digits", "image_size": 8, "batch_size": 24, "samples_per_class": 8},
    "model": {"backbone": "small_cnn", "embedding_dim": 16},
    "train": {"epochs": 2, "progress": False, "report": False},
    "eval": {"nmi": False},
}


@pytest.mark.parametrize("amp,channels_last", [("bf16", True), ("fp16", False), ("none", True)])
def test_cuda_training_with_mixed_precision(tmp_path, amp, channels_last):
    cfg = build_config(BASE, [f"train.amp={amp}", f"model.channels_last={channels_last}", "synthesis.name=see",
                              "synthesis.params={n: 4}"])
    res = train(cfg, tmp_path / "run", evaluate_before=True)
    assert res["test"]["recall@1"] > res["before"]["recall@1"]


def test_cuda_compile(tmp_path):
    cfg = build_config(BASE, ["train.compile=true", "train.epochs=1"])
    res = train(cfg, tmp_path / "run")
    assert 0 < res["test"]["recall@1"] <= 1


def test_cuda_and_cpu_metrics_agree():
    from deepmetric.retrieval import retrieval_metrics

    g = torch.Generator().manual_seed(0)
    z = torch.nn.functional.normalize(torch.randn(500, 32, generator=g), dim=1)
    y = torch.randint(0, 10, (500,), generator=g)
    cpu = retrieval_metrics(z, y, nmi=False)
    gpu = retrieval_metrics(z.cuda(), y.cuda(), nmi=False)
    assert gpu == pytest.approx(cpu, abs=1e-6)
