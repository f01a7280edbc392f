"""Drawing the faces on a copy of the photo."""

import io
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

BOX_COLOUR = (0, 255, 0)
LANDMARK_COLOUR = (255, 0, 0)
JPEG_QUALITY = 90


def annotate_jpeg(image: Image.Image, faces: Sequence) -> bytes:
    """A JPEG of ``image`` (RGB) with each face's box, landmarks and confidence drawn on it.

    ``faces`` are jobs.models.Face rows (or anything with box_x, box_y, box_width, box_height,
    confidence and landmarks). Line widths follow the image size so boxes stay visible.
    """
    canvas = image.copy()
    draw = ImageDraw.Draw(canvas)
    line = max(2, round(min(canvas.size) / 200))
    radius = max(2, line)
    font = ImageFont.load_default(size=max(12, line * 6))
    for face in faces:
        x0, y0 = face.box_x, face.box_y
        x1, y1 = x0 + face.box_width, y0 + face.box_height
        draw.rectangle((x0, y0, x1, y1), outline=BOX_COLOUR, width=line)
        for px, py in face.landmarks.values():
            draw.ellipse((px - radius, py - radius, px + radius, py + radius), fill=LANDMARK_COLOUR)
        label = f"{face.confidence:.2f}"
        text_y = max(0, y0 - font.size - line)
        draw.text((x0, text_y), label, fill=BOX_COLOUR, font=font)
    out = io.BytesIO()
    canvas.save(out, format="JPEG", quality=JPEG_QUALITY)
    return out.getvalue()
