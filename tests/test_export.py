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


def test_onnx_file_carries_the_preprocessing(tmp_path, model):
    pytest.importorskip("onnxruntime")
    from deepmetric.data.transforms import build_transform
    from deepmetric.export import preprocessing_metadata, read_onnx_metadata

    meta = preprocessing_metadata(build_transform("mnist", train=False, image_size=28, resize=None), image_size=28, resize=None, channels=1)
    assert meta["mean"] == pytest.approx([0.1307]) and meta["std"] == pytest.approx([0.3081])
    assert meta["channels"] == 1 and meta["image_mode"] == "L" and meta["channel_order"] == "RGB"
    path = export_model(model, tmp_path / "m.onnx", format="onnx", example_input=torch.randn(2, 1, 28, 28), metadata=meta)
    assert read_onnx_metadata(path) == meta
    imagenet = preprocessing_metadata(build_transform("imagenet", train=False, image_size=224, resize=256), image_size=224, resize=256, channels=3)
    assert imagenet["mean"] == pytest.approx([0.485, 0.456, 0.406]) and imagenet["resize"] == 256


def test_missing_onnx_is_a_clear_message(tmp_path, model, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name == "onnx":
            raise ImportError("No module named 'onnx'", name="onnx")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    with pytest.raises(ValueError, match=r"'export' extra \(onnx is not installed\).*deepmetric\[export\]"):
        export_model(model, tmp_path / "m.onnx", format="onnx", example_input=torch.randn(2, 1, 28, 28))
