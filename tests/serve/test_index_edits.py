"""Editing an index folder by id through the CLI and the HTTP API, without re-embedding the other items."""
import io

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from deepmetric.cli import app
from deepmetric.data.embedded import Digits
from deepmetric.retrieval.index import SearchIndex
from deepmetric.serve.indexing import search_images

runner = CliRunner()


def _val_png(tmp_path, j):
    """A digit the gallery (test split) does not hold, as a file."""
    path = tmp_path / f"val{j}.png"
    Image.fromarray(Digits(None, "val").images[j]).save(path)
    return path


def _vectors(index_dir, ids):
    index = SearchIndex.load(index_dir)
    return np.stack([index.index.reconstruct(int(i)) for i in ids])


def test_cli_add_update_remove(index_copy, tmp_path):
    n = len(SearchIndex.load(index_copy))
    others = _vectors(index_copy, range(0, n, 37))
    a, b = _val_png(tmp_path, 0), _val_png(tmp_path, 1)

    r = runner.invoke(app, ["index", "add", "--index", str(index_copy), str(a), "--class", "new-kind"])
    assert r.exit_code == 0, r.output
    assert f"ids {n}" in r.output
    top = search_images(index_copy, [a], k=1, device="cpu")[0][0]
    assert top["id"] == n and top["class_name"] == "new-kind" and top["name"] == "val0.png"
    assert top["score"] == pytest.approx(1.0, abs=1e-4)

    r = runner.invoke(app, ["index", "update", "--index", str(index_copy), str(n), str(b)])
    assert r.exit_code == 0, r.output
    top = search_images(index_copy, [b], k=1, device="cpu")[0][0]
    assert top["id"] == n and top["class_name"] == "new-kind" and top["name"] == "val1.png"  # class kept

    r = runner.invoke(app, ["index", "remove", "--index", str(index_copy), str(n), "3"])
    assert r.exit_code == 0 and f"{n - 1} left" in r.output
    ids = {x["id"] for x in search_images(index_copy, [b, index_copy / "thumbs" / "000004.png"], k=20, device="cpu")[1]}
    assert n not in ids and 3 not in ids and not (index_copy / "thumbs" / "000003.png").exists()
    # the other items were not re-embedded: their stored vectors are bit-identical
    np.testing.assert_array_equal(_vectors(index_copy, range(37, n, 37)), others[1:])

    r = runner.invoke(app, ["index", "remove", "--index", str(index_copy), "99999"])
    assert r.exit_code == 2 and "no item with id 99999" in r.output


def test_a_foreign_model_is_refused_with_the_rebuild_command(index_copy):
    from deepmetric.serve.indexing import IndexSearcher

    index = SearchIndex.load(index_copy)
    index.metadata["model_signature"] = {**index.metadata["model_signature"], "backbone": "resnet50"}
    index.save_metadata(index_copy)
    with pytest.raises(ValueError, match=r"re-embed the whole gallery.*index build --checkpoint NEW_CHECKPOINT.pt --split test --kind flat"):
        IndexSearcher(index_copy, device="cpu")


def test_api_edits_need_allow_edits_then_work(index_copy, tmp_path):
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from deepmetric.serve.app import create_app

    png = _val_png(tmp_path, 2).read_bytes()
    with TestClient(create_app(index_copy, device="cpu")) as c:
        assert c.post("/items", files={"file": ("a.png", png, "image/png")}).status_code == 403
        assert "--allow-edits" in c.delete("/items/0").json()["error"]
    with TestClient(create_app(index_copy, device="cpu", allow_edits=True)) as c:
        n = c.get("/health").json()["items"]
        r = c.post("/items", files={"file": ("a.png", png, "image/png")}, data={"class_name": "7"})
        assert r.status_code == 201, r.text
        new = r.json()
        assert new["id"] == n and new["class_name"] == "7" and new["items"] == n + 1
        hit = c.post("/search?k=1", files={"file": ("q.png", png, "image/png")}).json()["results"][0]
        assert hit["id"] == n and hit["score"] == pytest.approx(1.0, abs=1e-4)
        thumb = c.get(f"/items/{n}")
        assert thumb.status_code == 200 and (index_copy / "added" / f"{n:06d}.png").is_file()
        served = np.asarray(Image.open(io.BytesIO(thumb.content)).convert("L"), dtype=float)  # a JPEG of the kept upload
        assert np.abs(served - np.asarray(Image.open(io.BytesIO(png)), dtype=float)).mean() < 8
        other = _val_png(tmp_path, 3).read_bytes()
        assert c.put(f"/items/{n}", files={"file": ("b.png", other, "image/png")}).json()["id"] == n
        assert c.post("/search?k=1", files={"file": ("q.png", other, "image/png")}).json()["results"][0]["id"] == n
        assert c.delete(f"/items/{n}").json() == {"removed": n, "items": n}
        assert c.get(f"/items/{n}").status_code == 404 and c.delete(f"/items/{n}").status_code == 404
        assert c.put("/items/abc", files={"file": ("b.png", other, "image/png")}).status_code == 400
    assert len(SearchIndex.load(index_copy)) == n  # committed to the folder
