"""A real training process killed with SIGKILL mid-epoch resumes to the same final result."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from deepmetric.checkpoint import load_checkpoint

CFG = Path(__file__).resolve().parents[2] / "configs" / "mnist_proxy_anchor.yaml"
SETS = ["device=cpu", "data.dataset=digits", "data.image_size=8", "data.batch_size=24", "data.samples_per_class=8", "model.embedding_dim=16",
        "train.epochs=2", "train.max_steps_per_epoch=6", "train.progress=false", "train.checkpoint_every_steps=1", "train.report=false", "eval.nmi=false"]


def _cmd(out, *extra):
    args = [sys.executable, "-m", "deepmetric", "train", "--config", str(CFG), "--out", str(out), *extra]
    for s in SETS:
        args += ["--set", s]
    return args


@pytest.mark.slow
def test_kill_minus_nine_then_resume_reaches_same_result(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full = subprocess.run(_cmd(tmp_path / "full"), env=env, capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr[-2000:]

    proc = subprocess.Popen(_cmd(tmp_path / "cut"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = tmp_path / "cut" / "last.pt"
    deadline = time.time() + 240
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if last.exists():
            step = load_checkpoint(last)["state"]["step"]
            if step >= 8:  # inside epoch 2 (6 steps per epoch)
                proc.send_signal(signal.SIGKILL)
                killed_at = step
                break
        time.sleep(0.05)
    proc.wait(timeout=60)
    assert killed_at is not None, "the run finished or stalled before it could be killed"
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "cut" / "results.json").exists()

    resumed = subprocess.run(_cmd(tmp_path / "cut", "--resume"), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = json.loads((tmp_path / "full" / "results.json").read_text())["test"]
    b = json.loads((tmp_path / "cut" / "results.json").read_text())["test"]
    assert b == pytest.approx(a, abs=1e-6)
    wa, wb = load_checkpoint(tmp_path / "full" / "last.pt")["model"], load_checkpoint(last)["model"]
    assert all(torch.allclose(wa[k].float(), wb[k].float(), atol=1e-6) for k in wa)
