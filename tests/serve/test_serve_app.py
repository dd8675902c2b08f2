"""The HTTP service over a digits index: search results, upload validation, item serving, the page."""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from deepmetric.data.embedded import Digits  # noqa: E402
from deepmetric.serve.app import create_app  # noqa: E402

MAX_BYTES = 50_000
MAX_PIXELS = 250_000


@pytest.fixture(scope="module")
def client(digits_index):
    app = create_app(digits_index, max_upload_bytes=MAX_BYTES, max_image_pixels=MAX_PIXELS, max_k=20, device="cpu")
    with TestClient(app) as c:
        yield c


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def upload(client, data: bytes, k=None, name="q.png", ctype="image/png"):
    url = "/search" if k is None else f"/search?k={k}"
    return client.post(url, files={"file": (name, data, ctype)})


def gallery_png(digits_index, i: int) -> bytes:
    return (digits_index / "thumbs" / f"{i:06d}.png").read_bytes()


def test_health_and_info(client):
    n = len(Digits(None, "test"))
    h = client.get("/health").json()
    assert h == {"status": "ok", "items": n, "dim": 16, "kind": "flat", "threshold": None}  # not calibrated
    info = client.get("/info").json()
    assert info["class_names"] == ["5", "6", "7", "8", "9"] and info["max_k"] == 20
    # Examples: the first item of each class in turn, so the first five cover the five classes.
    assert [e["label"] for e in info["examples"][:5]] == [0, 1, 2, 3, 4] and len(info["examples"]) == 8


def test_search_returns_k_results_sorted_by_score(client, digits_index):
    r = upload(client, gallery_png(digits_index, 3), k=7)
    assert r.status_code == 200, r.text
    body = r.json()
    scores = [x["score"] for x in body["results"]]
    assert body["k"] == 7 and len(scores) == 7
    assert scores == sorted(scores, reverse=True) and all(-1.0001 <= s <= 1.0001 for s in scores)
    assert [x["rank"] for x in body["results"]] == list(range(1, 8))
    labels = Digits(None, "test").labels
    for x in body["results"]:
        assert x["label"] == labels[x["id"]] and x["class_name"] == str(5 + x["label"])
        assert x["thumbnail_url"] == f"/items/{x['id']}"
    assert body["query"] == {"width": 8, "height": 8, "mode": "L", "bytes": len(gallery_png(digits_index, 3))}
    assert len(upload(client, gallery_png(digits_index, 3)).json()["results"]) == 10  # default k


@pytest.mark.parametrize("item", [0, 123, 400])
def test_a_gallery_image_finds_itself_first_with_score_one(client, digits_index, item):
    res = upload(client, gallery_png(digits_index, item), k=3).json()["results"]
    assert res[0]["id"] == item and res[0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert res[1]["score"] < res[0]["score"]


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "CMYK", "P", "LA"])
def test_colour_modes_are_converted_like_the_gallery(client, digits_index, mode):
    # A grey image stored as RGB / RGBA (opaque) / CMYK / palette converts back to the same grey pixels.
    gray = Image.open(io.BytesIO(gallery_png(digits_index, 42)))
    image = gray.convert(mode)
    data = png_bytes(image, "TIFF" if mode == "CMYK" else "PNG")
    res = upload(client, data, k=1, name="q.img", ctype="application/octet-stream").json()["results"]
    assert res[0]["id"] == 42 and res[0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_raw_body_upload_equals_multipart(client, digits_index):
    data = gallery_png(digits_index, 9)
    a = upload(client, data, k=5).json()["results"]
    b = client.post("/search?k=5", content=data, headers={"content-type": "image/png"}).json()["results"]
    assert [x["id"] for x in a] == [x["id"] for x in b]
    assert [x["score"] for x in a] == pytest.approx([x["score"] for x in b], abs=1e-6)


@pytest.mark.parametrize("k", ["0", "21", "-3", "ten"])
def test_k_out_of_bounds_is_refused(client, digits_index, k):
    r = upload(client, gallery_png(digits_index, 0), k=k)
    assert r.status_code == 422 and "between 1 and 20" in r.json()["error"]


def test_oversize_upload_is_413(client):
    noise = np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8)  # 25,600 px, ~77 kB as PNG
    data = png_bytes(Image.fromarray(noise))
    assert len(data) > MAX_BYTES
    r = upload(client, data)
    assert r.status_code == 413 and "limit" in r.json()["error"]

    def chunks():  # no Content-Length: the cap applies while streaming
        for _ in range(40):
            yield b"x" * 4096

    r = client.post("/search", content=chunks(), headers={"content-type": "image/png"})
    assert r.status_code == 413


@pytest.mark.parametrize("data,ctype", [(b"hello, this is not an image", "text/plain"), (b"%PDF-1.4\n" + b"0" * 100, "application/pdf")])
def test_non_image_is_415_with_a_json_message(client, data, ctype):
    r = upload(client, data, name="x.png", ctype=ctype)
    assert r.status_code == 415 and "not an image" in r.json()["error"]


def test_empty_damaged_and_malformed_uploads_are_400(client, digits_index):
    assert upload(client, b"").status_code == 400
    jpeg = png_bytes(Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)), "JPEG")
    r = upload(client, jpeg[: len(jpeg) // 2])
    assert r.status_code == 400 and "damaged" in r.json()["error"]
    r = client.post("/search", files={"note": (None, "not a file")})  # multipart without a file part
    assert r.status_code == 400 and "'file'" in r.json()["error"]


def forged_png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width×height pixels but whose data is one empty row (a bomb's shape)."""
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 2)) + chunk(b"IEND", b"")


def test_decompression_bombs_are_refused_before_decoding(client):
    small_file_many_pixels = png_bytes(Image.new("L", (600, 600)))  # 360,000 px in ~1 kB
    assert len(small_file_many_pixels) < 5_000
    r = upload(client, small_file_many_pixels)
    assert r.status_code == 413 and "600×600 = 360,000 pixels" in r.json()["error"]
    r = upload(client, forged_png_header(100_000, 100_000))  # 10^10 px claimed: PIL's own bomb error
    assert r.status_code == 413 and ("bomb" in r.json()["error"].lower() or "pixels" in r.json()["error"])
    r = upload(client, forged_png_header(1000, 1000))  # over this app's limit, far below PIL's global one
    assert r.status_code == 413 and "1,000,000 pixels" in r.json()["error"]
    assert Image.MAX_IMAGE_PIXELS == int(1024 * 1024 * 1024 // 4 // 3)  # the global limit was not touched


def test_items_serve_only_indexed_thumbnails(client, digits_index):
    r = client.get("/items/17")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == gallery_png(digits_index, 17)
    n = client.get("/health").json()["items"]
    assert client.get(f"/items/{n - 1}").status_code == 200
    r = client.get(f"/items/{n}")
    assert r.status_code == 404 and f"0..{n - 1}" in r.json()["error"]


@pytest.mark.parametrize("item", ["-1", "abc", "1.5", "%2e%2e", "..%2F..%2Fetc%2Fpasswd", "..%2Findex.json", "0x10", "1e3", "%00", "٣"])
def test_path_like_or_non_integer_ids_are_rejected(client, item):
    r = client.get(f"/items/{item}")
    assert 400 <= r.status_code < 500
    assert b"model_signature" not in r.content and b"root:" not in r.content
    assert not r.headers["content-type"].startswith("image/")


def test_page_is_self_contained(client):
    html = client.get("/")
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    text = html.text
    assert 'src="/static/app.js"' in text and 'href="/static/style.css"' in text
    assert "http://" not in text and "https://" not in text  # no CDN or other external resource
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "fetch(`/search?k=" in js.text and "innerHTML" not in js.text
    assert client.get("/static/../app.py").status_code == 404


def test_create_app_validates_limits(digits_index):
    with pytest.raises(ValueError, match="max_k=0"):
        create_app(digits_index, max_k=0, device="cpu")
    with pytest.raises(ValueError, match="default_k=30 must be between 1 and max_k=20"):
        create_app(digits_index, max_k=20, default_k=30, device="cpu")


def test_unknown_routes_and_methods_answer_json_errors_and_docs_are_off(digits_index):
    from fastapi.testclient import TestClient

    from deepmetric.serve.app import create_app

    client = TestClient(create_app(digits_index, device="cpu"))
    r = client.get("/nothing/here")
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"
    assert "/nothing/here" in r.json()["error"] and "POST /search" in r.json()["error"] and "detail" not in r.json()
    r = client.get("/search")
    assert r.status_code == 405 and "GET is not allowed on /search" in r.json()["error"]
    r = client.put("/health")
    assert r.status_code == 405 and "PUT is not allowed on /health" in r.json()["error"]
    r = client.patch("/items/1")
    assert r.status_code == 405 and "error" in r.json()
    r = client.delete("/items/1")  # an edit route, refused while edits are off
    assert r.status_code == 403 and "--allow-edits" in r.json()["error"]
    # Swagger's page would load its scripts from a CDN: it is off, the JSON description stays
    assert client.get("/docs").status_code == 404 and client.get("/redoc").status_code == 404
    assert client.get("/openapi.json").json()["info"]["title"] == "deepmetric search"
    assert client.get("/info").json()["score"] == "cosine similarity"
