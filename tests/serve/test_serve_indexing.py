"""Index folders built from a checkpoint: contents, embeddings, image-folder galleries, errors, CLI."""
import json
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from deepmetric.cli import app
from deepmetric.data.embedded import Digits
from deepmetric.retrieval.index import SearchIndex, SearchIndexError
from deepmetric.serve.indexing import IndexSearcher, build_index_from_checkpoint, search_images

runner = CliRunner()


def test_index_folder_holds_the_split_with_labels_thumbnails_and_model(digits_index):
    ds = Digits(None, "test")
    index = SearchIndex.load(digits_index)
    meta = index.metadata
    assert len(index) == len(ds) and index.dim == 16 and index.kind == "flat"
    assert meta["labels"] == ds.labels.tolist() and meta["class_names"] == ["5", "6", "7", "8", "9"]
    assert meta["paths"] is None and meta["image_mode"] == "L" and meta["source"] == {"dataset": "digits", "split": "test"}
    thumbs = sorted((digits_index / "thumbs").glob("*.png"))
    assert len(thumbs) == len(ds)
    np.testing.assert_array_equal(np.asarray(Image.open(thumbs[11])), ds.images[11])  # lossless copies
    assert (digits_index / "model.pt").is_file() and meta["model_signature"]["embedding_dim"] == 16


def test_indexed_vectors_are_the_checkpoints_normalised_embeddings(tiny_run, digits_index):
    from deepmetric.inference import embed_checkpoint

    emb, labels = embed_checkpoint(tiny_run / "best.pt", split="test")
    index = SearchIndex.load(digits_index)
    stored = index.index.reconstruct_n(0, len(index))
    expected = torch.nn.functional.normalize(emb.double(), dim=1).numpy()
    np.testing.assert_allclose(stored, expected, atol=1e-5)
    assert index.labels == labels.tolist()


def test_search_images_finds_gallery_files_first(digits_index):
    paths = [digits_index / "thumbs" / f"{i:06d}.png" for i in (5, 250)]
    results = search_images(digits_index, paths, k=4, device="cpu")
    assert [r[0]["id"] for r in results] == [5, 250]
    assert all(r[0]["score"] == pytest.approx(1.0, abs=1e-4) and len(r) == 4 for r in results)
    assert results[0][0]["class_name"] == str(5 + Digits(None, "test").labels[5])
    with pytest.raises(FileNotFoundError, match="nope.png"):
        search_images(digits_index, [digits_index / "nope.png"], k=1, device="cpu")


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Class folders 'five'/'six' (digits 5 and 6), one unlabelled image at the top, one broken file."""
    root = tmp_path_factory.mktemp("gallery")
    ds = Digits(None, "test")
    for name, label in (("five", 0), ("six", 1)):
        (root / name).mkdir()
        for j in np.flatnonzero(ds.labels == label)[:6]:
            Image.fromarray(ds.images[j]).convert("RGB").resize((32, 32)).save(root / name / f"{j}.jpg")
    Image.fromarray(ds.images[np.flatnonzero(ds.labels == 4)[0]]).save(root / "loose.png")
    (root / "five" / "broken.png").write_bytes(b"not a png")
    return root


def test_image_folder_gallery_uses_folders_as_classes(tiny_run, image_dir, tmp_path):
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable image file\(s\).*broken.png"):
        index = build_index_from_checkpoint(tiny_run / "best.pt", image_dir=image_dir, out=tmp_path / "idx", kind="hnsw", device="cpu")
    meta = index.metadata
    assert len(index) == 13 and meta["class_names"] == ["five", "six"] and index.kind == "hnsw"
    assert meta["labels"] == [0] * 6 + [-1] + [1] * 6  # sorted paths: five/…, loose.png, six/…
    assert meta["paths"][6].endswith("loose.png") and meta["thumbnails"] is None
    searcher = IndexSearcher(tmp_path / "idx", device="cpu")
    data, media = searcher.thumbnail(0)
    assert media == "image/jpeg" and Image.open(io.BytesIO(data)).size == (32, 32)
    first = searcher.search([Image.open(meta["paths"][3])], 2)[0][0]
    assert first["id"] == 3 and first["class_name"] == "five" and first["score"] == pytest.approx(1.0, abs=1e-4)
    assert searcher.item(6)["label"] is None and searcher.item(6)["class_name"] is None
    # A gallery file deleted after indexing: a clear error, never another file.
    Path(meta["paths"][12]).unlink()
    with pytest.raises(FileNotFoundError, match="missing; rebuild the index"):
        searcher.thumbnail(12)
    with pytest.raises(IndexError, match="0..12"):
        searcher.thumbnail(13)


def test_index_and_model_of_different_runs_are_refused(digits_index, tmp_path):
    import shutil

    from deepmetric.checkpoint import load_checkpoint, save_checkpoint
    from deepmetric.config import build_config
    from deepmetric.inference import build_embedding_model
    from deepmetric.models import model_signature

    copy = tmp_path / "mixed"
    shutil.copytree(digits_index, copy)
    # Another run's model (8-d embeddings) in the index folder of a 16-d gallery.
    cfg = build_config(load_checkpoint(copy / "model.pt")["config"], ["model.embedding_dim=8"])
    other = build_embedding_model(cfg, in_chans=1)
    save_checkpoint({"model": other.state_dict(), "config": cfg.to_dict(), "model_signature": model_signature(other)}, copy / "model.pt")
    with pytest.raises(SearchIndexError, match="produces 8-dimensional embeddings but the index holds 16-dimensional.*deepmetric index build"):
        IndexSearcher(copy, device="cpu")
    (copy / "model.pt").unlink()
    with pytest.raises(SearchIndexError, match="no model.pt"):
        IndexSearcher(copy, device="cpu")


def test_build_refuses_ambiguous_gallery_and_foreign_folders(tiny_run, tmp_path):
    with pytest.raises(ValueError, match="kind='lsh' is not one of"):
        build_index_from_checkpoint(tiny_run / "best.pt", kind="lsh", out=tmp_path / "x", device="cpu")
    with pytest.raises(ValueError, match="either a split"):
        build_index_from_checkpoint(tiny_run / "best.pt", split="test", image_dir=tmp_path, out=tmp_path / "x", device="cpu")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an index folder"):
        build_index_from_checkpoint(tiny_run / "best.pt", split="val", out=tmp_path / "busy", device="cpu")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_cli_index_build_search_and_errors(tiny_run, tmp_path):
    out = tmp_path / "cli_idx"
    r = runner.invoke(app, ["index", "build", "--checkpoint", str(tiny_run / "best.pt"), "--split", "val", "--out", str(out), "--kind", "flat"])
    assert r.exit_code == 0, r.output
    n_val = len(Digits(None, "val"))
    assert f"indexed {n_val} items of digits split 'val'" in r.output
    assert json.loads((out / "index.json").read_text())["count"] == n_val
    r = runner.invoke(app, ["search", "--index", str(out), str(out / "thumbs" / "000007.png"), "-k", "3"])
    assert r.exit_code == 0, r.output
    rows = [ln.split("│")[1:-1] for ln in r.output.splitlines() if ln.count("│") == 6]
    assert [c.strip() for c in rows[0][:3]] == ["1", "7", "1.0000"] and len(rows) == 3  # itself first, then 2 more
    r = runner.invoke(app, ["search", "--index", str(tmp_path / "missing"), str(out / "thumbs" / "000007.png")])
    assert r.exit_code == 2 and "does not exist" in r.output


def test_cli_export_torchscript_reproduces_the_model(tiny_run, tmp_path):
    from deepmetric.inference import Embedder

    out = tmp_path / "model.pt"
    r = runner.invoke(app, ["export", "--checkpoint", str(tiny_run / "best.pt"), "--format", "torchscript", "--out", str(out)])
    assert r.exit_code == 0, r.output
    model = Embedder.from_checkpoint(tiny_run / "best.pt", device="cpu").model
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(out))
    torch.testing.assert_close(scripted(x), model(x), atol=1e-5, rtol=0)
    r = runner.invoke(app, ["export", "--checkpoint", str(tiny_run / "best.pt"), "--format", "tflite", "--out", str(out)])
    assert r.exit_code == 2 and "tflite" in r.output


def _csv_gallery(root, bad):
    """A CSV dataset of digit images (test split: 2 classes × 5 files) plus the ``bad`` files listed in it."""
    ds = Digits(None, "test")
    rows = []
    for label in (0, 1):
        for j in np.flatnonzero(ds.labels == label)[:5]:
            Image.fromarray(ds.images[j]).save(root / f"{j}.png")
            rows.append(f"{label},{j}.png,test")
    for name, label in bad:
        rows.append(f"{label},{name},test")
    (root / "df.csv").write_text("label,path,split\n" + "\n".join(rows) + "\n")
    return root / "df.csv"


@pytest.mark.parametrize("how", ["split", "folder"])
def test_unreadable_gallery_files_are_left_out_with_one_warning(tiny_run, tmp_path, how):
    gallery = tmp_path / "g"
    gallery.mkdir()
    csv = _csv_gallery(gallery, [("notimage.png", 0), ("truncated.png", 1)])
    (gallery / "notimage.png").write_bytes(b"this is text")
    good = (gallery / next(gallery.glob("*.png")).name).read_bytes()
    (gallery / "truncated.png").write_bytes(good[: len(good) // 2])  # a valid header, then nothing
    kwargs = (dict(split="test", overrides=[f"data.dataset=csv", f"data.root={csv}"]) if how == "split"
              else dict(image_dir=gallery))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        index = build_index_from_checkpoint(tiny_run / "best.pt", out=tmp_path / "idx", device="cpu", **kwargs)
    ours = [w for w in caught if "unreadable" in str(w.message)]
    assert len(ours) == 1
    assert "2 unreadable image file(s)" in str(ours[0].message)
    assert "notimage.png" in str(ours[0].message) and "truncated.png" in str(ours[0].message)
    meta = index.metadata
    assert len(index) == 10 and len(meta["paths"]) == 10 and len(meta["labels"]) == 10
    assert not any(p.endswith(("notimage.png", "truncated.png")) for p in meta["paths"])
    # every indexed item is its own image: searching with its file finds it first at cosine ~1
    searcher = IndexSearcher(tmp_path / "idx", device="cpu")
    for i in (0, 9):
        top = searcher.search([Image.open(meta["paths"][i])], 1)[0][0]
        assert top["id"] == i and top["name"] == Path(meta["paths"][i]).name


def test_a_gallery_file_damaged_after_indexing_is_a_json_404_not_a_500(tiny_run, tmp_path):
    from fastapi.testclient import TestClient

    from deepmetric.serve.app import create_app

    gallery = tmp_path / "g"
    gallery.mkdir()
    _csv_gallery(gallery, [])
    build_index_from_checkpoint(tiny_run / "best.pt", image_dir=gallery, out=tmp_path / "idx", device="cpu")
    meta = SearchIndex.load(tmp_path / "idx").metadata
    Path(meta["paths"][2]).write_bytes(b"damaged")
    Path(meta["paths"][3]).unlink()
    client = TestClient(create_app(tmp_path / "idx", device="cpu"), raise_server_exceptions=False)
    for i in (2, 3):
        r = client.get(f"/items/{i}")
        assert r.status_code == 404 and r.headers["content-type"].startswith("application/json")
        assert Path(meta["paths"][i]).name in r.json()["error"]
    assert client.get("/items/4").status_code == 200
