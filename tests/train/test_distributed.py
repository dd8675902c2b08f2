"""Two CPU processes with gloo: gathered loss and gradients, and a 2-process training run, equal the
single-process computation on the concatenated batch."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from deepmetric.checkpoint import load_checkpoint
from deepmetric.losses.build import build_loss
from deepmetric.distributed import DistContext, gather_nograd, gather_with_grad


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 6, generator=g, dtype=torch.float64)
    y = torch.arange(16) % 4
    return x, y


def _model():
    torch.manual_seed(1)
    return torch.nn.Linear(6, 5).double()


def _loss(name):
    torch.manual_seed(2)
    return build_loss(name, num_classes=4, embedding_dim=5).double()


LOSS_NAMES = ("multi_similarity", "proxy_anchor", "ntxent")


def _worker(rank, world, port, names, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    ctx = DistContext(rank=rank, world_size=world)
    x, y = _batch()
    per = len(x) // world
    for name in names:  # one process group for every loss: each spawn costs two interpreter start-ups
        model = torch.nn.parallel.DistributedDataParallel(_model())
        loss_fn = _loss(name)
        emb = torch.nn.functional.normalize(model(x[rank * per:(rank + 1) * per]), dim=1)
        emb_all = gather_with_grad(emb, ctx)
        y_all = gather_nograd(y[rank * per:(rank + 1) * per], ctx)
        loss = loss_fn(emb_all, y_all)
        loss.backward()
        torch.save({"loss": loss.detach(), "w": model.module.weight.grad, "b": model.module.bias.grad,
                    "proxies": [p.grad for p in loss_fn.parameters()]}, f"{out}/{name}_rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def gathered_runs(tmp_path_factory):
    """Two gloo processes computed every loss of LOSS_NAMES on their halves of one batch (files per rank)."""
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, _free_port(), LOSS_NAMES, str(out)), nprocs=2, join=True)
    return out


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_gathered_loss_and_gradients_equal_single_process(gathered_runs, name):
    x, y = _batch()
    model, loss_fn = _model(), _loss(name)
    loss = loss_fn(torch.nn.functional.normalize(model(x), dim=1), y)
    loss.backward()
    for rank in range(2):
        got = torch.load(gathered_runs / f"{name}_rank{rank}.pt")
        assert torch.allclose(got["loss"], loss.detach(), atol=1e-12)
        assert torch.allclose(got["w"], model.weight.grad, atol=1e-10)
        assert torch.allclose(got["b"], model.bias.grad, atol=1e-10)
        for g, p in zip(got["proxies"], loss_fn.parameters()):
            assert torch.allclose(g, p.grad, atol=1e-10)


@pytest.mark.slow
def test_two_process_training_matches_one_process(tmp_path):
    common = ["--set", "device=cpu", "--set", "data.dataset=digits", "--set", "data.image_size=8",
              "--set", "data.samples_per_class=8", "--set", "model.embedding_dim=16", "--set", "model.freeze_bn=true",
              "--set", "train.epochs=2", "--set", "train.max_steps_per_epoch=3", "--set", "train.progress=false", "--set", "train.report=false",
              "--set", "eval.nmi=false", "--set", "loss.name=multi_similarity"]
    cfg = Path(__file__).resolve().parents[2] / "configs" / "mnist_proxy_anchor.yaml"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "deepmetric", "train", "--config", str(cfg), "--out", str(tmp_path / "one"),
                          "--set", "data.batch_size=16", *common], env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_free_port()),
                          "-m", "deepmetric", "train", "--config", str(cfg), "--out", str(tmp_path / "two"),
                          "--set", "data.batch_size=8", *common], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a = load_checkpoint(tmp_path / "one" / "last.pt")
    b = load_checkpoint(tmp_path / "two" / "last.pt")
    for k in a["model"]:
        assert torch.allclose(a["model"][k].float(), b["model"][k].float(), atol=1e-5), k
    ra = json.loads((tmp_path / "one" / "results.json").read_text())["test"]
    rb = json.loads((tmp_path / "two" / "results.json").read_text())["test"]
    assert rb == pytest.approx(ra, abs=1e-5)
