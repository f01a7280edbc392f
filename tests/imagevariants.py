"""Odd but valid encodings of a test photo, made with Pillow so the expected face count is known."""

import io

from PIL import Image

from tests.conftest import TESTDATA


def _save(image: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def exif_rotated(image: Image.Image) -> bytes:
    """Pixels stored rotated, with the EXIF Orientation tag (6: rotate 90 CW to view) that
    makes a viewer show them upright."""
    stored = image.transpose(Image.Transpose.ROTATE_90)  # 90 counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(stored, "JPEG", quality=95, exif=exif.tobytes())


def variants(name: str) -> dict[str, tuple[bytes, str]]:
    """label -> (bytes, filename) for each odd encoding of ``name``."""
    rgb = Image.open(TESTDATA / name).convert("RGB")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(255)
    return {
        "grayscale-jpeg": (_save(rgb.convert("L"), "JPEG", quality=95), "gray.jpg"),
        "rgba-png": (_save(rgba, "PNG"), "rgba.png"),
        "palette-png": (_save(rgb.quantize(colors=256, method=Image.Quantize.MEDIANCUT), "PNG"), "palette.png"),
        "cmyk-jpeg": (_save(rgb.convert("CMYK"), "JPEG", quality=95), "cmyk.jpg"),
        "exif-rotated-jpeg": (exif_rotated(rgb), "rotated.jpg"),
        "webp": (_save(rgb, "WEBP", quality=95), "photo.webp"),
        "16-bit-grayscale-png": (_save(rgb.convert("L").convert("I;16"), "PNG"), "gray16.png"),
        "gif": (_save(rgb.convert("P", palette=Image.Palette.ADAPTIVE), "GIF"), "photo.gif"),
        "bmp": (_save(rgb, "BMP"), "photo.bmp"),
        "tiff": (_save(rgb, "TIFF"), "photo.tiff"),
    }
