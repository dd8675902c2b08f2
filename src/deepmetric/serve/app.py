"""HTTP search service over a saved index: ``create_app(index_dir) -> FastAPI``.

Routes:
    GET  /             a self-contained web page (HTML + vanilla JS, no CDN): upload or pick an image,
                       see the top-k gallery items with scores and correct/incorrect marks.
    GET  /health       liveness and what is served (item count, dimension, index kind, match threshold).
    GET  /info         what the page needs: classes, a few example gallery items, limits.
    POST /search?k=10  an image (multipart field ``file``, or the raw bytes as the body) -> JSON neighbours
                       ``{"k", "query", "threshold", "match", "results": [{rank, id, score, match, label,
                       class_name, name, thumbnail_url}]}``. With a calibrated index (``deepmetric
                       calibrate``) ``threshold`` is the cosine similarity a match needs and ``match`` says
                       whether the best result reaches it ("no match" when false); both null otherwise.
    GET  /items/{id}   the thumbnail of indexed item ``id``.
    POST /items        (``allow_edits`` only) add an image (multipart ``file``, optional form field
                       ``class_name``) -> ``{"id"}``; the image is kept in the index folder.
    PUT  /items/{id}   (``allow_edits`` only) replace item ``id``'s image (and class), keeping its id.
    DELETE /items/{id} (``allow_edits`` only) remove item ``id``.
    Edits re-embed only the item concerned and are committed to the folder atomically; searches wait for
    an edit in progress (one lock around the faiss index), so no request sees half an edit.

Safety: an item is addressed only by its integer row in the index metadata, never by a path, so only
indexed images can be served. Uploads are bounded in bytes (checked while reading, before parsing) and in
pixels (checked from the image header, before decoding: a per-app limit, PIL's global
``Image.MAX_IMAGE_PIXELS`` is left alone); non-images are rejected with 415, damaged images with 400,
oversize ones with 413. Every error, 404/405 included, is JSON ``{"error": "..."}`` that says what was
wrong. There is no /docs page (Swagger would load from a CDN, blank offline); /openapi.json describes the API.
"""
from __future__ import annotations

import io
import os
import threading
from pathlib import Path
from typing import Any, Dict, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from deepmetric.data.base import oriented

STATIC_DIR = Path(__file__).parent / "static"
#: what a 404/405 answer lists
ROUTES = "GET /, GET /health, GET /info, GET /openapi.json, POST /search?k=K, GET /items/{id}"
#: Room for the multipart envelope (boundaries, part headers) on top of the image-size limit.
MULTIPART_SLACK = 64 * 1024


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with an HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode uploaded bytes into a PIL image, refusing non-images and images over ``max_pixels``.

    The pixel count is read from the header (``Image.open`` is lazy) and checked before any pixel is
    decoded. EXIF orientation is applied; the first frame of an animation is used.

    Raises:
        ApiError: 400 empty or damaged data, 413 too many pixels, 415 not an image.
    """
    if not data:
        raise ApiError(400, "the upload is empty; send an image file (PNG, JPEG, WebP, BMP, GIF, TIFF)")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:  # PIL's own hard limit, hit while reading the header
        raise ApiError(413, f"image refused as a decompression bomb: {exc}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise ApiError(415, "the upload is not an image that can be read; send PNG, JPEG, WebP, BMP, GIF or TIFF") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ApiError(413, f"image is {width}×{height} = {width * height:,} pixels; the limit is {max_pixels:,} pixels. Send a smaller image")
    if width == 0 or height == 0:
        raise ApiError(400, f"image has no pixels ({width}×{height})")
    try:
        image = oriented(image)  # the datasets' decoding: first frame, EXIF orientation
    except Exception as exc:  # noqa: BLE001 - decoders raise many types for damaged data
        raise ApiError(400, f"the image data is damaged and could not be decoded ({type(exc).__name__}: {exc})") from None
    return image


def create_app(
    index_dir: str | os.PathLike,
    *,
    max_upload_bytes: int = 10 * 1024 * 1024,
    max_image_pixels: int = 40_000_000,
    max_k: int = 100,
    default_k: int = 10,
    num_examples: int = 8,
    device: str = "auto",
    searcher: Optional[Any] = None,
    allow_edits: bool = False,
) -> FastAPI:
    """A FastAPI app serving searches over the index folder ``index_dir`` (see the module docstring).

    Args:
        index_dir: a folder written by ``deepmetric index build``.
        max_upload_bytes: largest accepted image file (bytes); larger uploads get 413.
        max_image_pixels: largest accepted width × height; larger images get 413 before decoding.
        max_k: largest ``k`` a request may ask for. default_k: ``k`` when the request gives none.
        num_examples: example gallery items offered by the page (one per class while classes last).
        device: where the query model runs ("auto", "cpu", "cuda").
        searcher: an already opened ``IndexSearcher`` (tests, several apps over one index).
        allow_edits: enable POST/PUT/DELETE /items; off by default (anyone who reaches the port could edit).

    Raises:
        SearchIndexError: the index folder is incomplete or inconsistent (raised now, not per request).
    """
    from deepmetric.serve.indexing import IndexSearcher

    for name, value in (("max_upload_bytes", max_upload_bytes), ("max_image_pixels", max_image_pixels), ("max_k", max_k)):
        if value < 1:
            raise ValueError(f"{name}={value} must be >= 1")
    if not 1 <= default_k <= max_k:
        raise ValueError(f"default_k={default_k} must be between 1 and max_k={max_k}")
    searcher = searcher or IndexSearcher(index_dir, device=device)
    meta = searcher.index.metadata
    lock = threading.Lock()  # the faiss index is not safe to search while it is being edited
    examples = _pick_examples(searcher, num_examples)

    # No /docs: FastAPI's Swagger page loads its JavaScript from a CDN (blank offline) and no installed
    # package ships those assets; the machine-readable description stays at /openapi.json.
    app = FastAPI(title="deepmetric search", version="1", docs_url=None, redoc_url=None)
    app.state.searcher = searcher

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Starlette's own 404/405 answers, in the service's {"error"} shape with a useful message
        if exc.status_code == 404:
            message = f"no route {request.url.path}; the service answers {ROUTES}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}; the service answers {ROUTES}"
        else:
            message = str(exc.detail)
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"error": f"bad request: {where}: {first.get('msg', 'invalid')}"}, status_code=422)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((STATIC_DIR / "index.html").read_text(encoding="utf-8"))

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/health")
    async def health() -> Dict[str, Any]:
        return {"status": "ok", "items": len(searcher), "dim": searcher.index.dim, "kind": searcher.index.kind,
                "threshold": searcher.index.threshold}

    @app.get("/info")
    async def info() -> Dict[str, Any]:
        sig = meta.get("model_signature") or {}
        return {
            "items": len(searcher),
            "dim": searcher.index.dim,
            "kind": searcher.index.kind,
            "model": sig.get("backbone"),
            "source": meta.get("source"),
            "class_names": meta.get("class_names") or [],
            "examples": [{**searcher.item(i), "thumbnail_url": f"/items/{i}"} for i in examples],
            "max_k": max_k,
            "default_k": default_k,
            "max_upload_bytes": max_upload_bytes,
            "max_image_pixels": max_image_pixels,
            "threshold": meta.get("threshold"),  # value + how it was calibrated, or null
            "score": "approximate inner product (ivfpq: can exceed 1)" if searcher.index.kind == "ivfpq" else "cosine similarity",
        }

    @app.post("/search")
    async def search(request: Request) -> Dict[str, Any]:
        k = _parse_k(request.query_params.get("k"), default_k, max_k)
        body = await _read_capped(request, max_upload_bytes + MULTIPART_SLACK, max_upload_bytes)
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            data = await _multipart_file(request, body)
        else:
            data = body
        if len(data) > max_upload_bytes:
            raise ApiError(413, f"the image file is {len(data):,} bytes; the limit is {max_upload_bytes:,} bytes")

        def work() -> Dict[str, Any]:
            image = decode_image(data, max_pixels=max_image_pixels)
            query = {"width": image.width, "height": image.height, "mode": image.mode, "bytes": len(data)}
            with lock:
                results = searcher.search([image], k)[0]
            for r in results:
                r["thumbnail_url"] = f"/items/{r['id']}"
            t = searcher.index.threshold
            matched = None if t is None else bool(results and results[0]["match"])
            return {"k": k, "query": query, "threshold": t, "match": matched, "results": results}

        return await run_in_threadpool(work)

    @app.get("/items/{item_id}")
    async def item(item_id: str) -> Response:
        i = _parse_id(item_id, searcher)
        try:
            content, media_type = await run_in_threadpool(searcher.thumbnail, i)
        except OSError as exc:  # missing or no longer decodable since indexing (FileNotFoundError included)
            raise ApiError(404, str(exc)) from None
        except IndexError as exc:  # removed meanwhile
            raise ApiError(404, str(exc)) from None
        # no-cache: an item can be replaced (PUT /items/{id}) under the same URL
        return Response(content, media_type=media_type, headers={"Cache-Control": "no-cache"})

    async def _upload(request: Request) -> tuple:
        """(decoded image, class_name or None) of an edit request's multipart body."""
        if not allow_edits:
            raise ApiError(403, "editing the gallery is disabled; start the service with `deepmetric serve --allow-edits`")
        body = await _read_capped(request, max_upload_bytes + MULTIPART_SLACK, max_upload_bytes)
        data, class_name = await _multipart_file(request, body, field="class_name")
        image = await run_in_threadpool(decode_image, data, max_pixels=max_image_pixels)
        return image, class_name

    def _keep(image: Any, item: int) -> str:
        """Store an uploaded image in the index folder (ADDED_DIR/<id>.png): the index owns its thumbnails."""
        from deepmetric.serve.indexing import ADDED_DIR

        folder = searcher.dir / ADDED_DIR
        folder.mkdir(exist_ok=True)
        path = folder / f"{item:06d}.png"
        image.save(path)
        return str(path)

    @app.post("/items", status_code=201)
    async def add_item(request: Request) -> Dict[str, Any]:
        image, class_name = await _upload(request)

        def work() -> Dict[str, Any]:
            with lock:
                new_id = int(searcher.index.metadata["next_id"])
                path = _keep(image, new_id)
                searcher.add_images([image], [path], [class_name])
                return {**searcher.item(new_id), "items": len(searcher)}

        return await run_in_threadpool(work)

    @app.put("/items/{item_id}")
    async def replace_item(item_id: str, request: Request) -> Dict[str, Any]:
        i = _parse_id(item_id, searcher)
        image, class_name = await _upload(request)

        def work() -> Dict[str, Any]:
            with lock:
                searcher.update_image(i, image, _keep(image, i), class_name)
                return searcher.item(i)

        return await run_in_threadpool(work)

    @app.delete("/items/{item_id}")
    async def delete_item(item_id: str) -> Dict[str, Any]:
        if not allow_edits:
            raise ApiError(403, "editing the gallery is disabled; start the service with `deepmetric serve --allow-edits`")
        i = _parse_id(item_id, searcher)

        def work() -> Dict[str, Any]:
            with lock:
                searcher.remove([i])
                return {"removed": i, "items": len(searcher)}

        return await run_in_threadpool(work)

    return app


def _parse_id(raw: str, searcher: Any) -> int:
    """An item id from the URL: a plain decimal number of an item in the index, else 400/404."""
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:
        raise ApiError(400, f"item id {raw[:40]!r} is not an integer; items are addressed by their id number")
    i = int(raw)
    try:
        searcher.index.position(i)
    except KeyError as exc:
        raise ApiError(404, exc.args[0]) from None
    return i


def _parse_k(raw: Optional[str], default: int, max_k: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        k = int(raw)
    except ValueError:
        raise ApiError(422, f"k={raw[:20]!r} is not an integer; pass k between 1 and {max_k}") from None
    if not 1 <= k <= max_k:
        raise ApiError(422, f"k={k} is out of range; pass k between 1 and {max_k}")
    return k


async def _read_capped(request: Request, cap: int, file_limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``cap`` bytes (never read further)."""
    too_big = f"the upload is larger than the limit of {file_limit:,} bytes for an image file; send a smaller image"
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise ApiError(413, too_big)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise ApiError(413, too_big)
        chunks.append(chunk)
    return b"".join(chunks)


async def _parse_form(request: Request, body: bytes) -> Any:
    """Parse a multipart body already read into memory."""
    sent = False

    async def replay() -> Dict[str, Any]:  # hands the buffered body to the form parser once
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        return await Request(request.scope, replay).form(max_files=1, max_fields=20)
    except Exception as exc:  # noqa: BLE001 - the parser raises several types for malformed bodies
        raise ApiError(400, f"the multipart body could not be parsed ({exc}); send the image as form field 'file'") from None


async def _multipart_file(request: Request, body: bytes, *, field: Optional[str] = None) -> Any:
    """The bytes of the one file part of a multipart body already read into memory; with ``field``,
    ``(bytes, value of that text field or None)``."""
    form = await _parse_form(request, body)
    part = form.get("file")
    if part is None:
        part = next((v for v in form.values() if isinstance(v, UploadFile)), None)
    if not isinstance(part, UploadFile):
        raise ApiError(400, "no file in the form; send the image as multipart form field 'file'")
    data = await part.read()
    value = form.get(field) if field else None
    await form.close()
    if field is None:
        return data
    return data, (value if isinstance(value, str) and value else None)


def _pick_examples(searcher: Any, n: int) -> list:
    """Up to ``n`` gallery ids: the first item of each class in turn (then more per class), deterministic."""
    labels = searcher.index.metadata.get("labels") or []
    if not labels or all(v < 0 for v in labels):
        return list(searcher.index.ids[:n])
    by_class: Dict[int, list] = {}
    for item_id, v in zip(searcher.index.ids, labels):
        by_class.setdefault(int(v), []).append(item_id)
    picked, depth = [], 0
    while len(picked) < n and any(depth < len(v) for v in by_class.values()):
        for c in sorted(by_class):
            if depth < len(by_class[c]) and len(picked) < n:
                picked.append(by_class[c][depth])
        depth += 1
    return picked
