"""Exported ONNX / TorchScript models reproduce the PyTorch embeddings, at any batch size."""
import numpy as np
import pytest
import torch

from deepmetric.export import export_model
from deepmetric.models import build_model

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning", "ignore::DeprecationWarning")


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = build_model("small_cnn", in_chans=1, embedding_dim=16, pooling="avgmax", head_norm="bn")
    m.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval-mode export is actually tested
        for _ in range(3):
            m(torch.randn(8, 1, 28, 28) * 2 + 0.5)
    return m


def test_onnx_matches_pytorch_with_dynamic_batch(tmp_path, model):
    ort = pytest.importorskip("onnxruntime")
    path = export_model(model, tmp_path / "m.onnx", format="onnx", example_input=torch.randn(2, 1, 28, 28))
    assert model.training  # mode restored
    model.eval()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["images"] and [o.name for o in sess.get_outputs()] == ["embeddings"]
    for batch in (1, 5):
        x = torch.randn(batch, 1, 28, 28)
        (got,) = sess.run(None, {"images": x.numpy()})
        with torch.no_grad():
            ref = model(x).numpy()
        assert got.shape == (batch, 16)
        assert np.abs(got - ref).max() <= 1e-5


def test_torchscript_matches_pytorch_with_dynamic_batch(tmp_path, model):
    path = export_model(model, tmp_path / "m.pt", format="torchscript", example_input=torch.randn(2, 1, 28, 28))
    loaded = torch.jit.load(str(path))
    model.eval()
    for batch in (1, 5):
        x = torch.randn(batch, 1, 28, 28)
        with torch.no_grad():
            diff = (loaded(x) - model(x)).abs().max().item()
        assert diff <= 1e-5


def test_bad_arguments(tmp_path, model):
    with pytest.raises(ValueError, match="'tflite'"):
        export_model(model, tmp_path / "m", format="tflite", example_input=torch.randn(1, 1, 28, 28))
    with pytest.raises(ValueError, match=r"\(1, 28, 28\)"):
        export_model(model, tmp_path / "m.onnx", example_input=torch.randn(1, 28, 28))
