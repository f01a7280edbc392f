"""A corpus of hostile requests: each gets the right 4xx in the one error shape, and leaves no
row and no stored object behind."""

import io
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from PIL import Image as PILImage

from jobs.models import Image
from storage import s3 as storage
from tests.conftest import photo_bytes, upload

pytestmark = [pytest.mark.django_db]


def png(size=(64, 64), **params) -> bytes:
    out = io.BytesIO()
    PILImage.new("RGB", size, (200, 100, 50)).save(out, "PNG", **params)
    return out.getvalue()


def encoded(fmt: str, mode: str = "RGB", **params) -> bytes:
    out = io.BytesIO()
    PILImage.new(mode, (32, 32), 128 if mode == "L" else (10, 20, 30)).save(out, fmt, **params)
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height but carries a few bytes of pixels: a decompression bomb
    (or an impossible size) told by its header alone."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def gif_header_only(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00" + b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"


def zip_bytes() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("payload.txt", "not a photo")
    return out.getvalue()


JPEG = photo_bytes("grace_hopper_1face.jpg")


@dataclass
class Case:
    name: str
    send: Callable  # (ctx) -> response
    status: int
    code: str | None = None
    field: str | None = None


def post(data: bytes = None, name="photo.png", content_type=None, request_id="hostile", **fields):
    def send(ctx):
        payload = dict(request_id=request_id, **fields)
        if data is not None:
            payload["image"] = io.BytesIO(data)
            payload["image"].name = name
            if content_type:
                from django.core.files.uploadedfile import SimpleUploadedFile

                payload["image"] = SimpleUploadedFile(name, data, content_type=content_type)
        return ctx.client.post("/api/v1/images/", payload, format="multipart")

    return send


def callback(url: str) -> Callable:
    return post(png(), callback_url=url)


def as_other(method: str, path: str) -> Callable:
    return lambda ctx: getattr(ctx.client, method)(path.format(other=ctx.other_id))


CASES = [
    # --- Who may call ---
    Case("no key", lambda ctx: ctx.anonymous.post("/api/v1/images/", {}), 401, "not_authenticated"),
    Case("no key, list", lambda ctx: ctx.anonymous.get("/api/v1/images/"), 401, "not_authenticated"),
    Case("wrong key", lambda ctx: ctx.with_key("fda_00000000_" + "x" * 43).get("/api/v1/images/"), 401, "invalid_api_key"),
    Case("garbage key", lambda ctx: ctx.with_key("'; DROP TABLE api_image; --").get("/api/v1/images/"), 401, "invalid_api_key"),
    Case("revoked key", lambda ctx: ctx.with_key(ctx.revoked_key).get("/api/v1/images/"), 401, "invalid_api_key"),
    Case("other scheme", lambda ctx: ctx.with_header(HTTP_AUTHORIZATION="Bearer abc").get("/api/v1/images/"), 401),
    Case("other client's job", as_other("get", "/api/v1/images/{other}/"), 404, "not_found"),
    Case("other client's annotated", as_other("get", "/api/v1/images/{other}/annotated/"), 404, "not_found"),
    Case("other client's redeliver", as_other("post", "/api/v1/images/{other}/redeliver/"), 404, "not_found"),
    Case("id that is no uuid", lambda ctx: ctx.client.get("/api/v1/images/..%2F..%2Fetc%2Fpasswd/"), 404, "not_found"),
    # --- What may come in: the image ---
    Case("text as image/jpeg", post(b"hello, I am text", "photo.jpg", "image/jpeg"), 400, "image_unreadable", "image"),
    Case("html named .png", post(b"<html><script>alert(1)</script></html>", "photo.png", "image/png"), 400, "image_unreadable", "image"),
    Case(
        "svg with script",
        post(b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', "a.svg", "image/svg+xml"),
        400,
        "image_unreadable",
        "image",
    ),
    Case("pdf", post(b"%PDF-1.7\n1 0 obj <<>> endobj\n%%EOF", "photo.jpg"), 400, "image_unreadable", "image"),
    Case("zip named .jpg", post(zip_bytes(), "photo.jpg", "image/jpeg"), 400, "image_unreadable", "image"),
    Case("jpeg + zip polyglot", post(JPEG + zip_bytes(), "photo.jpg"), 400, "image_polyglot", "image"),
    Case("png + html polyglot", post(png() + b"<html><script>alert(1)</script>", "photo.png"), 400, "image_polyglot", "image"),
    Case("gif with script comment", post(encoded("GIF", comment=b"<script>alert(1)</script>"), "a.gif"), 400, "image_polyglot", "image"),
    Case(
        "jpeg with php in exif",
        post(encoded("JPEG", exif=b"Exif\x00\x00<?php system($_GET['c']); ?>"), "a.jpg"),
        400,
        "image_polyglot",
        "image",
    ),
    Case("png with trailing bytes", post(png() + b"\x00" * 32, "photo.png"), 400, "image_trailing_data", "image"),
    Case("png bomb 40000x40000", post(png_header_only(40000, 40000)), 413, "image_too_large", "image"),
    Case("gif 65535x65535", post(gif_header_only(65535, 65535), "a.gif"), 413, "image_too_large", "image"),
    Case("png zero width", post(png_header_only(0, 64)), 400, None, "image"),
    Case("png zero height", post(png_header_only(64, 0)), 400, None, "image"),
    Case("truncated jpeg", post(JPEG[: len(JPEG) // 2], "photo.jpg"), 400, "image_corrupt", "image"),
    Case("truncated png", post(png((256, 256))[:100], "photo.png"), 400, None, "image"),
    Case("empty file", post(b"", "photo.png"), 400, "empty", "image"),
    Case("ico (unsupported)", post(encoded("ICO"), "a.ico", "image/png"), 415, "unsupported_image_format", "image"),
    Case("pcx (unsupported)", post(encoded("PCX"), "a.pcx"), 415, "unsupported_image_format", "image"),
    Case("ppm (unsupported)", post(encoded("PPM"), "a.ppm"), 415, "unsupported_image_format", "image"),
    Case(
        "image as a text field",
        lambda ctx: ctx.client.post("/api/v1/images/", {"image": "x", "request_id": "r"}, format="multipart"),
        400,
        None,
        "image",
    ),
    Case(
        "json body, no file", lambda ctx: ctx.client.post("/api/v1/images/", {"request_id": "r"}, format="json"), 400, "required", "image"
    ),
    Case(
        "plain text body",
        lambda ctx: ctx.client.post("/api/v1/images/", b"hello", content_type="text/plain"),
        415,
        "unsupported_media_type",
    ),
    Case("oversized upload", lambda ctx: ctx.oversized(), 413, "file_too_large", "image"),
    # --- request_id ---
    Case("request_id empty", post(png(), request_id=""), 400, None, "request_id"),
    Case("request_id 129 chars", post(png(), request_id="r" * 129), 400, "max_length", "request_id"),
    Case("request_id escape", post(png(), request_id="\x1b[31mred"), 400, "invalid", "request_id"),
    Case("request_id newline", post(png(), request_id="a\r\nSet-Cookie: x=1"), 400, "invalid", "request_id"),
    Case("request_id NUL", post(png(), request_id="a\x00b"), 400, None, "request_id"),
    Case("request_id RTL override", post(png(), request_id="abc\u202etxt.exe"), 400, "invalid", "request_id"),
    # --- callback_url: SSRF in every form ---
    *[
        Case(f"callback {url}", callback(url), 400, None, "callback_url")
        for url in [
            "http://127.0.0.1/",
            "http://localhost:6379/",
            "http://[::1]/",
            "http://0.0.0.0/",
            "http://[::]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/",
            "http://100.100.100.200/",
            "http://10.0.0.1/",
            "http://172.16.0.1/",
            "http://192.168.1.1/",
            "http://[fe80::1]/",
            "http://224.0.0.1/",
            "http://[::ffff:127.0.0.1]/",
            "http://[64:ff9b::7f00:1]/",
            "http://[2002:7f00:1::1]/",
            # Forms Python's is_global lets through: local-use NAT64, IPv4-translated,
            # IPv4-compatible, site-local.
            "http://[64:ff9b:1::a9fe:a9fe]/",
            "http://[::ffff:0:7f00:1]/",
            "http://[::7f00:1]/",
            "http://[fec0::1]/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://user:pass@127.0.0.1/",
            "ftp://127.0.0.1/",
            "file:///etc/passwd",
            "gopher://127.0.0.1:6379/_INFO",
            "javascript:alert(1)",
            "http://no-such-host.invalid/",
            "http://" + "a" * 3000 + ".com/",
        ]
    ],
]


class Ctx:
    def __init__(self, client, anonymous, api_key, other_id, revoked_key, settings):
        self.client, self.anonymous, self.other_id, self.revoked_key = client, anonymous, other_id, revoked_key
        self.settings = settings

    def with_key(self, key):
        from rest_framework.test import APIClient

        client = APIClient()
        client.credentials(HTTP_X_API_KEY=key)
        return client

    def with_header(self, **headers):
        from rest_framework.test import APIClient

        client = APIClient()
        client.credentials(**headers)
        return client

    def oversized(self):
        self.settings.MAX_UPLOAD_BYTES = 1000
        return upload(self.client, photo_bytes("coffee.png"), request_id="big")


@pytest.fixture
def ctx(api_client, anonymous_client, api_key, s3, settings, monkeypatch):
    from clients.services import api_key_create, api_key_revoke

    monkeypatch.setattr("jobs.services.submission.image_job_enqueue", lambda *, image_id: None)
    settings.CALLBACK_ALLOWED_NETWORKS = []  # the real policy, not the tests' loopback allowance
    other = api_key_create(client_name="other-client")[1]
    other_id = upload(Ctx(None, None, None, None, None, settings).with_key(other), png(), request_id="theirs").json()["id"]
    revoked_row, revoked = api_key_create(client_name="revoked-client")
    api_key_revoke(prefix=revoked_row.prefix)
    return Ctx(api_client, anonymous_client, api_key, other_id, revoked, settings)


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=[c.name[:60] for c in CASES])
def test_hostile_request_gets_the_right_4xx_and_leaves_nothing(case, ctx):
    objects_before = sorted(storage.storage_list())

    response = case.send(ctx)

    assert response.status_code == case.status, response.content[:500]
    error = response.json()["error"]
    assert set(error) >= {"code", "message", "field"} and error["message"]
    if case.code:
        assert error["code"] == case.code
    assert error["field"] == case.field
    assert Image.objects.count() == 1  # only the other client's job
    assert sorted(storage.storage_list()) == objects_before


def test_odd_filenames_are_ignored_not_refused(api_client, s3, monkeypatch):
    """A valid photo with a path-traversal or control-character filename is accepted; the key is
    the server's choice and the kept name has no control characters."""
    monkeypatch.setattr("jobs.services.submission.image_job_enqueue", lambda *, image_id: None)
    for i, name in enumerate(["../../../etc/passwd", "..\\..\\win.ini", "a\x00b\x1b[2J.png", "/" * 300]):
        response = upload(api_client, png(), name=name, request_id=f"name-{i}")
        assert response.status_code == 202, (name, response.content)
        image = Image.objects.get(id=response.json()["id"])
        assert image.original_key == f"originals/{image.created_at:%Y/%m/%d}/{image.id}.png"
        assert image.original_filename.isprintable()
