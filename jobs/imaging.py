"""Reading uploaded images: what the API checks at submit time and what the worker decodes.

Both sides use these functions so that an image accepted by the API is one the worker can read.
The format comes from the bytes (Pillow's sniffing), never from the filename or Content-Type.
"""

import contextlib
import hashlib
import io
import warnings
from dataclasses import dataclass
from typing import IO

import numpy as np
from django.conf import settings
from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow format -> (MIME type, object key extension). MPO is what many cameras write for JPEG.
FORMATS = {
    "JPEG": ("image/jpeg", "jpg"),
    "MPO": ("image/jpeg", "jpg"),
    "PNG": ("image/png", "png"),
    "WEBP": ("image/webp", "webp"),
    "BMP": ("image/bmp", "bmp"),
    "GIF": ("image/gif", "gif"),
    "TIFF": ("image/tiff", "tiff"),
}

# The formats Pillow is allowed to try (its JPEG plugin also reads MPO).
OPENABLE = [fmt for fmt in FORMATS if fmt != "MPO"]


class ImageRejected(Exception):
    """The bytes are not an image this service accepts. ``code`` says why."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ImageInfo:
    format: str
    content_type: str
    extension: str
    width: int
    height: int
    sha256: str


# What Pillow raises on bad pixel data.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@contextlib.contextmanager
def _no_bomb_warning():
    # The pixel limit is ours to enforce (_check_size: from the header, with a clear error);
    # Pillow's own warning below twice its limit would only be noise.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


def _corrupt(exc: Exception) -> ImageRejected:
    return ImageRejected("image_corrupt", f"The image data is truncated or corrupt: {exc}")


def _load(image: Image.Image) -> None:
    """Decode every pixel: a truncated or corrupt file fails here."""
    try:
        with _no_bomb_warning():
            image.load()
    except _DECODE_ERRORS as exc:
        raise _corrupt(exc) from exc


def _open(stream: IO[bytes]) -> Image.Image:
    try:
        with _no_bomb_warning():
            return Image.open(stream, formats=OPENABLE)
    except Image.DecompressionBombError as exc:
        raise ImageRejected("image_too_large", str(exc)) from exc
    except UnidentifiedImageError as exc:
        other = _other_image_format(stream)
        if other:
            raise ImageRejected("unsupported_image_format", f"{other} images are not accepted; send {', '.join(OPENABLE)}.") from exc
        raise ImageRejected("image_unreadable", f"The file is not an image in a supported format ({', '.join(OPENABLE)}).") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageRejected("image_unreadable", f"The image cannot be read: {exc}") from exc


def _other_image_format(stream: IO[bytes]) -> str | None:
    """The name of the format if Pillow knows it as some image we do not accept (ICO, PSD, ...),
    so that the client hears "unsupported" (415) rather than "not an image" (400)."""
    stream.seek(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return Image.open(stream).format
    except Exception:
        return None
    finally:
        stream.seek(0)


# Markers of another file hidden in or behind an image (HTML/JS/PHP/SVG/PDF polyglots).
_POLYGLOT_MARKERS = (b"<script", b"<html", b"<?php", b"<!doctype", b"<svg", b"%pdf-", b"<iframe")
# A ZIP archive's end record: a ZIP (JAR, DOCX...) appended to an image.
_ZIP_END = b"PK\x05\x06"


# Every marker starts with one of these bytes; a few photos' worth of them is looked at one by
# one, more (a hostile file of "<<<<") in one lower-cased scan per marker.
_MARKER_STARTS = (b"<", b"%")
_MARKER_LENGTH = max(len(marker) for marker in _POLYGLOT_MARKERS)
_MARKER_CANDIDATES_MAX = 20_000


def _has_marker(data: bytes) -> bool:
    """Whether one of _POLYGLOT_MARKERS is in ``data``, in any case. A photo holds a few hundred
    to a few thousand "<" and "%" bytes: looking at each is several times faster than
    lower-casing a copy of the whole file and scanning it once per marker (2 against 3.6 ms for
    800 KB). Counting them first would cost as much again (bytes.count is a byte-by-byte loop,
    bytes.find a memchr), so the count is kept as they are found."""
    seen = 0
    for start in _MARKER_STARTS:
        at = data.find(start)
        while at != -1:
            seen += 1
            if seen > _MARKER_CANDIDATES_MAX:
                # A hostile file of "<<<<": one lower-cased scan per marker bounds the work.
                lowered = data.lower()
                return any(marker in lowered for marker in _POLYGLOT_MARKERS)
            if data[at : at + _MARKER_LENGTH].lower().startswith(_POLYGLOT_MARKERS):
                return True
            at = data.find(start, at + 1)
    return False


def _check_not_polyglot(data: bytes, fmt: str) -> None:
    """Refuse files that are an image and something else at once. Browsers, archive tools or
    interpreters could treat the stored object as the other thing; a photo never needs to be."""
    if _has_marker(data) or _ZIP_END in data[-65557:]:
        raise ImageRejected("image_polyglot", "The file holds something besides the image (markup, a document or an archive).")
    if fmt == "PNG":
        end = data.rfind(b"IEND")
        if end != -1 and len(data) > end + 8:  # IEND, then its 4-byte CRC, then nothing
            raise ImageRejected("image_trailing_data", "The PNG has data after its end.")


def _check_size(image: Image.Image) -> None:
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageRejected("image_empty", "The image has no pixels.")
    if width * height > settings.MAX_IMAGE_PIXELS:
        raise ImageRejected(
            "image_too_large",
            f"The image is {width}x{height} pixels; at most {settings.MAX_IMAGE_PIXELS} pixels are accepted.",
        )


def image_probe(stream: IO[bytes]) -> ImageInfo:
    """Check that ``stream`` holds a whole, decodable image of an accepted format and size, and
    nothing else; also hash it.

    The size is checked from the header before any pixel is decoded, so a decompression bomb
    costs nothing. The pixels are then decoded once, so that a file accepted here is one the
    worker can read: a JPEG at an eighth of its size, in half the time or less (libjpeg's DCT
    scaling still entropy-decodes every block and skips only most of the inverse DCT, so a
    truncated or corrupt file fails alike; the worker decodes it at full size). The stream is
    rewound afterwards.
    """
    stream.seek(0)
    try:
        image = _open(stream)
        _check_size(image)
        width, height = image.size
        image.draft(None, (1, 1))  # JPEG only; other formats ignore it
        _load(image)
        stream.seek(0)
        data = stream.read()  # at most MAX_UPLOAD_BYTES: checked before this is called
    finally:
        stream.seek(0)
    _check_not_polyglot(data, image.format)
    content_type, extension = FORMATS[image.format]
    return ImageInfo(
        format=image.format,
        content_type=content_type,
        extension=extension,
        width=width,
        height=height,
        sha256=hashlib.sha256(data).hexdigest(),
    )


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and float greyscale: stretch to 8 bits instead of clipping to white.
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
        return Image.fromarray(scaled.astype(np.uint8), "L").convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Transparent pixels become white, as a viewer would show them, not black.
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def image_decode_rgb(data: bytes) -> Image.Image:
    """Decode an accepted image as the viewer sees it: first frame, EXIF orientation applied,
    any colour mode converted to RGB. Raises ImageRejected if it cannot be decoded."""
    image = _open(io.BytesIO(data))
    _check_size(image)
    _load(image)
    try:
        return _to_rgb(ImageOps.exif_transpose(image))
    except _DECODE_ERRORS as exc:
        raise _corrupt(exc) from exc
