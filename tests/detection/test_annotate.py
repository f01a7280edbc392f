import io
from types import SimpleNamespace

from PIL import Image

from detection.annotate import annotate_jpeg


def test_boxes_and_landmarks_are_drawn_on_a_copy():
    """The input is untouched; the JPEG shows a green box edge and red landmark dots."""
    image = Image.new("RGB", (200, 200), (0, 0, 0))
    face = SimpleNamespace(box_x=50, box_y=60, box_width=80, box_height=90, confidence=0.98,
                           landmarks={"nose": [90.0, 100.0]})
    out = Image.open(io.BytesIO(annotate_jpeg(image, [face]))).convert("RGB")
    assert image.getpixel((50, 100)) == (0, 0, 0)
    r, g, b = out.getpixel((50, 100))
    assert g > 200 and r < 80 and b < 80
    r, g, b = out.getpixel((90, 100))
    assert r > 200 and g < 80
    assert out.size == (200, 200)
