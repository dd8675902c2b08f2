"""The inference layer: a model loaded from a checkpoint without its dataset, and every way of embedding with
it (images, files, folders, dataset splits) giving the same vectors for the same pixels."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from deepmetric.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from deepmetric.config import build_config
from deepmetric.data.embedded import Digits
from deepmetric.inference import Embedder, build_embedding_model, evaluate_checkpoint, image_mode
from deepmetric.models import model_signature


def write_checkpoint(path, raw_cfg, in_chans):
    cfg = build_config(raw_cfg)
    model = build_embedding_model(cfg, in_chans=in_chans)
    save_checkpoint({"model": model.state_dict(), "config": cfg.to_dict(), "model_signature": model_signature(model)}, path)
    return model


@pytest.mark.parametrize("in_chans, mode", [(1, "L"), (3, "RGB")])
def test_loads_without_its_dataset_and_knows_its_inputs(tmp_path, in_chans, mode):
    # The run's image folder does not exist here: channels and transform come from the checkpoint alone.
    raw = {"device": "cpu", "data": {"dataset": "image_folder", "root": str(tmp_path / "gone"), "transform": "mnist",
                                     "image_size": 12, "batch_size": 8, "samples_per_class": 4},
           "model": {"backbone": "small_cnn", "embedding_dim": 8}}
    model = write_checkpoint(tmp_path / "c.pt", raw, in_chans)
    e = Embedder.from_checkpoint(tmp_path / "c.pt", device="cpu")
    assert (e.in_chans, e.mode, e.device.type, e.model.training) == (in_chans, mode, "cpu", False)
    assert e.cfg.model.pretrained is None and e.cfg.data.image_size == 12
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (20, 17, 3), dtype=np.uint8)) for _ in range(3)]
    got = e.embed_images(images)
    # Reference: the eval transform of the recipe (resize to 12) applied by hand, through the saved weights.
    model.eval()
    x = torch.stack([e.transform(im.convert(mode)) for im in images])
    assert x.shape == (3, in_chans, 12, 12)
    torch.testing.assert_close(got, model(x), atol=1e-6, rtol=0)
    assert torch.allclose(got.norm(dim=1), torch.ones(3), atol=1e-5)


def test_a_checkpoint_for_another_model_is_refused(tmp_path):
    raw = {"device": "cpu", "data": {"dataset": "digits", "image_size": 8}, "model": {"backbone": "small_cnn", "embedding_dim": 8}}
    write_checkpoint(tmp_path / "c.pt", raw, 1)
    state = load_checkpoint(tmp_path / "c.pt")
    state["config"]["model"]["embedding_dim"] = 16  # the weights no longer fit what the config builds
    save_checkpoint(state, tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="another model.*embedding_dim: checkpoint 8 vs config 16"):
        Embedder.from_checkpoint(tmp_path / "c.pt", device="cpu")
    with pytest.raises(ValueError, match="5 input channels"):
        image_mode(5)


def test_images_files_folders_and_splits_embed_alike(tiny_run, tmp_path):
    e = Embedder.from_checkpoint(tiny_run / "best.pt", device="cpu")
    split = e.dataset("test")
    emb, labels = e.embed_dataset(split)
    ds = Digits(None, "test")
    assert emb.shape == (len(ds), 16) and labels.tolist() == ds.labels.tolist()
    picks = [0, 7, 123]
    # the same pixels as PIL images, as PNG files, and as a folder with class sub-folders
    pil = [Image.fromarray(ds.images[i]) for i in picks]
    torch.testing.assert_close(e.embed_images(pil), emb[picks], atol=1e-5, rtol=0)
    for i, im in zip(picks, pil):
        (tmp_path / f"c{ds.labels[i]}").mkdir(exist_ok=True)
        im.save(tmp_path / f"c{ds.labels[i]}" / f"{i:04d}.png")
    files = sorted(tmp_path.rglob("*.png"))
    torch.testing.assert_close(e.embed_files(files), emb[[int(p.stem) for p in files]], atol=1e-5, rtol=0)
    folder = e.folder(tmp_path)
    f_emb, f_lab = e.embed_dataset(folder)
    order = [int(p.stem) for p in folder.paths]
    torch.testing.assert_close(f_emb, emb[order], atol=1e-5, rtol=0)
    names = sorted({f"c{ds.labels[i]}" for i in picks})
    assert folder.class_names == names and f_lab.tolist() == [names.index(p.parent.name) for p in folder.paths]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        e.embed_files([tmp_path / "nope.png"])


def test_checkpoint_evaluation_reproduces_the_runs_final_test_metrics(tiny_run):
    # training selected best.pt and evaluated it on the test split with the same embedding code
    final = json.loads((tiny_run / "results.json").read_text())["test"]
    assert evaluate_checkpoint(tiny_run / "best.pt", split="test", device="cpu") == pytest.approx(final, abs=1e-6)


def test_evaluation_keeps_embeddings_on_the_device_that_made_them(tiny_run, monkeypatch):
    """Evaluation asks for the embeddings on the run's device (a GPU's are then searched there by the
    torch engine); index building and the other callers keep getting CPU tensors."""
    import deepmetric.inference as inference

    asked = []
    real_embed = inference.embed

    def spy(*args, keep_on_device=False, **kwargs):
        asked.append(keep_on_device)
        return real_embed(*args, keep_on_device=keep_on_device, **kwargs)

    monkeypatch.setattr(inference, "embed", spy)
    e = Embedder.from_checkpoint(tiny_run / "best.pt", device="cpu")
    e.embed_dataset(e.dataset("test"))
    assert asked == [False]
    final = json.loads((tiny_run / "results.json").read_text())["test"]
    assert evaluate_checkpoint(tiny_run / "best.pt", split="test", device="cpu") == pytest.approx(final, abs=1e-6)
    assert asked[1:] and all(asked[1:])
